"""The daemons of a simulated cluster: started detached, found again, stopped.

Every daemon of a simulated cluster (API server, operator, one agent per host)
carries a path under the cluster's state directory on its command line. That
is how ``down`` finds them even when the record of their pids is lost (a
``kill -9`` of ``up``, or of everything): it scans ``/proc``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from multinic_sim.errors import SimError

log = logging.getLogger(__name__)

STOP_GRACE_S = 5.0


def program(name: str) -> str:
    """Absolute path of a console script of this installation (next to the interpreter)."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        package = name.split(" ", maxsplit=1)[0]
        raise SimError(f"the program {name!r} is not installed: pip install {package}")
    return found


def start_daemon(argv: Sequence[str], log_file: Path) -> int:
    """Start ``argv`` in its own session, output appended to ``log_file``; return its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as out:
        try:
            proc = subprocess.Popen(
                list(argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:
            raise SimError(f"cannot start {argv[0]}: {e.strerror}") from e
    log.debug("started pid %d: %s", proc.pid, " ".join(argv))
    return proc.pid


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def _ancestors() -> set[int]:
    """This process and its parents: ``down --state-dir D`` must not kill itself."""
    pids, pid = set(), os.getpid()
    while pid > 1 and pid not in pids:
        pids.add(pid)
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            break
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def owned_by(pid: int, state_dir: Path) -> bool:
    """Does process ``pid`` carry ``state_dir`` or a path inside it on its command line?"""
    root = str(state_dir.resolve())
    inside = f"{root}/"
    return any(arg in (root, inside) or arg.startswith(inside) for arg in _cmdline(pid))


def processes_of(state_dir: Path) -> list[int]:
    """Pids of every live process whose command line names a path in ``state_dir``."""
    mine = _ancestors()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            pid = int(entry.name)
            if pid not in mine and owned_by(pid, state_dir):
                found.append(pid)
    return sorted(found)


def alive(pid: int) -> bool:
    """Is ``pid`` running (not gone, not a zombie)?"""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    # A zombie has exited; only its parent's wait() is missing.
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def stop_processes(pids: Iterable[int], grace: float = STOP_GRACE_S) -> list[int]:
    """SIGTERM ``pids``, SIGKILL those still alive after ``grace`` seconds; return them all."""
    targets = sorted(set(pids))
    for pid in targets:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + grace
    remaining = [pid for pid in targets if alive(pid)]
    while remaining and time.monotonic() < deadline:
        time.sleep(0.05)
        for pid in remaining:
            _reap(pid)
        remaining = [pid for pid in remaining if alive(pid)]
    for pid in remaining:
        log.info("pid %d did not stop within %.0fs: killing it", pid, grace)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    for pid in targets:
        _reap(pid)
    return targets
