"""The health and metrics port of the agent and the operator: ``/healthz``, ``/readyz``, ``/metrics``.

One small HTTP/1.1 server on asyncio, standard library only: ``GET`` (or
``HEAD``) of three paths, one request per connection, nothing else.  It
serves no CNI request and changes nothing; the agent's CNI socket stays a
root-only unix socket.  :class:`HealthThread` runs it on an event loop of its
own thread, from the start of the process, so the port answers while the
process starts (journal replay, waiting for the leader Lease) and tells
whether the process's work loop still answers (:func:`loop_answers`).

* ``/healthz`` (liveness): 200 ``ok`` while the process's work loop answers;
  503 with the reason when the ``liveness`` check says it does not.
* ``/readyz`` (readiness): 200 ``ok`` (or the ready state) once every
  readiness check passes; until then 503 with one plain line per reason.
* ``/metrics``: whatever ``metrics()`` renders (Prometheus text format).

Requests are bounded (8 KiB of request line and headers, 10 s to send them),
so a slow or hostile client cannot hold the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from multinic_core.errors import ConfigError

log = logging.getLogger(__name__)

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"
"""The content type of Prometheus' text format, which every Prometheus version reads."""
MAX_REQUEST_BYTES = 8192
REQUEST_TIMEOUT_S = 10.0
_ADDRESS = re.compile(r"^(?:\[(?P<v6>[^\]]+)\]|(?P<host>[^:\[\]]*)):(?P<port>\d{1,5})\Z")

Check = Callable[[], Awaitable[list[str]]]
"""A check: the reasons it fails (an empty list when it passes)."""
Metrics = Callable[[], tuple[bytes, str]]
"""Renders the metrics: (body, content type)."""


@dataclass(frozen=True)
class BindAddress:
    """Where the port listens: ``host`` "" means every address (IPv4 and IPv6)."""

    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_bind_address(text: str, option: str = "--health-address") -> BindAddress | None:
    """``HOST:PORT``, ``:PORT`` (every address) or ``[V6]:PORT``; "" or "off": no port."""
    value = text.strip()
    if value in ("", "off"):
        return None
    match = _ADDRESS.match(value)
    if match is None:
        raise ConfigError(
            f"{option} {text!r}: expected HOST:PORT, :PORT (every address), [IPv6]:PORT or off"
        )
    port = int(match["port"])
    if port > 65535:
        raise ConfigError(f"{option} {text!r}: port {port} is over 65535")
    return BindAddress(match["v6"] or match["host"] or "", port)


async def _passing() -> list[str]:
    return []


@dataclass
class Response:
    status: int
    body: bytes
    content_type: str = "text/plain; charset=utf-8"


