"""The runtime's view of a breath-aware head (MN-1 ICD addendum 1.1), sans-IO.

`BreathTracker` follows what the link learns of the head's capabilities (CAPS, or
none: a version-1 head) and, for each run on a breath-aware head, the run's
`BreathAccumulator`. It keeps following a run after its SESSION_END, because the
last breath of a run is reported at the *next* inspiration: until a BREATH of
another session (or of no session, without aerosol), `apnoea_s` after the end, a
link loss, a reconnect or a head reboot. Then the run is *final*: its accounting is
judged once by the alarm table, and its summary row is recorded
(`WriteBreathSummary`).

Each BREATH report counted for the run is kept as a row too (`WriteBreaths`), for the
per-breath strip of the session plot. Rows are handed over in batches at a runtime
tick — once the oldest has waited `BREATH_BATCH_MAX_AGE_MS` or there are
`BREATH_BATCH_MAX_ROWS` — and all that is left just before the summary, so that a
breath costs the ledger's writer thread a share of one transaction, not one of its
own. A crash loses at most the unwritten batch (the summary is lost with it: the plot
shows what was stored).

Limits never use any of this: the dose stays `delivered_ul` (STATUS / SESSION_END).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

from controller.alarms import BreathingFacts
from controller.breath import (
    BreathAccumulator,
    RecentBreathing,
    breathing_facts,
    breathing_fields,
    delivery_refusal,
)
from controller.dosing import Prescription
from controller.ledger import BreathRecord
from drivers.mn1 import (
    BreathReceived,
    CapabilitiesDiscovered,
    Caps,
    CapsDiscovery,
    DeviceRebooted,
    DeviceState,
    DeviceSwapped,
    LinkEvent,
    LinkLost,
    NoCapabilities,
    PortClosed,
    PortOpened,
    SessionEndReceived,
    StatusReceived,
    StopReason,
)

from ._effects import Now, WriteBreaths, WriteBreathSummary

Reason = Literal["periodic", "state_change"]

__all__ = ["BREATH_BATCH_MAX_AGE_MS", "BREATH_BATCH_MAX_ROWS", "BreathRun", "BreathTracker"]

#: A stored breath waits at most this long for its batch (checked at each runtime tick,
#: which comes every `TICK_MS` while a session runs; an ended run is flushed when final).
BREATH_BATCH_MAX_AGE_MS: Final = 10_000
#: A batch is handed over at the next tick once it has this many rows.
BREATH_BATCH_MAX_ROWS: Final = 16

#: States in which the head is running a session (WAITING: a gated session paused
#: between pulses or for want of breathing; still ours, still to be stopped).
_IN_SESSION = frozenset({DeviceState.NEBULISING, DeviceState.WAITING})


@dataclass(slots=True, kw_only=True)
class BreathRun:
    """One run (START or START_GATED) on a breath-aware head, until it is final."""

    accumulator: BreathAccumulator
    gated: bool
    apnoea_s: int
    delivered_ul: int = 0
    end_reason: StopReason | None = None
    ended_ms: int | None = None
    final: bool = False
    #: `session_ended_no_breathing` is a one-shot fact (the alarm latches).
    no_breathing_told: bool = False
    #: Ended by a reboot, swap or reconnect: its figures are incomplete, not judged.
    cut_short: bool = False
    #: Counted BREATH reports not yet handed over (`WriteBreaths`), and when the first came.
    unwritten: list[BreathRecord] = field(default_factory=list)
    unwritten_since_ms: int = 0

    @property
    def session_id(self) -> int:
        """The run's session id."""
        return self.accumulator.session_id


