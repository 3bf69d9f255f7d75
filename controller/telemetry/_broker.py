"""A private Mosquitto broker: loopback only, a free port, persistence in a working
directory, and stop / SIGKILL / restart on the SAME port (so tests can simulate a
broker crash). `nebuliser demo` and the tests use it; a ward uses its own broker
(config/mosquitto/). Never the machine's shared broker on 1883."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

__all__ = ["MosquittoBroker", "MosquittoMissingError", "find_mosquitto", "free_loopback_port"]

_INSTALL_HINT = "install it (Debian/Ubuntu: apt-get install mosquitto) or put it on PATH"


class MosquittoMissingError(RuntimeError):
    """The `mosquitto` binary is not installed."""


def find_mosquitto() -> str | None:
    """Path of the `mosquitto` binary (PATH, then /usr/sbin), or None."""
    found = shutil.which("mosquitto")
    if found is not None:
        return found
    return "/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None


def free_loopback_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class MosquittoBroker:
    """One `mosquitto` process with a generated configuration.

    Use as `async with MosquittoBroker(workdir=tmp_path) as broker:` (or the
    synchronous `start()` / `stop()`); `kill()` sends SIGKILL, `restart()` starts it
    again on the same port with the same persistence file.
    """

    def __init__(
        self,
        *,
        workdir: Path,
        port: int | None = None,
        max_queued_messages: int = 100_000,
        persistence: bool = True,
        extra_config: Sequence[str] = (),
    ) -> None:
        binary = find_mosquitto()
        if binary is None:
            raise MosquittoMissingError(f"the 'mosquitto' broker is not installed; {_INSTALL_HINT}")
        self._binary = binary
        self.workdir = workdir
        self.port = port if port is not None else free_loopback_port()
        if self.port == 1883:
            raise ValueError(
                "a private broker must not use port 1883 (the machine's shared broker)"
            )
        self.host = "127.0.0.1"
        self.max_queued_messages = max_queued_messages
        # False: a restart forgets retained messages and queued QoS 1 messages, like a
        # ward broker installed with Mosquitto's defaults.
        self.persistence = persistence
        self.extra_config = tuple(extra_config)
        self.config_path = workdir / "mosquitto.conf"
        self.log_path = workdir / "mosquitto.log"
        self._process: subprocess.Popen[bytes] | None = None
        self._write_config()

    def _write_config(self) -> None:
        persistence = self.workdir / "persistence"
        persistence.mkdir(parents=True, exist_ok=True)
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            f"persistence {'true' if self.persistence else 'false'}",
            f"persistence_location {persistence}/",
            "autosave_interval 1",
            "set_tcp_nodelay true",
            # The default (1000) drops QoS 1 messages for a subscriber that falls
            # behind a backlog burst; a ward broker needs the same raise (docs/mqtt.md).
            f"max_queued_messages {self.max_queued_messages}",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # Running as root, mosquitto would switch to user 'mosquitto', which
            # cannot write the test's temporary directory.
            lines.append("user root")
        lines.extend(self.extra_config)
        self.config_path.write_text("\n".join(lines) + "\n")

    @property
    def url(self) -> str:
        """`mqtt://127.0.0.1:<port>`."""
        return f"mqtt://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the broker process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, *, timeout_s: float = 10.0) -> None:
        """Start the broker and wait until it accepts TCP connections."""
        if self.running:
            return
        log = self.log_path.open("ab")
        try:
            # S603: the binary is mosquitto found on PATH, the argument our own config file.
            self._process = subprocess.Popen(  # noqa: S603
                [self._binary, "-c", str(self.config_path)],
                stdout=log,
                stderr=log,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._process.returncode} on port {self.port}; "
                    f"see {self.log_path}:\n{self.log_path.read_text(errors='replace')[-2000:]}"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection((self.host, self.port), timeout=0.2),
            ):
                return
            time.sleep(0.02)
        self.kill()
        raise RuntimeError(f"mosquitto did not accept connections on {self.port} in {timeout_s}s")

    def stop(self) -> None:
        """Stop gracefully (SIGTERM; it saves its persistence file)."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def kill(self) -> None:
        """SIGKILL the broker, as a crash or power cut would."""
        if self._process is None:
            return
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Start again on the same port (after `kill()` or `stop()`)."""
        self.start()

    async def __aenter__(self) -> Self:
        self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
