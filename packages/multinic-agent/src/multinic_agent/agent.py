"""The agent process: the CNI server on a root-only unix socket (no TCP listener).

With a cluster, NIC discovery, the route reconciler and the Kubernetes
mirrors (:mod:`multinic_agent.cluster_sync`) run as further tasks of the
same event loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from multinic_agent.cni_server import CniServer
from multinic_agent.shim import (
    CODE_DECODE,
    LATEST_VERSION,
    MAX_MESSAGE,
    decode_message,
    encode_message,
    error_json,
)

log = logging.getLogger(__name__)


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
            self._server = await asyncio.start_unix_server(
                self._connection, path=str(self.path), limit=MAX_MESSAGE + 1
            )
        finally:
            os.umask(previous)
        os.chmod(self.path, 0o600)
        log.info("CNI server listening on %s", self.path)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        self.path.unlink(missing_ok=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await reader.readline()
                message = decode_message(line)
                env = message.get("env")
                stdin = message.get("stdin")
                if not isinstance(env, dict) or not isinstance(stdin, str):
                    raise ValueError("request needs 'env' (object) and 'stdin' (string)")
                environment = {str(k): str(v) for k, v in env.items()}
            except (ValueError, asyncio.LimitOverrunError) as e:
                problem = f"malformed request from the shim: {e}"
                reply = {"exit": 1, "stdout": error_json(LATEST_VERSION, CODE_DECODE, problem)}
                reply["stderr"] = ""
            else:
                status, out, err = await self.cni.handle(environment, stdin)
                reply = {"exit": status, "stdout": out, "stderr": err}
            writer.write(encode_message(reply))
            await writer.drain()
        except ConnectionError as e:
            log.warning("shim connection lost before the reply: %s", e)
        finally:
            writer.close()


def use_pidfd_child_watcher() -> None:
    """Reap delegates through pidfds instead of a waitpid thread per child (Python 3.11).

    Python 3.12 does this by default; on 3.11 it saves a thread start per
    delegate on the ADD path.
    """
    if sys.version_info < (3, 12) and hasattr(asyncio, "PidfdChildWatcher"):
        watcher = asyncio.PidfdChildWatcher()
        watcher.attach_loop(asyncio.get_running_loop())
        asyncio.set_child_watcher(watcher)


async def serve(
    server: CniServer,
    socket_path: Path,
    background: Callable[[], Coroutine[Any, Any, None]] | None = None,
) -> None:
    """Run until SIGTERM or SIGINT; ``background`` (the cluster side) runs alongside."""
    use_pidfd_child_watcher()
    listener = AgentSocket(server, socket_path)
    await listener.start()
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
