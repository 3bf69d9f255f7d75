"""Alarm acknowledgements are signed commands (docs/security.md C25): an unsigned
`cmd/ack` from anyone on the broker is ignored and audited; a signed `alarm.ack`
acknowledges the alarm in the name of the person it carries. Real Mosquitto, the
simulator on a real pty, the service in this process."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from controller.security import AlarmAckBody, CommandName
from controller.telemetry import BedTopics, encode_alarm_ack

from .test_command_flood import _audit_rows, _wait_for
from .test_remote_commands import BED, DEVICE, WARD, Keys, bed, signed
from .test_service_pty import wait_status

ALARM = "device_head_disconnected"


def _alarm(status: dict[str, object]) -> dict[str, object] | None:
    alarms = status.get("alarms")
    assert isinstance(alarms, list)
    found = [a for a in alarms if a["code"] == ALARM]
    return found[0] if found else None


async def test_unsigned_ack_is_ignored_and_audited_signed_ack_names_the_person(
    tmp_path: Path,
) -> None:
    keys = Keys()
    async with bed(tmp_path, keys) as b:
        b.sim.apply(lambda m, now: m.set_condition("head_disconnected", True, now_ms=now))
        await wait_status(b.config, lambda s: _alarm(s) is not None, 5)

        # "mallory", dated 2001, on the provisional unsigned topic.
        topic = BedTopics(root="nebuliser/v1", ward=WARD, bed=BED).cmd_ack
        forged = encode_alarm_ack(
            command_id="mallory-1",
            sender="mallory",
            device_id=DEVICE,
            alarm_code=ALARM,
            utc=datetime(2001, 1, 1, tzinfo=UTC),
        )
        await b.station.publish(topic, forged)

        def ignored_row() -> list[dict[str, object]]:
            return [
                body
                for _, kind, body in _audit_rows(b.config, -1)
                if kind == "command" and body.get("code") == "unsigned_ack"
            ]

        [row] = await _wait_for(ignored_row, 5, "the audit row of the ignored unsigned ack")
        assert row["claimed_sender_id"] == "mallory"
        assert row["result"]["status"] == "refused"
        status = await wait_status(b.config, lambda s: True, 1)
        alarm = _alarm(status)
        assert alarm is not None
        assert alarm["acknowledged_by"] is None, alarm

        body = AlarmAckBody(alarm_code=ALARM, acknowledged_by="nurse.kim")
        reply = await b.station.command(signed(keys.ward, CommandName.ALARM_ACK, body, counter=1))
        assert reply["status"] == "accepted", reply
        assert reply["acknowledged_by"] == "nurse.kim"
        status = await wait_status(
            b.config, lambda s: (_alarm(s) or {}).get("acknowledged_by") is not None, 5
        )
        assert (_alarm(status) or {})["acknowledged_by"] == "nurse.kim"

        def tallied() -> list[dict[str, object]]:
            return [
                body
                for _, kind, body in _audit_rows(b.config, -1)
                if kind == "command_tally" and body["reason"] == "unsigned_ack"
            ]

        [tally] = await _wait_for(tallied, 5, "the tally of the unsigned ack")
        assert tally["topic"] == topic
        assert tally["count"] == 1
        assert tally["recorded_individually"] == 1
