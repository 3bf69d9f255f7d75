"""Helpers to run the shipped hardened Mosquitto config on a free loopback port."""

from __future__ import annotations

import contextlib
import getpass
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

REPO = Path(__file__).resolve().parents[2]
HARDENED_CONF = REPO / "config" / "mosquitto" / "mosquitto-hardened.conf"
ACL_FILE = REPO / "config" / "mosquitto" / "nebuliser.acl"
DEV_CONF = REPO / "config" / "mosquitto" / "mosquitto-dev.conf"
MAKE_TEST_CA = REPO / "scripts" / "make-test-ca"
TIMEOUT_S = 5.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_pki(out: Path, *, ca_name: str, extra: list[str]) -> Path:
    subprocess.run(
        [sys.executable, str(MAKE_TEST_CA), "--out", str(out), "--ca-name", ca_name, *extra],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return out


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) >= 1, f"hardened config no longer contains {old!r}"
    return text.replace(old, new)


def hardened_config_for_test(*, port: int, pki: Path, workdir: Path) -> Path:
    """The shipped config with only port, paths, user and log sink rewritten."""
    text = HARDENED_CONF.read_text()
    shutil.copy(ACL_FILE, workdir / "nebuliser.acl")
    (workdir / "persist").mkdir()
    text = _replace_once(text, "listener 8883\n", f"listener {port} 127.0.0.1\n")
    text = _replace_once(text, "/etc/mosquitto/certs/nebuliser/", f"{pki}/")
    text = _replace_once(text, "/etc/mosquitto/nebuliser.acl", str(workdir / "nebuliser.acl"))
    text = _replace_once(text, "/var/lib/mosquitto/", f"{workdir / 'persist'}/")
    text = _replace_once(text, "user mosquitto\n", f"user {getpass.getuser()}\n")
    text = _replace_once(text, "log_dest syslog\n", f"log_dest file {workdir / 'mosquitto.log'}\n")
    conf = workdir / "mosquitto.conf"
    conf.write_text(text)
    return conf


@contextlib.contextmanager
def running_broker(conf: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen(
        [mosquitto, "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        deadline = time.monotonic() + TIMEOUT_S
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode() if proc.stdout else ""
                raise RuntimeError(f"mosquitto exited with {proc.returncode}: {out}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("mosquitto did not open its port")
            time.sleep(0.05)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout:
            proc.stdout.close()


@dataclass
class Peer:
    """A paho client with a certificate (or none), recording what it receives."""

    port: int
    ca: Path
    cert_stem: Path | None
    tls: bool = True
    client_id: str | None = None  # None: a random one
    received: list[tuple[str, bytes]] = field(default_factory=list)
    _connected: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)
    _subscribed: threading.Event = field(default_factory=threading.Event)
    _got: threading.Condition = field(default_factory=threading.Condition)
    client: mqtt.Client | None = None

    def connect(self) -> bool:
        """True only if the broker answered CONNACK success within the timeout."""
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id or f"test-{uuid.uuid4().hex[:12]}",
            protocol=mqtt.MQTTv5,
        )
        if self.tls:
            context = ssl.create_default_context(cafile=str(self.ca))
            if self.cert_stem is not None:
                context.load_cert_chain(f"{self.cert_stem}.crt", f"{self.cert_stem}.key")
            client.tls_set_context(context)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client
        client.connect("localhost", self.port, keepalive=10)
        client.loop_start()
        deadline = time.monotonic() + TIMEOUT_S
        while time.monotonic() < deadline:
            if self._connected.is_set():
                return True
            if self._done.is_set():
                return False
            time.sleep(0.01)
        return False

    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: Properties | None
    ) -> None:
        if rc.is_failure:
            self._done.set()
        else:
            self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._done.set()

    @property
    def disconnected(self) -> bool:
        """True once the broker (or we) ended the connection."""
        return self._done.is_set()

    def _on_subscribe(self, *_args: object) -> None:
        self._subscribed.set()

    def _on_message(self, _c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        with self._got:
            self.received.append((message.topic, bytes(message.payload)))
            self._got.notify_all()

    def subscribe(self, topic: str) -> None:
        assert self.client is not None
        self._subscribed.clear()
        self.client.subscribe(topic, qos=1)
        assert self._subscribed.wait(TIMEOUT_S), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(TIMEOUT_S)

    def wait_for(self, topic: str) -> list[tuple[str, bytes]]:
        """Wait until a message on `topic` arrives; return everything received so far."""
        with self._got:
            ok = self._got.wait_for(
                lambda: any(t == topic for t, _ in self.received), timeout=TIMEOUT_S
            )
        assert ok, f"marker on {topic} never arrived; got {self.received}"
        return list(self.received)

    def wait_until(
        self, done: Callable[[list[tuple[str, bytes]]], bool], what: str
    ) -> list[tuple[str, bytes]]:
        """Wait until `done(received)` holds; return everything received so far."""
        with self._got:
            ok = self._got.wait_for(lambda: done(self.received), timeout=TIMEOUT_S)
        assert ok, f"{what} never arrived; got {self.received}"
        return list(self.received)

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()


_CONNECT_3_1_1 = bytes.fromhex("100f00044d5154540402003c0003746573")  # CONNECT, client id "tes"


def connack_for_client_id(*, port: int, ca: Path, cert_stem: Path, client_id: bytes = b"") -> bytes:
    """The CONNACK (b"" when the broker hangs up without one) a certified client gets
    when it connects (MQTT 3.1.1, clean session) with these raw client id bytes."""
    body = bytes.fromhex("00044d5154540402003c") + len(client_id).to_bytes(2, "big") + client_id
    assert len(body) < 128, "one-byte remaining length only"
    context = ssl.create_default_context(cafile=str(ca))
    context.load_cert_chain(f"{cert_stem}.crt", f"{cert_stem}.key")
    with (
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as sock,
    ):
        sock.sendall(bytes([0x10, len(body)]) + body)
        try:
            return sock.recv(4)
        except (ConnectionError, ssl.SSLError):
            return b""


def raw_connect(*, port: int, ca: Path, cert_stem: Path | None, tls: bool = True) -> bool:
    """One MQTT 3.1.1 CONNECT over a plain socket (optionally TLS); True only for a
    CONNACK with return code 0. Every socket is closed, whatever fails."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT_S) as raw:
            if not tls:
                raw.sendall(_CONNECT_3_1_1)
                return raw.recv(4) == b"\x20\x02\x00\x00"
            context = ssl.create_default_context(cafile=str(ca))
            if cert_stem is not None:
                context.load_cert_chain(f"{cert_stem}.crt", f"{cert_stem}.key")
            with context.wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(_CONNECT_3_1_1)
                return sock.recv(4) == b"\x20\x02\x00\x00"
    except (OSError, ssl.SSLError):
        return False
