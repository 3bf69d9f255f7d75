"""Addendum 1.1 in the sans-IO host link: capability discovery, START_GATED, BREATH."""

from __future__ import annotations

import pytest

from drivers.mn1 import (
    CAPS_QUERY_INTERVAL_MS,
    Breath,
    BreathReceived,
    CapabilitiesDiscovered,
    CapabilityMissingError,
    CapBits,
    Caps,
    CapsDiscovery,
    CommandFailed,
    LinkLost,
    LinkNotReadyError,
    NoCapabilities,
    QueryCaps,
    Start,
    StartGated,
)

from .test_host_link import Harness, status

GATED = StartGated(
    session_id=7,
    target_ul=3000,
    max_duration_s=1800,
    output_pct=100,
    gate_pct=80,
    lead_breaths=3,
    apnoea_s=15,
)
START = Start(session_id=7, target_ul=500, max_duration_s=600, output_pct=80)


def caps(ack_seq: int, bits: CapBits = CapBits.BREATH_SENSING | CapBits.BREATH_GATED) -> Caps:
    return Caps(ack_seq=ack_seq, icd_minor=1, caps=bits, trigger_ml_s=50, detect_latency_ms=40)


def discovery(h: Harness) -> CapsDiscovery:
    return h.link.caps_discovery  # a call, so mypy does not narrow across steps


def query_times(h: Harness) -> list[tuple[int, int]]:
    return [(t, f.seq) for t, f in h.sent if isinstance(f.message, QueryCaps)]


def test_version_1_head_three_queries_then_no_capabilities_not_link_loss() -> None:
    h = Harness()
    h.open_and_identify()
    assert discovery(h) is CapsDiscovery.PENDING
    for t in range(0, 1000, 100):
        h.advance_to(t)
        h.device_says(status(10_000 + t))  # the head keeps talking STATUS
    queries = query_times(h)
    assert [t for t, _ in queries] == [0, CAPS_QUERY_INTERVAL_MS, 2 * CAPS_QUERY_INTERVAL_MS]
    assert len({seq for _, seq in queries}) == 1  # repeats reuse the seq
    [verdict] = h.of(NoCapabilities)
    assert isinstance(verdict, NoCapabilities)
    assert (verdict.at_ms, verdict.tries) == (150, 3)
    assert discovery(h) is CapsDiscovery.VERSION_1
    assert h.link.capabilities is None
    assert h.of(LinkLost) == []
    assert h.of(CommandFailed) == []
    h.link.send_command(START, h.now_ms)  # a version-1 head works as before
    with pytest.raises(CapabilityMissingError, match="version-1 head"):
        h.link.send_command(GATED, h.now_ms)


def test_caps_answer_discovers_and_allows_start_gated() -> None:
    h = Harness()
    h.open_and_identify()
    with pytest.raises(LinkNotReadyError, match="capabilities are known"):
        h.link.send_command(GATED, h.now_ms)
    [(_, seq)] = query_times(h)
    h.advance_to(20)
    h.device_says(caps(seq))
    [found] = h.of(CapabilitiesDiscovered)
    assert isinstance(found, CapabilitiesDiscovered)
    assert found.caps.trigger_ml_s == 50
    assert discovery(h) is CapsDiscovery.DISCOVERED
    assert h.link.breath_gating_supported
    h.advance_to(500)
    assert len(query_times(h)) == 1  # answered: no repeats
    assert h.of(NoCapabilities) == []
    gated_seq = h.link.send_command(GATED, h.now_ms)
    h.collect()
    assert h.last_sent(StartGated).seq == gated_seq


def test_caps_without_gating_bit_refuses_start_gated() -> None:
    h = Harness()
    h.open_and_identify()
    [(_, seq)] = query_times(h)
    h.device_says(caps(seq, CapBits.BREATH_SENSING))
    assert discovery(h) is CapsDiscovery.DISCOVERED
    with pytest.raises(CapabilityMissingError, match="lack BREATH_GATED"):
        h.link.send_command(GATED, h.now_ms)


def test_caps_with_a_foreign_ack_seq_is_ignored() -> None:
    h = Harness()
    h.open_and_identify()
    [(_, seq)] = query_times(h)
    h.device_says(caps((seq + 1) & 0xFF))
    assert discovery(h) is CapsDiscovery.PENDING
    assert h.of(CapabilitiesDiscovered) == []


def test_late_caps_after_the_verdict_upgrades() -> None:
    h = Harness()
    h.open_and_identify()
    [(_, seq)] = query_times(h)
    h.advance_to(200)
    assert discovery(h) is CapsDiscovery.VERSION_1
    h.device_says(caps(seq))
    assert discovery(h) is CapsDiscovery.DISCOVERED
    assert len(h.of(CapabilitiesDiscovered)) == 1


def test_rediscovery_on_reconnect_and_after_reboot() -> None:
    h = Harness()
    h.open_and_identify()
    [(_, first)] = query_times(h)
    h.device_says(caps(first))
    h.device_says(status(60_000))
    # Reboot: the head kept nothing; its capabilities are asked again.
    h.advance_to(100)
    h.device_says(status(50))
    assert discovery(h) is CapsDiscovery.PENDING
    assert [t for t, _ in query_times(h)] == [0, 100]
    h.advance_to(300)
    assert discovery(h) is CapsDiscovery.VERSION_1  # the rebooted head stayed silent
    # Reconnect: unplug, replug, new handshake → new query.
    h.link.connection_lost(h.now_ms, reason="unplugged")
    assert discovery(h) is CapsDiscovery.PENDING
    h.open_and_identify()
    queries = query_times(h)
    assert queries[-1][0] == h.now_ms
    h.device_says(caps(queries[-1][1]))
    assert h.link.breath_gating_supported
    assert len(h.of(CapabilitiesDiscovered)) == 2


def test_breath_reports_become_events_and_are_never_acknowledged() -> None:
    h = Harness()
    h.open_and_identify()
    h.advance_to(1000)
    h.sent.clear()
    breath = Breath(
        session_id=7,
        breath_no=65535,
        insp_ms=1150,
        exp_ms=2300,
        tidal_ml=480,
        peak_flow_ml_s=620,
        aerosol_insp_dul=38,
        aerosol_exp_dul=1,
    )
    h.device_says(breath, seq=9)
    [received] = h.of(BreathReceived)
    assert isinstance(received, BreathReceived)
    assert (received.seq, received.breath) == (9, breath)
    assert h.sent == []  # no answer to a BREATH
