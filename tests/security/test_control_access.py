"""Local access is attributable (docs/security.md C28): real Unix sockets, real peer
credentials, a real second account (nobody) where the test runs as root, and a real
`nebuliser serve` started with umask 000."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from controller.config import ConfigError, load_config
from controller.control import (
    ControlAccess,
    ControlClient,
    ControlRequest,
    ControlServer,
    Reply,
    socket_mode_problem,
)
from controller.security import create_private_file
from simulators.mn1 import DeviceModel, run_pty_simulator
from tests.controller._setup import write_config

NOBODY = 65534
#: The other account cannot enter this checkout's virtualenv; the client is stdlib only.
SYSTEM_PYTHON = "/usr/bin/python3"
_CLIENT = r"""
import json, socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.connect(sys.argv[1])
out = {}
for op in ("session.status", "session.start"):
    sock.sendall(json.dumps({"op": op}).encode() + b"\n")
    out[op] = json.loads(sock.makefile().readline())
print(json.dumps(out))
"""


async def _echo(request: ControlRequest, _reply: Reply) -> dict[str, Any]:
    assert request.peer is not None
    return {"ok": True, "op": request.op, "peer": request.peer.record()}


@contextlib.asynccontextmanager
async def _server(path: Path, access: ControlAccess) -> AsyncIterator[Path]:
    server = ControlServer(
        path=path,
        handlers={"session.status": _echo, "session.start": _echo},
        access=access,
    )
    async with server.serving() as socket_path:
        yield socket_path


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another account can traverse (pytest's tmp dirs are 0700)."""
    directory = Path(tempfile.mkdtemp(prefix="nebuliser-ctl-", dir="/tmp"))
    directory.chmod(0o711)
    yield directory
    for child in directory.iterdir():
        child.unlink()
    directory.rmdir()


async def test_every_request_carries_the_callers_pid_uid_gid(tmp_path: Path) -> None:
    async with (
        _server(tmp_path / "c.sock", ControlAccess()) as path,
        ControlClient(path=path) as client,
    ):
        reply = await client.call("session.status")
    assert reply["peer"]["pid"] == os.getpid()
    assert reply["peer"]["uid"] == os.getuid()
    assert reply["peer"]["gid"] == os.getgid()
    assert os.getgid() in reply["peer"]["groups"]


async def test_start_needs_the_bedside_role_status_does_not(tmp_path: Path) -> None:
    other_owner = ControlAccess(owner_uid=os.getuid() + 4242)  # we are not the controller
    not_member = ControlAccess(bedside_gid=NOBODY + 1)
    member = ControlAccess(bedside_gid=os.getgid())
    for access, start_ok in ((other_owner, False), (not_member, False), (member, True)):
        async with (
            _server(tmp_path / "c.sock", access) as path,
            ControlClient(path=path) as client,
        ):
            assert (await client.call("session.status"))["ok"]
            await client.send("session.start")
            reply = await client.receive()
        assert reply["ok"] is start_ok, (access, reply)
        if not start_ok:
            assert "needs the bedside role" in reply["error"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path(SYSTEM_PYTHON).exists(),
    reason="needs root (to run a client as another account) and /usr/bin/python3",
)
async def test_another_account_in_the_socket_group_may_watch_but_not_start(
    shared_dir: Path,
) -> None:
    """The issue's finding: any account in the socket's group could start a dose and
    confirm it itself. Now a second real account (nobody) is refused, by name."""
    script = shared_dir / "client.py"
    script.write_text(_CLIENT)
    script.chmod(0o644)

    async def as_nobody(path: Path) -> dict[str, Any]:
        os.chown(path, 0, NOBODY)  # the socket's group: nobody's group (mode 0660)
        proc = await asyncio.create_subprocess_exec(
            SYSTEM_PYTHON, "-I", str(script), str(path),
            user=NOBODY, group=NOBODY, extra_groups=[],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, err.decode()
        result: dict[str, Any] = json.loads(out)
        return result

    async with _server(shared_dir / "c.sock", ControlAccess()) as path:
        seen = await as_nobody(path)
    assert seen["session.status"]["peer"]["uid"] == NOBODY
    assert seen["session.start"]["ok"] is False
    assert f"uid {NOBODY} is not the controller's account" in seen["session.start"]["error"]
    async with _server(shared_dir / "c.sock", ControlAccess(bedside_gid=NOBODY)) as path:
        seen = await as_nobody(path)
    assert seen["session.start"]["ok"] is True  # nobody is now "the bedside terminal"


@pytest.mark.parametrize("mode", [0o777, 0o666, 0o662, 0o604, 0o1660, 0o060])
def test_unsafe_socket_mode_is_refused_with_the_reason(tmp_path: Path, mode: int) -> None:
    problem = socket_mode_problem(mode)
    assert problem is not None
    with pytest.raises(ValueError, match="socket_mode"):
        ControlServer(path=tmp_path / "c.sock", handlers={}, mode=mode)
    config = tmp_path / "c.toml"
    config.write_text(f"[control]\nsocket_mode = {mode:#o}\n")
    if mode <= 0o777:  # beyond that the range check already refuses it
        with pytest.raises(ConfigError, match="socket_mode"):
            load_config(config)


@pytest.mark.parametrize("mode", [0o600, 0o660, 0o640])
def test_safe_socket_modes_are_accepted(mode: int) -> None:
    assert socket_mode_problem(mode) is None


def test_private_files_ignore_a_permissive_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        create_private_file(tmp_path / "new" / "x.sqlite3")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new" / "x.sqlite3").stat().st_mode) == 0o600


async def test_serve_under_umask_000_creates_no_file_others_can_read(tmp_path: Path) -> None:
    async with run_pty_simulator(DeviceModel(nominal_ul_min=6000, fill_ul=3000)) as sim:
        config_path, config = write_config(tmp_path, port=sim.device_path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "controller.cli", "serve", "--config", str(config_path),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: os.umask(0),
        )  # fmt: skip
        try:
            data = config.storage.data_dir
            wanted = {"ledger.sqlite3", "audit.sqlite3"}
            async with asyncio.timeout(30):
                while not (  # noqa: ASYNC110 - another process creates the files
                    wanted <= {p.name for p in data.glob("*.sqlite3")}
                    and config.control_socket.exists()
                ):
                    await asyncio.sleep(0.05)
                async with ControlClient(path=config.control_socket) as client:
                    await client.call("session.status")
        finally:
            proc.terminate()
            await asyncio.wait_for(proc.wait(), 20)
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files
    for path in files:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & 0o027 == 0, f"{path.name} is {mode:o}"


@pytest.mark.parametrize("umask", [0o000, 0o077])
async def test_the_socket_gets_its_mode_without_touching_the_process_umask(
    tmp_path: Path, umask: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The umask is process-wide: the ledger, audit and telemetry writer threads create
    files at any moment, so the server must not narrow it while it binds."""
    previous = os.umask(umask)
    try:

        def no_umask(_mask: int) -> int:
            raise AssertionError("the control server changed the process umask")

        monkeypatch.setattr(os, "umask", no_umask)
        async with _server(tmp_path / "c.sock", ControlAccess()) as path:
            assert stat.S_IMODE(path.stat().st_mode) == 0o660
            async with ControlClient(path=path) as client:
                assert (await client.call("session.status"))["ok"]
        monkeypatch.undo()
    finally:
        os.umask(previous)
    assert not path.exists()
    assert os.listdir(tmp_path) == [], "the temporary name was left behind"
