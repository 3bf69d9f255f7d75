"""The ward station: a web page a nurse works from, fed by the same ward model as
`nebuliser monitor` (controller.telemetry's `WardModel`), with sign-in and signed
alarm acknowledgements. Runs on a station PC or server, not on the bedside Pi.
See docs/station.md."""

from controller.station._app import StationAuth, build_app
from controller.station._auth import (
    Sessions,
    UsersFile,
    UsersFileError,
    hash_password,
    operator_name,
    verify_password,
)
from controller.station._server import Station, StationConfigError, StationOptions, is_loopback
from controller.station._view import AckStatus, acknowledged_by_label, alarm_action, tile
from controller.station._ward import AckError, StationWard

__all__ = [
    "AckError",
    "AckStatus",
    "Sessions",
    "Station",
    "StationAuth",
    "StationConfigError",
    "StationOptions",
    "StationWard",
    "UsersFile",
    "UsersFileError",
    "acknowledged_by_label",
    "alarm_action",
    "build_app",
    "hash_password",
    "is_loopback",
    "operator_name",
    "tile",
    "verify_password",
]
