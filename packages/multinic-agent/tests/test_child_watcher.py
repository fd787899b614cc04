"""The agent's child watcher: delegates' exit statuses at once, their reaping off the loop."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from multinic_agent.agent import ExitFirstChildWatcher

pytestmark = pytest.mark.skipif(
    sys.version_info >= (3, 12) or not hasattr(os, "P_PIDFD"),
    reason="the agent installs its child watcher on Python 3.11 with pidfd waitid only",
)


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether ``pid`` was reaped (no zombie left) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state != "Z":
            return False  # running (or a reused pid): not what the test expects
        time.sleep(0.01)
    return False


async def _run_all(scripts: list[str]) -> list[tuple[int | None, bytes, bytes, int]]:
    watcher = ExitFirstChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    try:

        async def run(script: str) -> tuple[int | None, bytes, bytes, int]:
            process = await asyncio.create_subprocess_exec(
                "sh",
                "-c",
                script,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            out, err = await process.communicate(b"config")
            return process.returncode, out, err, process.pid

        return await asyncio.gather(*(run(s) for s in scripts))
    finally:
        asyncio.set_child_watcher(None)
        watcher.close()


def test_exit_statuses_output_and_reaping() -> None:
    scripts = ["cat; echo err >&2", "exit 3", "kill -TERM $$", "sleep 0.2; exit 0"]
    results = asyncio.run(_run_all(scripts))
    assert [(code, out, err) for code, out, err, _ in results] == [
        (0, b"config", b"err\n"),
        (3, b"", b""),
        (-15, b"", b""),
        (0, b"", b""),
    ]
    # The status was read without reaping; the reaper thread reaps them all,
    # then ends with the watcher.
    assert all(_gone(pid) for *_, pid in results)
    deadline = time.monotonic() + 5
    while any(t.name == "reaper" for t in threading.enumerate()):
        assert time.monotonic() < deadline, "the reaper thread outlived its watcher"
        time.sleep(0.01)


def test_removed_handler_and_close_release_the_pidfds() -> None:
    async def scenario() -> int:
        watcher = ExitFirstChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        before = len(os.listdir("/proc/self/fd"))
        pid = os.posix_spawn("/bin/sh", ["sh", "-c", "sleep 0.1"], os.environ)
        calls: list[tuple[int, int]] = []
        watcher.add_child_handler(pid, lambda p, code: calls.append((p, code)))
        assert watcher.remove_child_handler(pid)
        assert not watcher.remove_child_handler(pid)
        watcher.add_child_handler(pid, lambda p, code: calls.append((p, code)))
        watcher.close()
        os.waitpid(pid, 0)
        assert not calls
        return len(os.listdir("/proc/self/fd")) - before

    assert asyncio.run(scenario()) == 0
