"""Ed25519 key files.

- Private key: PKCS#8 PEM, unencrypted, file mode 0600 (protect it with the
  file system and keep it off the controller: controllers hold public keys only).
- Public key: one line of text, ``ed25519:`` followed by the standard base64 of the
  32 raw key bytes. The same text goes into `SecuritySettings.senders[].public_key`.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path
from typing import TYPE_CHECKING

# cryptography (~10 MiB) is imported where a key is used, not by the service at start-up:
# a controller without signed commands or prescriptions never loads it (issue 14).
if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "KeyFileError",
    "generate_key_files",
    "load_private_key",
    "load_public_key_file",
    "public_key_from_text",
    "public_key_to_text",
]

_PUBLIC_PREFIX = "ed25519:"
_MAX_KEY_FILE_BYTES = 4096


class KeyFileError(ValueError):
    """A key file or key text could not be used; the message says which and why."""


def public_key_to_text(key: Ed25519PublicKey) -> str:
    """``ed25519:<base64 of the 32 raw bytes>``."""
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return _PUBLIC_PREFIX + base64.b64encode(raw).decode("ascii")


def public_key_from_text(text: str) -> Ed25519PublicKey:
    """Parse ``ed25519:<base64>``; raises KeyFileError with the reason."""
    stripped = text.strip()
    if not stripped.startswith(_PUBLIC_PREFIX):
        raise KeyFileError(
            f"public key {stripped[:20]!r}... does not start with {_PUBLIC_PREFIX!r}; "
            "use the .pub file written by `nebuliser keys generate`"
        )
    try:
        raw = base64.b64decode(stripped[len(_PUBLIC_PREFIX) :], validate=True)
    except binascii.Error as exc:
        raise KeyFileError(f"public key is not valid base64: {exc}") from exc
    if len(raw) != 32:
        raise KeyFileError(f"an Ed25519 public key has 32 bytes, this one has {len(raw)}")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PublicKey,
    )

    return Ed25519PublicKey.from_public_bytes(raw)


def load_public_key_file(path: Path) -> Ed25519PublicKey:
    """Read a ``.pub`` file written by `generate_key_files`."""
    try:
        text = path.read_text(encoding="ascii")[:_MAX_KEY_FILE_BYTES]
    except (OSError, UnicodeDecodeError) as exc:
        raise KeyFileError(f"cannot read public key file {path}: {exc}") from exc
    return public_key_from_text(text)


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """Read a PKCS#8 PEM Ed25519 private key; refuses group/world-readable files."""
    try:
        mode = path.stat().st_mode
        if mode & 0o077:
            raise KeyFileError(
                f"private key {path} is readable by group or others (mode {mode & 0o777:o}); "
                f"fix with: chmod 600 {path}"
            )
        pem = path.read_bytes()[:_MAX_KEY_FILE_BYTES]
    except OSError as exc:
        raise KeyFileError(f"cannot read private key file {path}: {exc}") from exc
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFileError(f"{path} is not an unencrypted PEM private key: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise KeyFileError(f"{path} holds a {type(key).__name__}, not an Ed25519 key")
    return key


def generate_key_files(*, out_dir: Path, name: str) -> tuple[Path, Path]:
    """Create ``NAME.key`` (mode 0600) and ``NAME.pub`` in `out_dir`; never overwrites.

    Returns (private_path, public_path).
    """
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name, e.g. ward-3west")
    out_dir.mkdir(parents=True, exist_ok=True)
    private_path = out_dir / f"{name}.key"
    public_path = out_dir / f"{name}.pub"
    for existing in (private_path, public_path):
        if existing.exists():
            raise KeyFileError(f"{existing} already exists; refusing to overwrite a key")
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see above
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # O_EXCL + mode 0600 at creation: the key is never readable by others, not even briefly.
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.chmod(private_path, 0o600)  # the umask cannot widen it, but be explicit
    public_path.write_text(public_key_to_text(key.public_key()) + "\n", encoding="ascii")
    return private_path, public_path
