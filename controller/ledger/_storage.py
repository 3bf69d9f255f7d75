"""Free disk for the ledger: the storage floor, the emergency level, the end-record reserve.

Three levels (`classify_storage`, a pure function):

- OK: free space at or above the floor.
- BELOW_FLOOR: new sessions are refused; a running session finishes normally, because
  its end record is covered by the reserve file.
- EMERGENCY: free space below the emergency level, or the reserve is gone (already
  spent, or could not be allocated): a running session must be stopped now with the
  stop reason `storage_emergency`, while there is still room to record its end.

The reserve (`ReserveFile`) is an ordinary file of `reserve_bytes` fully allocated
blocks in the data directory. When a write of an end record fails with "disk full",
the ledger deletes the reserve and writes the record again (docs/decisions/
0012-end-record-reserve.md explains why a file rather than SQLite page reservation).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from controller.dosing import StorageStatus

__all__ = [
    "RESERVE_FILE_NAME",
    "ReserveFile",
    "StorageLevel",
    "StorageReport",
    "check_storage_floor",
    "classify_storage",
]

RESERVE_FILE_NAME: Final = "ledger.reserve"
_CHUNK_BYTES: Final = 1 << 20


class StorageLevel(StrEnum):
    """How much room the ledger has left (see the module docstring for what each means)."""

    OK = "ok"
    BELOW_FLOOR = "below_floor"
    EMERGENCY = "emergency"


def classify_storage(
    *, free_bytes: int, floor_bytes: int, emergency_bytes: int, reserve_intact: bool
) -> StorageLevel:
    """The storage level for these readings (pure; the runtime calls it every check).

    EMERGENCY when free space is below `emergency_bytes` or the reserve is not intact;
    BELOW_FLOOR when below `floor_bytes`; OK otherwise.
    """
    if emergency_bytes > floor_bytes:
        raise ValueError(
            f"the emergency level ({emergency_bytes} B) must not be above the floor "
            f"({floor_bytes} B)"
        )
    if free_bytes < emergency_bytes or not reserve_intact:
        return StorageLevel.EMERGENCY
    if free_bytes < floor_bytes:
        return StorageLevel.BELOW_FLOOR
    return StorageLevel.OK


class ReserveFile:
    """Disk space held back for end records: `<data-dir>/ledger.reserve`."""

    def __init__(self, *, data_dir: Path, size_bytes: int) -> None:
        if size_bytes < 0:
            raise ValueError(f"reserve size must be >= 0, got {size_bytes}")
        self.path = data_dir / RESERVE_FILE_NAME
        self.size_bytes = size_bytes

    @property
    def intact(self) -> bool:
        """True when the reserve file holds its full size (or no reserve is configured)."""
        if self.size_bytes == 0:
            return True
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return stat.st_size >= self.size_bytes and stat.st_blocks * 512 >= self.size_bytes

    def ensure(self) -> bool:
        """Allocate the reserve if it is missing or short; True when it is intact after.

        Blocks are really allocated (posix_fallocate, else written zeros), so the space
        cannot be taken by other files; a partial reserve is removed, not kept.
        """
        if self.intact:
            return True
        temp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _allocate(fd, self.size_bytes)
                os.fsync(fd)
            finally:
                os.close(fd)
            temp.replace(self.path)
        except OSError:
            temp.unlink(missing_ok=True)
            return False
        return self.intact

    def release(self) -> bool:
        """Delete the reserve to make room for an end record; False if there was none."""
        try:
            self.path.unlink()
        except FileNotFoundError:
            return False
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return True


def _allocate(fd: int, size_bytes: int) -> None:
    try:
        os.posix_fallocate(fd, 0, size_bytes)
    except OSError as exc:
        if exc.errno not in (95, 22):  # EOPNOTSUPP, EINVAL: fall back to writing zeros
            raise
        zeros = bytes(_CHUNK_BYTES)
        left = size_bytes
        while left > 0:
            left -= os.write(fd, zeros[: min(left, _CHUNK_BYTES)])


@dataclass(frozen=True, slots=True, kw_only=True)
class StorageReport:
    """Free bytes of the data directory's file system against the configured floor."""

    data_dir: Path
    free_bytes: int
    floor_bytes: int
    emergency_bytes: int = 0
    reserve_intact: bool = True

    @property
    def level(self) -> StorageLevel:
        """OK, BELOW_FLOOR (refuse new starts) or EMERGENCY (stop the running session)."""
        return classify_storage(
            free_bytes=self.free_bytes,
            floor_bytes=self.floor_bytes,
            emergency_bytes=min(self.emergency_bytes, self.floor_bytes),
            reserve_intact=self.reserve_intact,
        )

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


def check_storage_floor(
    data_dir: Path,
    *,
    floor_bytes: int,
    emergency_bytes: int = 0,
    reserve: ReserveFile | None = None,
) -> StorageReport:
    """Report free bytes of `data_dir` (via `shutil.disk_usage`) against `floor_bytes`.

    The controller refuses new starts and raises an alarm while the report is not ok;
    `report.level` adds the emergency level and the reserve (EMERGENCY: stop the
    running session, reason `storage_emergency`). A missing or unreadable directory
    reports 0 free bytes (fail safe).
    """
    if floor_bytes < 0:
        raise ValueError(f"floor_bytes must be >= 0, got {floor_bytes}")
    try:
        free_bytes = shutil.disk_usage(data_dir).free
    except OSError:
        free_bytes = 0
    return StorageReport(
        data_dir=data_dir,
        free_bytes=free_bytes,
        floor_bytes=floor_bytes,
        emergency_bytes=emergency_bytes,
        reserve_intact=True if reserve is None else reserve.intact,
    )
