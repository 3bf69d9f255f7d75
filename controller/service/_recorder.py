"""Record third: every ledger write runs, in order, on one dedicated writer thread.

The session supervisor acts first (STOP bytes), raises alarms second, and hands
the record to `Recorder.submit` third: that call never blocks the event loop and
never waits for a disk write. Writes that must be durable *before* the next
action (the intent row before START) use `await Recorder.call(...)`, which waits
for the commit on the writer thread while the event loop keeps supervising.

One thread means one SQLite connection, used only by that thread, and writes in
exactly the order they were submitted.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from typing import Any, Generic, TypeVar

from controller.logging import get_logger

__all__ = ["Recorder"]

_log = get_logger(__name__)

R = TypeVar("R")
S = TypeVar("S")

#: What a batch of writes came to: the failed ones (what, error) and whether any succeeded.
_Outcome = tuple[list[tuple[str, BaseException]], bool]


def _write_all(
    resource: S,
    writes: Sequence[tuple[Callable[[S], Any], str]],
    together: Callable[[S], AbstractContextManager[object]],
) -> _Outcome:
    """Run on the writer thread: all writes in one transaction, else one by one."""
    try:
        with together(resource):
            for fn, _what in writes:
                fn(resource)
    except Exception as exc:  # noqa: BLE001 - rolled back whole; each write is tried alone below
        _log.warning("ledger batch rolled back; writing its records one by one", error=repr(exc))
    else:
        return [], bool(writes)
    failed: list[tuple[str, BaseException]] = []
    for fn, what in writes:
        try:
            fn(resource)
        except Exception as exc:  # noqa: BLE001 - counted and reported like `submit`
            failed.append((what, exc))
    return failed, len(failed) < len(writes)


class Recorder(Generic[S]):
    """Owns a resource `S` (the ledger) that lives on one writer thread."""

    def __init__(self, *, opener: Callable[[], S], closer: Callable[[S], None]) -> None:
        self._opener = opener
        self._closer = closer
        self.on_failure: Callable[[int], None] | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ledger-writer")
        self._resource: S | None = None
        self._pending: set[Future[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self.failures = 0

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Recorder[S]]:
        """Open the resource on the writer thread; on exit, finish every write and close."""
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._resource = await loop.run_in_executor(self._executor, self._opener)
        try:
            yield self
        finally:
            await self.drain()
            resource = self._resource
            self._resource = None
            await loop.run_in_executor(self._executor, self._closer, resource)
            self._executor.shutdown(wait=True)

    def _run(self, fn: Callable[[S], R]) -> R:
        assert self._resource is not None, "Recorder used outside `running()`"
        return fn(self._resource)

    async def call(self, fn: Callable[[S], R]) -> R:
        """Run `fn(resource)` after every earlier write; wait for its result."""
        return await asyncio.wrap_future(self._executor.submit(self._run, fn))

    def submit(
        self,
        fn: Callable[[S], Any],
        *,
        what: str,
        then: Callable[[], None] | None = None,
    ) -> None:
        """Queue `fn(resource)` without waiting (never blocks the caller).

        `then` runs on the event loop after `fn` succeeded (e.g. wake the MQTT
        publisher: the row it must send is committed). A failure is logged with `what`,
        counted, and reported at once on the event loop to `on_failure` (the
        supervisor raises the ledger alarm and refuses starts).
        """
        future = self._executor.submit(self._run, fn)
        with self._lock:
            self._pending.add(future)

        def _done(done: Future[Any]) -> None:
            with self._lock:
                self._pending.discard(done)
            error = done.exception()
            if error is not None:
                self._report_failure(what, error)
            elif then is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(then)

        future.add_done_callback(_done)

    def submit_all(
        self,
        writes: Sequence[tuple[Callable[[S], Any], str]],
        *,
        together: Callable[[S], AbstractContextManager[object]],
        then: Callable[[], None] | None = None,
    ) -> None:
        """Queue several writes `(fn, what)` as one hand-off and one transaction.

        On the writer thread they run in order inside `together(resource)` (the
        ledger's `batch()`: one commit, all or none). Should that fail, each write is
        tried again on its own, in order, so that one bad record cannot take the
        others with it; every write that still fails is counted and reported as
        `submit` does. `then` runs once on the event loop if any write succeeded.
        Never blocks the caller.
        """
        future = self._executor.submit(
            self._run, lambda resource: _write_all(resource, writes, together)
        )
        with self._lock:
            self._pending.add(future)

        def _done(done: Future[_Outcome]) -> None:
            with self._lock:
                self._pending.discard(done)
            error = done.exception()
            failed, succeeded = ([("batch", error)], False) if error else done.result()
            for what, exc in failed:
                self._report_failure(what, exc)
            if succeeded and then is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(then)

        future.add_done_callback(_done)

    def _report_failure(self, what: str, error: BaseException) -> None:
        self.failures += 1
        _log.error("ledger write failed", what=what, error=repr(error))
        if self.on_failure is not None and self._loop is not None:
            self._loop.call_soon_threadsafe(self.on_failure, self.failures)

    async def drain(self) -> None:
        """Wait until every submitted write has finished."""
        await self.call(lambda _resource: None)