_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class HealthServer:
    """Serves ``/healthz``, ``/readyz`` and ``/metrics`` on one TCP port.

    ``liveness`` and ``readiness`` are checks run per request on the loop the
    server runs in; ``ready_text`` is the 200 body of ``/readyz`` (e.g. which
    role a replica has).
    """

    def __init__(
        self,
        address: BindAddress,
        *,
        metrics: Metrics,
        readiness: Check = _passing,
        liveness: Check = _passing,
        ready_text: Callable[[], str] = lambda: "ok",
    ) -> None:
        self.address = address
        self.metrics = metrics
        self.readiness = readiness
        self.liveness = liveness
        self.ready_text = ready_text
        self._server: asyncio.base_events.Server | None = None

    @property
    def port(self) -> int:
        """The bound port (the chosen one when the address asked for port 0)."""
        if self._server is None or not self._server.sockets:
            return self.address.port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.address.host or "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; raises ConfigError (naming the address) when the port cannot be had."""
        try:
            self._server = await asyncio.start_server(
                self._connection,
                host=self.address.host or None,
                port=self.address.port,
                limit=MAX_REQUEST_BYTES,
                reuse_address=True,
                family=socket.AF_UNSPEC,
            )
        except OSError as e:
            raise ConfigError(
                f"cannot serve health and metrics on {self.address}: {e.strerror or e}"
            ) from e
        log.info("serving /healthz, /readyz and /metrics on %s (port %d)", self.address, self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    # ------------------------------------------------------------------ requests

    async def answer(self, method: str, target: str) -> Response:
        """The response to ``method target`` (also for tests without a socket)."""
        if method not in ("GET", "HEAD"):
            return Response(405, b"only GET and HEAD\n")
        path = target.split("?", 1)[0]
        if path == "/healthz":
            problems = await self.liveness()
            if problems:
                return Response(503, _lines(["not alive", *problems]))
            return Response(200, b"ok\n")
        if path == "/readyz":
            problems = await self.readiness()
            if problems:
                return Response(503, _lines(["not ready", *problems]))
            return Response(200, _lines([self.ready_text()]))
        if path == "/metrics":
            body, content_type = self.metrics()
            return Response(200, body, content_type)
        return Response(404, b"not found: the paths are /healthz, /readyz and /metrics\n")

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        method = ""
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
            except TimeoutError:
                response = Response(408, b"request not received in time\n")
            except asyncio.LimitOverrunError:
                response = Response(431, b"request too large\n")
            except asyncio.IncompleteReadError:
                return  # closed before a whole request: nothing to answer
            else:
                request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
                parts = request_line.split(" ")
                if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                    response = Response(400, b"malformed request line\n")
                else:
                    method = parts[0]
                    try:
                        response = await self.answer(method, parts[1])
                    except Exception as e:  # a check that broke: say so, keep serving
                        log.exception("health request %s failed", request_line)
                        response = Response(500, _lines([f"internal error: {e}"]))
            writer.write(_render(response, head_only=method == "HEAD"))
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()


def _lines(lines: list[str]) -> bytes:
    return "".join(f"{line}\n" for line in lines).encode()


def _render(response: Response, *, head_only: bool) -> bytes:
    reason = _REASONS.get(response.status, "")
    header = (
        f"HTTP/1.1 {response.status} {reason}\r\n"
        f"Content-Type: {response.content_type}\r\n"
        f"Content-Length: {len(response.body)}\r\n"
        "Cache-Control: no-store\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    return header if head_only else header + response.body


LIVENESS_TIMEOUT_S = 4.0
"""How long the work loop may take to run a no-op before liveness fails (probes wait 5 s)."""


async def loop_answers(
    loop: asyncio.AbstractEventLoop | None, what: str, timeout: float = LIVENESS_TIMEOUT_S
) -> list[str]:
    """Whether ``loop`` (running in another thread) runs a callback within ``timeout``.

    A loop that is not running (not started yet, or stopped) says nothing:
    only a loop that runs but does not get to its callbacks is not alive.
    """
    if loop is None or not loop.is_running():
        return []
    here = asyncio.get_running_loop()
    answered = asyncio.Event()

    def pong() -> None:
        with contextlib.suppress(RuntimeError):  # the health loop is closing
            here.call_soon_threadsafe(answered.set)

    try:
        loop.call_soon_threadsafe(pong)
    except RuntimeError:  # closed meanwhile: the process is stopping
        return []
    try:
        await asyncio.wait_for(answered.wait(), timeout)
    except TimeoutError:
        return [f"{what} has not run a callback for {timeout:g} s"]
    return []


class HealthThread:
    """Runs a :class:`HealthServer` on an event loop in a daemon thread."""

    def __init__(self, server: HealthServer) -> None:
        self.server = server
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 10.0) -> HealthThread:
        """Listen, or raise ConfigError when the address cannot be had."""
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self.server.start())
            except BaseException as e:
                failure.append(e)
                started.set()
                loop.close()
                return
            started.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self.server.stop())
                # Connections still open (a client that never sent its request).
                pending = asyncio.all_tasks(loop)
                for task in pending:
                    task.cancel()
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="health-server", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise ConfigError(f"the health port {self.server.address} did not open in time")
        if failure:
            raise failure[0]
        return self

    def stop(self, timeout: float = 5.0) -> None:
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
