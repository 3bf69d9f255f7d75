"""Hostile command payloads: never raises, always a refusal with a reason, and never
accepted without a valid signature. (What a refusal costs in CPU is measured by
bench/command_verify.py, not here: timed unit tests are noise on a loaded machine.)"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.security import (
    Accepted,
    CommandName,
    RefusalCode,
    Refused,
    SenderRegistry,
    SqliteCounterStore,
    StopBody,
    canonical_json,
    verify_command,
)
from tests.security.conftest import DEVICE_ID, NOW, Keys, make_command

json_leaf = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
)
json_value = st.recursive(
    json_leaf,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=25,
)
ENVELOPE_KEYS = [
    "v",
    "device_id",
    "sender_id",
    "command_id",
    "counter",
    "issued_at_ms",
    "expires_at_ms",
    "command",
    "body",
    "signature",
]


def _check(raw: bytes, registry: SenderRegistry, counters: SqliteCounterStore) -> Refused:
    outcome = verify_command(
        raw, retained=False, now=NOW, device_id=DEVICE_ID, registry=registry, counters=counters
    )
    assert isinstance(outcome, Refused), f"accepted without a valid signature: {raw[:200]!r}"
    assert outcome.reason
    assert outcome.code.value
    return outcome


_fuzz = settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@_fuzz
@given(raw=st.binary(max_size=2048))
def test_random_bytes_are_refused(
    raw: bytes, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    _check(raw, registry, counters)


@_fuzz
@given(value=json_value)
def test_arbitrary_json_is_refused(
    value: object, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    _check(json.dumps(value).encode(), registry, counters)


@_fuzz
@given(
    overrides=st.dictionaries(st.sampled_from(ENVELOPE_KEYS), json_value, min_size=1, max_size=4),
    drop=st.lists(st.sampled_from(ENVELOPE_KEYS), max_size=2),
)
def test_envelopes_with_hostile_values_are_refused(
    keys: Keys,
    registry: SenderRegistry,
    counters: SqliteCounterStore,
    overrides: dict[str, object],
    drop: list[str],
) -> None:
    envelope = json.loads(make_command(keys.ward, command=CommandName.STOP, body=StopBody()))
    changed = False
    for key, value in overrides.items():
        changed |= envelope[key] != value
        envelope[key] = value
    for key in drop:
        envelope.pop(key, None)
    if not changed and not drop:
        return
    _check(json.dumps(envelope).encode(), registry, counters)


@_fuzz
@given(depth=st.integers(min_value=9, max_value=20000), opener=st.sampled_from(["[", '{"a":']))
def test_deep_nesting_is_refused_by_the_pre_scan(
    depth: int, opener: str, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    # Refused by the size limit or the depth pre-scan, before any JSON parser recurses.
    assert _check(raw, registry, counters).code in {
        RefusalCode.TOO_LARGE,
        RefusalCode.TOO_DEEPLY_NESTED,
    }


@_fuzz
@given(size=st.integers(min_value=16385, max_value=10_000_000))
def test_huge_payloads_are_refused_by_size(
    size: int, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    assert _check(b"7" * size, registry, counters).code.value == "too_large"


@_fuzz
@given(flip=st.integers(min_value=0, max_value=10_000), bit=st.integers(min_value=0, max_value=7))
def test_any_single_bit_flip_of_a_signed_command_is_refused(
    keys: Keys, registry: SenderRegistry, tmp_path: Path, flip: int, bit: int
) -> None:
    raw = bytearray(make_command(keys.ward, command=CommandName.STOP, body=StopBody(reason="r")))
    raw[flip % len(raw)] ^= 1 << bit
    store = SqliteCounterStore(path=tmp_path / f"c-{uuid.uuid4().hex}.sqlite3")
    try:
        _check(bytes(raw), registry, store)
    finally:
        store.close()


def test_the_unmodified_command_is_accepted_so_the_fuzzers_test_something(
    keys: Keys, registry: SenderRegistry, counters: SqliteCounterStore
) -> None:
    raw = make_command(keys.ward, command=CommandName.STOP, body=StopBody(reason="r"))
    outcome = verify_command(
        raw,
        retained=False,
        now=NOW + timedelta(seconds=1),
        device_id=DEVICE_ID,
        registry=registry,
        counters=counters,
    )
    assert isinstance(outcome, Accepted)
    assert canonical_json(json.loads(raw)) == raw
