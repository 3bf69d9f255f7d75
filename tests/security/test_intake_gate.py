"""The command intake's pure bookkeeping (`IntakeGate`), the COMMAND_FLOOD alarm rule,
and the aiomqtt behaviour the intake relies on (an upgrade guard, on a real broker)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiomqtt
from hypothesis import given
from hypothesis import strategies as st

from controller.alarms import AlarmCode, AlarmInputs, AlarmState, evaluate
from controller.security import (
    UNKNOWN_SENDER_KEY,
    IntakeGate,
    IntakeLimits,
    TallyDisposition,
    TokenBucket,
)
from controller.telemetry import BedConnection
from tests.support.mosquitto import MosquittoBroker

UTC_TEXT = "2026-12-07T06:00:00.000+00:00"


def _tally(gate: IntakeGate, *, sender: str, disposition: TallyDisposition, now_s: float) -> None:
    gate.tally(
        topic="t/command",
        sender=sender,
        reason="bad_signature",
        disposition=disposition,
        now_s=now_s,
        now_utc=UTC_TEXT,
    )


def test_token_bucket_allows_the_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate_per_s=5, burst=20)
    assert sum(bucket.take(0.0) for _ in range(100)) == 20
    assert sum(bucket.take(1.0) for _ in range(100)) == 5
    assert not bucket.take(1.0)


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["ward-3west", "mallory", "eve", None]),
            st.floats(min_value=0, max_value=0.05),
        ),
        max_size=400,
    )
)
def test_every_refusal_is_counted_once_recorded_or_not(
    msgs: list[tuple[str | None, float]],
) -> None:
    gate = IntakeGate(known_senders=frozenset({"ward-3west"}))
    now_s = 0.0
    recorded = 0
    for claimed, step_s in msgs:
        now_s += step_s
        key = gate.sender_key(claimed)
        record = gate.may_record(key, now_s)
        recorded += record
        disposition = TallyDisposition.RECORDED if record else TallyDisposition.AGGREGATED
        _tally(gate, sender=key, disposition=disposition, now_s=now_s)
    tallies = gate.take_tallies()
    assert sum(t.count for t in tallies) == len(msgs)
    assert sum(t.recorded for t in tallies) == recorded
    assert sum(t.aggregated for t in tallies) == len(msgs) - recorded == gate.unrecorded_total
    # Unconfigured claimed ids share one key: a flood of made-up ids cannot grow state.
    assert {t.sender for t in tallies} <= {"ward-3west", UNKNOWN_SENDER_KEY}
    assert gate.take_tallies() == []


def test_global_record_bucket_bounds_records_over_all_senders() -> None:
    gate = IntakeGate(known_senders=frozenset({f"s{i}" for i in range(10)}))
    allowed = sum(gate.may_record(f"s{i % 10}", 0.0) for i in range(1000))
    assert allowed == IntakeLimits().global_record_burst


def test_flood_is_active_after_persisting_and_ends_after_a_quiet_gap() -> None:
    gate = IntakeGate()
    for tenth in range(15):  # 1.4 s of unrecorded refusals: not yet a flood
        _tally(gate, sender="x", disposition=TallyDisposition.AGGREGATED, now_s=tenth / 10)
    assert not gate.flood_active(1.45)
    for tenth in range(15, 25):
        _tally(gate, sender="x", disposition=TallyDisposition.AGGREGATED, now_s=tenth / 10)
    assert gate.flood_active(2.5)
    assert not gate.flood_active(2.4 + IntakeLimits().flood_quiet_s + 0.1)
    # Individually recorded refusals are no flood, however many.
    calm = IntakeGate()
    for tenth in range(100):
        _tally(calm, sender="x", disposition=TallyDisposition.RECORDED, now_s=tenth / 10)
    assert not calm.flood_active(10.0)


def test_claim_counter_refuses_replays_in_memory_and_seeds_from_the_durable_store() -> None:
    gate = IntakeGate()
    durable = {"ward-3west": 7}
    assert not gate.claim_counter("ward-3west", 7, durable.get)
    assert gate.claim_counter("ward-3west", 8, durable.get)
    assert not gate.claim_counter("ward-3west", 8, durable.get)  # the same envelope again
    assert gate.claim_counter("dr-jones", 1, durable.get)


def test_routine_lane_is_bounded_and_rate_limited_per_sender() -> None:
    gate = IntakeGate()
    assert not gate.may_queue_routine("ward-3west", IntakeLimits().routine_capacity, 0.0)
    allowed = sum(gate.may_queue_routine("ward-3west", 0, 0.0) for _ in range(100))
    assert allowed == IntakeLimits().routine_burst


def test_command_flood_alarm_is_raised_from_the_intake_fact() -> None:
    inputs = AlarmInputs(
        device_faults=0, link_lost=False, session_open=False, flow_ul_min=None,
        expected_flow_ul_min=None, session=None, device_nebulising=False,
        stop_sent_at_ms=None, session_stopped_by_watchdog=False, uncertain_session_id=None,
        clock_trusted=True, storage_low=False, storage_free_mib=1000, ledger_ok=True,
        swapped_to_serial=None, device_rebooted_mid_session=False, telemetry_dropped_total=0,
        command_flood=True, command_unrecorded_total=2500,
    )  # fmt: skip
    state, events = evaluate(inputs, AlarmState(), 1000)
    alarm = state.get(AlarmCode.COMMAND_FLOOD)
    assert alarm is not None
    assert "2500" in alarm.message
    assert alarm.latching
    assert [e.code for e in events] == [AlarmCode.COMMAND_FLOOD]


async def _next(client: aiomqtt.Client) -> aiomqtt.Message:
    return await anext(aiter(client.messages))


async def test_aiomqtt_hands_every_incoming_message_to_queue_type_put_nowait(
    tmp_path: Path,
) -> None:
    """Upgrade guard: the bed's one connection (`BedConnection`) replaces aiomqtt's
    incoming queue through the public `queue_type` argument, routing command topics to
    the intake's triage, and relies on aiomqtt calling `put_nowait` once per message
    (on the event loop) and on `client.messages` still ending with MqttError when the
    connection is lost. If an aiomqtt upgrade changes either, this fails."""
    seen: list[bytes] = []
    all_seen = asyncio.Event()
    loop = asyncio.get_running_loop()

    def sink(message: aiomqtt.Message) -> None:
        assert isinstance(message.payload, bytes)
        seen.append(message.payload)
        if len(seen) == 500:
            all_seen.set()

    connection = BedConnection()
    connection.route("guard/x", sink)
    async with MosquittoBroker(workdir=tmp_path) as broker:
        client = aiomqtt.Client(
            broker.host,
            broker.port,
            identifier="guard-intake",
            protocol=aiomqtt.ProtocolVersion.V5,
            queue_type=connection.queue_type(),
        )
        async with client:
            await client.subscribe("guard/#", qos=1)
            async with aiomqtt.Client(broker.host, broker.port, identifier="guard-pub") as pub:
                for i in range(500):  # more than aiomqtt's old bounded queue ever held
                    await pub.publish("guard/x", str(i).encode(), qos=1)
            await asyncio.wait_for(all_seen.wait(), 10)
            assert seen == [str(i).encode() for i in range(500)]
            assert len(client.messages) == 0  # nothing kept in the queue
            watch: asyncio.Task[aiomqtt.Message] = loop.create_task(_next(client))
            broker.kill()
            async with asyncio.timeout(10):
                try:
                    await watch
                except aiomqtt.MqttError:
                    pass
                else:
                    raise AssertionError("client.messages yielded instead of reporting the loss")
