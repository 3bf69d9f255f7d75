"""One MQTT identity per bed (docs/security.md C26): the client id defaults to the
device id, and an id that is unsafe on a broker is refused with a clear error."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.config import ConfigError, load_config


def _config(tmp_path: Path, mqtt_extra: str = "", device_id: str = "neb-0007") -> Path:
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "controller.toml"
    path.write_text(
        f'[device]\ndevice_id = "{device_id}"\nward = "3west"\nbed = "07"\n'
        f'[mqtt]\nhost = "broker.ward"\n{mqtt_extra}',
        encoding="utf-8",
    )
    return path


def test_client_id_defaults_to_the_device_id_so_beds_never_share_one(tmp_path: Path) -> None:
    seven = load_config(_config(tmp_path / "7"))
    eight = load_config(_config(tmp_path / "8", device_id="neb-0008"))
    assert seven.mqtt is not None
    assert eight.mqtt is not None
    assert seven.mqtt.client_id == "neb-0007"
    assert eight.mqtt.client_id == "neb-0008"


def test_an_explicit_client_id_is_kept(tmp_path: Path) -> None:
    config = load_config(_config(tmp_path, 'client_id = "ctl-bed-07"\n'))
    assert config.mqtt is not None
    assert config.mqtt.client_id == "ctl-bed-07"


@pytest.mark.parametrize("bad", ["", "3west/08", "bed+", "bed#", "a b", "x" * 65])
def test_an_unsafe_client_id_is_refused_naming_the_key(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config(_config(tmp_path, f'client_id = "{bad}"\n'))
    message = str(refused.value)
    assert "client_id" in message
    assert "1-64 characters" in message
