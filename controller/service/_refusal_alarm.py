"""A refused ledger's HIGH `ledger_discontinuity` alarm over MQTT, before `serve` exits 4.

When the start-up continuity check refuses the ledger (controller.ledger,
`open_checked`), the alarm is already in the audit log. With `[mqtt]` it is also
published, so that the ward station shows the bed's alarm and not just a bed that
never came online: an `alarm` (`raised`) and the retained `alarms/active` holding it,
QoS 1, in the usual schemas, on one short-lived connection. The whole attempt
(connect, both PUBACKs, disconnect) is bounded by `REFUSAL_PUBLISH_BOUND_S`: a broker
that is down or silent never holds up the exit by more, and the log line says what
happened.

Sequence numbers. Device seqs normally come from the ledger's outbox, which is
exactly what cannot be trusted here. These two messages take theirs from a source
outside the ledger file: one more than the highest seq this bed is known to have
used, i.e. the larger of the sent-message archive's newest seq
(`telemetry-sent.sqlite3`, every message the broker acknowledged) and the small seq
file `mqtt-seq.json` beside it, which records the seqs taken here (written atomically
before publishing). The next ledger that serves (restored or new) continues above
both (`open_checked(seq_floor=...)`), so a seq is never used twice. If the broker
could not be reached at all, the seqs are given back (nothing can have been
delivered) and the monitors see no gap.

Clearing it. The seq file also says whether the alarm may be on the ward
(`alarm_on_ward`). The next start-up whose ledger passes the check (after `ledger
restore` or `init`) queues, through the ledger's outbox, the alarm `cleared` and an
empty `alarms/active` (at that moment nothing else is active: the supervisor has not
run yet; what it raises later is published after), records the clearance in the
audit log, and resets the flag. Otherwise the station would keep showing a HIGH alarm
that the controller no longer has and nobody could acknowledge.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import aiomqtt

from controller.alarms import AlarmCode
from controller.config import NebuliserConfig
from controller.dosing import Instant
from controller.ledger import Ledger, LedgerDiscontinuityError, LedgerLocation, audit_record
from controller.logging import get_logger
from controller.telemetry import (
    OutboxEntry,
    SentArchive,
    ledger_message,
    mqtt_client,
    outbox_entry,
)

from ._telemetry import PROCESS_BOOT_ID, SENT_ARCHIVE_FILE_NAME, device_identity

__all__ = [
    "REFUSAL_PUBLISH_BOUND_S",
    "SEQ_FILE_NAME",
    "RefusalPublication",
    "clear_refusal_on_ward",
    "device_seq_floor",
    "publish_refusal_alarm",
]

_log = get_logger(__name__)

#: The longest a refused start-up waits for the broker before exiting 4 anyway.
REFUSAL_PUBLISH_BOUND_S: Final = 3.0
#: Seqs used outside the ledger (`{"last_seq": N}`), in the data directory.
SEQ_FILE_NAME: Final = "mqtt-seq.json"
_TEXT_MAX = 500


def _archive_max_seq(data_dir: Path) -> int:
    path = data_dir / SENT_ARCHIVE_FILE_NAME
    if not path.exists():
        return 0
    try:
        archive = SentArchive(path=path, read_only=True)
    except sqlite3.Error:
        return 0
    try:
        return archive.max_seq()
    except sqlite3.Error:
        return 0
    finally:
        archive.close()


def _seq_file(data_dir: Path) -> tuple[int, bool]:
    """(last seq used outside the ledger, whether the refusal alarm may be on the ward)."""
    try:
        body = json.loads((data_dir / SEQ_FILE_NAME).read_text(encoding="utf-8"))
        return max(0, int(body["last_seq"])), bool(body.get("alarm_on_ward", False))
    except (OSError, ValueError, KeyError, TypeError):
        return 0, False


def _seq_file_value(data_dir: Path) -> int:
    return _seq_file(data_dir)[0]


def _write_seq_file(data_dir: Path, last_seq: int, *, alarm_on_ward: bool = False) -> None:
    """Atomically replace the seq file (temp, fsync, rename, fsync of the directory)."""
    final = data_dir / SEQ_FILE_NAME
    temp = data_dir / f".{SEQ_FILE_NAME}.tmp"
    with temp.open("w", encoding="utf-8") as handle:
        json.dump({"last_seq": last_seq, "alarm_on_ward": alarm_on_ward}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    temp.replace(final)
    directory = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)


def device_seq_floor(data_dir: Path) -> int:
    """The highest device seq this bed used that the ledger file may not know of."""
    return max(_archive_max_seq(data_dir), _seq_file_value(data_dir))


@dataclass(frozen=True, kw_only=True)
class RefusalPublication:
    """What happened to the refusal alarm: published, or why not."""

    published: bool
    seqs: tuple[int, ...]
    detail: str


def _entries(config: NebuliserConfig, error: LedgerDiscontinuityError) -> list[OutboxEntry]:
    assert config.mqtt is not None
    identity = device_identity(config)
    now = datetime.now(UTC)
    text = f"{error.reason}. {error.action}"[:_TEXT_MAX]
    code, priority = str(AlarmCode.LEDGER_DISCONTINUITY), "high"
    root = config.mqtt.root_topic
    return [
        outbox_entry(
            identity,
            root_topic=root,
            utc=now,
            schema="nebuliser.alarm",
            event="raised",
            alarm_code=code,
            priority=priority,
            text=text,
        ),
        outbox_entry(
            identity,
            root_topic=root,
            utc=now,
            schema="nebuliser.alarms_active",
            alarms=[{"alarm_code": code, "priority": priority, "text": text, "raised_utc": now}],
        ),
    ]


async def publish_refusal_alarm(
    config: NebuliserConfig,
    error: LedgerDiscontinuityError,
    *,
    bound_s: float = REFUSAL_PUBLISH_BOUND_S,
) -> RefusalPublication | None:
    """Publish the refused ledger's HIGH alarm within `bound_s`; None without `[mqtt]`.

    Never raises for a broker problem: the result (and the log line) says what happened.
    """
    settings = config.mqtt
    if settings is None or not error.alarm_raised:
        return None
    data_dir = config.storage.data_dir
    entries = _entries(config, error)
    previous, was_on_ward = _seq_file(data_dir)
    first = device_seq_floor(data_dir) + 1
    seqs = tuple(range(first, first + len(entries)))
    try:
        _write_seq_file(data_dir, seqs[-1], alarm_on_ward=True)
    except OSError as exc:
        detail = f"not published: the seq file {data_dir / SEQ_FILE_NAME} cannot be written ({exc})"
        _log.error("ledger refusal alarm " + detail)
        return RefusalPublication(published=False, seqs=(), detail=detail)
    connected = False
    try:
        async with asyncio.timeout(bound_s):
            async with mqtt_client(settings, client_id=settings.client_id) as client:
                connected = True
                for entry, seq in zip(entries, seqs, strict=True):
                    await client.publish(
                        entry.topic, entry.build(seq), qos=entry.qos, retain=entry.retain
                    )
        result = RefusalPublication(
            published=True, seqs=seqs, detail=f"published to {settings.host}:{settings.port}"
        )
    except (TimeoutError, aiomqtt.MqttError, OSError) as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
        detail = (
            f"NOT published: broker {settings.host}:{settings.port} not reachable within "
            f"{bound_s:g} s ({why}); the alarm is in the audit log"
        )
        if not connected:  # nothing can have reached a subscriber: give the seqs back
            with contextlib.suppress(OSError):
                _write_seq_file(data_dir, previous, alarm_on_ward=was_on_ward)
        result = RefusalPublication(published=False, seqs=seqs if connected else (), detail=detail)
    log = _log.warning if result.published else _log.error
    log(f"ledger refusal alarm {result.detail}", seqs=list(result.seqs))
    return result


def clear_refusal_on_ward(
    config: NebuliserConfig, ledger: Ledger, location: LedgerLocation
) -> bool:
    """After a start-up whose ledger passed the check: clear a published refusal alarm.

    Queues the alarm `cleared` and an empty `alarms/active` in the ledger's outbox
    (seqs above the refusal's: `open_checked(seq_floor=...)`), records the clearance
    in the audit log and resets the seq file's flag. True if there was one to clear.
    """
    data_dir = config.storage.data_dir
    last_seq, on_ward = _seq_file(data_dir)
    if config.mqtt is None or not on_ward:
        return False
    identity = device_identity(config)
    now = datetime.now(UTC)
    code = str(AlarmCode.LEDGER_DISCONTINUITY)
    text = "the dose ledger continues its anchors again (restored or initialised)"
    entries = [
        outbox_entry(
            identity,
            root_topic=config.mqtt.root_topic,
            utc=now,
            schema="nebuliser.alarm",
            event="cleared",
            alarm_code=code,
            priority="high",
            text=text,
        ),
        outbox_entry(
            identity, root_topic=config.mqtt.root_topic, utc=now, schema="nebuliser.alarms_active"
        ),
    ]
    at = Instant(utc=now, boot_id=PROCESS_BOOT_ID, monotonic_ns=time.monotonic_ns())
    ledger.outbox.append_many([ledger_message(entry) for entry in entries], at=at)
    with contextlib.suppress(OSError, sqlite3.Error):
        audit_record(
            location,
            "alarm",
            {"alarm_code": code, "action": "cleared", "priority": "high", "reason": text},
        )
    _write_seq_file(data_dir, last_seq, alarm_on_ward=False)
    _log.info("ledger refusal alarm cleared on the ward")
    return True
