"""pytest fixtures other test packages can use (wired in tests/conftest.py):

from tests.support.fixtures import mosquitto_broker  # noqa: F401
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio

from tests.support.mosquitto import MosquittoBroker

__all__ = ["mosquitto_broker"]


@pytest_asyncio.fixture
async def mosquitto_broker(tmp_path: Path) -> AsyncIterator[MosquittoBroker]:
    """A running private Mosquitto on a free loopback port, stopped afterwards."""
    workdir = tmp_path / "mosquitto"
    workdir.mkdir()
    async with MosquittoBroker(workdir=workdir) as broker:
        yield broker
