"""The storage floor: is there enough free disk for the ledger to keep every record?"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from controller.dosing import StorageStatus

__all__ = ["StorageReport", "check_storage_floor"]


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageReport:
    """Free bytes of the data directory's file system against the configured floor."""

    data_dir: Path
    free_bytes: int
    floor_bytes: int

    @property
    def ok(self) -> bool:
        """True while free space is at or above the floor."""
        return self.free_bytes >= self.floor_bytes

    @property
    def reason(self) -> str:
        """Why new sessions are refused (empty when ok)."""
        if self.ok:
            return ""
        return (
            f"free space on {self.data_dir} is {self.free_bytes // 1_000_000} MB, below the "
            f"floor of {self.floor_bytes // 1_000_000} MB; free disk space or move the data "
            "directory before starting new sessions"
        )

    def to_status(self) -> StorageStatus:
        """The dose engine's view of this report."""
        return StorageStatus(ok=self.ok, reason=self.reason)


def check_storage_floor(data_dir: Path, *, floor_bytes: int) -> StorageReport:
    """Report free bytes of `data_dir` (via `shutil.disk_usage`) against `floor_bytes`.

    The controller refuses new starts and raises an alarm while the report is not ok.
    A missing or unreadable directory reports 0 free bytes (fail safe).
    """
    if floor_bytes < 0:
        raise ValueError(f"floor_bytes must be >= 0, got {floor_bytes}")
    try:
        free_bytes = shutil.disk_usage(data_dir).free
    except OSError:
        free_bytes = 0
    return StorageReport(data_dir=data_dir, free_bytes=free_bytes, floor_bytes=floor_bytes)
