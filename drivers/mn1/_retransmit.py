"""Commands waiting for their answer: retransmission and failure (ICD §6), sans-IO.

A command is written once and tracked under its seq. Unanswered after
`retransmit_after_ms`, the SAME frame (same seq) is written again — the device
answers a repeat without acting twice (ICD §5.6) — up to `max_retransmits` times;
one more period without an answer and the command has failed. An answer matches
by `ack_seq`, and only of the right kind: IDENT answers HELLO, ACK/NAK the rest.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._events import Command, CommandFailed
from ._messages import Ack, Hello, Ident, Nak

__all__ = ["Outstanding", "OutstandingCommands"]


@dataclass(slots=True, kw_only=True)
class Outstanding:
    """One command on the wire without an answer yet."""

    command: Command
    frame: bytes
    transmissions: int
    due_ms: int  # next retransmission, or failure once transmissions > max_retransmits

    def failed(self, seq: int, now_ms: int, *, reason: str) -> CommandFailed:
        """The event that says this command failed."""
        return CommandFailed(
            at_ms=now_ms,
            seq=seq,
            command=self.command,
            reason=reason,
            transmissions=self.transmissions,
        )


class OutstandingCommands:
    """The commands waiting for an answer, by seq, with their retransmission timers."""

    def __init__(self, *, retransmit_after_ms: int, max_retransmits: int) -> None:
        """No command outstanding."""
        self.retransmit_after_ms = retransmit_after_ms
        self.max_retransmits = max_retransmits
        self._by_seq: dict[int, Outstanding] = {}

    @property
    def seqs(self) -> tuple[int, ...]:
        """Seqs of commands still waiting for an answer, oldest first."""
        return tuple(self._by_seq)

    def deadlines(self) -> list[int]:
        """When each command is next due (retransmission or failure)."""
        return [entry.due_ms for entry in self._by_seq.values()]

    def track(self, seq: int, command: Command, frame: bytes, now_ms: int) -> None:
        """`frame` (command `seq`) was written for the first time at `now_ms`."""
        self._by_seq[seq] = Outstanding(
            command=command,
            frame=frame,
            transmissions=1,
            due_ms=now_ms + self.retransmit_after_ms,
        )

    def due(self, now_ms: int) -> tuple[list[bytes], list[tuple[int, Outstanding, str]]]:
        """Frames to write again now, and the commands that failed now (seq, entry, why)."""
        resend: list[bytes] = []
        failed: list[tuple[int, Outstanding, str]] = []
        for seq, entry in list(self._by_seq.items()):
            if entry.due_ms > now_ms:
                continue
            if entry.transmissions > self.max_retransmits:
                del self._by_seq[seq]
                why = (
                    f"no answer after {entry.transmissions} transmissions "
                    f"{self.retransmit_after_ms} ms apart"
                )
                failed.append((seq, entry, why))
                continue
            resend.append(entry.frame)
            entry.transmissions += 1
            entry.due_ms = now_ms + self.retransmit_after_ms
        return resend, failed

    def match(self, answer: Ack | Nak | Ident) -> Outstanding | None:
        """The command `answer` answers, no longer outstanding; None if it answers none."""
        entry = self._by_seq.get(answer.ack_seq)
        if entry is None:
            return None  # a late answer to a retransmission we already matched, or noise
        if isinstance(entry.command, Hello) != isinstance(answer, Ident):
            return None  # IDENT answers only HELLO; ACK/NAK never do
        del self._by_seq[answer.ack_seq]
        return entry

    def take_all(self) -> dict[int, Outstanding]:
        """Every outstanding command, by seq (none is outstanding afterwards)."""
        taken, self._by_seq = self._by_seq, {}
        return taken
