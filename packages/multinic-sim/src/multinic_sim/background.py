"""Run an :class:`ApiServer` in a background thread with its own event loop.

Tests and synchronous tools use this; every control method marshals the call
onto the server's loop, so it is safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from multinic_sim.faults import FaultInjector
from multinic_sim.server import ApiServer

log = logging.getLogger(__name__)
T = TypeVar("T")


class ApiServerThread:
    """An :class:`ApiServer` running in a daemon thread.

    >>> with ApiServerThread() as sim:   # doctest: +SKIP
    ...     print(sim.url)
    """

    def __init__(self, server: ApiServer | None = None, **server_options: Any) -> None:
        self.server = server if server is not None else ApiServer(**server_options)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def faults(self) -> FaultInjector:
        return self.server.faults

    def start(self, timeout: float = 10.0) -> ApiServerThread:
        self._thread = threading.Thread(
            target=self._run, name="multinic-sim-apiserver", daemon=True
        )
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the local API server did not start in time")
        if self._error is not None:
            raise self._error
        return self

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as e:
            self._error = e
            self._started.set()
        finally:
            loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        await self.server.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await self.server.stop()

    def call(self, fn: Callable[[], T], timeout: float = 30.0) -> T:
        """Run *fn* on the server's loop and return its result."""
        if self._loop is None:
            raise RuntimeError("the API server thread is not running")

        async def invoke() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(invoke(), self._loop).result(timeout)

    def compact(self) -> None:
        self.call(self.server.compact)

    def reset(self) -> None:
        self.call(self.server.reset)

    def drop_watches(self, resource: str | None = None, *, abort: bool = False) -> int:
        return self.call(lambda: self.server.drop_watches(resource, abort=abort))

    def resource_version(self) -> int:
        return self.call(lambda: self.server.cluster.store.revision)

    def stop(self, timeout: float = 10.0) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the local API server thread did not stop within %.0fs", timeout)

    def __enter__(self) -> ApiServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
