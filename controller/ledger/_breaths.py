"""Each BREATH report of a run (MN-1 ICD addendum 1.1 §3), kept for the per-breath strip.

A mixin of `Ledger`. The rows are an *estimate* beside the dose (`delivered_ul`), like
the run's breath summary: no limit reads them, they are not session events and not in
the events' hash chain. They are append-only and need the session's intent, like every
other row of a session. The runtime hands them over in batches (a few per transaction)
on the ledger's writer thread, so they never hold up the STOP path or a session row
(docs/decisions/0019-breath-strip-from-summaries.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from controller.dosing import Instant
from controller.ledger._database import Database, instant_from_row, utc_text

__all__ = ["BreathRecord", "BreathRowsMixin"]

_U16_MAX = 0xFFFF


@dataclass(frozen=True, slots=True, kw_only=True)
class BreathRecord:
    """One BREATH report counted for a run, as the ledger keeps it.

    The figures are the report's own (ICD units); `at` is when the host received it,
    which is the start of the *next* inspiration (the report comes then).
    """

    session_id: int
    """The run the report was counted for (the head may have said 0: its inspiration
    began just before the START)."""
    breath_no: int
    """The head's breath counter (0..65535, wraps)."""
    lost_before: int
    """Reports missing from the numbering just before this one (lost on the link)."""
    at: Instant
    insp_ms: int
    exp_ms: int
    tidal_ml: int
    peak_flow_ml_s: int
    aerosol_insp_dul: int
    """Aerosol released during the inspiration, in tenths of a µL."""
    aerosol_exp_dul: int
    """Aerosol released during the expiration (into the room), in tenths of a µL."""

    def __post_init__(self) -> None:
        if self.session_id < 1:
            raise ValueError(f"breath record needs a session_id >= 1, got {self.session_id}")
        if self.lost_before < 0:
            raise ValueError(f"lost_before must be >= 0, got {self.lost_before}")
        for name in (
            "breath_no",
            "insp_ms",
            "exp_ms",
            "tidal_ml",
            "peak_flow_ml_s",
            "aerosol_insp_dul",
            "aerosol_exp_dul",
        ):
            value = getattr(self, name)
            if not 0 <= value <= _U16_MAX:
                raise ValueError(f"{name} must be a u16 (0..65535) as in BREATH, got {value}")


_COLUMNS = (
    "session_id, breath_no, lost_before, utc, boot_id, monotonic_ns, insp_ms, exp_ms,"
    " tidal_ml, peak_flow_ml_s, aerosol_insp_dul, aerosol_exp_dul"
)


class BreathRowsMixin:
    """The per-breath rows of `Ledger` (schema: `breaths`, docs/ledger.md)."""

    _db: Database

    def record_breaths(self, rows: Sequence[BreathRecord]) -> None:
        """Append a batch of BREATH reports in one transaction (all or none).

        Raises `LedgerWriteError` when a row's session has no recorded intent.
        """
        if not rows:
            return
        with self._db.writing() as connection:
            connection.executemany(
                f"INSERT INTO breaths ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608 - fixed column list
                [
                    (
                        row.session_id,
                        row.breath_no,
                        row.lost_before,
                        utc_text(row.at.utc),
                        row.at.boot_id,
                        row.at.monotonic_ns,
                        row.insp_ms,
                        row.exp_ms,
                        row.tidal_ml,
                        row.peak_flow_ml_s,
                        row.aerosol_insp_dul,
                        row.aerosol_exp_dul,
                    )
                    for row in rows
                ],
            )

    def breaths(self, session_id: int) -> list[BreathRecord]:
        """The stored BREATH reports of a run, in the order received ([] when none:
        a version-1 head, or a run recorded before the ledger kept each breath)."""
        with self._db.reading() as connection:
            rows = connection.execute(
                f"SELECT {_COLUMNS} FROM breaths WHERE session_id = ? ORDER BY breath_id",  # noqa: S608 - fixed column list
                (session_id,),
            ).fetchall()
        return [
            BreathRecord(
                session_id=int(row[0]),
                breath_no=int(row[1]),
                lost_before=int(row[2]),
                at=instant_from_row(row[3], row[4], int(row[5])),
                insp_ms=int(row[6]),
                exp_ms=int(row[7]),
                tidal_ml=int(row[8]),
                peak_flow_ml_s=int(row[9]),
                aerosol_insp_dul=int(row[10]),
                aerosol_exp_dul=int(row[11]),
            )
            for row in rows
        ]
