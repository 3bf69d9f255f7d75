"""The ward station's rules without a browser: accounts and password hashes, who
may listen where, what a tile hides, and the HTTP guards (real uvicorn, real
HTTP, a real broker; no controller needed)."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from controller.cli import main
from controller.station import (
    AckError,
    Station,
    StationConfigError,
    StationOptions,
    UsersFile,
    UsersFileError,
    acknowledged_by_label,
    alarm_action,
    hash_password,
    tile,
    verify_password,
)
from controller.station._view import bed_detail
from controller.telemetry import BedRow, DeviceIdentity, MqttSettings, WardModel, outbox_entry
from tests.support.mosquitto import MosquittoBroker

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


def test_password_hashes_are_salted_scrypt_and_verify() -> None:
    first, second = hash_password("night-shift-7"), hash_password("night-shift-7")
    assert first.startswith("scrypt$")
    assert first != second, "a fresh salt every time"
    assert verify_password("night-shift-7", first)
    assert not verify_password("night-shift-8", first)
    assert not verify_password("night-shift-7", "md5$abc")
    with pytest.raises(UsersFileError, match="at least 8"):
        hash_password("short")


def test_users_file_round_trip_and_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "users"
    users = UsersFile.load(path)
    users.set_password("j.smith", "correct horse")
    assert path.stat().st_mode & 0o077 == 0, "hashes are for the station's eyes only"
    loaded = UsersFile.load(path)
    assert loaded.check("j.smith", "correct horse")
    assert not loaded.check("j.smith", "wrong horse")
    assert not loaded.check("nobody", "correct horse")
    with pytest.raises(UsersFileError, match="not allowed"):
        users.set_password("j_smith", "correct horse")  # `_` separates name and station
    path.write_text("j.smith:plaintext\n")
    with pytest.raises(UsersFileError, match="line 1"):
        UsersFile.load(path)


def test_add_user_command_writes_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEBULISER_STATION_PASSWORD", "a long password")
    path = tmp_path / "users"
    assert main(["station", "--add-user", "a.nurse", "--users", str(path)]) == 0
    assert UsersFile.load(path).check("a.nurse", "a long password")


def mqtt() -> MqttSettings:
    return MqttSettings(host="127.0.0.1", port=1, client_id="station-test")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"listen_host": "0.0.0.0"}, "needs TLS"),
        (
            {"listen_host": "0.0.0.0", "tls_cert": Path("c"), "tls_key": Path("k")},
            "needs sign-in",
        ),
        ({"listen_host": "10.1.2.3", "proxy_header": "X-Remote-User"}, "only when listening"),
        ({"tls_cert": Path("c")}, "both --https-cert and --https-key"),
    ],
)
def test_beyond_loopback_needs_tls_and_sign_in(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(StationConfigError, match=message):
        StationOptions(mqtt=mqtt(), **changes).check()
    StationOptions(mqtt=mqtt()).check()  # loopback, plain HTTP: the station PC's own screen
    StationOptions(
        mqtt=mqtt(),
        listen_host="0.0.0.0",
        tls_cert=Path("c"),
        tls_key=Path("k"),
        users_file=Path("u"),
    ).check()


def test_unusable_tls_files_or_an_empty_users_file_are_clear_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    users = tmp_path / "users"
    UsersFile.load(users).set_password("j.smith", "correct horse")
    args = ["station", "--broker", "mqtt://127.0.0.1:1884", "--listen", "0.0.0.0:8443"]
    tls = ["--https-cert", str(tmp_path / "missing.crt"), "--https-key", str(tmp_path / "k")]
    assert main([*args, *tls, "--users", str(users)]) == 2
    assert "give a PEM certificate" in capsys.readouterr().err
    assert main([*args, *tls, "--users", str(tmp_path / "empty")]) == 2
    assert "no accounts in" in capsys.readouterr().err


def test_station_command_refuses_exposure_without_tls(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["station", "--broker", "mqtt://127.0.0.1:1884", "--listen", "0.0.0.0:8443"])
    assert code == 2
    assert "needs TLS" in capsys.readouterr().err


def test_silent_beds_hide_their_figures_and_say_since_when() -> None:
    row = BedRow(
        ward="W7",
        bed="B03",
        online=True,
        stale=True,
        last_seen_s=100.0,
        delivered_ul=1200,
        cap_ul=3000,
        flow_ul_min=600,
        running=True,
    )
    shown = tile(row, now_s=160.0, wall_now=NOW, acks=[], station_sender=None)
    assert shown["status"] == "nodata"
    assert shown["since_ms"] == int(NOW.timestamp() * 1000) - 60_000
    for figure in ("delivered_ul", "cap_ul", "flow_ul_min", "time_left_s"):
        assert figure not in shown, f"{figure} of a silent bed must not look current"
    row.stale = False
    shown = tile(row, now_s=160.0, wall_now=NOW, acks=[], station_sender=None)
    assert (shown["status"], shown["delivered_ul"], shown["time_left_s"]) == ("ok", 1200, 180.0)


def test_the_bed_detail_shows_the_newest_ledger_anchor() -> None:
    model = WardModel(root_topic="nebuliser/v1")
    entry = outbox_entry(
        DeviceIdentity(device_id="MN1-0042", ward="W7", bed="B03", boot_id="b"),
        root_topic="nebuliser/v1",
        schema="nebuliser.ledger_anchor",
        utc=NOW,
        ledger_id="ledger-1",
        last_event_seq=212,
        last_event_hash="ab" * 32,
        last_session_id=17,
        reason="ended",
    )
    model.feed(entry.topic, entry.build(5), now_s=0.0, retained=True)
    row = model.row("W7", "B03")
    assert row is not None
    detail = bed_detail(row, model.history("W7", "B03"), station_sender=None)
    assert detail["ledger_anchor"]["last_event_seq"] == 212
    assert detail["ledger_anchor"]["last_event_hash"] == "ab" * 32


def test_alarm_texts_come_from_the_alarm_table() -> None:
    assert alarm_action("device_head_disconnected").startswith("Reconnect the head")
    assert alarm_action("no_such_code") == ""
    assert acknowledged_by_label("j.smith_station-3west", station_sender="station-3west") == (
        "j.smith"
    )
    assert acknowledged_by_label("j.smith_other-station", station_sender="station-3west") == (
        "j.smith (other-station)"
    )
    assert acknowledged_by_label("remote_ward-a", station_sender=None) == "remote_ward-a"


@contextlib.asynccontextmanager
async def serving(broker: MosquittoBroker, tmp_path: Path) -> AsyncIterator[Station]:
    users = UsersFile.load(tmp_path / "users")
    users.set_password("j.smith", "correct horse")
    station = Station(
        StationOptions(
            mqtt=MqttSettings(host=broker.host, port=broker.port, client_id="station-rules"),
            listen_port=0,
            users_file=users.path,
        )
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 20)
        try:
            yield station
        finally:
            station.request_stop()


def request(
    url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, Any], str]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=10) as response:
            return (
                response.status,
                json.loads(response.read()),
                response.headers.get("Set-Cookie", ""),
            )
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read()), ""


def page_headers(url: str) -> dict[str, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return {name.lower(): value for name, value in response.headers.items()}


@pytest.mark.slow
async def test_acknowledging_needs_a_signed_in_nurse_and_a_signing_key(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    async with serving(mosquitto_broker, tmp_path) as station:
        base = station.url
        ack = {"ward": "W7", "bed": "B03", "alarm_code": "device_head_disconnected"}
        status, body, _ = await asyncio.to_thread(
            request, base + "api/ack", ack, {"X-Station": "1"}
        )
        assert (status, body["error"]) == (401, "sign in to acknowledge alarms")
        status, body, _ = await asyncio.to_thread(request, base + "api/ack", ack)
        assert status == 403, "a request without the page's header is refused (CSRF)"
        headers = await asyncio.to_thread(page_headers, base)
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert headers["x-content-type-options"] == "nosniff"
        status, body, _ = await asyncio.to_thread(
            request,
            base + "api/login",
            {"name": "j.smith", "password": "wrong horse"},
            {"X-Station": "1"},
        )
        assert status == 401
        status, body, cookie = await asyncio.to_thread(
            request,
            base + "api/login",
            {"name": "j.smith", "password": "correct horse"},
            {"X-Station": "1"},
        )
        assert status == 200
        assert "HttpOnly" in cookie
        assert "SameSite=strict" in cookie
        session = cookie.split(";", 1)[0]
        status, body, _ = await asyncio.to_thread(
            request, base + "api/me", None, {"Cookie": session}
        )
        assert (body["nurse"], body["can_acknowledge"]) == ("j.smith", False)
        status, body, _ = await asyncio.to_thread(
            request, base + "api/ack", ack, {"X-Station": "1", "Cookie": session}
        )
        # No signing key: refused, and nothing unsigned goes out instead.
        assert status == 409
        assert "unsigned acknowledgements are never sent" in body["error"]
        assert station.ward.monitor.acks_sent == 0
        with pytest.raises(AckError):
            station.ward.acknowledge(ward="W7", bed="B03", alarm_code="x", nurse="j.smith")


@pytest.mark.slow
async def test_reverse_proxy_header_names_the_nurse(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    station = Station(
        StationOptions(
            mqtt=MqttSettings(
                host=mosquitto_broker.host, port=mosquitto_broker.port, client_id="station-proxy"
            ),
            listen_port=0,
            proxy_header="X-Remote-User",
        )
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 20)
        try:
            _, me, _ = await asyncio.to_thread(
                request, station.url + "api/me", None, {"X-Remote-User": "a.nurse"}
            )
            assert (me["nurse"], me["sign_in"]) == ("a.nurse", "proxy")
            _, me, _ = await asyncio.to_thread(
                request, station.url + "api/me", None, {"X-Remote-User": "bad name;"}
            )
            assert me["nurse"] is None, "a name that cannot be signed is nobody"
            status, _, _ = await asyncio.to_thread(
                request,
                station.url + "api/login",
                {"name": "a.nurse", "password": "x" * 8},
                {"X-Station": "1"},
            )
            assert status == 400, "no passwords when the proxy signs nurses in"
        finally:
            station.request_stop()


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A throw-away certificate for 127.0.0.1 (the page's TLS, not the broker's)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "station.test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "page.crt", tmp_path / "page.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def tls_login(url: str, cafile: Path) -> tuple[int, str]:
    context = ssl.create_default_context(cafile=str(cafile))
    body = json.dumps({"name": "j.smith", "password": "correct horse"}).encode()
    req = urllib.request.Request(url, data=body, headers={"X-Station": "1"})
    with urllib.request.urlopen(req, timeout=10, context=context) as response:
        return response.status, response.headers.get("Set-Cookie", "")


@pytest.mark.slow
async def test_the_page_over_tls_sets_a_secure_cookie(
    mosquitto_broker: MosquittoBroker, tmp_path: Path
) -> None:
    cert, key = self_signed(tmp_path)
    users = UsersFile.load(tmp_path / "users")
    users.set_password("j.smith", "correct horse")
    station = Station(
        StationOptions(
            mqtt=MqttSettings(
                host=mosquitto_broker.host, port=mosquitto_broker.port, client_id="station-tls"
            ),
            listen_port=0,
            users_file=users.path,
            tls_cert=cert,
            tls_key=key,
        )
    )
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(station.run())
        await asyncio.wait_for(station.started.wait(), 20)
        try:
            assert station.url.startswith("https://127.0.0.1:")
            status, cookie = await asyncio.to_thread(tls_login, station.url + "api/login", cert)
            assert status == 200
            assert "Secure" in cookie
        finally:
            station.request_stop()
