"""verify_command: every refusal reason, acceptance per role, replay across restarts."""

from __future__ import annotations

import base64
import json
from datetime import timedelta
from pathlib import Path

import pytest

from controller.security import (
    Accepted,
    AlarmAckBody,
    CommandLimits,
    CommandName,
    PrescriptionUpdateBody,
    RefusalCode,
    Refused,
    RequestStartBody,
    SenderRegistry,
    SqliteCounterStore,
    StopBody,
    build_reply,
    canonical_json,
    sign_prescription_bytes,
    signing_input,
    verify_command,
)
from controller.security import VerifyOutcome as Outcome
from tests.security.conftest import DEVICE_ID, NOW, NOW_MS, Keys, make_command


def _verify(
    raw: bytes,
    registry: SenderRegistry,
    counters: SqliteCounterStore,
    *,
    retained: bool = False,
    now_offset_s: float = 0.0,
    limits: CommandLimits | None = None,
) -> Outcome:
    return verify_command(
        raw,
        retained=retained,
        now=NOW + timedelta(seconds=now_offset_s),
        device_id=DEVICE_ID,
        registry=registry,
        counters=counters,
        limits=limits,
    )


def _refusal(outcome: Outcome) -> RefusalCode:
    assert isinstance(outcome, Refused), outcome
    assert outcome.reason  # a human sentence for every refusal
    return outcome.code


def _resign(envelope: dict[str, object], keys: Keys) -> bytes:
    unsigned = {k: v for k, v in envelope.items() if k != "signature"}
    sig = keys.ward.sign(signing_input(unsigned))
    return canonical_json({**unsigned, "signature": base64.b64encode(sig).decode()})


def _stop(keys: Keys, **kwargs: object) -> bytes:
    return make_command(keys.ward, command=CommandName.STOP, body=StopBody(reason="x"), **kwargs)  # type: ignore[arg-type]


