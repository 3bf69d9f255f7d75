"""Configurations for a bench with a simulated head: the demo, tests and benchmarks.

Never for a ward: the prescription is inline and unsigned, the clock is trusted
without NTP, and the course runs around today. One builder, so that a change to the
configuration schema is made once for the demo, the tests and the benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from controller.config import NebuliserConfig, load_config
from controller.ledger import LedgerLocation, init_ledger

__all__ = [
    "BENCH_SECURITY",
    "BenchPrescription",
    "bench_config_text",
    "bench_mqtt_section",
    "init_bench_ledger",
    "write_bench_config",
]

#: The `[security]` section of a bench: the inline prescription is unsigned.
BENCH_SECURITY = (
    "[security]\nrequire_signed_prescriptions = false  # bench only: inline, unsigned\n"
)


@dataclass(frozen=True, slots=True, kw_only=True)
class BenchPrescription:
    """The pilot lot (2.0×10⁸ vesicles in 3 mL) with limits a bench can choose."""

    subject_id: str = "BENCH-001"
    lot_id: str = "LOT-BENCH"
    session_ul: int = 200
    with_session_dose: bool = True
    min_interval_s: int | None = 60
    """None: no minimum interval (benchmarks that start sessions back to back)."""
    rolling_24h_max_sessions: int = 3
    rolling_24h_max_ul: int | None = None
    course_max_sessions: int = 5
    course_max_ul: int | None = None
    course_max_dose: float | None = None
    course_first_day: int = -1
    """First day of the course relative to today (UTC)."""
    course_days: int = 7
    max_session_duration_s: int = 600
    fill_ul: int | None = None
    """With a fill: the cup holds this much and the dose is nebulised to dryness."""
    residual_ul: int = 100
    """What the mesh cannot nebulise (the simulated head's default)."""
    trial_tables: str = ""
    """TOML appended to the prescription: `[prescription.checks]`, `[[prescription.lots]]`,
    `[[prescription.cohorts]]` (the five-rights check, docs/trials.md)."""
    blinded: bool = False
    """A blinded arm: nothing published may name the arm, lot or a drug-unit figure."""
    drug: str = "exosome vesicles (inhaled)"
    lot_amount: float = 2.0e8
    """Drug units in the lot's 3 mL (the session dose stays the pilot's 2.0e8 per 3 mL)."""
    arm_id: str = "active"
    cohort: str = "pilot"
    breath_gated: bool = False
    """An ICD 1.1 breath-gated delivery (gate 80 %, one learning breath, apnoea 5 s)."""


def bench_mqtt_section(
    *,
    host: str,
    port: int,
    client_id: str,
    telemetry_hz: int = 5,
    keepalive_s: int = 2,
    reconnect_initial_s: float = 0.05,
    reconnect_max_s: float = 0.3,
    publish_timeout_s: float = 3,
) -> str:
    """An `[mqtt]` section for a local broker, reconnecting fast (bench timings)."""
    return f"""
[mqtt]
host = "{host}"
port = {port}
client_id = "{client_id}"
keepalive_s = {keepalive_s}
telemetry_hz = {telemetry_hz}
reconnect_initial_s = {reconnect_initial_s}
reconnect_max_s = {reconnect_max_s}
publish_timeout_s = {publish_timeout_s}
"""


def _prescription_text(rx: BenchPrescription) -> str:
    today = datetime.now(UTC).date()
    start = today + timedelta(days=rx.course_first_day)
    end = start + timedelta(days=rx.course_days - 1)
    rolling_ul = rx.rolling_24h_max_ul or rx.session_ul * rx.rolling_24h_max_sessions
    lines = [
        "[prescription]",
        f'subject_id = "{rx.subject_id}"',
        'protocol_id = "EXO-PILOT-01"',
        f'drug = "{rx.drug}"',
        'timezone = "UTC"',
        "[prescription.lot]",
        f'lot_id = "{rx.lot_id}"',
        f"amount = {rx.lot_amount!r}",
        'unit = "vesicles"',
        "per_volume_ml = 3.0",
        "[prescription.arm]",
        f'arm_id = "{rx.arm_id}"',
        f'cohort = "{rx.cohort}"',
        f"blinded = {str(rx.blinded).lower()}",
        "[prescription.limits]",
        f"session_ul = {rx.session_ul}",
        *([f"session_dose = {rx.session_ul * 2.0e8 / 3000}"] if rx.with_session_dose else []),
        *([f"min_interval_s = {rx.min_interval_s}"] if rx.min_interval_s is not None else []),
        f"rolling_24h_max_sessions = {rx.rolling_24h_max_sessions}",
        f"rolling_24h_max_ul = {min(rolling_ul, 12000)}",
        f"course_max_sessions = {rx.course_max_sessions}",
        *([f"course_max_ul = {rx.course_max_ul}"] if rx.course_max_ul else []),
        *([f"course_max_dose = {rx.course_max_dose}"] if rx.course_max_dose else []),
        f"course_start = {start}",
        f"course_end = {end}",
        f"max_session_duration_s = {rx.max_session_duration_s}",
        "output_pct = 100",
        "output_pct_min = 50",
        "output_pct_max = 100",
    ]
    if rx.breath_gated:
        lines += [
            "[prescription.delivery]",
            'mode = "breath_gated"',
            "gate_pct = 80",
            "lead_breaths = 1",
            "apnoea_s = 5",
        ]
    elif rx.fill_ul is not None:
        lines += [
            "[prescription.delivery]",
            f"fill_ul = {rx.fill_ul}",
            f"residual_ul = {rx.residual_ul}",
        ]
    return "\n".join(lines) + "\n" + rx.trial_tables


def bench_config_text(
    *,
    port: str,
    data_dir: Path,
    prescription: BenchPrescription | None = None,
    device: str = "",
    storage: str = "",
    session: str = "",
    clock: str = "",
    security: str = BENCH_SECURITY,
    extra: str = "",
) -> str:
    """The TOML text; `device`, `storage`, `session`, `clock` add keys to those sections,
    `security` replaces the `[security]` section, `extra` adds whole sections (`[mqtt]`)."""
    rx = prescription or BenchPrescription()
    return f"""# Bench configuration (simulated head): never use on a ward.
[device]
port = "{port}"
{device}
[storage]
data_dir = "{data_dir}"
{storage or "free_space_floor_mb = 1"}
[session]
{session or "confirm_timeout_s = 10"}
[clock]
mode = "system"   # bench only: a Pi at the bedside uses "ntp"
{clock}
{security}
{extra}
{_prescription_text(rx)}"""


def write_bench_config(
    directory: Path,
    *,
    port: str,
    file_name: str = "controller.toml",
    prescription: BenchPrescription | None = None,
    device: str = "",
    storage: str = "",
    session: str = "",
    clock: str = "",
    security: str = BENCH_SECURITY,
    extra: str = "",
    init: bool = True,
) -> tuple[Path, NebuliserConfig]:
    """Write `directory/file_name` (data in `directory/data`) and load it.

    With `init` (the default) the bench's ledger is created as `nebuliser ledger init`
    would, unless the data directory already has a ledger (a config rewritten between
    runs); `serve` never creates one itself.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / file_name
    path.write_text(
        bench_config_text(
            port=port,
            data_dir=directory / "data",
            prescription=prescription,
            device=device,
            storage=storage,
            session=session,
            clock=clock,
            security=security,
            extra=extra,
        ),
        encoding="utf-8",
    )
    config = load_config(path)
    if init:
        init_bench_ledger(config)
    return path, config


def init_bench_ledger(config: NebuliserConfig) -> None:
    """Create the bench's ledger as `nebuliser ledger init` would (if it has none yet)."""
    location = LedgerLocation(data_dir=config.storage.data_dir)
    if location.ledger_path.exists():
        return
    subject = config.prescription.subject_id if config.prescription else "BENCH-001"
    init_ledger(location, device_id=config.device.device_id, subject_id=subject)
