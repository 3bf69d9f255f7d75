"""The service's audit log: ledger events mirrored exactly once (also across restarts),
anchors on session end and at shutdown, and a chain that verifies."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from controller.clock import SystemClock
from controller.ledger import LEDGER_FILE_NAME, AlarmAction, Ledger
from controller.security import AUDIT_DB_NAME, AuditHead, AuditKind, verify_audit_log
from controller.service._audit import ServiceAudit, run_audit

CLOCK = SystemClock()


def _kinds(data_dir: Path) -> list[str]:
    with sqlite3.connect(data_dir / AUDIT_DB_NAME) as conn:
        return [str(row[0]) for row in conn.execute("SELECT kind FROM audit_log ORDER BY idx")]


def _ledger_events(ledger: Ledger) -> None:
    ledger.record_decision(
        subject_id="S-1", allowed=False, trace={"why": "interval"}, at=CLOCK.now()
    )
    ledger.record_alarm(
        alarm_code="dry_cup", action=AlarmAction.RAISED, actor="controller", at=CLOCK.now()
    )
    ledger.record_alarm(
        alarm_code="dry_cup", action=AlarmAction.ACKNOWLEDGED, actor="nurse", at=CLOCK.now()
    )


async def test_ledger_events_are_mirrored_once_even_after_a_restart(tmp_path: Path) -> None:
    with Ledger.create(tmp_path / LEDGER_FILE_NAME, device_id="neb-t", subject_id="S-1") as ledger:
        _ledger_events(ledger)
        async with ServiceAudit(data_dir=tmp_path, clock=CLOCK).running() as audit:
            assert await audit.mirror_ledger() == 3
            assert await audit.mirror_ledger() == 0
        assert _kinds(tmp_path) == ["decision", "alarm", "acknowledgement"]
        # A restart: the watermark comes from the audit log itself, nothing twice.
        async with ServiceAudit(data_dir=tmp_path, clock=CLOCK).running() as audit:
            assert await audit.mirror_ledger() == 0
            ledger.record_decision(subject_id="S-1", allowed=True, trace={}, at=CLOCK.now())
            assert await audit.mirror_ledger() == 1
            head = await audit.anchor("test")
    verification = verify_audit_log(tmp_path / AUDIT_DB_NAME, expected_head=head)
    assert verification.ok, verification.problem
    assert verification.head == head
    assert _kinds(tmp_path)[-2:] == ["decision", "anchor"]


async def test_run_audit_anchors_after_a_session_end_and_at_shutdown(tmp_path: Path) -> None:
    with Ledger.create(tmp_path / LEDGER_FILE_NAME, device_id="neb-t", subject_id="S-1"):
        pass
    published: list[tuple[AuditHead, str]] = []
    sessions = [0]
    changed = asyncio.Event()

    async def publish(head: AuditHead, reason: str) -> None:
        published.append((head, reason))
        changed.set()

    async def until_published(count: int) -> None:
        while len(published) < count:
            changed.clear()
            await changed.wait()

    async with (
        ServiceAudit(data_dir=tmp_path, clock=CLOCK).running() as audit,
        asyncio.TaskGroup() as group,
    ):
        task = group.create_task(
            run_audit(
                audit,
                sessions_ended=lambda: sessions[0],
                publish_head=publish,
                anchor_interval_s=3600,
                mirror_interval_s=0.01,
            )
        )
        async with asyncio.timeout(5):
            await until_published(1)
            sessions[0] = 1
            await until_published(2)
            # Any new audited event: a "batch" anchor follows within a mirror interval.
            audit.record(AuditKind.COMMAND, {"outcome": "refused", "code": "bad_signature"})
            await until_published(3)
        task.cancel()
    # The shutdown anchor is recorded AND published (it used to be recorded only).
    assert [reason for _, reason in published] == ["startup", "session_end", "batch", "shutdown"]
    assert _kinds(tmp_path) == ["anchor", "anchor", "command", "anchor", "anchor"]
    verification = verify_audit_log(
        tmp_path / AUDIT_DB_NAME, anchors=[head for head, _ in published]
    )
    assert verification.ok, verification.problem
    assert verification.head is not None
    assert verification.head == published[-1][0]