def test_valid_stop_from_ward_station_is_accepted(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    outcome = _verify(_stop(keys, command_id="c-1"), registry, counters)
    assert isinstance(outcome, Accepted)
    assert outcome.command is CommandName.STOP
    assert outcome.sender_id == "ward-3west"
    assert outcome.command_id == "c-1"
    assert counters.last_counter("ward-3west") == 1  # committed before we got the result


@pytest.mark.parametrize(
    ("key_name", "sender", "command", "body"),
    [
        (
            "ward",
            "ward-3west",
            CommandName.ALARM_ACK,
            AlarmAckBody(alarm_code="dry_cup", acknowledged_by="nurse.kim"),
        ),
        ("ward", "ward-3west", CommandName.SESSION_REQUEST_START, RequestStartBody()),
        ("clinician", "dr-jones", CommandName.STOP, StopBody()),
        ("clinician", "dr-jones", CommandName.SESSION_REQUEST_START, RequestStartBody()),
    ],
)
def test_permitted_role_commands_are_accepted(
    keys: Keys,
    registry: SenderRegistry,
    counters: SqliteCounterStore,
    key_name: str,
    sender: str,
    command: CommandName,
    body: StopBody,
) -> None:
    raw = make_command(getattr(keys, key_name), sender_id=sender, command=command, body=body)
    assert isinstance(_verify(raw, registry, counters), Accepted)


def test_pharmacy_prescription_update_is_accepted_and_ward_station_is_not(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    toml = 'drug = "salbutamol"\nvolume_ul = 2500\n'
    rx_sig = sign_prescription_bytes(toml.encode(), key=keys.pharmacy, key_id="pharmacy-1")
    body = PrescriptionUpdateBody(
        prescription_toml=toml,
        pharmacy_key_id=rx_sig.key_id,
        prescription_sha256=rx_sig.sha256,
        prescription_signature=rx_sig.signature,
    )
    raw = make_command(
        keys.pharmacy, sender_id="pharmacy-1", command=CommandName.PRESCRIPTION_UPDATE, body=body
    )
    assert isinstance(_verify(raw, registry, counters), Accepted)
    by_ward = make_command(keys.ward, command=CommandName.PRESCRIPTION_UPDATE, body=body)
    assert _refusal(_verify(by_ward, registry, counters)) is RefusalCode.ROLE_NOT_PERMITTED


def test_prescription_signed_by_a_non_pharmacy_key_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    toml = "volume_ul = 99999\n"
    forged = sign_prescription_bytes(toml.encode(), key=keys.stranger, key_id="pharmacy-1")
    body = PrescriptionUpdateBody(
        prescription_toml=toml,
        pharmacy_key_id="pharmacy-1",
        prescription_sha256=forged.sha256,
        prescription_signature=forged.signature,
    )
    raw = make_command(
        keys.pharmacy, sender_id="pharmacy-1", command=CommandName.PRESCRIPTION_UPDATE, body=body
    )
    assert _refusal(_verify(raw, registry, counters)) is RefusalCode.BAD_PRESCRIPTION_SIGNATURE


def test_pharmacy_may_not_stop(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = make_command(
        keys.pharmacy, sender_id="pharmacy-1", command=CommandName.STOP, body=StopBody()
    )
    assert _refusal(_verify(raw, registry, counters)) is RefusalCode.ROLE_NOT_PERMITTED
    assert counters.last_counter("pharmacy-1") is None  # refused commands consume nothing


def test_replayed_envelope_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = _stop(keys, counter=5)
    assert isinstance(_verify(raw, registry, counters), Accepted)
    assert _refusal(_verify(raw, registry, counters)) is RefusalCode.REPLAYED_COUNTER
    older = _stop(keys, counter=4)
    assert _refusal(_verify(older, registry, counters)) is RefusalCode.REPLAYED_COUNTER
    assert isinstance(_verify(_stop(keys, counter=6), registry, counters), Accepted)


def test_replay_after_controller_restart_is_refused(
    keys: Keys, registry: SenderRegistry, tmp_path: Path
) -> None:
    raw = _stop(keys, counter=7)
    first = SqliteCounterStore.in_data_dir(tmp_path)
    assert isinstance(_verify(raw, registry, first), Accepted)
    first.close()
    restarted = SqliteCounterStore.in_data_dir(tmp_path)
    try:
        assert _refusal(_verify(raw, registry, restarted)) is RefusalCode.REPLAYED_COUNTER
    finally:
        restarted.close()
    assert (tmp_path / "security.sqlite3").exists()


def test_reused_command_id_with_higher_counter_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    assert isinstance(
        _verify(_stop(keys, counter=1, command_id="dup"), registry, counters), Accepted
    )
    again = _stop(keys, counter=2, command_id="dup")
    assert _refusal(_verify(again, registry, counters)) is RefusalCode.DUPLICATE_COMMAND_ID


def test_retained_message_is_never_acted_on(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    outcome = _verify(_stop(keys), registry, counters, retained=True)
    assert _refusal(outcome) is RefusalCode.RETAINED
    assert counters.last_counter("ward-3west") is None


def test_unknown_sender_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = make_command(
        keys.stranger, sender_id="intruder", command=CommandName.STOP, body=StopBody()
    )
    outcome = _verify(raw, registry, counters)
    assert _refusal(outcome) is RefusalCode.UNKNOWN_SENDER
    assert isinstance(outcome, Refused)
    assert outcome.claimed_sender_id == "intruder"


def test_known_sender_id_with_wrong_key_is_bad_signature(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = make_command(keys.stranger, command=CommandName.STOP, body=StopBody())
    assert _refusal(_verify(raw, registry, counters)) is RefusalCode.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "neb-0002"),
        ("counter", 999),
        ("expires_at_ms", NOW_MS + 59_000),
        ("command", "alarm.ack"),
        ("body", {"reason": "changed"}),
        ("sender_id", "dr-jones"),
    ],
)
def test_any_field_changed_after_signing_breaks_the_signature(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore, field: str, value: object
) -> None:
    envelope = json.loads(_stop(keys))
    envelope[field] = value
    outcome = _verify(canonical_json(envelope), registry, counters)
    assert _refusal(outcome) in {RefusalCode.BAD_SIGNATURE, RefusalCode.INVALID_BODY}


def test_wrong_device_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = _stop(keys, device_id="neb-9999")
    assert _refusal(_verify(raw, registry, counters)) is RefusalCode.WRONG_DEVICE


def test_late_delivery_is_refused_after_expiry_plus_skew(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = _stop(keys, validity_s=30)
    limits = CommandLimits(clock_skew_s=5)
    assert _refusal(_verify(raw, registry, counters, now_offset_s=35.001, limits=limits)) is (
        RefusalCode.EXPIRED
    )
    assert isinstance(_verify(raw, registry, counters, now_offset_s=35.0, limits=limits), Accepted)


def test_issued_in_the_future_beyond_skew_is_not_yet_valid(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = _stop(keys, issued_at_ms=NOW_MS + 6000)
    outcome = _verify(raw, registry, counters, limits=CommandLimits(clock_skew_s=5))
    assert _refusal(outcome) is RefusalCode.NOT_YET_VALID


def test_validity_window_longer_than_limit_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    envelope = json.loads(_stop(keys))
    envelope["expires_at_ms"] = envelope["issued_at_ms"] + 61_000
    outcome = _verify(_resign(envelope, keys), registry, counters)
    assert _refusal(outcome) is RefusalCode.VALIDITY_TOO_LONG
    short = _stop(keys, validity_s=20)
    assert (
        _refusal(_verify(short, registry, counters, limits=CommandLimits(max_validity_s=10)))
        is RefusalCode.VALIDITY_TOO_LONG
    )


def test_too_large_payload_is_refused_before_parsing(
    registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = b"{" + b" " * 20000  # would be malformed too; size must win
    assert _refusal(_verify(raw, registry, counters)) is RefusalCode.TOO_LARGE


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"not json", RefusalCode.MALFORMED_JSON),
        (b"\xff\xfe", RefusalCode.MALFORMED_JSON),
        (b'{"a": NaN}', RefusalCode.MALFORMED_JSON),
        (b'{"a": 1.5}', RefusalCode.MALFORMED_JSON),
        (b'{"v": 1, "v": 1}', RefusalCode.MALFORMED_JSON),
        (b"[" * 5000 + b"]" * 5000, RefusalCode.TOO_DEEPLY_NESTED),
        (b"[1, 2]", RefusalCode.INVALID_ENVELOPE),
        (b'{"v": 2}', RefusalCode.UNSUPPORTED_VERSION),
        (b'{"v": true}', RefusalCode.INVALID_ENVELOPE),
        (b'{"a": ' + b"9" * 5000 + b"}", RefusalCode.MALFORMED_JSON),
    ],
)
def test_malformed_payloads_are_refused_with_a_code(
    registry: SenderRegistry, counters: SqliteCounterStore, raw: bytes, code: RefusalCode
) -> None:
    assert _refusal(_verify(raw, registry, counters)) is code


@pytest.mark.parametrize(
    ("field", "value", "code"),
    [
        ("counter", "1", RefusalCode.INVALID_ENVELOPE),
        ("counter", True, RefusalCode.INVALID_ENVELOPE),
        ("counter", 0, RefusalCode.INVALID_ENVELOPE),
        ("body", [], RefusalCode.INVALID_ENVELOPE),
        ("command", "dose.set", RefusalCode.UNKNOWN_COMMAND),
        ("body", {"reason": 5}, RefusalCode.INVALID_BODY),
        ("body", {"extra": "x"}, RefusalCode.INVALID_BODY),
    ],
)
def test_wrong_types_are_refused(
    keys: Keys,
    registry: SenderRegistry,
    counters: SqliteCounterStore,
    field: str,
    value: object,
    code: RefusalCode,
) -> None:
    envelope = json.loads(_stop(keys))
    envelope[field] = value
    assert _refusal(_verify(_resign(envelope, keys), registry, counters)) is code


def test_reply_payload_carries_status_and_reason(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    accepted = _verify(_stop(keys, command_id="c-9"), registry, counters)
    reply = json.loads(build_reply(accepted, device_id=DEVICE_ID, now=NOW))
    assert reply["status"] == "accepted"
    assert reply["command_id"] == "c-9"
    refused = _verify(_stop(keys, command_id="c-9"), registry, counters)
    reply = json.loads(build_reply(refused, device_id=DEVICE_ID, now=NOW))
    assert reply["status"] == "refused"
    assert reply["reason_code"] == "replayed_counter"
    assert reply["time_utc"].endswith("+00:00")


def test_naive_now_is_a_programming_error(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_command(
            _stop(keys),
            retained=False,
            now=NOW.replace(tzinfo=None),
            device_id=DEVICE_ID,
            registry=registry,
            counters=counters,
        )


def test_non_canonical_base64_signature_spelling_is_refused(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    # Found by the bit-flip fuzzer: the last base64 character before "==" carries
    # 4 unused bits; a lenient decoder maps several spellings to one signature.
    envelope = json.loads(_stop(keys))
    sig: str = envelope["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(sig[-3])
    envelope["signature"] = sig[:-3] + alphabet[last ^ 1] + "=="
    assert base64.b64decode(envelope["signature"]) == base64.b64decode(sig)
    outcome = _verify(canonical_json(envelope), registry, counters)
    assert _refusal(outcome) is RefusalCode.BAD_SIGNATURE


def test_counter_store_failure_fails_closed(
    keys: Keys, registry: SenderRegistry, tmp_path: Path
) -> None:
    store = SqliteCounterStore(path=tmp_path / "broken.sqlite3")
    store.close()  # any SQLite error on commit must refuse, never accept
    assert _refusal(_verify(_stop(keys), registry, store)) is RefusalCode.COUNTER_STORE_FAILED
