"""`nebuliser monitor`: URL parsing, the rendered table, the `a` key's choice, and
`--json` against a real broker in a real subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from rich.console import Console

from controller.cli.monitor import most_urgent_unacknowledged, parse_broker_url, render_ward
from controller.telemetry import (
    ActiveAlarm,
    BedRow,
    OutboxPublisher,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import IDENTITY, settings_for, telemetry
from tests.telemetry.test_publisher import wait_until

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_broker_urls() -> None:
    assert parse_broker_url("mqtt://10.0.0.5:1884") == ("10.0.0.5", 1884, False)
    assert parse_broker_url("mqtts://broker.ward") == ("broker.ward", 8883, True)
    with pytest.raises(ValueError, match="mqtt://HOST:PORT"):
        parse_broker_url("http://x:1")
    with pytest.raises(ValueError, match="mqtt://HOST:PORT"):
        parse_broker_url("localhost:1883")


def alarm(code: str, priority: str, minutes: int, *, acked: bool = False) -> ActiveAlarm:
    return ActiveAlarm.model_validate(
        {
            "alarm_code": code,
            "priority": priority,
            "acknowledged": acked,
            "raised_utc": T0 + timedelta(minutes=minutes),
        }
    )


def test_a_key_picks_the_most_urgent_unacknowledged_alarm() -> None:
    rows = [
        BedRow(
            ward="W7",
            bed="B01",
            device_id="d1",
            alarms=[alarm("LOW_RES", "low", 0), alarm("OLD_HIGH", "high", 0, acked=True)],
        ),
        BedRow(
            ward="W7",
            bed="B02",
            device_id="d2",
            alarms=[alarm("LATE", "high", 5), alarm("EARLY", "high", 1)],
        ),
    ]
    request = most_urgent_unacknowledged(rows)
    assert request is not None
    assert (request.bed, request.device_id, request.alarm_code) == ("B02", "d2", "EARLY")
    assert most_urgent_unacknowledged([BedRow(ward="W7", bed="B09")]) is None


def test_table_shows_offline_stale_progress_and_alarms() -> None:
    rows = [
        BedRow(ward="W7", bed="B01", online=False),
        BedRow(ward="W7", bed="B02", online=True, stale=True),
        BedRow(
            ward="W7",
            bed="B03",
            online=True,
            session_state="running",
            running=True,
            delivered_ul=1250,
            cap_ul=2500,
            flow_ul_min=300,
            link_quality_pct=91,
            alarms=[alarm("DRY_CUP", "high", 0)],
            gaps=2,
            duplicates=1,
            unrecoverable=1,
        ),
    ]
    console = Console(record=True, width=160, color_system=None)
    console.print(render_ward(rows, title="Ward W7"))
    text = console.export_text()
    assert "OFFLINE" in text
    assert "NO DATA" in text
    assert "1.25 mL / 2.50 mL" in text
    assert "4:10" in text  # 1250 uL left at 300 uL/min
    assert "DRY_CUP" in text
    assert "gaps 2 dup 1 lost 1" in text


@pytest.mark.slow
async def test_json_mode_prints_one_event_per_line(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    publisher = OutboxPublisher(
        settings=settings_for(mosquitto_broker), identity=IDENTITY, outbox=outbox
    )
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "controller.cli",
        "--log-level",
        "error",
        "monitor",
        "--broker",
        mosquitto_broker.url,
        "--ward",
        "W7",
        "--json",
        "--duration-s",
        "2.5",
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await publisher.wait_connected()
        # The monitor has subscribed once it prints the retained presence (its start-up
        # takes over a second on a loaded machine: no fixed sleep).
        assert child.stdout is not None
        first = await asyncio.wait_for(child.stdout.readline(), timeout=20)
        seqs = [outbox.append(telemetry(n)) for n in range(3)]
        publisher.notify()
        await wait_until(lambda: outbox.count() == 0, timeout_s=5, what="drain")
        out, err = await asyncio.wait_for(child.communicate(), timeout=20)
        publisher.request_stop()
    assert child.returncode == 0, err.decode()
    events = [json.loads(line) for line in (first + out).decode().splitlines()]
    telemetry_events = [e for e in events if e["event"] == "telemetry"]
    assert [e["seq"] for e in telemetry_events] == seqs
    assert {e["bed"] for e in telemetry_events} == {"B03"}
    assert any(e["event"] == "presence" and e["online"] for e in events)