class BreathTracker:
    """Capabilities of the head and the breath accounting of its current run."""

    def __init__(self, prescription: Prescription) -> None:
        self._prescription = prescription
        self.caps_discovery = CapsDiscovery.PENDING
        self.caps: Caps | None = None
        self.run: BreathRun | None = None
        self.recent = RecentBreathing()

    # ------------------------------------------------------------------ inputs

    def on_event(self, event: LinkEvent, now: Now) -> None:
        """Every link event (before the alarms are evaluated for it)."""
        now_ms = now.ms
        match event:
            case PortOpened() | PortClosed() | DeviceRebooted() | DeviceSwapped():
                # Another head (or the same one, reset) may be there: ask again.
                self.caps_discovery, self.caps = CapsDiscovery.PENDING, None
                self.recent.clear()
                self._finish()
            case CapabilitiesDiscovered(caps=caps):
                self.caps_discovery, self.caps = CapsDiscovery.DISCOVERED, caps
            case NoCapabilities():
                self.caps_discovery, self.caps = CapsDiscovery.VERSION_1, None
            case LinkLost():
                if self.run is not None and self.run.end_reason is not None:
                    self._finish()  # its last BREATH may never come
            case BreathReceived(breath=breath):
                self.recent.on_breath(breath, now_ms)
                self._on_breath(event, now)
            case StatusReceived():
                self._on_status(event, now_ms)
            case SessionEndReceived(session_end=end):
                run = self.run
                if run is not None and end.session_id == run.session_id:
                    self._ended(run, end.reason, end.delivered_ul, now_ms)
            case _:
                pass

    def start_acked(self, *, session_id: int, now: Now) -> list[WriteBreaths | WriteBreathSummary]:
        """Our START (or START_GATED) was ACKed: a new run, on a breath-aware head only.

        Returns the last breaths and the summary of the previous run if it was not
        final yet (it is now).
        """
        self._finish()
        previous = self.take_summary(now)
        if self.caps is not None:
            delivery = self._prescription.delivery
            self.run = BreathRun(
                accumulator=BreathAccumulator(session_id=session_id, started_ms=now.ms),
                gated=delivery.breath_gated,
                apnoea_s=delivery.gated_apnoea_s,
            )
        return previous

    def tick(self, now_ms: int) -> bool:
        """True when the run became final now (`apnoea_s` passed since its end)."""
        run = self.run
        deadline = self.deadline_ms()
        if run is None or deadline is None or now_ms < deadline:
            return False
        self._finish()
        return True

    # ------------------------------------------------------------------ outputs

    def refusals(self, *, transient: bool) -> list[str]:
        """A breath-gated prescription on a head that cannot gate: refused, with why
        (never run continuously instead). "code: sentence", like every refusal.

        `transient=False`: the lasting ones (part of the runtime's `refusals`, shown by
        `session status`); `transient=True`: discovery still running, checked at the
        start itself (the shell waits, bounded, for discovery first).
        """
        refusal = delivery_refusal(
            self._prescription.delivery, caps_discovery=self.caps_discovery, caps=self.caps
        )
        if refusal is None or refusal.transient is not transient:
            return []
        return [f"{refusal.code}: {refusal.reason}"]

    def delivery_record(self) -> dict[str, object]:
        """How the dose is delivered, for the intent row."""
        delivery = self._prescription.delivery
        if not delivery.breath_gated:
            return {"mode": "continuous"}
        return {
            "mode": "breath_gated",
            "gate_pct": delivery.gated_gate_pct,
            "lead_breaths": delivery.gated_lead_breaths,
            "apnoea_s": delivery.gated_apnoea_s,
        }

    def deadline_ms(self) -> int | None:
        """When an ended run stops waiting for its last BREATH."""
        run = self.run
        if run is None or run.final or run.ended_ms is None:
            return None
        return run.ended_ms + run.apnoea_s * 1000

    def facts(self, now_ms: int) -> BreathingFacts | None:
        """`AlarmInputs.breathing` for the current run (None without one)."""
        run = self.run
        if run is None:
            return None
        end_reason = run.end_reason
        if end_reason is StopReason.NO_BREATHING and run.no_breathing_told:
            end_reason = StopReason.NONE  # still ended, no longer a new fact
        elif end_reason is StopReason.NO_BREATHING:
            run.no_breathing_told = True
        return breathing_facts(
            run.accumulator,
            now_ms=now_ms,
            gated=run.gated,
            apnoea_s=run.apnoea_s,
            delivered_ul=run.delivered_ul,
            end_reason=end_reason,
            final=run.final and not run.cut_short,
        )

    def message_fields(self, now_ms: int, *, reason: Reason) -> dict[str, object]:
        """The fields of a `nebuliser.breathing` message (and of `session status`)."""
        run = self.run
        current = run if run is not None and run.end_reason is None else None
        gated = current.gated if current is not None else self._prescription.delivery.breath_gated
        return breathing_fields(
            self.recent,
            current.accumulator if current is not None else None,
            now_ms=now_ms,
            gated=gated,
            reason=reason,
        )

    def snapshot(self, now_ms: int) -> dict[str, object]:
        """What `session status` shows of the head's breath sensing and the current run."""
        caps = self.caps
        fields = self.message_fields(now_ms, reason="periodic")
        del fields["reason"]
        return {
            "delivery": "breath_gated"
            if self._prescription.delivery.breath_gated
            else "continuous",
            "head": (
                "unknown"
                if self.caps_discovery is CapsDiscovery.PENDING
                else "version_1"
                if caps is None
                else "breath_gated"
                if caps.breath_gated
                else "breath_sensing"
            ),
            **fields,
        }

    def take_breaths(self, now: Now) -> list[WriteBreaths]:
        """The run's stored breaths that are due for the ledger (a batch, or nothing)."""
        run = self.run
        if run is None or not run.unwritten:
            return []
        due = (
            len(run.unwritten) >= BREATH_BATCH_MAX_ROWS
            or now.ms - run.unwritten_since_ms >= BREATH_BATCH_MAX_AGE_MS
        )
        return self._batch(run) if due else []

    def take_summary(self, now: Now) -> list[WriteBreaths | WriteBreathSummary]:
        """Once the run is final (and the alarms judged it): its last breaths, then its
        summary row, once."""
        run = self.run
        if run is None or not run.final:
            return []
        self.run = None
        records: list[WriteBreaths | WriteBreathSummary] = [*self._batch(run)]  # rows first
        prescription = self._prescription
        figures = run.accumulator.summary().ledger_figures(
            concentration_per_ul=prescription.lot.concentration_per_ul(),
            dose_unit=str(prescription.lot.unit),
            gated=run.gated,
        )
        records.append(WriteBreathSummary(session_id=run.session_id, figures=figures, at=now.at))
        return records

    # ------------------------------------------------------------------ helpers

    @staticmethod
    def _batch(run: BreathRun) -> list[WriteBreaths]:
        rows, run.unwritten = tuple(run.unwritten), []
        return [WriteBreaths(session_id=run.session_id, rows=rows)] if rows else []

    def _on_breath(self, event: BreathReceived, now: Now) -> None:
        run = self.run
        if run is None or run.final:
            return
        breath = event.breath
        ours = breath.session_id == run.session_id or (
            breath.session_id == 0 and breath.aerosol_insp_dul + breath.aerosol_exp_dul > 0
        )
        lost_before = run.accumulator.on_breath(breath, now.ms)
        if lost_before is not None:  # counted for this run: kept for its strip
            if not run.unwritten:
                run.unwritten_since_ms = now.ms
            run.unwritten.append(
                BreathRecord(
                    session_id=run.session_id,
                    breath_no=breath.breath_no,
                    lost_before=lost_before,
                    at=now.at,
                    insp_ms=breath.insp_ms,
                    exp_ms=breath.exp_ms,
                    tidal_ml=breath.tidal_ml,
                    peak_flow_ml_s=breath.peak_flow_ml_s,
                    aerosol_insp_dul=breath.aerosol_insp_dul,
                    aerosol_exp_dul=breath.aerosol_exp_dul,
                )
            )
        if run.end_reason is not None and not ours:
            self._finish()  # a breath after the end that is not ours: nothing more to come

    def _on_status(self, event: StatusReceived, now_ms: int) -> None:
        run = self.run
        if run is None or run.final:
            return
        status = event.status
        run.accumulator.on_status(status, now_ms)
        if status.session_id != run.session_id or run.end_reason is not None:
            return
        run.delivered_ul = status.delivered_ul
        if status.state not in _IN_SESSION:
            # Idle with our session as the last: ended (the SESSION_END may be lost).
            self._ended(run, status.last_stop, status.delivered_ul, now_ms)

    @staticmethod
    def _ended(run: BreathRun, reason: StopReason, delivered_ul: int, now_ms: int) -> None:
        if run.end_reason is None:
            run.end_reason, run.ended_ms = reason, now_ms
        run.delivered_ul = delivered_ul

    def _finish(self) -> None:
        run = self.run
        if run is not None:
            run.final = True
            if run.end_reason is None:  # reboot, swap or reconnect mid-run: no more BREATH
                run.end_reason, run.cut_short = StopReason.NONE, True
