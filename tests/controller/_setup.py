"""Test configurations for a controller on a simulated head (course around today)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.config import NebuliserConfig, load_config

#: Test configs carry an inline (unsigned) prescription: bench only.
BENCH_SECURITY = "[security]\nrequire_signed_prescriptions = false"


def write_config(
    tmp_path: Path,
    *,
    port: str,
    session_ul: int = 200,
    extra: str = "",
    session_extra: str = "",
    free_space_floor_mb: int = 1,
    security: str = BENCH_SECURITY,
) -> tuple[Path, NebuliserConfig]:
    """A config with a small daily dose, system clock, data dir in tmp_path."""
    today = datetime.now(UTC).date()
    dose = session_ul * 2.0e8 / 3000
    text = f"""
[device]
port = "{port}"
device_id = "neb-test"
[storage]
data_dir = "{tmp_path / "data"}"
free_space_floor_mb = {free_space_floor_mb}
[session]
confirm_timeout_s = 10
{session_extra}
[clock]
mode = "system"
{security}
[prescription]
subject_id = "TEST-001"
protocol_id = "EXO-PILOT-01"
drug = "exosome vesicles (inhaled)"
timezone = "UTC"
[prescription.lot]
lot_id = "LOT-T"
amount = 2.0e8
unit = "vesicles"
per_volume_ml = 3.0
[prescription.arm]
arm_id = "active"
cohort = "pilot"
blinded = false
[prescription.limits]
session_ul = {session_ul}
session_dose = {dose}
min_interval_s = 60
rolling_24h_max_sessions = 3
rolling_24h_max_ul = {session_ul * 3}
course_max_sessions = 5
course_start = {today - timedelta(days=1)}
course_end = {today + timedelta(days=5)}
max_session_duration_s = 600
output_pct = 100
output_pct_min = 50
output_pct_max = 100
{extra}
"""
    path = tmp_path / "controller.toml"
    path.write_text(text, encoding="utf-8")
    return path, load_config(path)
