"""Data files are never created readable by everyone, whatever the caller's umask.

A controller started from a login shell inherits umask 022, and SQLite creates its
database (and the -wal/-shm files, with the database's mode) 0644: dose records and
audit logs readable by every local account. `serve` therefore narrows the process
umask to at least 027 (files 0640 at most, directories 0750), and the security
stores create their own files 0600 before SQLite opens them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

__all__ = ["DATA_UMASK", "create_private_file", "restrict_umask"]

#: No write for the group, nothing for others.
DATA_UMASK: Final = 0o027


def restrict_umask() -> int:
    """Add `DATA_UMASK` to the process umask (never widens it); returns the new umask."""
    current = os.umask(0)
    narrowed = current | DATA_UMASK
    os.umask(narrowed)
    return narrowed


def create_private_file(path: Path, mode: int = 0o600) -> None:
    """Create `path` with `mode` if it does not exist yet (an existing file is left
    as it is); the parent directory is created 0750."""
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        return
    os.fchmod(fd, mode)  # the umask may have narrowed it further; never wider
    os.close(fd)
