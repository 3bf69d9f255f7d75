"""Who is on the other end of the control socket, and what they may do.

The kernel tells the server the peer's pid, uid and gid (`SO_PEERCRED`) and its
supplementary groups (`SO_PEERGROUPS`, Linux ≥ 4.13; `/proc/<pid>/status` as a
fallback). Every request carries them (`ControlRequest.peer`) and is logged with
them, so every local action is attributable to an account.

Starting a dose and confirming it at the terminal are *bedside* operations
(design rule 9): only the bedside terminal account may do them. `ControlAccess`
grants them to a peer that is in the configured bedside group, or — with no group
configured — runs as the controller's own account (a bench or a single-account
kiosk). Any other member of the socket's group may read status, stop and
acknowledge alarms, but not start or confirm. Pure apart from reading the peer.
"""

from __future__ import annotations

import grp
import os
import pwd
import socket
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

__all__ = [
    "BEDSIDE_OPS",
    "UNSAFE_SOCKET_MODE_BITS",
    "ControlAccess",
    "PeerCredentials",
    "peer_credentials",
    "resolve_group",
    "socket_mode_problem",
]

#: Operations that need the bedside role.
BEDSIDE_OPS: Final = frozenset({"session.start", "confirm"})
#: Any permission for "others" lets every local account drive the controller.
UNSAFE_SOCKET_MODE_BITS: Final = 0o007
_SO_PEERGROUPS: Final = getattr(socket, "SO_PEERGROUPS", 59)  # Linux value
_MAX_GROUPS: Final = 256


@dataclass(frozen=True, kw_only=True)
class PeerCredentials:
    """The connecting process as the kernel reports it."""

    pid: int
    uid: int
    gid: int
    groups: frozenset[int] = field(default_factory=frozenset)

    def record(self) -> dict[str, int | list[int] | str | None]:
        """JSON-friendly form for logs and records: pid, uid, gid, groups and the
        account name of the uid (None if this machine does not know the uid)."""
        return {
            "pid": self.pid,
            "uid": self.uid,
            "gid": self.gid,
            "groups": sorted(self.groups),
            "user": _user_name(self.uid),
        }


def _user_name(uid: int) -> str | None:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def _groups_from_proc(pid: int) -> frozenset[int]:
    try:
        text = Path(f"/proc/{pid}/status").read_text(encoding="ascii")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("Groups:"):
            return frozenset(int(g) for g in line.split()[1:])
    return frozenset()


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """Read pid/uid/gid and supplementary groups of a connected Unix-socket peer."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    pid, uid, gid = struct.unpack("3i", raw)
    try:
        packed = sock.getsockopt(socket.SOL_SOCKET, _SO_PEERGROUPS, 4 * _MAX_GROUPS)
        count = len(packed) // 4
        groups = frozenset(struct.unpack(f"{count}I", packed[: 4 * count]))
    except OSError:
        groups = _groups_from_proc(pid)
    return PeerCredentials(pid=pid, uid=uid, gid=gid, groups=groups | {gid})


def resolve_group(name_or_gid: str) -> int:
    """A group name or numeric gid → gid; ValueError naming the group if unknown."""
    if name_or_gid.isdigit():
        return int(name_or_gid)
    try:
        return grp.getgrnam(name_or_gid).gr_gid
    except KeyError:
        raise ValueError(
            f"bedside_group {name_or_gid!r} does not exist on this machine; create it "
            f"(groupadd {name_or_gid}) and add only the bedside terminal account to it"
        ) from None


def socket_mode_problem(mode: int) -> str | None:
    """Why `mode` is unsafe for the control socket, or None when it is acceptable."""
    if mode & ~0o777:
        return f"socket_mode {mode:#o} has bits beyond rwx for user/group/others"
    if mode & UNSAFE_SOCKET_MODE_BITS:
        return (
            f"socket_mode {mode:#o} gives every local account access to the control "
            "socket (start, stop, acknowledge); use 0o660 (owner and the socket's group) "
            "or 0o600"
        )
    if mode & 0o600 != 0o600:
        return f"socket_mode {mode:#o} denies the controller's own account; use 0o660 or 0o600"
    return None


@dataclass(frozen=True, kw_only=True)
class ControlAccess:
    """Which peers may perform the bedside operations."""

    owner_uid: int = field(default_factory=os.getuid)
    bedside_gid: int | None = None

    def refusal(self, op: str, peer: PeerCredentials | None) -> str | None:
        """Why `peer` may not perform `op` (None: allowed)."""
        if op not in BEDSIDE_OPS:
            return None
        if peer is None:
            return f"{op} needs the bedside role, and the caller could not be identified"
        if self.bedside_gid is not None:
            if self.bedside_gid in peer.groups:
                return None
            return (
                f"{op} needs the bedside role: account uid {peer.uid} is not in the bedside "
                f"group (gid {self.bedside_gid}); use the bedside terminal"
            )
        if peer.uid == self.owner_uid:
            return None
        return (
            f"{op} needs the bedside role: uid {peer.uid} is not the controller's account "
            "and no [control] bedside_group is configured"
        )
