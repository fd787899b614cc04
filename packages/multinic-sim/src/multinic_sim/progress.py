"""Progress lines of the simulation's commands: one line per step, with its time.

``up``, ``pod add`` and ``demo`` report what they are doing on standard output
as they go, so a user sees where a slow or failing run stands. Waits (until the
operator or the agents have done their part) poll a condition and, on a
terminal, redraw a small progress bar in place.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from multinic_sim.errors import SimError

BAR_WIDTH = 20


class WaitTimeout(SimError):
    """A condition of the simulated cluster did not come true in time."""


class ProgressLog:
    """Writes ``[  3.1s] step ... ok (0.4s)`` lines; silent when ``quiet``."""

    def __init__(self, out: TextIO | None = None, *, quiet: bool = False) -> None:
        self.out = out if out is not None else sys.stdout
        self.quiet = quiet
        self.started = time.monotonic()
        self._tty = bool(getattr(self.out, "isatty", lambda: False)())

    def _elapsed(self) -> str:
        return f"[{time.monotonic() - self.started:6.1f}s]"

    def say(self, text: str) -> None:
        """One line of information (not a timed step)."""
        if not self.quiet:
            print(f"{self._elapsed()} {text}", file=self.out, flush=True)

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        """Time the block; print ``ok`` or ``FAILED`` with its duration."""
        began = time.monotonic()
        if not self.quiet:
            print(f"{self._elapsed()} {what} ...", end="", file=self.out, flush=True)
        try:
            yield
        except BaseException:
            if not self.quiet:
                print(f" FAILED ({time.monotonic() - began:.1f}s)", file=self.out, flush=True)
            raise
        if not self.quiet:
            print(f" ok ({time.monotonic() - began:.1f}s)", file=self.out, flush=True)

    def wait(
        self,
        what: str,
        check: Callable[[], tuple[int, int]],
        timeout: float,
        interval: float = 0.25,
    ) -> None:
        """Poll ``check() -> (done, total)`` until done == total, or raise WaitTimeout.

        Exceptions from ``check`` count as "not yet" (the component may still be
        starting) and the last one is named in the timeout message, except a
        SimError, which means waiting is pointless (a daemon died) and propagates.
        """
        began = time.monotonic()
        deadline = began + timeout
        done, total, problem = 0, 1, ""
        while True:
            try:
                done, total = check()
                problem = ""
            except SimError:
                raise
            except Exception as e:
                problem = f"{type(e).__name__}: {e}"
            if total > 0 and done >= total and not problem:
                break
            self._draw(what, done, total, began)
            if time.monotonic() > deadline:
                if self._tty and not self.quiet:
                    print(file=self.out)
                detail = f" (last error: {problem})" if problem else ""
                raise WaitTimeout(
                    f"timed out after {timeout:.0f}s waiting for {what}: {done}/{total}{detail}"
                )
            time.sleep(interval)
        if not self.quiet:
            bar = "#" * BAR_WIDTH
            line = f"{self._elapsed()} {what} [{bar}] {done}/{total}"
            line += f" ok ({time.monotonic() - began:.1f}s)"
            print(f"\r{line}" if self._tty else line, file=self.out, flush=True)

    def _draw(self, what: str, done: int, total: int, began: float) -> None:
        if self.quiet or not self._tty:
            return
        filled = BAR_WIDTH * min(done, total) // max(total, 1)
        bar = "#" * filled + "." * (BAR_WIDTH - filled)
        line = f"{self._elapsed()} {what} [{bar}] {done}/{total} {time.monotonic() - began:.0f}s"
        print(f"\r{line}", end="", file=self.out, flush=True)
