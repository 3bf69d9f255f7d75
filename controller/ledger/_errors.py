"""Typed ledger errors. The controller maps every `LedgerError` to "stop delivery + alarm"."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "LedgerCorruptError",
    "LedgerDiscontinuityError",
    "LedgerError",
    "LedgerExistsError",
    "LedgerMissingError",
    "LedgerQuarantinedError",
    "LedgerSchemaTooNewError",
    "LedgerSchemaUnexpectedError",
    "LedgerWriteError",
    "SessionStateError",
    "UnknownSessionError",
]


class LedgerError(Exception):
    """Base of every ledger error: the ledger cannot be trusted for this operation."""


class LedgerCorruptError(LedgerError):
    """The database file failed its integrity check or is not a ledger database.

    `quarantined_to` is where the damaged file was moved for forensics (None when the
    ledger was opened read-only and the file was left in place).
    """

    def __init__(self, *, path: Path, detail: str, quarantined_to: Path | None) -> None:
        self.path = path
        self.detail = detail
        self.quarantined_to = quarantined_to
        where = (
            f"it was moved aside to {quarantined_to} (with its -wal/-shm) for forensics"
            if quarantined_to is not None
            else "it was left in place (read-only open)"
        )
        super().__init__(
            f"ledger database {path} is corrupt ({detail}); {where}. Dose history is no "
            "longer available: stop delivery, restore the latest backup into place "
            "(see docs/ledger.md) or have a clinical engineer accept an empty ledger."
        )


class LedgerSchemaUnexpectedError(LedgerCorruptError):
    """The file's schema differs from what the migrations produce (an altered view,
    a dropped trigger, an extra table): its rules cannot be trusted, so it is treated
    like a corrupt file and moved aside."""


class LedgerMissingError(LedgerError):
    """There is no ledger file, and ledgers are only ever created on purpose."""

    def __init__(self, *, path: Path, detail: str = "") -> None:
        self.path = path
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"no dose ledger at {path}{extra}. A ledger is created only on purpose: on a new "
            "install run `nebuliser ledger init`; after a loss run `nebuliser ledger restore "
            "BACKUP` (see docs/ledger.md)."
        )


class LedgerExistsError(LedgerError):
    """`ledger init` found a ledger (or evidence of one) where it would create a new one."""


class LedgerDiscontinuityError(LedgerError):
    """The ledger is not the continuation of the one its anchors describe.

    `code` is machine-readable (`ledger_older_than_anchor`, `ledger_missing`, ...),
    `reason` says what was found, `action` is the one sentence saying what to do, and
    `quarantined_to` is where the suspect file was moved (None if there was no file).
    `alarm_raised` is False only for a new install that skipped `ledger init` (no
    trace of earlier use: nothing was lost, so no `ledger_discontinuity` alarm).
    """

    def __init__(
        self,
        *,
        path: Path,
        code: str,
        reason: str,
        action: str,
        quarantined_to: Path | None,
        alarm_raised: bool = True,
    ) -> None:
        self.path = path
        self.alarm_raised = alarm_raised
        self.code = code
        self.reason = reason
        self.action = action
        self.quarantined_to = quarantined_to
        kept = (
            f" The suspect file was moved aside to {quarantined_to} for forensics."
            if quarantined_to is not None
            else ""
        )
        super().__init__(f"ledger discontinuity ({code}): {reason}.{kept} {action}")


class LedgerSchemaTooNewError(LedgerError):
    """The database was written by newer software (schema version above the code's)."""

    def __init__(self, *, path: Path, found: int, supported: int) -> None:
        self.path = path
        self.found = found
        self.supported = supported
        super().__init__(
            f"ledger database {path} has schema version {found}, but this software knows "
            f"versions up to {supported}; install the newer controller release that wrote "
            "it (a downgrade cannot read it safely). The file was left untouched."
        )


class LedgerQuarantinedError(LedgerError):
    """A previous ledger was moved aside as corrupt and no replacement is in place.

    Creating a fresh, empty ledger silently would forget the subject's dose history,
    so it is refused until someone restores a backup or explicitly accepts it.
    """

    def __init__(self, *, path: Path, quarantined: tuple[Path, ...]) -> None:
        self.path = path
        self.quarantined = quarantined
        names = ", ".join(str(p) for p in quarantined)
        super().__init__(
            f"no ledger at {path}, but earlier ledgers were moved aside as corrupt ({names}). "
            "Restore the latest backup to this path, or move the quarantined files out of the "
            "data directory to accept an empty dose history (see docs/ledger.md)."
        )


class LedgerWriteError(LedgerError):
    """A write did not commit (disk full, I/O error, locked file); nothing was recorded."""


class UnknownSessionError(LedgerError):
    """No intent is recorded for this session id."""


class SessionStateError(LedgerError):
    """The operation does not fit the session's recorded state (e.g. reconcile an open one)."""
