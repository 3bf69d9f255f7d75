"""Test configurations for a controller on a simulated head (course around today)."""

from __future__ import annotations

from pathlib import Path

from controller.benchconfig import BENCH_SECURITY, BenchPrescription, write_bench_config
from controller.config import NebuliserConfig

__all__ = ["BENCH_SECURITY", "write_config"]


def write_config(
    tmp_path: Path,
    *,
    port: str,
    session_ul: int = 200,
    extra: str = "",
    session_extra: str = "",
    free_space_floor_mb: int = 1,
    security: str = BENCH_SECURITY,
    trial_tables: str = "",
) -> tuple[Path, NebuliserConfig]:
    """A config with a small daily dose (interval 60 s, 3 a day), data dir in tmp_path.

    `trial_tables`: the five-rights checks, lot table and cohorts (lot LOT-T prescribed)."""
    return write_bench_config(
        tmp_path,
        port=port,
        prescription=BenchPrescription(
            subject_id="TEST-001", lot_id="LOT-T", session_ul=session_ul, trial_tables=trial_tables
        ),
        device='device_id = "neb-test"',
        storage=f"free_space_floor_mb = {free_space_floor_mb}",
        session=f"confirm_timeout_s = 10\n{session_extra}",
        security=security,
        extra=extra,
    )
