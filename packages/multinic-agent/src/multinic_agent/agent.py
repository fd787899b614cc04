"""The agent process: the CNI server on a root-only unix socket (no CNI over TCP).

With a cluster, NIC discovery, the route reconciler and the Kubernetes
mirrors (:mod:`multinic_agent.cluster_sync`) run as further tasks of the
same event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import queue
import signal
import stat
import sys
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVarTuple

from multinic_agent.cni_result import CniError
from multinic_agent.cni_server import MAX_CONFIG_BYTES, CniServer
from multinic_agent.shim import CODE_DECODE, CODE_OTHER, LATEST_VERSION
from multinic_agent.wire import (
    MAX_REQUEST,
    WireError,
    decode_request,
    encode_reply,
    is_request_prefix,
)

log = logging.getLogger(__name__)
_Ts = TypeVarTuple("_Ts")
_STOP = 0
"""Tells the reaper thread to end (no child has pid 0)."""


def prepare_socket_path(path: Path) -> None:
    """Create the socket's directory (0700) and remove a stale socket.

    Refuses to remove anything that is not a socket, so a wrong ``--socket``
    never deletes a file.
    """
    if not path.parent.exists():
        path.parent.mkdir(parents=True, mode=0o700)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(info.st_mode):
        raise FileExistsError(f"{path} exists and is not a socket; not replacing it")
    path.unlink()


class AgentSocket:
    """Serves a CniServer on a unix socket, one request per connection."""

    def __init__(self, server: CniServer, path: Path) -> None:
        self.cni = server
        self.path = path
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        prepare_socket_path(self.path)
        # The umask makes the socket 0600 from its creation: no window in
        # which another user could connect.
        previous = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._connection, path=str(self.path))
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)
        log.info("CNI server listening on %s", self.path)

    @property
    def serving(self) -> bool:
        """Whether the socket accepts connections (the agent's readiness)."""
        return self._server is not None and self._server.is_serving()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One request (wire format in :mod:`multinic_agent.wire`), one reply, then close."""
        try:
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    data = await _read_request(reader)
                env, stdin = decode_request(data)
            except WireError as e:
                log.warning("refused a request on the CNI socket: %s", e)
                status, out, err = 1, _error_reply(CODE_DECODE, str(e)), ""
            except TimeoutError:
                log.warning("no whole request on the CNI socket in %d s", REQUEST_TIMEOUT_S)
                return
            else:
                status, out, err = await self.cni.handle(env, stdin)
            try:
                reply = encode_reply(status, out, err)
            except ValueError as e:
                log.error("CNI reply not sent: %s", e)
                reply = encode_reply(1, _error_reply(CODE_OTHER, f"the agent's reply: {e}"), "")
            writer.write(reply)
            await writer.drain()
        except ConnectionError as e:
            log.warning("shim connection lost before the reply: %s", e)
        finally:
            writer.close()


REQUEST_TIMEOUT_S = 60
"""How long a client of the socket may take to send its whole request (a shim
takes well under a millisecond): a stalled one does not hold a connection forever."""


def _error_reply(code: int, message: str) -> str:
    return json.dumps(CniError(code, message).to_dict(LATEST_VERSION))


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    """A request, up to the client's end of sending; WireError when it cannot be one.

    Bytes that cannot start a request are refused at once (an older shim
    waits for an answer without ending its request); past ``MAX_REQUEST``
    the agent stops reading, and the client's writes fail.
    """
    data = bytearray()
    while chunk := await reader.read(65536):
        data += chunk
        if not is_request_prefix(bytes(data[:16])):
            break
        if len(data) > MAX_REQUEST:
            raise WireError(
                f"network config exceeds {MAX_CONFIG_BYTES} bytes (the agent's limit): "
                f"its request is over {MAX_REQUEST} bytes"
            )
    return bytes(data)


class ExitFirstChildWatcher(asyncio.AbstractChildWatcher):
    """Like asyncio's PidfdChildWatcher, but reports a child's exit before reaping it.

    Reaping a delegate that worked in a pod's network namespace costs the
    reaper 1-10 ms of kernel CPU time in ``waitpid`` itself (measured for
    macvlan ADD and DEL; a delegate's VERSION reaps in 10 µs).  PidfdChildWatcher
    reaps on the event loop, blocking every request and delaying the ADD's
    answer.  Here the exit status is read with ``waitid(WNOWAIT)``, which
    leaves the zombie (so its pid cannot be reused), and one reaper thread
    reaps it off the loop.  No thread per child, no SIGCHLD handler.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._callbacks: dict[int, tuple[int, Callable[..., object], tuple[Any, ...]]] = {}
        self._zombies: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._reaper: threading.Thread | None = None

    def __enter__(self) -> ExitFirstChildWatcher:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def is_active(self) -> bool:
        return self._loop is not None and self._loop.is_running()

    def close(self) -> None:
        self.attach_loop(None)
        if self._reaper is not None:
            self._zombies.put(_STOP)  # after the zombies already queued
            self._reaper = None

    def attach_loop(self, loop: asyncio.AbstractEventLoop | None) -> None:
        if self._loop is not None:
            for pidfd, _, _ in self._callbacks.values():
                self._loop.remove_reader(pidfd)
                os.close(pidfd)
            self._callbacks.clear()
        self._loop = loop

    def add_child_handler(
        self, pid: int, callback: Callable[[int, int, *_Ts], object], *args: *_Ts
    ) -> None:
        assert self._loop is not None, "the watcher is not attached to a loop"
        existing = self._callbacks.get(pid)
        if existing is not None:
            self._callbacks[pid] = existing[0], callback, args
            return
        pidfd = os.pidfd_open(pid)
        self._loop.add_reader(pidfd, self._exited, pid)
        self._callbacks[pid] = pidfd, callback, args

    def remove_child_handler(self, pid: int) -> bool:
        entry = self._callbacks.pop(pid, None)
        if entry is None:
            return False
        if self._loop is not None:
            self._loop.remove_reader(entry[0])
        os.close(entry[0])
        return True

    def _exited(self, pid: int) -> None:
        pidfd, callback, args = self._callbacks.pop(pid)
        assert self._loop is not None
        self._loop.remove_reader(pidfd)
        try:
            returncode = self._status(pid, pidfd)
        finally:
            os.close(pidfd)
        callback(pid, returncode, *args)

    def _status(self, pid: int, pidfd: int) -> int:
        """The child's exit code (minus the signal that killed it), as asyncio reports it."""
        try:
            info = os.waitid(os.P_PIDFD, pidfd, os.WEXITED | os.WNOWAIT)
        except ChildProcessError:
            info = None
        except OSError:
            # waitid on a pidfd needs Linux 5.4: reap here, as PidfdChildWatcher does.
            try:
                return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
            except ChildProcessError:
                info = None
        if info is None:
            # Reaped elsewhere: asyncio's own watchers report 255 too.
            log.warning("child process %d exit status already read: reporting 255", pid)
            return 255
        self._reap_later(pid)
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def _reap_later(self, pid: int) -> None:
        if self._reaper is None:
            self._reaper = threading.Thread(target=self._reap, name="reaper", daemon=True)
            self._reaper.start()
        self._zombies.put(pid)

    def _reap(self) -> None:
        while (pid := self._zombies.get()) != _STOP:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)


def use_pidfd_child_watcher() -> None:
    """Watch delegates through pidfds instead of a waitpid thread per child (Python 3.11).

    Python 3.12 watches through pidfds by default; on 3.11 it saves a thread
    start per delegate on the ADD path, and reaping off the loop saves the
    kernel's reaping time (see ExitFirstChildWatcher).
    """
    if sys.version_info < (3, 12) and hasattr(os, "pidfd_open") and hasattr(os, "P_PIDFD"):
        watcher = ExitFirstChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


async def serve(
    server: CniServer,
    socket_path: Path,
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
    listening: Callable[[AgentSocket], None] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; ``background`` (the cluster side) runs alongside.

    ``listening`` is called with the socket once it is served (readiness).
    """
    use_pidfd_child_watcher()
    listener = AgentSocket(server, socket_path)
    await listener.start()
    if listening is not None:
        listening(listener)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)
    task = asyncio.create_task(background()) if background else None
    try:
        await stopping.wait()
    finally:
        log.info("stopping")
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await listener.stop()
