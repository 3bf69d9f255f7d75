"""Run the safety mutation suite (`scripts/mutate`; mutations in scripts/mutations.toml).

For each mutation: copy the tree to a scratch directory once per worker, replace the
`find` text (which must occur exactly once) by `replace`, run the listed tests with
pytest, and restore the file. A mutation is KILLED when a test fails, SURVIVED when
all pass, and an ERROR when pytest could not run the tests (collection error, no
tests): an error counts as a failure of the suite, like a survivor.

Before any mutation the listed tests run once on the unmutated copy: a suite whose
tests already fail proves nothing, so that aborts the run.

Why explicit patches instead of a mutation tool (docs/decisions/0003-mutation-suite.md):
each mutation breaks one named safety rule, so the table reads as the safety case's
evidence, and the run fits the CI budget by running only the tests that matter.
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MUTATIONS = ROOT / "scripts" / "mutations.toml"
_IGNORE = shutil.ignore_patterns(
    ".git", ".venv", "__pycache__", ".mypy_cache", ".ruff_cache", ".pytest_cache", "data"
)
_TEST_TIMEOUT_S = 300
_FAILED = re.compile(r"^FAILED (\S+)", re.MULTILINE)
_ERROR = re.compile(r"^ERROR (\S+)", re.MULTILINE)


@dataclass(frozen=True, slots=True)
class Mutation:
    """One named break of one safety rule."""

    name: str
    rule: str
    file: str
    find: str
    replace: str
    tests: tuple[str, ...]
    line: int


@dataclass(frozen=True, slots=True)
class Result:
    """What the tests said about one mutation."""

    mutation: Mutation
    verdict: str  # KILLED, SURVIVED or ERROR
    detail: str
    seconds: float


def load(path: Path) -> list[Mutation]:
    """Read and check the mutation table: every `find` occurs exactly once."""
    table = tomllib.loads(path.read_text(encoding="utf-8"))
    mutations = []
    names: set[str] = set()
    for entry in table["mutation"]:
        name = entry["name"]
        if name in names:
            raise SystemExit(f"{path}: mutation {name!r} appears twice")
        names.add(name)
        source = (ROOT / entry["file"]).read_text(encoding="utf-8")
        count = source.count(entry["find"])
        if count != 1:
            raise SystemExit(
                f"{path}: mutation {name!r}: its `find` text occurs {count} times in "
                f"{entry['file']} (must be exactly once); update the table to the code"
            )
        line = source[: source.index(entry["find"])].count("\n") + 1
        mutations.append(
            Mutation(
                name=name,
                rule=str(entry["rule"]),
                file=entry["file"],
                find=entry["find"],
                replace=entry["replace"],
                tests=tuple(entry["tests"]),
                line=line,
            )
        )
    return mutations


def _pytest(copy: Path, tests: tuple[str, ...]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run(  # noqa: S603 - our interpreter, node ids from our own table
        [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=_TEST_TIMEOUT_S,
        check=False,
    )


def _copy_tree(scratch: Path, index: int) -> Path:
    copy = scratch / f"tree-{index}"
    shutil.copytree(ROOT, copy, ignore=_IGNORE)
    probe = subprocess.run(
        [sys.executable, "-c", "import controller; print(controller.__file__)"],
        cwd=copy,
        env={**os.environ, "PYTHONPATH": str(copy)},
        capture_output=True,
        text=True,
        check=True,
    )
    if not probe.stdout.strip().startswith(str(copy)):
        raise SystemExit(f"the copy does not shadow the installed tree: {probe.stdout.strip()}")
    return copy


def run_one(copy: Path, mutation: Mutation) -> Result:
    """Apply one mutation in `copy`, run its tests, restore the file."""
    target = copy / mutation.file
    original = target.read_text(encoding="utf-8")
    if mutation.find not in original:
        return Result(mutation, "ERROR", "its `find` text is not in the file", 0.0)
    mutated = original.replace(mutation.find, mutation.replace, 1)
    target.write_text(mutated, encoding="utf-8")
    started = time.monotonic()
    try:
        done = _pytest(copy, mutation.tests)
    except subprocess.TimeoutExpired:
        return Result(mutation, "KILLED", "tests timed out", time.monotonic() - started)
    finally:
        untouched = target.read_text(encoding="utf-8") == mutated
        target.write_text(original, encoding="utf-8")
    seconds = time.monotonic() - started
    if not untouched:  # a verdict on code other than the mutant's would be worthless
        return Result(mutation, "ERROR", "the file changed while its tests ran", seconds)
    if done.returncode == 0:
        return Result(mutation, "SURVIVED", "all listed tests passed", seconds)
    if done.returncode == 1:
        failed = _FAILED.findall(done.stdout) or _ERROR.findall(done.stdout)
        return Result(mutation, "KILLED", failed[0] if failed else "a test failed", seconds)
    tail = " ".join(done.stdout.strip().splitlines()[-3:])
    return Result(mutation, "ERROR", f"pytest exit {done.returncode}: {tail[:200]}", seconds)


def main() -> int:
    """Run the suite; print the table and the summary line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-k", dest="only", help="only mutations whose name contains this")
    parser.add_argument("--list", action="store_true", help="list the mutations and exit")
    parser.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1))
    args = parser.parse_args()
    mutations = [m for m in load(MUTATIONS) if not args.only or args.only in m.name]
    if args.list:
        for m in mutations:
            print(f"rule {m.rule:>2} | {m.name} | {m.file}:{m.line}")
        return 0
    if not mutations:
        print(f"no mutation matches {args.only!r}")
        return 2
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="nebuliser-mutate-") as scratch_dir:
        scratch = Path(scratch_dir)
        workers = max(1, min(args.workers, len(mutations)))
        copies = [_copy_tree(scratch, i) for i in range(workers)]
        every_test = tuple(dict.fromkeys(t for m in mutations for t in m.tests))
        # The baseline (every listed test, unmutated) split over the copies, run at once.
        shares = [every_test[i::workers] for i in range(workers)]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            baselines = list(pool.map(_pytest, copies, [t for t in shares if t]))
        for baseline in baselines:
            if baseline.returncode != 0:
                print(baseline.stdout[-3000:])
                print("the listed tests fail without any mutation: fix them first")
                return 2
        print(f"(baseline: {time.monotonic() - started:.0f} s)", flush=True)
        # A copy is lent to one mutation at a time: a fixed copy per index let a fast
        # worker apply its mutation to a copy whose previous mutation was still being
        # tested (same file: one restore undid the other, a false SURVIVED).
        free: queue.SimpleQueue[Path] = queue.SimpleQueue()
        for copy in copies:
            free.put(copy)

        def lend(mutation: Mutation) -> Result:
            copy = free.get()
            try:
                return run_one(copy, mutation)
            finally:
                free.put(copy)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(lend, m) for m in mutations]
            results = []
            for future in futures:
                result = future.result()
                results.append(result)
                m = result.mutation
                verdict = (
                    f"killed by {result.detail}" if result.verdict == "KILLED" else result.verdict
                )
                print(
                    f"{m.name} | {m.file}:{m.line} | {verdict}"
                    + ("" if result.verdict == "KILLED" else f" ({result.detail})")
                    + f" | {result.seconds:.1f} s",
                    flush=True,
                )
    killed = sum(r.verdict == "KILLED" for r in results)
    survived = sum(r.verdict == "SURVIVED" for r in results)
    errors = len(results) - killed - survived
    print(f"({time.monotonic() - started:.0f} s, {workers} worker(s))")
    summary = f"{len(results)} mutations: {killed} killed, {survived} survived"
    print(summary + (f", {errors} could not run" if errors else ""))
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
