"""Issue 20 at the bedside: the five-rights check with the real controller and simulator.

`nebuliser session start --subject ID --lot LOT` in a real subprocess: a wrong
patient, a lot not in the lot table, another cohort's vial and an expired vial are each
refused with the reason and leave a decision row in the ledger; the right wristband and
vial, scanned at the bedside terminal's prompts (a USB scanner types the label and
Enter), start the session and it runs to its cap.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from controller.benchconfig import BenchPrescription, write_bench_config
from controller.config import NebuliserConfig
from controller.exitcodes import ExitCode
from controller.ledger import LEDGER_FILE_NAME, EventKind, Ledger
from controller.security import CommandName, RequestStartBody, StopBody
from simulators.mn1 import DeviceModel, RunningSimulator, run_pty_simulator

from . import test_remote_commands as remote
from .test_service_pty import FAST_UL_MIN, running_controller, wait_status
from .test_ward_dosing import _cli, _read_until

SUBJECT = "TRIAL-007"
SESSION_UL = 300
GOOD_LOT = "LOT-P-01"


def _trial_tables(good_lot: str = GOOD_LOT) -> str:
    """The checks on, and a lot table around today's date (the bench runs on the system clock)."""
    today = datetime.now(UTC).date()
    later, yesterday = today + timedelta(days=90), today - timedelta(days=1)

    def lot(lot_id: str, arm: str, cohort: str, amount: float, expires: object) -> str:
        return (
            f'[[prescription.lots]]\nlot_id = "{lot_id}"\narm_id = "{arm}"\n'
            f'cohort = "{cohort}"\namount = {amount}\nunit = "vesicles"\n'
            f"per_volume_ml = 3.0\nexpires = {expires}\n"
        )

    return (
        "[prescription.checks]\nscan_subject = true\nscan_lot = true\n"
        + lot(good_lot, "active", "pilot", 2.0e8, later)
        + lot("LOT-C4-01", "active", "c4", 4.0e8, later)  # a higher cohort's vial
        + lot("LOT-P-OLD", "active", "pilot", 2.0e8, yesterday)
    )


@contextlib.asynccontextmanager
async def trial_bed(
    tmp_path: Path,
) -> AsyncIterator[tuple[Path, NebuliserConfig, RunningSimulator]]:
    model = DeviceModel(nominal_ul_min=FAST_UL_MIN, fill_ul=3000, serial="SIM-TRIAL")
    async with run_pty_simulator(model) as sim:
        path, config = write_bench_config(
            tmp_path,
            port=sim.device_path,
            prescription=BenchPrescription(
                subject_id=SUBJECT,
                lot_id=GOOD_LOT,
                session_ul=SESSION_UL,
                trial_tables=_trial_tables(),
            ),
            device='device_id = "neb-trial"',
            session="confirm_timeout_s = 10",
        )
        async with running_controller(config):
            await wait_status(config, lambda s: s["link_up"] and s["device"], 5)
            yield path, config, sim


def _start_decisions(config: NebuliserConfig) -> list[dict[str, Any]]:
    with Ledger.open(config.storage.data_dir / LEDGER_FILE_NAME, read_only=True) as ledger:
        events = ledger.events(kinds=[EventKind.DECISION])
        return [dict(e.body) for e in events if "constraints" in e.body["trace"]]


async def test_wrong_patient_lot_cohort_or_expiry_is_refused_and_recorded(tmp_path: Path) -> None:
    cases = [
        ("TRIAL-008", GOOD_LOT, {"scan_subject"}, "wristband 'TRIAL-008' is not this"),
        (SUBJECT, "LOT-X-99", {"lot_known"}, "'LOT-X-99' is not in the protocol's lot table"),
        (SUBJECT, "LOT-C4-01", {"lot_cohort", "lot_strength"}, "is for cohort c4, the subj"),
        (SUBJECT, "LOT-P-OLD", {"lot_expiry"}, "lot LOT-P-OLD EXPIRED: use by"),
    ]
    async with trial_bed(tmp_path) as (path, config, sim):
        code, shown = await _cli(path, "session", "start", "--button-only")
        assert code == ExitCode.REFUSED, shown
        assert "the patient's wristband was not scanned" in shown
        assert "the vial's lot label was not scanned" in shown
        for subject, lot, _codes, reason in cases:
            code, shown = await _cli(
                path, "session", "start", "--subject", subject, "--lot", lot, "--button-only"
            )
            assert code == ExitCode.REFUSED, shown
            assert "not started:" in shown
            assert reason in shown, shown
        status = await wait_status(config, lambda s: s["state"] == "idle", 5)
        assert status["last_session"] is None
        assert sim.truth().total_delivered_ul == 0
    refusals = [d for d in _start_decisions(config) if not d["allowed"]]
    assert [set(d["trace"]["refusal_codes"]) for d in refusals] == [
        {"scan_subject", "lot_known"},
        *(codes for _s, _l, codes, _r in cases),
    ]


