"""Running a ward station: the exposure rules, then uvicorn and the ward in one
task group.

Exposure: on a loopback address the page may be served over plain HTTP and
viewed without signing in (the station PC's own screen). On any other address
the station refuses to start unless it has TLS (`--https-cert`/`--https-key`) and a
sign-in method (a users file); then every request needs a signed-in nurse. The
reverse-proxy header is trusted only on loopback (the proxy is the only client
that can reach it there, and the proxy terminates TLS).
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import uvicorn

from controller.station._app import StationAuth, build_app
from controller.station._auth import Sessions, UsersFile
from controller.station._ward import StationWard
from controller.telemetry import EventSink, MqttSettings, WardModel, WardMonitor
from controller.telemetry._ack_signer import AckSigningKey

__all__ = ["Station", "StationConfigError", "StationOptions", "is_loopback"]


class StationConfigError(ValueError):
    """The station cannot start as configured; the message says how to fix it."""


def is_loopback(host: str) -> bool:
    """Whether `host` (a name or address to listen on) is loopback only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, kw_only=True)
class StationOptions:
    """Everything `nebuliser station` was told."""

    mqtt: MqttSettings
    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    ward: str | None = None
    users_file: Path | None = None
    proxy_header: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    signer: AckSigningKey | None = None
    title: str = "Ward station"
    push_interval_s: float = 0.25

    def check(self) -> None:
        """Refuse unsafe exposure, naming the option that fixes it."""
        loopback = is_loopback(self.listen_host)
        if (self.tls_cert is None) != (self.tls_key is None):
            raise StationConfigError("give both --https-cert and --https-key, or neither")
        if self.proxy_header and not loopback:
            raise StationConfigError(
                f"--auth-header is trusted only when listening on loopback (behind the "
                f"reverse proxy on the same host), not on {self.listen_host}"
            )
        if self.proxy_header and self.users_file:
            raise StationConfigError("choose one sign-in method: --users or --auth-header")
        if not loopback and self.tls_cert is None:
            raise StationConfigError(
                f"listening on {self.listen_host} (beyond loopback) needs TLS: "
                "add --https-cert FILE --https-key FILE"
            )
        if not loopback and self.users_file is None:
            raise StationConfigError(
                f"listening on {self.listen_host} (beyond loopback) needs sign-in: "
                "add --users FILE (create accounts with `nebuliser station add-user`)"
            )


def _check_tls(cert: Path, key: Path) -> None:
    """Load the page's certificate and key now, so a mistake is a clear message at
    start-up rather than a traceback from inside the web server."""
    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise StationConfigError(
            f"--https-cert {cert} / --https-key {key}: {exc}; give a PEM certificate and "
            "its private key (readable by this user)"
        ) from exc


class _Server(uvicorn.Server):
    """uvicorn, telling the station when Ctrl-C or SIGTERM arrives (so the page
    streams end at once instead of holding the graceful shutdown open)."""

    def __init__(self, config: uvicorn.Config, on_exit: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_exit = on_exit
        self._loop = asyncio.get_running_loop()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._loop.call_soon_threadsafe(self._on_exit)  # safe from a signal handler
        super().handle_exit(sig, frame)


class Station:
    """One running station; `url` is known once `started` is set."""

    def __init__(self, options: StationOptions) -> None:
        options.check()
        self.options = options
        users = UsersFile.load(options.users_file) if options.users_file else None
        loopback = is_loopback(options.listen_host)
        if users is not None and not users.hashes and not loopback:
            raise StationConfigError(
                f"no accounts in {users.path}: nobody could sign in; add one with "
                f"`nebuliser station --add-user NAME --users {users.path}`"
            )
        if options.tls_cert is not None and options.tls_key is not None:
            _check_tls(options.tls_cert, options.tls_key)
        self.auth = StationAuth(
            users=users,
            proxy_header=options.proxy_header,
            view_needs_sign_in=not loopback,
            secure_cookie=options.tls_cert is not None,
            sessions=Sessions(),
        )

        def monitor(model: WardModel, on_events: EventSink) -> WardMonitor:
            return WardMonitor(
                settings=options.mqtt,
                model=model,
                sender=options.signer.sender_id if options.signer else "ward-station",
                ward=options.ward,
                signer=options.signer,
                on_events=on_events,
            )

        self.ward = StationWard(
            monitor_factory=monitor,
            root_topic=options.mqtt.root_topic,
            signer=options.signer,
            push_interval_s=options.push_interval_s,
        )
        self.app = build_app(self.ward, self.auth, title=options.title)
        self.started = asyncio.Event()
        self.url = ""
        self._server: uvicorn.Server | None = None

    def request_stop(self) -> None:
        """Stop serving and close the MQTT connection."""
        self.ward.request_stop()
        if self._server is not None:
            self._server.should_exit = True

    async def run(self) -> None:
        """Serve until `request_stop()`."""
        options = self.options
        sock = socket.socket(
            socket.AF_INET6 if ":" in options.listen_host else socket.AF_INET, socket.SOCK_STREAM
        )
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((options.listen_host, options.listen_port))
        except OSError as exc:
            sock.close()
            raise StationConfigError(
                f"cannot listen on {options.listen_host}:{options.listen_port}: {exc.strerror}; "
                "choose another --listen HOST:PORT"
            ) from exc
        port = sock.getsockname()[1]
        scheme = "https" if options.tls_cert else "http"
        host = f"[{options.listen_host}]" if ":" in options.listen_host else options.listen_host
        self.url = f"{scheme}://{host}:{port}/"
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            ssl_certfile=str(options.tls_cert) if options.tls_cert else None,
            ssl_keyfile=str(options.tls_key) if options.tls_key else None,
            timeout_graceful_shutdown=2,
        )
        self._server = _Server(config, self.request_stop)
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self.ward.run())
            serving = tasks.create_task(self._server.serve(sockets=[sock]))
            # uvicorn has no started event to await: poll its flag (start-up only).
            while not self._server.started and not serving.done():  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            self.started.set()
            # Either side ending (request_stop, or uvicorn's own Ctrl-C handling) ends both.
            stopping = tasks.create_task(self.ward.stopping.wait())
            await asyncio.wait({serving, stopping}, return_when=asyncio.FIRST_COMPLETED)
            self.request_stop()
        sock.close()
