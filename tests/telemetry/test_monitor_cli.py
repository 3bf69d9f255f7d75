"""`nebuliser monitor`: URL parsing, the rendered table, the `a` key's choice, and
`--json` against a real broker in a real subprocess."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from controller.cli import build_parser
from controller.cli._monitor_screen import ack_choices, layout_page, render_rows
from controller.cli.monitor import _LiveView, _read_keys, mqtt_settings, run_live
from controller.telemetry import (
    ActiveAlarm,
    BedRow,
    DeviceIdentity,
    MqttSettings,
    OutboxPublisher,
    WardModel,
    WardMonitor,
)
from tests.support.mosquitto import MosquittoBroker
from tests.support.outbox import LedgerBackedOutbox
from tests.telemetry.helpers import IDENTITY, ROOT, settings_for, telemetry
from tests.telemetry.test_publisher import wait_until

REPO = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_monitor_and_station_take_the_one_broker_convention(tmp_path: Path) -> None:
    """`--broker mqtt(s)://` with `--tls-ca/--tls-cert/--tls-key`, as every command."""
    parser = build_parser()
    args = parser.parse_args(["monitor", "--broker", "mqtt://10.0.0.5:1884"])
    settings = mqtt_settings(args, client_id="m")
    assert (settings.host, settings.port, settings.tls) == ("10.0.0.5", 1884, None)
    ca = tmp_path / "ca.pem"
    ca.write_text("not read here", encoding="utf-8")
    args = parser.parse_args(["station", "--broker", "mqtts://broker.ward", "--tls-ca", str(ca)])
    settings = mqtt_settings(args, client_id="s")
    assert (settings.host, settings.port) == ("broker.ward", 8883)
    assert settings.tls is not None
    assert settings.tls.ca_file == ca
    with pytest.raises(ValueError, match="--tls-ca"):
        mqtt_settings(parser.parse_args(["monitor", "--broker", "mqtts://b"]), client_id="m")
    with pytest.raises(ValueError, match="mqtt://HOST"):
        mqtt_settings(parser.parse_args(["monitor", "--broker", "localhost:1883"]), client_id="m")


def alarm(code: str, priority: str, minutes: int, *, acked: bool = False) -> ActiveAlarm:
    return ActiveAlarm.model_validate(
        {
            "alarm_code": code,
            "priority": priority,
            "acknowledged": acked,
            "raised_utc": T0 + timedelta(minutes=minutes),
            "text": f"text of {code}",
        }
    )


def test_a_asks_which_alarm_most_urgent_bed_first() -> None:
    rows = [
        BedRow(
            ward="W7",
            bed="B01",
            device_id="d1",
            alarms=[alarm("LOW_RES", "low", 0), alarm("OLD_HIGH", "high", 0, acked=True)],
        ),
        BedRow(ward="W7", bed="B02", device_id="d2", alarms=[alarm("EARLY", "high", 1)]),
    ]
    choices = ack_choices(rows)
    assert [(c.key, c.request.bed, c.request.alarm_code) for c in choices] == [
        ("1", "B02", "EARLY"),
        ("2", "B01", "LOW_RES"),
    ]
    assert choices[0].label == "1) B02 HIGH: text of EARLY"
    assert ack_choices([BedRow(ward="W7", bed="B09")]) == []


def test_live_view_keys_page_and_ask_before_acknowledging() -> None:
    monitor = WardMonitor(
        settings=MqttSettings(client_id="t"), model=WardModel(root_topic=ROOT), sender="s"
    )
    rows = [BedRow(ward="W7", bed="B02", device_id="d2", alarms=[alarm("EARLY", "high", 1)])]
    unsigned = _LiveView(monitor=monitor, can_sign=False)
    unsigned.key("a", rows)
    assert unsigned.choices is None
    assert "--key" in unsigned.status, "no key: says what it needs, sends nothing"
    view = _LiveView(monitor=monitor, can_sign=True)
    view.key("n", rows)
    view.key("n", rows)
    view.key("p", rows)
    assert view.page == 1
    view.key("a", rows)
    assert view.choices is not None
    assert "1) B02 HIGH" in view.footer(layout_page(rows, height=30, page=0), broker="b:1")
    assert monitor.acks_sent == 0
    view.key("1", rows)
    assert not view.choices  # mypy narrowed `choices` above; the key press resets it
    assert view.status.startswith("sent signed acknowledgement: B02")
    assert monitor.pending_acks() == 1
    view.key("q", rows)
    assert view.quit


def test_pages_sort_by_urgency_and_fit_the_terminal() -> None:
    rows = [BedRow(ward="W7", bed=f"B{n:03d}", online=True, last_seen_s=0.0) for n in range(100)]
    rows[57].alarms = [alarm("DRY_CUP", "high", 0)]
    first = layout_page(rows, height=24, page=0)
    assert first.rows[0].bed == "B057", "the bed in alarm is on top, not below the fold"
    assert len(first.rows) == 24 - 4
    assert first.count == 5
    last = layout_page(rows, height=24, page=99)
    assert (last.number, len(last.rows)) == (4, 100 - 4 * 20)


def test_narrow_terminal_keeps_the_bed_and_the_alarm_message() -> None:
    rows = [
        BedRow(
            ward="demo-ward",
            bed="bed-01",
            online=True,
            session_state="fault",
            last_seen_s=95.0,
            alarms=[
                ActiveAlarm.model_validate(
                    {
                        "alarm_code": "device_head_disconnected",
                        "priority": "medium",
                        "text": "Nebuliser head disconnected",
                        "raised_utc": T0,
                    }
                )
            ],
        )
    ]
    console = Console(record=True, width=80, color_system=None)
    console.print(render_rows(rows, now_s=100.0, width=80, title="Ward"))
    text = console.export_text()
    assert "demo-ward/bed-01" in text, "the bed column is never truncated"
    assert "!! Nebuliser head" in text
    assert "device_head" not in text, "messages, not codes"
    assert "0:05 ago" in text, "the data age on every row"
    assert max(len(line) for line in text.splitlines()) <= 80


def test_table_shows_offline_stale_progress_and_alarms() -> None:
    rows = [
        BedRow(ward="W7", bed="B01", online=False, offline_since_s=40.0, delivered_ul=999),
        BedRow(ward="W7", bed="B02", online=True, stale=True, delivered_ul=777, cap_ul=2500),
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
            last_seen_s=99.0,
            alarms=[alarm("DRY_CUP", "high", 0)],
            gaps=2,
            duplicates=1,
            unrecoverable=1,
        ),
    ]
    # Wide enough for every column (breathing and dose came in with issue 19).
    console = Console(record=True, width=220, color_system=None)
    console.print(render_rows(rows, now_s=100.0, width=220, title="Ward W7"))
    text = console.export_text()
    assert "OFFLINE 1:00" in text, "offline, and for how long"
    assert "NO DATA" in text
    assert "0.78 mL" not in text, "a silent bed's last figures are hidden"
    assert "0.99 mL" not in text
    assert "1.25 mL / 2.50 mL" in text
    assert "4:10" in text  # 1250 uL left at 300 uL/min
    assert "text of DRY_CUP" in text
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
        "60",  # an upper bound only: the test stops the child once it has seen enough
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert child.stdout is not None
    assert child.stderr is not None
    stdout, stderr = child.stdout, child.stderr
    events: list[dict[str, Any]] = []

    async def read_until(condition: Callable[[], bool], what: str) -> None:
        # Observable conditions with a deadline: no guess at how long the child takes.
        async with asyncio.timeout(30):
            while not condition():
                line = await stdout.readline()
                if not line:
                    detail = (await stderr.read()).decode()
                    raise AssertionError(f"monitor exited before {what}: {detail}")
                events.append(json.loads(line))

    def telemetry_events() -> list[dict[str, Any]]:
        return [e for e in events if e["event"] == "telemetry"]

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(publisher.run())
            await publisher.wait_connected()
            # The retained presence reaches the monitor only once it has subscribed.
            await read_until(
                lambda: any(e["event"] == "presence" and e["online"] for e in events),
                "the retained presence (subscription)",
            )
            seqs = [outbox.append(telemetry(n)) for n in range(3)]
            publisher.notify()
            await read_until(lambda: len(telemetry_events()) >= 3, "three telemetry events")
            publisher.request_stop()
        child.send_signal(signal.SIGINT)
        await asyncio.wait_for(child.wait(), timeout=20)
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
    assert child.returncode == 0
    assert [e["seq"] for e in telemetry_events()] == seqs
    assert {e["bed"] for e in telemetry_events()} == {"B03"}


@pytest.mark.slow
async def test_live_view_renders_at_a_bounded_rate_not_per_message(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    # 600 messages from 200 beds arrive within the run; the view still draws at most
    # one frame per render interval, one page only, and a frame shows the newest data.
    outbox = LedgerBackedOutbox(path=tmp_path / "ledger.sqlite3")
    publisher = OutboxPublisher(
        settings=settings_for(mosquitto_broker), identity=IDENTITY, outbox=outbox
    )
    frames: list[list[BedRow]] = []
    model = WardModel(root_topic=ROOT, message_events=False)
    console = Console(file=io.StringIO(), width=120, height=40, force_terminal=True)
    run_s, interval_s = 4.0, 0.25
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(publisher.run())
        await publisher.wait_connected()
        live = tasks.create_task(
            run_live(
                settings_for(mosquitto_broker, client_id="live-view"),
                model,
                "test",
                "W7",
                run_s,
                console=console,
                render_interval_s=interval_s,
                on_render=lambda rows, _at: frames.append(list(rows)),
                keyboard=False,
            )
        )
        identities = [
            DeviceIdentity(device_id=f"MN1-{n:04d}", ward="W7", bed=f"B{n:03d}", boot_id="b")
            for n in range(200)
        ]
        for round_ in range(3):
            for identity in identities:
                outbox.append(telemetry(round_, identity=identity))
            publisher.notify()
        await wait_until(lambda: outbox.count() == 0, timeout_s=10, what="drain")
        await live
        publisher.request_stop()
    assert len(frames) <= run_s / interval_s + 2, f"{len(frames)} frames: drawn per message?"
    assert len(frames[-1]) == 40 - 4, "one terminal page, not the whole ward"
    beds = [[row for row in frame if row.device_id != IDENTITY.device_id] for frame in frames]
    assert any(frame and all(row.delivered_ul == 2 for row in frame) for frame in beds), (
        "no frame showed the newest data"
    )


async def test_every_key_of_a_burst_is_seen() -> None:
    # Two keys typed fast arrive in one read; both must reach the view.
    read_end, write_end = os.pipe()
    try:
        os.write(write_end, b"na")
        keys: asyncio.Queue[str] = asyncio.Queue()
        _read_keys(read_end, keys)
        assert [keys.get_nowait(), keys.get_nowait()] == ["n", "a"]
    finally:
        os.close(read_end)
        os.close(write_end)
