"""One broker URL form and one set of TLS options for every command."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from controller.benchconfig import write_bench_config
from controller.brokerurl import (
    BrokerUrlError,
    TlsFiles,
    add_broker_options,
    broker_from_args,
    parse_broker_url,
)
from controller.cli import main
from controller.exitcodes import ExitCode


def test_urls_and_default_ports() -> None:
    assert parse_broker_url("mqtt://broker") == parse_broker_url("mqtt://broker:1883")
    secure = parse_broker_url("mqtts://broker.ward-a")
    assert (secure.host, secure.port, secure.tls) == ("broker.ward-a", 8883, TlsFiles())
    assert parse_broker_url("mqtt://[::1]:1884").host == "::1"
    assert parse_broker_url("mqtts://b:9000").url == "mqtts://b:9000"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("broker:1883", "mqtt://HOST[:PORT]"),  # the old `serve --broker host:port`
        ("tcp://broker", "not a broker URL"),
        ("mqtt://broker:port", "mqtt://HOST:PORT"),
        ("mqtt://user@broker", "their own options"),
        ("mqtt://broker/topic", "their own options"),
    ],
)
def test_other_forms_are_refused_with_the_fix(url: str, says: str) -> None:
    with pytest.raises(BrokerUrlError, match=says.replace("[", r"\[").replace("]", r"\]")):
        parse_broker_url(url)


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_broker_options(parser)
    return parser.parse_args(argv)


def test_tls_options_need_mqtts_and_existing_files(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x", encoding="utf-8")
    with pytest.raises(BrokerUrlError, match="use mqtts://"):
        broker_from_args(_args("--broker", "mqtt://b", "--tls-ca", str(ca)))
    with pytest.raises(BrokerUrlError, match="need --broker"):
        broker_from_args(_args("--tls-ca", str(ca)))
    with pytest.raises(BrokerUrlError, match="together"):
        broker_from_args(_args("--broker", "mqtts://b", "--tls-cert", str(ca)))
    with pytest.raises(BrokerUrlError, match="no such file"):
        broker_from_args(_args("--broker", "mqtts://b", "--tls-ca", str(tmp_path / "nope")))
    address = broker_from_args(_args("--broker", "mqtts://b", "--tls-ca", str(ca)))
    assert address is not None
    assert address.tls == TlsFiles(ca_file=ca)
    assert broker_from_args(_args()) is None


def test_serve_takes_the_same_url_and_refuses_mqtts_without_a_ca(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, _ = write_bench_config(tmp_path, port="/nonexistent/tty")
    assert main(["serve", "--config", str(path), "--broker", "broker:1883"]) == ExitCode.USAGE
    assert "mqtt://HOST[:PORT]" in capsys.readouterr().err
    assert main(["serve", "--config", str(path), "--broker", "mqtts://b"]) == ExitCode.USAGE
    assert "needs --tls-ca" in capsys.readouterr().err
