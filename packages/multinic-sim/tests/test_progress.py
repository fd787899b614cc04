"""Progress output of the cluster commands: steps, waits and what a timeout says."""

from __future__ import annotations

import io
import itertools

import pytest

from multinic_sim.errors import SimError
from multinic_sim.progress import ProgressLog, WaitTimeout


def test_steps_print_their_outcome_and_a_failed_step_says_so() -> None:
    out = io.StringIO()
    progress = ProgressLog(out)
    with progress.step("building the fabric"):
        pass
    with pytest.raises(RuntimeError), progress.step("starting the agents"):
        raise RuntimeError("boom")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith("building the fabric ... ok (0.0s)")
    assert lines[1].endswith("starting the agents ... FAILED (0.0s)")


def test_a_wait_ends_when_the_condition_holds() -> None:
    out = io.StringIO()
    counts = itertools.count(1)
    ProgressLog(out).wait("pools", lambda: (min(next(counts), 3), 3), timeout=5, interval=0.01)
    assert "pools [####################] 3/3 ok" in out.getvalue()


def test_a_timeout_names_what_was_awaited_how_far_it_got_and_the_last_error() -> None:
    calls = itertools.count()

    def check() -> tuple[int, int]:
        if next(calls) > 0:  # reachable once, then the server goes away
            raise ConnectionRefusedError("connection refused")
        return 1, 3

    with pytest.raises(WaitTimeout) as info:
        ProgressLog(quiet=True).wait("IPPools of demo", check, timeout=0.2, interval=0.01)
    assert str(info.value) == (
        "timed out after 0s waiting for IPPools of demo: 1/3 "
        "(last error: ConnectionRefusedError: connection refused)"
    )


def test_a_dead_daemon_ends_the_wait_at_once() -> None:
    def check() -> tuple[int, int]:
        raise SimError("agent-host-0 (pid 42) exited")

    with pytest.raises(SimError, match="agent-host-0"):
        ProgressLog(quiet=True).wait("agents", check, timeout=30)
