"""Batched re-planning: many host, node, namespace or Config events, few reconciles.

Agents write their HostInterface when they start, so a burst of 1,000 joining
hosts is 1,000 events.  ``ReconcileBatcher`` collects such events for a short
window (default 0.5 s) after the first one, then reconciles every affected
network once, in a worker thread.  Events that arrive while a batch runs form
the next batch.  A batch that fails (API error) is retried with backoff; a
failed batch deletes nothing (the reconciler aborts before deleting).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from multinic_core.errors import MultinicError

log = logging.getLogger(__name__)

DEFAULT_WINDOW = 0.5
# Capped low: the batch is the whole cluster's convergence, and a retry is one
# list of each kind -- cheap next to minutes of a stale plan.
MAX_RETRY_DELAY = 5.0


class ReconcileBatcher:
    """Debounces reconcile requests; runs ``reconcile(names or None for all)``.

    ``request`` may be called from the event loop the batcher runs in, or from
    any thread through ``request_threadsafe``.
    """

    def __init__(
        self,
        reconcile: Callable[[set[str] | None], Any],
        *,
        window: float = DEFAULT_WINDOW,
        retry_delay: float = 1.0,
        observe: Callable[[bool, bool, float], None] | None = None,
    ) -> None:
        self._reconcile = reconcile
        self.window = window
        self.retry_delay = retry_delay
        self._all = False
        self._names: set[str] = set()
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.batches = 0
        """Number of batches reconciled successfully."""
        self.full_batches = 0
        """Of those, the ones that re-planned every network (readiness: caught up)."""
        self.failures = 0
        self.last_error = ""
        """Why the last batch failed ("" after a success)."""
        self.observe = observe
        """Told of every batch: (every network?, succeeded?, seconds)."""
        self.networks_known = 0
        """Networks at the last full re-plan (when ``reconcile`` returns a list per network)."""

    def request(self, names: Iterable[str] | None = None) -> None:
        """Ask for a reconcile of ``names`` (of every network when None)."""
        if names is None:
            self._all = True
        else:
            self._names.update(names)
        if self._wake is not None:
            self._wake.set()

    def request_threadsafe(self, names: Iterable[str] | None = None) -> None:
        if self._loop is None:
            self.request(names)
            return
        wanted = None if names is None else list(names)
        self._loop.call_soon_threadsafe(self.request, wanted)

    @property
    def pending(self) -> bool:
        return self._all or bool(self._names)

    @property
    def depth(self) -> int:
        """Networks waiting for the next batch; a request for all counts as the networks known."""
        if self._all:
            return max(len(self._names), self.networks_known, 1)
        return len(self._names)

    async def run(self) -> None:
        """Process batches until cancelled."""
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.pending:
            self._wake.set()
        delay = self.retry_delay
        while True:
            await self._wake.wait()
            # The window starts at the first event and is not extended by later
            # ones, so a steady stream of events still gets reconciled.
            await asyncio.sleep(self.window)
            self._wake.clear()
            everything, names = self._all, self._names
            self._all, self._names = False, set()
            if not everything and not names:
                continue
            wanted = None if everything else names
            started = time.perf_counter()
            try:
                outcome = await asyncio.to_thread(self._reconcile, wanted)
            except Exception as e:
                self.failures += 1
                self.last_error = str(e) or type(e).__name__
                if self.observe is not None:
                    self.observe(everything, False, time.perf_counter() - started)
                if isinstance(e, MultinicError):
                    log.warning("batched reconcile failed, retrying in %.1fs: %s", delay, e)
                else:
                    log.exception("batched reconcile failed, retrying in %.1fs", delay)
                self.request(wanted)
                await asyncio.sleep(delay)
                delay = min(delay * 2, MAX_RETRY_DELAY)
                continue
            self.batches += 1
            self.full_batches += everything
            if everything and isinstance(outcome, list):
                self.networks_known = len(outcome)
            self.last_error = ""
            if self.observe is not None:
                self.observe(everything, True, time.perf_counter() - started)
            delay = self.retry_delay
            log.debug("batch %d reconciled %s", self.batches, "all" if everything else names)