async def test_the_right_wristband_and_vial_scanned_at_the_prompts_start_the_dose(
    tmp_path: Path,
) -> None:
    async with trial_bed(tmp_path) as (path, config, sim):
        primary, secondary = os.openpty()
        os.set_blocking(primary, False)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "session", "start", "--config", str(path),
            stdin=secondary, stdout=secondary, stderr=secondary,
        )  # fmt: skip
        os.close(secondary)
        seen = bytearray()
        try:
            await _read_until(primary, b"Scan the patient's wristband", seen, 20)
            os.write(primary, f"{SUBJECT}\r".encode())  # a scanner types the label + Enter
            await _read_until(primary, b"Scan the vial's lot label", seen, 10)
            os.write(primary, f"{GOOD_LOT}\r".encode())
            await _read_until(primary, b"type 'yes' and Enter here:", seen, 20)
            checked = f"wristband {SUBJECT} and lot {GOOD_LOT} checked against the prescription"
            assert checked.encode() in seen, bytes(seen)
            os.write(primary, b"yes\n")
            assert await asyncio.wait_for(process.wait(), 20) == 0
            with contextlib.suppress(AssertionError):
                await _read_until(primary, b"confirmed by bedside terminal", seen, 2)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            os.close(primary)
        assert f"({SESSION_UL} µL cap, confirmed by bedside terminal)".encode() in seen
        status = await wait_status(config, lambda s: s["last_session"] is not None, 20)
        last = status["last_session"]
        # Ran to its cap: the host's predictive stop, never above it, at most one stop
        # latency of (estimated) flow below it (as test_service_pty's cap test).
        assert last["host_reason"] == "cap_predicted", last
        assert SESSION_UL - 30 <= last["delivered_ul"] <= SESSION_UL
        assert sim.truth().total_delivered_ul <= SESSION_UL
    allowed = [d for d in _start_decisions(config) if d["allowed"]]
    assert allowed, "the admitted start has its decision row"
    passed = {c["code"] for c in allowed[-1]["trace"]["constraints"] if c["passed"]}
    assert {"scan_subject", "lot_known", "lot_arm", "lot_cohort", "lot_strength"} <= passed
    assert "lot_expiry" in passed


async def test_a_remote_start_request_carries_the_scans_or_is_refused(tmp_path: Path) -> None:
    keys = remote.Keys()
    async with remote.bed(tmp_path, keys, trial_tables=_trial_tables("LOT-T")) as b:

        def request(counter: int, **scans: str) -> bytes:
            body = RequestStartBody(note="round 2", **scans)
            return remote.signed(
                keys.ward, CommandName.SESSION_REQUEST_START, body, counter=counter
            )

        bare = await b.station.command(request(1), stage="refused")
        assert bare["reason_code"] == "start_refused"
        assert "the patient's wristband was not scanned" in bare["reason"]
        assert "the vial's lot label was not scanned" in bare["reason"]
        other_cohort = await b.station.command(
            request(2, subject_id="TEST-001", lot_id="LOT-C4-01"), stage="refused"
        )
        assert (
            "lot LOT-C4-01 is for cohort c4, the subject is in cohort pilot"
            in (other_cohort["reason"])
        )
        right = request(3, subject_id="TEST-001", lot_id="LOT-T")
        waiting = await b.station.command(right, stage="awaiting_confirm")
        assert waiting["status"] == "accepted", waiting
        b.sim.apply(lambda m, t: m.press_confirm_button(now_ms=t))
        started = await b.station.reply(remote.command_id_of(right), stage="started")
        assert started["status"] == "accepted", started
        stop = remote.signed(keys.ward, CommandName.STOP, StopBody(), counter=4)
        assert (await b.station.command(stop))["stopped"] is True
        await wait_status(b.config, lambda s: s["last_session"] is not None, 5)
    refusals = [d for d in _start_decisions(b.config) if not d["allowed"]]
    assert [set(d["trace"]["refusal_codes"]) for d in refusals] == [
        {"scan_subject", "lot_known"},
        {"lot_cohort", "lot_strength"},
    ]
