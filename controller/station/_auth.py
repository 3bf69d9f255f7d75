"""Who is at the ward station: nurse accounts and signed-in sessions.

Two ways to know a nurse, both documented in docs/station.md:

* a users file (`--users FILE`): one `name:scrypt$n$r$p$salt$hash` line per nurse,
  written by `nebuliser station add-user`; hashes are stdlib `hashlib.scrypt`
  (n=2**14, r=8, p=1, 16-byte salt), compared in constant time;
* the hospital's reverse proxy (`--auth-header X-Remote-User`): the proxy signs
  the nurse in (single sign-on) and passes the name in a header. Only trusted when
  the station listens on loopback, where nothing but the proxy can reach it.

Signed-in sessions are random 256-bit tokens held in memory (a restart signs
everyone out) that expire after `SESSION_TTL_S` without use.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "NAME_PATTERN",
    "SESSION_TTL_S",
    "Sessions",
    "UsersFile",
    "UsersFileError",
    "hash_password",
    "operator_name",
    "verify_password",
]

#: A nurse's name as carried in the signed acknowledgement (`AlarmAckBody.acknowledged_by`).
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.-]{0,31}$")
SESSION_TTL_S = 8 * 3600  # one shift
_N, _R, _P = 2**14, 8, 1


class UsersFileError(ValueError):
    """The users file or a name in it is not usable; the message says how to fix it."""


def operator_name(raw: str) -> str:
    """A name usable in a signed acknowledgement, or UsersFileError naming the rule."""
    if not NAME_PATTERN.fullmatch(raw):
        raise UsersFileError(
            f"nurse name {raw!r} is not allowed: use 1-32 letters, digits, '.' or '-' "
            "(starting with a letter or digit), e.g. 'j.smith'"
        )
    return raw


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """`scrypt$n$r$p$salt$hash` (base64) for a new password."""
    if len(password) < 8:
        raise UsersFileError("a password needs at least 8 characters")
    salt = salt or secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=_N, r=_R, p=_P, dklen=32)
    encoded = [base64.b64encode(part).decode() for part in (salt, digest)]
    return f"scrypt${_N}${_R}${_P}${encoded[0]}${encoded[1]}"


def verify_password(password: str, stored: str) -> bool:
    """Whether `password` matches a `hash_password` string (constant-time compare)."""
    try:
        scheme, n, r, p, salt_b64, digest_b64 = stored.split("$")
        if scheme != "scrypt":
            return False
        salt, digest = base64.b64decode(salt_b64), base64.b64decode(digest_b64)
        computed = hashlib.scrypt(
            password.encode(), salt=salt, n=int(n), r=int(r), p=int(p), dklen=len(digest)
        )
    except ValueError:
        return False
    return hmac.compare_digest(computed, digest)


@dataclass(kw_only=True)
class UsersFile:
    """The nurse accounts: `name:hash` lines; `#` starts a comment."""

    path: Path
    hashes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> UsersFile:
        """Read and check the file; UsersFileError names the line that is wrong."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(path=path)
        except (OSError, UnicodeDecodeError) as exc:
            raise UsersFileError(f"users file {path}: {exc}") from exc
        hashes: dict[str, str] = {}
        for number, raw_line in enumerate(text.splitlines(), start=1):
            line = raw_line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not stored.startswith("scrypt$"):
                raise UsersFileError(
                    f"users file {path} line {number}: expected NAME:scrypt$..., "
                    "written by `nebuliser station add-user`"
                )
            hashes[operator_name(name)] = stored
        return cls(path=path, hashes=hashes)

    def check(self, name: str, password: str) -> bool:
        """Whether `name` exists and `password` is theirs."""
        stored = self.hashes.get(name)
        if stored is None:
            verify_password(password, hash_password("x" * 8))  # same time either way
            return False
        return verify_password(password, stored)

    def set_password(self, name: str, password: str) -> None:
        """Add or replace an account and rewrite the file (mode 0600)."""
        self.hashes[operator_name(name)] = hash_password(password)
        lines = ["# nebuliser ward-station accounts: name:scrypt hash (station add-user)"]
        lines += [f"{user}:{stored}" for user, stored in sorted(self.hashes.items())]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(self.path)


@dataclass(kw_only=True)
class Sessions:
    """Signed-in sessions: token -> (nurse, last use)."""

    ttl_s: float = SESSION_TTL_S
    _by_token: dict[str, tuple[str, float]] = field(default_factory=dict)

    def open(self, nurse: str, *, now_s: float | None = None) -> str:
        """A new session token for `nurse`."""
        token = secrets.token_urlsafe(32)
        self._by_token[token] = (nurse, time.monotonic() if now_s is None else now_s)
        return token

    def nurse(self, token: str | None, *, now_s: float | None = None) -> str | None:
        """Who holds `token` (refreshing it), or None if unknown or expired."""
        if token is None:
            return None
        now = time.monotonic() if now_s is None else now_s
        found = self._by_token.get(token)
        if found is None:
            return None
        if now - found[1] > self.ttl_s:
            del self._by_token[token]
            return None
        self._by_token[token] = (found[0], now)
        return found[0]

    def close(self, token: str | None) -> None:
        """Sign out."""
        if token is not None:
            self._by_token.pop(token, None)
