"""Durability: a writer SIGKILLed at random moments never loses a row it reported committed."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from controller.dosing import SessionStatus
from controller.ledger import Ledger

REPO_ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 10


def _run_and_kill(db_path: Path, rng: random.Random) -> list[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.ledger._killed_writer", str(db_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=REPO_ROOT,
        env=env,
    )
    assert child.stdout is not None
    lines: list[str] = []
    while True:  # start-up output, then READY
        line = child.stdout.readline().decode()
        if not line:
            err = child.stderr.read().decode() if child.stderr else ""
            pytest.fail(f"writer died before READY: {err}")
        if line.strip() == "READY":
            break
        lines.append(line.strip())
    time.sleep(rng.uniform(0.02, 0.4))
    child.send_signal(signal.SIGKILL)
    out, _err = child.communicate(timeout=10)
    assert child.returncode == -signal.SIGKILL
    lines.extend(line for line in out.decode().splitlines() if line)
    return lines


@pytest.mark.slow
def test_every_reported_commit_survives_sigkill(db_path: Path) -> None:
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    reported_sessions: set[int] = set()
    reported_events: set[int] = set()
    reported_uncertain: set[int] = set()
    max_seq = 0
    for round_no in range(ROUNDS):
        lines = _run_and_kill(db_path, rng)
        for line in lines:
            tag, _, value = line.partition(" ")
            if tag == "S":
                reported_sessions.add(int(value))
            elif tag == "E" and value != "None":
                reported_events.add(int(value))
            elif tag == "U":
                reported_uncertain.add(int(value))
            elif tag == "O":
                assert int(value) > max_seq, f"seq {value} reused (seed {seed})"
                max_seq = int(value)

        raw = sqlite3.connect(db_path)
        try:
            assert raw.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        finally:
            raw.close()
        with Ledger.open(db_path) as ledger:
            stored_sessions = {r.session_id for r in ledger.history("subj-kill")}
            stored_events = {e.event_id for e in ledger.events()}
            statuses = {r.session_id: r.status for r in ledger.history("subj-kill")}
        context = f"round {round_no}, seed {seed}"
        assert reported_sessions <= stored_sessions, context
        assert reported_events <= stored_events, context
        assert all(statuses[s] is SessionStatus.UNCERTAIN for s in reported_uncertain), context
    assert len(reported_sessions) >= ROUNDS  # the writer did real work in most rounds
