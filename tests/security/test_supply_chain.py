"""scripts/sbom: a CycloneDX 1.5 SBOM from uv.lock, offline and reproducible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def _sbom(*extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "sbom"), *extra],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "SOURCE_DATE_EPOCH": "1700000000"},
    )
    document: dict[str, Any] = json.loads(done.stdout)
    return document


def test_sbom_lists_every_locked_package_with_purl_hash_and_scope() -> None:
    sbom = _sbom()
    assert sbom["bomFormat"] == "CycloneDX"
    assert sbom["specVersion"] == "1.5"
    assert sbom["metadata"]["component"]["name"] == "nebuliser"
    lock = tomllib.loads((REPO / "uv.lock").read_text())
    locked = {(p["name"], p["version"]) for p in lock["package"] if p["name"] != "nebuliser"}
    listed = {(c["name"], c["version"]) for c in sbom["components"]}
    assert listed == locked
    by_name = {c["name"]: c for c in sbom["components"]}
    assert by_name["cryptography"]["scope"] == "required"
    assert by_name["cryptography"]["purl"].startswith("pkg:pypi/cryptography@")
    assert len(by_name["cryptography"]["hashes"][0]["content"]) == 64
    assert by_name["pytest"]["scope"] == "optional"
    refs = {c["bom-ref"] for c in sbom["components"]} | {sbom["metadata"]["component"]["bom-ref"]}
    for dependency in sbom["dependencies"]:
        assert dependency["ref"] in refs
        assert set(dependency["dependsOn"]) <= refs


def test_runtime_only_sbom_omits_dev_tools_and_is_reproducible() -> None:
    first = _sbom("--runtime-only")
    names = {c["name"] for c in first["components"]}
    assert {"aiomqtt", "cryptography", "pydantic"} <= names
    assert not names & {"pytest", "mypy", "ruff", "hypothesis"}
    assert _sbom("--runtime-only") == first


def test_every_base_image_is_pinned_by_a_digest_the_build_must_be_given() -> None:
    """A tag can be re-pointed; a digest cannot. The digests are build arguments with
    no default, so an unpinned build fails instead of taking whatever the tag is today."""
    lines = (REPO / "Dockerfile").read_text(encoding="utf-8").splitlines()
    args = {line.split()[1]: line for line in lines if line.startswith("ARG ") and "=" not in line}
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms
    for image in froms:
        if "@" not in image:
            assert image in {"uv", "build"}, f"{image}: a base image without a digest"
            continue
        _, _, digest = image.partition("@")
        if digest.startswith("${"):
            assert digest[2:-1] in args, f"{image}: digest argument not declared without default"
        else:
            assert digest.startswith("sha256:"), image
            assert len(digest) == len("sha256:") + 64, image
    assert not [
        line for line in lines if line.startswith("COPY --from=") and ":" in line.split()[1]
    ]


def test_ci_checks_that_audit_deps_refuses_to_pass_offline() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "scripts/audit-deps" in ci
    assert "UV_OFFLINE=1" in ci
