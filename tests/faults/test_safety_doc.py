"""Every test node id named in docs/safety.md exists (the traceability table is real)."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAFETY = ROOT / "docs" / "safety.md"
NODE_ID = re.compile(r"`(tests/[\w/]+\.py)(?:::([\w:]+))?`")


def _names(tree: ast.Module) -> dict[str, ast.AST]:
    """Top-level functions, classes and assigned names of a test module."""
    found: dict[str, ast.AST] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found[node.name] = node
        elif isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found[target.id] = node
    return found


def _exists(path: str, name: str | None) -> bool:
    file = ROOT / path
    if not file.is_file():
        return False
    if name is None:
        return True
    found = _names(ast.parse(file.read_text(encoding="utf-8")))
    first, _, rest = name.partition("::")
    node = found.get(first)
    if node is None:
        return False
    if not rest:
        return first.startswith(("test_", "Test"))
    if not isinstance(node, ast.ClassDef):
        return False
    return any(
        isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef) and item.name == rest
        for item in node.body
    )


def test_every_node_id_in_the_safety_case_exists() -> None:
    text = SAFETY.read_text(encoding="utf-8")
    ids = NODE_ID.findall(text)
    assert len(ids) >= 60, f"only {len(ids)} test ids found in {SAFETY}"
    missing = sorted({f"{p}::{n}" if n else p for p, n in ids if not _exists(p, n or None)})
    assert not missing, "docs/safety.md names tests that do not exist:\n" + "\n".join(missing)


def test_every_hazard_has_at_least_one_test() -> None:
    text = SAFETY.read_text(encoding="utf-8")
    sections = re.split(r"^### ", text, flags=re.MULTILINE)[1:]
    hazards = [s for s in sections if re.match(r"H\d ", s)]
    assert len(hazards) == 9
    for section in hazards:
        assert NODE_ID.search(section), f"hazard without a test: {section.splitlines()[0]}"


def test_the_checker_notices_a_missing_test() -> None:
    assert _exists("tests/faults/test_safety_doc.py", "test_the_checker_notices_a_missing_test")
    assert not _exists("tests/faults/test_safety_doc.py", "test_that_does_not_exist")
    assert not _exists("tests/no_such_file.py", None)


MUTATIONS = ROOT / "scripts" / "mutations.toml"
MUTATION_NAME = re.compile(r"«([^»]+)»")


def test_every_mutation_is_named_in_the_safety_case_and_every_named_one_exists() -> None:
    table = tomllib.loads(MUTATIONS.read_text(encoding="utf-8"))
    in_table = {m["name"] for m in table["mutation"]}
    in_doc = set(MUTATION_NAME.findall(SAFETY.read_text(encoding="utf-8")))
    assert len(in_table) >= 25, f"only {len(in_table)} safety mutations"
    assert not in_doc - in_table, f"docs/safety.md names unknown mutations: {in_doc - in_table}"
    assert not in_table - in_doc, f"mutations missing from docs/safety.md: {in_table - in_doc}"
    for mutation in table["mutation"]:
        for node in mutation["tests"]:
            path, _, name = node.partition("::")
            assert _exists(path, name or None), f"{mutation['name']}: no test {node}"
