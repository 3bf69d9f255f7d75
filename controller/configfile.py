"""Reading a configuration's layers: the TOML file, `NEBULISER_` variables, flags.

No pydantic here, so that a command that only needs to find the control socket
(`nebuliser session status`) starts in a fraction of a second; `controller.config`
validates the merged layers. Every value remembers where it came from
(`Layers.source_of`), so that errors name the file or the variable to fix,
`nebuliser config show` prints the source of each value, and a relative path
written in the file is resolved against the file's directory, never against the
directory the command happens to be run from.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "ENV_PREFIX",
    "OTHER_ENV_VARIABLES",
    "TOP_LEVEL_KEYS",
    "ConfigError",
    "ConfigIssue",
    "Layers",
    "control_socket_path",
    "deep_merge",
    "lookup",
    "missing",
    "read_layers",
]

ENV_PREFIX = "NEBULISER_"
_ENV_NESTING = "__"

#: The top-level keys of a configuration (`controller.config.NebuliserConfig` fields).
TOP_LEVEL_KEYS: frozenset[str] = frozenset(
    {
        "device",
        "storage",
        "session",
        "control",
        "clock",
        "prescription",
        "prescription_file",
        "mqtt",
        "security",
    }
)
_SCALAR_TOP_LEVEL = frozenset({"prescription_file"})

#: `NEBULISER_` variables that are not settings, read by their own users. Add yours
#: here: any other `NEBULISER_` variable is refused as a probable typo of a setting.
OTHER_ENV_VARIABLES: frozenset[str] = frozenset(
    {
        "NEBULISER_MQTT_PASSWORD",  # `nebuliser monitor --username` (controller/cli/monitor.py)
        "NEBULISER_STATION_PASSWORD",  # `nebuliser station --add-user` (cli/_station_run.py)
        "NEBULISER_FAULT_RUNS",  # scripts/faults: runs per fault scenario
        "NEBULISER_FAULT_TABLE",  # scripts/faults: where the summary table is written
    }
)
_MISSING: Any = object()


@dataclass(frozen=True, slots=True)
class ConfigIssue:
    """One problem in a configuration: the dotted key, the bad value, and what is allowed."""

    key: str
    value: Any
    message: str

    def __str__(self) -> str:
        shown = "(missing)" if self.value is _MISSING else repr(self.value)
        return f"{self.key}: {self.message} (got {shown})"


class ConfigError(Exception):
    """The configuration cannot be used; `issues` lists every problem."""

    def __init__(self, source: str, issues: list[ConfigIssue]) -> None:
        self.source = source
        self.issues = issues
        lines = "\n".join(f"  - {issue}" for issue in issues)
        super().__init__(f"{source}: {len(issues)} problem(s) in the configuration:\n{lines}")


def missing() -> Any:
    """The marker for "no value" in a ConfigIssue (printed as `(missing)`)."""
    return _MISSING


@dataclass(frozen=True, slots=True)
class Layers:
    """The file, environment and flag layers of one configuration, before validation."""

    path: Path | None
    file_data: dict[str, Any]
    env_data: dict[str, Any]
    env_names: dict[str, str] = field(default_factory=dict)
    """Dotted key → the environment variable that set it."""
    flag_data: dict[str, Any] = field(default_factory=dict)

    @property
    def merged(self) -> dict[str, Any]:
        """Flags over environment over file."""
        return deep_merge(deep_merge(self.file_data, self.env_data), self.flag_data)

    def source_of(self, dotted_key: str) -> str:
        """Where a value came from: "flag", "env NEBULISER_…", "file" or "default"."""
        parts = dotted_key.split(".")
        if lookup(self.flag_data, parts) is not _MISSING:
            return "flag"
        for key, name in self.env_names.items():
            if (
                dotted_key == key
                or key.startswith(dotted_key + ".")
                or dotted_key.startswith(key + ".")
            ):
                return f"env {name}"
        if lookup(self.file_data, parts) is not _MISSING:
            return "file"
        return "default"

    def resolve(self, dotted_key: str, value: Path) -> Path:
        """`value` of `dotted_key` as a path: relative paths from the file are resolved
        against the file's directory; from the environment or a flag, against the
        current directory (where the person typing it is)."""
        if value.is_absolute() or self.path is None or self.source_of(dotted_key) != "file":
            return value
        return self.path.absolute().parent / value


def deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """`top` over `base`, merging tables key by key."""
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def lookup(data: Mapping[str, Any], parts: Sequence[int | str]) -> Any:
    """The value at `parts` (table keys, list indices) in `data`, or `missing()`."""
    node: Any = data
    for part in parts:
        in_mapping = isinstance(node, Mapping) and part in node
        in_list = isinstance(node, list) and isinstance(part, int) and part < len(node)
        if not (in_mapping or in_list):
            return _MISSING
        node = node[part]
    return node


def _read_file(path: Path) -> dict[str, Any]:
    source = str(path)

    def fail(message: str) -> ConfigError:
        return ConfigError(source, [ConfigIssue("(file)", source, message)])

    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise fail("file not found; pass --config FILE with the controller's file") from None
    except IsADirectoryError:
        raise fail("is a directory; pass --config FILE (a .toml file)") from None
    except OSError as exc:
        raise fail(f"cannot be read ({exc.strerror}); check its permissions") from None
    if not raw.strip():
        raise fail(
            f"the file is empty ({len(raw)} bytes): was it truncated while being copied? "
            "`nebuliser config example` prints a complete one"
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(
            f"not UTF-8 text ({exc.reason} at byte {exc.start}); save the file as UTF-8"
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise fail(
            f"not valid TOML: {exc}{_toml_hint(text, str(exc))} (a file cut short "
            "while copying also looks like this)"
        ) from None
    if not data:
        raise fail(
            "holds no settings, only comments: was it truncated? "
            "`nebuliser config example` prints a complete one"
        )
    return data


_ERROR_LINE = re.compile(r"at line (\d+)")
_LEADING_ZERO = re.compile(r"^\s*([A-Za-z_]+)\s*=\s*0([0-7]+)\s*(#.*)?$")


def _toml_hint(text: str, error: str) -> str:
    """What to write instead, for the line the TOML parser stopped at."""
    found = _ERROR_LINE.search(error)
    lines = text.splitlines()
    if found is None or not 1 <= int(found[1]) <= len(lines):
        return ""
    zero = _LEADING_ZERO.match(lines[int(found[1]) - 1])
    if zero is not None:
        return f"; TOML numbers have no leading zero, an octal mode is {zero[1]} = 0o{zero[2]}"
    return ""


def _env_value(raw: str) -> Any:
    # Tables and lists as JSON (NEBULISER_SECURITY__SENDERS='[{"id": ...}]'); every
    # other value stays text, which the settings convert ("200" → 200, "true" → True).
    if raw.lstrip().startswith(("[", "{")):
        return json.loads(raw)
    return raw


def _env_layer(environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    data: dict[str, Any] = {}
    names: dict[str, str] = {}
    issues: list[ConfigIssue] = []
    for name in sorted(environ):
        if not name.startswith(ENV_PREFIX) or name in OTHER_ENV_VARIABLES:
            continue
        parts = name[len(ENV_PREFIX) :].lower().split(_ENV_NESTING)
        dotted = ".".join(parts)
        if parts[0] not in TOP_LEVEL_KEYS or not all(parts):
            issues.append(
                ConfigIssue(
                    name,
                    environ[name],
                    f"unknown setting {dotted!r}: a NEBULISER_ variable names a section and "
                    "a key joined by a double underscore, e.g. NEBULISER_DEVICE__PORT; "
                    "unset it or fix its spelling",
                )
            )
            continue
        if parts[0] == "prescription":
            issues.append(
                ConfigIssue(
                    name,
                    environ[name],
                    "the prescription cannot be changed from the environment (it is the "
                    "pharmacy's document): edit the prescription file and have it signed",
                )
            )
            continue
        if len(parts) == 1 and parts[0] not in _SCALAR_TOP_LEVEL:
            issues.append(
                ConfigIssue(
                    name,
                    environ[name],
                    f"[{parts[0]}] is a section: set one key per variable, e.g. "
                    f"{ENV_PREFIX}{parts[0].upper()}{_ENV_NESTING}KEY=value",
                )
            )
            continue
        try:
            value = _env_value(environ[name])
        except ValueError as exc:
            issues.append(ConfigIssue(name, environ[name], f"not valid JSON: {exc}"))
            continue
        node = data
        clash = False
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                clash = True
                break
            node = child
        if clash or (parts[-1] in node and isinstance(node[parts[-1]], dict)):
            issues.append(
                ConfigIssue(
                    name,
                    environ[name],
                    f"clashes with another NEBULISER_ variable that sets {dotted!r} "
                    "as a table; keep one",
                )
            )
            continue
        node[parts[-1]] = value
        names[dotted] = name
    if issues:
        raise ConfigError("environment", issues)
    return data, names


def read_layers(
    path: Path | None,
    *,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Layers:
    """Read the file (if any), the `NEBULISER_` variables and the flag overrides.

    Raises ConfigError for an unreadable, empty or non-TOML file and for any
    `NEBULISER_` variable that does not name a setting.
    """
    file_data = _read_file(path) if path is not None else {}
    env_data, env_names = _env_layer(os.environ if environ is None else environ)
    return Layers(
        path=path,
        file_data=file_data,
        env_data=env_data,
        env_names=env_names,
        flag_data=dict(overrides or {}),
    )


def _path_setting(layers: Layers, dotted_key: str) -> Path | None:
    value = lookup(layers.merged, dotted_key.split("."))
    if value is _MISSING or value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(
            str(layers.path or "(defaults)"),
            [ConfigIssue(dotted_key, value, "must be a path in quotes")],
        )
    return layers.resolve(dotted_key, Path(value))


def control_socket_path(layers: Layers) -> Path:
    """Where the control socket is, read without validating the whole configuration
    (`serve` and `config check` validate it; a client only has to find the socket)."""
    socket = _path_setting(layers, "control.socket_path")
    if socket is not None:
        return socket
    return (_path_setting(layers, "storage.data_dir") or Path("data")) / "control.sock"
