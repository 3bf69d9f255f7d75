"""Fuzzing the two other untrusted inputs (issue 6): configuration files and bytes from
the serial line. No crash, no actuation, bounded time, every rejection with a reason."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from controller.config import ConfigError, load_config
from drivers.mn1 import (
    HostLink,
    MsgType,
    SessionEnd,
    Status,
    decode_frame,
    encode_frame,
)

REPO = Path(__file__).resolve().parents[2]
EXAMPLE: dict[str, Any] = tomllib.loads((REPO / "config" / "example.toml").read_text("utf-8"))

hostile_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=200),
    st.lists(st.integers(), max_size=5),
)


def _toml_value(value: Any) -> str:
    if value is None:
        return '""'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return {float("inf"): "inf", float("-inf"): "-inf"}.get(
            value, "nan" if value != value else repr(value)
        )
    if isinstance(value, str):
        return '"' + value.encode("unicode_escape").decode("ascii").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return str(value)


@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    """The example config with one key per section replaced by a hostile value."""
    lines = []
    for section, table in EXAMPLE.items():
        if not isinstance(table, dict):
            continue
        flat = {k: v for k, v in table.items() if not isinstance(v, dict)}
        victim = draw(st.sampled_from(sorted(flat))) if flat else None
        lines.append(f"[{section}]")
        for key, value in flat.items():
            shown = draw(hostile_scalars) if key == victim else value
            lines.append(f"{key} = {_toml_value(shown)}")
        for sub, subtable in table.items():
            if isinstance(subtable, dict):
                lines.append(f"[{section}.{sub}]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in subtable.items()]
    return "\n".join(lines) + "\n"


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(text=mutated_configs())
def test_hostile_config_values_give_named_errors_or_a_valid_config(
    tmp_path_factory: Any, text: str
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path)
    except ConfigError as error:  # either outcome is fine; a crash is not
        assert error.issues  # noqa: PT017 - both outcomes are valid, so no pytest.raises
        for issue in error.issues:
            assert issue.key
            assert issue.message
    else:
        assert config.prescription is not None


@settings(max_examples=200, deadline=2000)
@given(raw=st.binary(max_size=2000))
def test_arbitrary_file_contents_are_refused_with_a_reason(
    tmp_path_factory: Any, raw: bytes
) -> None:
    path = tmp_path_factory.mktemp("cfg") / "c.toml"
    path.write_bytes(raw)
    try:
        load_config(path)
    except ConfigError as error:  # a random file may also be a valid (default) config
        assert all(issue.message for issue in error.issues)  # noqa: PT017 - see above


device_messages = st.one_of(
    st.builds(
        Status,
        uptime_ms=st.integers(0, 2**32 - 1),
        state=st.sampled_from([0, 1, 2]),
        session_id=st.integers(0, 2**32 - 1),
        delivered_ul=st.integers(0, 2**32 - 1),
        flow_ul_min=st.integers(0, 2**16 - 1),
        reservoir_ul=st.integers(0, 2**16 - 1),
        mesh_temp_cC=st.integers(-(2**15), 2**15 - 1),
        drive_ma=st.integers(0, 2**16 - 1),
        faults=st.integers(0, 2**16 - 1),
        crc_errors=st.integers(0, 2**16 - 1),
        last_stop=st.integers(0, 7),
        confirm_count=st.integers(0, 255),
    ),
    st.builds(
        SessionEnd,
        session_id=st.integers(0, 2**32 - 1),
        delivered_ul=st.integers(0, 2**32 - 1),
        duration_ms=st.integers(0, 2**32 - 1),
        reason=st.integers(1, 7),
    ),
)
chunks = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda m, s: encode_frame(m, seq=s), device_messages, st.integers(0, 255)),
)

#: What the link layer may write on its own: never START or STOP (no actuation).
_LINK_OWN_TYPES = {MsgType.HELLO, MsgType.HEARTBEAT, MsgType.ACK_END}


@settings(max_examples=300, deadline=2000)
@given(stream=st.lists(chunks, max_size=40), step_ms=st.integers(0, 400))
def test_device_side_bytes_never_crash_or_actuate_the_host_link(
    stream: list[bytes], step_ms: int
) -> None:
    link = HostLink()
    now = 0
    link.connection_made(now)
    written = link.take_writes()
    for chunk in stream:
        now += step_ms
        link.receive_data(chunk, now)
        link.handle_timers(now)
        written += link.take_writes()
        link.take_events()
    assert len(link.deframer._buffer) <= 65
    for frame in written:
        assert decode_frame(frame[:-1]).message.TYPE in _LINK_OWN_TYPES
