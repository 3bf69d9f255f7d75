"""How much of the pilot dose goes into the room: continuous vs breath-gated delivery.

Runs the pilot dose (3 mL = 2.0×10⁸ vesicles, to its cap) in simulated time on the
simulator's breath-aware head (ICD 1.1) for each breathing pattern, once continuous
(START) and once breath-gated (START_GATED, `gate_pct` 80 by default), and prints
per pattern:

- the inspiratory-phase share of the emitted aerosol (from the head's BREATH
  reports, accumulated by `controller.breath.BreathAccumulator`, as the controller
  will see it), and the simulator's truth beside it;
- the fugitive (expiratory-phase) volume in µL and in vesicles;
- the treatment time, and the ratios gated/continuous.

The dose itself is `delivered_ul` (what left the cup) in both modes: the same 3 mL.
The head is the simulator's default (400 µL/min at 100 % output); the session's
`max_duration_s` is the ICD maximum (3600 s) so that every run reaches its cap.

Run: uv run python bench/breath_gating.py [--target-ul 3000] [--patterns iso27427,adult,severe]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from controller.breath import BreathAccumulator, BreathSummary
from drivers.mn1 import Breath, SessionEnd, Start, StartGated, Status
from simulators.mn1 import PATTERN_NAMES, BreathingModel, DeviceModel, SimulatedHost

PILOT_VESICLES = Fraction(200_000_000)
PILOT_VOLUME_UL = 3000
VESICLES_PER_UL = PILOT_VESICLES / PILOT_VOLUME_UL
_TAIL_MS = 20_000  # after SESSION_END: the last breath is reported at the next inspiration


@dataclass(frozen=True, slots=True)
class Run:
    """One session to its cap."""

    pattern: str
    gated: bool
    delivered_ul: int
    reason: str
    treatment_s: float
    summary: BreathSummary
    true_insp_ul: float
    true_exp_ul: float

    @property
    def fugitive_ul(self) -> float:
        return self.summary.aerosol_exp_ul

    @property
    def insp_share_pct(self) -> float:
        share = self.summary.insp_share
        return 0.0 if share is None else 100 * share

    @property
    def true_insp_share_pct(self) -> float:
        total = self.true_insp_ul + self.true_exp_ul
        return 0.0 if total == 0 else 100 * self.true_insp_ul / total


def run_session(
    pattern: str, *, gated: bool, target_ul: int, gate_pct: int, lead_breaths: int, seed: int
) -> Run:
    """One session on a fresh head in simulated time, fed through the accumulator."""
    model = DeviceModel(
        breathing=BreathingModel(pattern=pattern, seed=seed),
        fill_ul=max(3000, target_ul + 200),
        seed=seed,
    )
    host = SimulatedHost(model=model, heartbeat_ms=200, auto_ack_end=True)
    host.run_for(10_000)  # the patient breathes before the start
    started_ms = host.now_ms
    truth_before = model.truth().breathing
    assert truth_before is not None
    command: Start | StartGated
    if gated:
        command = StartGated(
            session_id=1,
            target_ul=target_ul,
            max_duration_s=3600,
            output_pct=100,
            gate_pct=gate_pct,
            lead_breaths=lead_breaths,
            apnoea_s=15,
        )
    else:
        command = Start(session_id=1, target_ul=target_ul, max_duration_s=3600, output_pct=100)
    first = len(host.received)
    host.send(command)
    end = host.run_until_message(
        lambda r: isinstance(r.message, SessionEnd), timeout_ms=3_700_000
    ).message
    assert isinstance(end, SessionEnd)
    host.run_for(_TAIL_MS)
    accumulator = BreathAccumulator(session_id=1, started_ms=started_ms)
    for received in host.received[first:]:
        if isinstance(received.message, Breath):
            accumulator.on_breath(received.message, received.at_ms)
        elif isinstance(received.message, Status):
            accumulator.on_status(received.message, received.at_ms)
    truth = model.truth().breathing
    assert truth is not None
    return Run(
        pattern=pattern,
        gated=gated,
        delivered_ul=end.delivered_ul,
        reason=end.reason.name,
        treatment_s=end.duration_ms / 1000,
        summary=accumulator.summary(),
        true_insp_ul=truth["aerosol_true_insp_ul"] - truth_before["aerosol_true_insp_ul"],
        true_exp_ul=truth["aerosol_true_exp_ul"] - truth_before["aerosol_true_exp_ul"],
    )


def _vesicles(volume_ul: float) -> str:
    return f"{float(VESICLES_PER_UL) * volume_ul:.2e}"


def _minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}:{round(seconds % 60):02d}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target-ul", type=int, default=PILOT_VOLUME_UL)
    parser.add_argument("--patterns", default="iso27427,adult,severe")
    parser.add_argument("--gate-pct", type=int, default=80)
    parser.add_argument("--lead-breaths", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    patterns = args.patterns.split(",")
    unknown = [p for p in patterns if p not in PATTERN_NAMES]
    if unknown:
        parser.error(f"unknown pattern(s) {unknown}; use {', '.join(PATTERN_NAMES)}")
    print(f"command: uv run python bench/breath_gating.py {' '.join(sys.argv[1:])}".rstrip())
    print(
        f"dose {args.target_ul} µL ({_vesicles(args.target_ul)} vesicles at 2.0e8 per 3 mL), "
        f"head 400 µL/min at 100 %, gate_pct {args.gate_pct}, lead_breaths {args.lead_breaths}"
    )
    wall_start = time.perf_counter()
    header = (
        f"{'pattern':<10} {'mode':<11} {'delivered':>9} {'insp share':>10} {'(truth)':>8} "
        f"{'fugitive µL':>11} {'fugitive vesicles':>17} {'time':>6} {'breaths':>7} "
        f"{'waiting':>8} {'accounted':>10}"
    )
    print(header)
    print("-" * len(header))
    ratios: list[str] = []
    for pattern in patterns:
        runs = [
            run_session(
                pattern,
                gated=gated,
                target_ul=args.target_ul,
                gate_pct=args.gate_pct,
                lead_breaths=args.lead_breaths,
                seed=args.seed,
            )
            for gated in (False, True)
        ]
        for run in runs:
            print(
                f"{pattern:<10} {'gated' if run.gated else 'continuous':<11} "
                f"{run.delivered_ul:>6} µL {run.insp_share_pct:>9.1f}% "
                f"{run.true_insp_share_pct:>7.1f}% {run.fugitive_ul:>11.1f} "
                f"{_vesicles(run.fugitive_ul):>17} {_minutes(run.treatment_s):>6} "
                f"{run.summary.breaths:>7} {run.summary.waiting_ms / 1000:>7.0f}s "
                f"{run.summary.aerosol_ul:>7.1f} µL"
            )
        continuous, gated_run = runs
        fugitive_ratio = (
            gated_run.fugitive_ul / continuous.fugitive_ul if continuous.fugitive_ul else 0.0
        )
        insp_ratio = gated_run.summary.aerosol_insp_ul / max(
            continuous.summary.aerosol_insp_ul, 1e-9
        )
        ratios.append(
            f"{pattern:<10} gated/continuous: fugitive ×{fugitive_ratio:.3f}, "
            f"inspiratory-phase aerosol ×{insp_ratio:.2f}, "
            f"treatment time ×{gated_run.treatment_s / continuous.treatment_s:.2f}"
        )
    print()
    for line in ratios:
        print(line)
    print(f"\nwall time {time.perf_counter() - wall_start:.1f} s (simulated time)")


if __name__ == "__main__":
    main()
