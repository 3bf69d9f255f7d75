"""`nebuliser report plot`: valid PNGs of the requested size, and a clear error when
matplotlib (the optional extra `plots`) is missing."""

from __future__ import annotations

import struct
import sys
from datetime import date
from pathlib import Path

import pytest

from controller.cli import main
from controller.config import load_config
from controller.exitcodes import ExitCode
from controller.ledger import Ledger
from controller.reports import (
    CoursePlotData,
    PlotsUnavailableError,
    plot_session,
    read_progress,
    read_sessions,
    report_context,
)

from .conftest import PER_ML, SUBJECT, Course

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, after checking the signature and CRC."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, "not a PNG file"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    import zlib  # noqa: PLC0415 - only this check needs it

    (crc,) = struct.unpack(">I", data[16 + length : 20 + length])
    assert crc == zlib.crc32(data[12 : 16 + length])
    assert data[-8:-4] == b"IEND"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_session_plot_is_a_png_of_the_requested_size(course: Course, tmp_path: Path) -> None:
    out = tmp_path / "session2.png"
    args = ["report", "plot", "--session", "2", "-o", str(out), "--width", "900"]
    assert main([*args, "--height", "500", "--config", str(course.config_path)]) == 0
    assert png_size(out) == (900, 500)


def test_course_plot_default_size_and_daily_doses(course: Course, tmp_path: Path) -> None:
    out = tmp_path / "course.png"
    args = ["report", "plot", "--subject", SUBJECT, "-o", str(out)]
    assert main([*args, "--config", str(course.config_path)]) == 0
    assert png_size(out) == (1200, 700)
    config = load_config(course.config_path)
    context = report_context(config)
    with Ledger.open(course.ledger_path, read_only=True) as ledger:
        data = CoursePlotData.from_sessions(read_sessions(ledger, subject_id=SUBJECT), context)
    assert data.days == (date(2026, 11, 20), date(2026, 11, 21), date(2026, 11, 22))
    per_ul = PER_ML / 1000
    assert data.delivered_dose == pytest.approx((2990 * per_ul, 1500 * per_ul, 1000 * per_ul))
    assert data.unknown_dose == pytest.approx((0.0, 0.0, 3000 * per_ul))
    assert context.daily_dose_limit == pytest.approx(3000 * per_ul)


def test_session_without_progress_samples_still_plots(course: Course, tmp_path: Path) -> None:
    with Ledger.open(course.ledger_path, read_only=True) as ledger:
        refused = read_sessions(ledger, subject_id=SUBJECT)[2]
        assert read_progress(ledger, refused.session_id) == []
        out = tmp_path / "refused.png"
        plot_session(refused, [], out, size_px=(640, 480))
    assert png_size(out) == (640, 480)


def test_missing_matplotlib_names_the_extra(
    course: Course, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A None entry in sys.modules makes the import fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with Ledger.open(course.ledger_path, read_only=True) as ledger:
        session = read_sessions(ledger)[0]
    with pytest.raises(PlotsUnavailableError, match=r"uv sync --extra plots"):
        plot_session(session, [], tmp_path / "x.png")
    args = ["report", "plot", "--session", "1", "-o", str(tmp_path / "y.png")]
    assert main([*args, "--config", str(course.config_path)]) == ExitCode.MISSING_EXTRA
    assert not (tmp_path / "y.png").exists()
