"""The local Kubernetes API server: aiohttp in front of :class:`ClusterState`.

Serves discovery, CRUD, PATCH, list and watch for the resources in
:mod:`multinic_sim.resources` and every custom resource an established CRD
defines, plus an admin API under ``/_sim/`` (fault injection, compaction,
reset) that real clusters do not have.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlencode

import aiohttp
import yaml
from aiohttp import web

from multinic_sim import errors, protobuf, remote_command
from multinic_sim.cluster import ClusterState, DeleteOptions
from multinic_sim.errors import ApiError
from multinic_sim.faults import FaultInjector, FaultRule, FaultRuleError
from multinic_sim.patching import APPLY_PATCH
from multinic_sim.persistence import StateFile
from multinic_sim.printing import to_table
from multinic_sim.resources import ResourceType
from multinic_sim.selectors import FieldSelector, LabelSelector
from multinic_sim.store import Obj, StoredEvent
from multinic_sim.watch import Delivery, Marker, Watcher, dumps

log = logging.getLogger(__name__)
T = TypeVar("T")

KUBE_VERSION = {
    "major": "1",
    "minor": "32",
    "gitVersion": "v1.32.0-multinic-sim",
    "gitCommit": "0000000000000000000000000000000000000000",
    "gitTreeState": "clean",
    "buildDate": "2026-01-01T00:00:00Z",
    "goVersion": "go1.23.0",
    "compiler": "gc",
    "platform": "linux/amd64",
}
JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
PROTOBUF_OPENAPI = "application/com.github.proto-openapi.spec.v2.v1.0+protobuf"
DEFAULT_WATCH_TIMEOUT = 1800.0
# kube-apiserver's --max-request-body-bytes default (3 MiB): larger bodies get 413.
MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024


@dataclass
class RequestInfo:
    """What a resource request is about, after URL routing."""

    rt: ResourceType
    verb: str
    namespace: str | None
    name: str | None
    subresource: str | None


def _json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(body=dumps(body), status=status, content_type=JSON, headers=headers)


NETNS_DIR = Path("/var/run/netns")
CLONE_NEWNET = 0x40000000


def _setns(fd: int, nstype: int) -> None:
    """setns(2) for the calling thread (``os.setns`` arrived only in Python 3.12)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, nstype) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _in_netns(netns: str, fn: Callable[[], T]) -> T:
    """``fn()`` run in the named network namespace.

    ``setns`` changes the namespace of the calling thread only, so *fn* runs in
    a dedicated short-lived thread (never a pooled one, which would stay in
    *netns*); sockets it makes keep belonging to *netns* after the thread ends.
    """
    made: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            fd = os.open(NETNS_DIR / netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                _setns(fd, CLONE_NEWNET)
            finally:
                os.close(fd)
            made.append(fn())
        except BaseException as e:
            failed.append(e)

    thread = threading.Thread(target=run, name=f"in-{netns}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


def bind_in_netns(netns: str, host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` inside the named network namespace."""

    def bind() -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(2048)
        except BaseException:
            sock.close()
            raise
        return sock

    try:
        return _in_netns(netns, bind)
    except (OSError, ValueError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise errors.SimError(
            f"cannot listen on {host}:{port} in network namespace {netns}: {reason}"
        ) from error


def connects_in_netns(netns: str, host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether a TCP connection to ``host:port`` from inside ``netns`` is accepted."""

    def connect() -> bool:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            return False
        return True

    return _in_netns(netns, connect)


class ApiServer:
    """A local Kubernetes API server on 127.0.0.1.

    Start it with :meth:`start` inside an event loop (or use
    :class:`multinic_sim.background.ApiServerThread`). ``port=0`` picks a free
    port. With ``token`` set, requests must carry ``Authorization: Bearer
    <token>``. With ``state_file`` set, the objects are loaded from it at start
    and saved to it (atomically) shortly after every change and at stop.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        token: str | None = None,
        state_file: str | None = None,
        history_limit: int = 50_000,
        bookmark_interval: float = 30.0,
        save_interval: float = 0.2,
    ) -> None:
        self.host = host
        self.port = port
        self.token = token
        self.cluster = ClusterState(history_limit=history_limit)
        self.faults = FaultInjector()
        self.bookmark_interval = bookmark_interval
        self.save_interval = save_interval
        self.state = StateFile(state_file) if state_file else None
        self._dirty = False
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sock: socket.socket | None = None
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_route("*", "/{tail:.*}", self._handle)

    # -- lifecycle ----------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self.state is not None:
            self.state.check_writable()
            saved = self.state.load()
            if saved is not None:
                self.cluster.load(saved)
                log.info(
                    "loaded %d objects from %s (resourceVersion %s)",
                    len(saved.get("objects", [])),
                    self.state.path,
                    saved.get("resourceVersion"),
                )
            self.cluster.store.listeners.append(self._mark_dirty)
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._sock.bind((self.host, self.port))
        except OSError as e:
            self._sock.close()
            raise errors.SimError(f"cannot listen on {self.host}:{self.port}: {e.strerror}") from e
        self.port = self._sock.getsockname()[1]
        # handler_cancellation: a watch whose client went away ends at once instead
        # of lingering (and receiving events) until its timeout.
        self._runner = web.AppRunner(
            self.app, access_log=None, shutdown_timeout=1.0, handler_cancellation=True
        )
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock, backlog=2048).start()
        self._tasks.append(asyncio.create_task(self.cluster.run_controllers()))
        if self.state is not None:
            self._tasks.append(asyncio.create_task(self._save_loop()))
        log.info("API server listening on %s", self.url)

    async def listen_in_netns(self, netns: str) -> None:
        """Also serve on ``127.0.0.1:<port>`` inside the network namespace *netns*.

        Called after :meth:`start`, once per simulated host: agents run inside
        their host's namespace and reach the server over that namespace's own
        loopback, so the simulation opens no port outside 127.0.0.1.
        """
        if self._runner is None:
            raise RuntimeError("start() the server before listen_in_netns()")
        sock = await asyncio.get_running_loop().run_in_executor(
            None, bind_in_netns, netns, self.host, self.port
        )
        await web.SockSite(self._runner, sock, backlog=2048).start()
        log.info("API server also listening on %s in network namespace %s", self.url, netns)

    async def stop(self) -> None:
        self.cluster.watches.drop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.state is not None:
            self.save()
        log.info("API server on %s stopped", self.url)

    def _mark_dirty(self, _event: StoredEvent) -> None:
        self._dirty = True

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self.save_interval)
            if self._dirty:
                self.save()

    def save(self) -> None:
        if self.state is None:
            return
        self._dirty = False
        self.state.save(self.cluster.store.dump())

    # -- test controls (call on the server's loop) ---------------------------

    def compact(self) -> None:
        """Forget the watch history: resuming from any older resourceVersion gets 410."""
        self.cluster.store.compact()

    def reset(self) -> None:
        """Back to an empty cluster (namespaces default, kube-system, ... only)."""
        self.cluster.reset()
        self.faults.clear()

    def drop_watches(self, resource: str | None = None, *, abort: bool = False) -> int:
        """End open watch streams (all, or of one plural); abort=True resets the connection."""
        if resource is None:
            return self.cluster.watches.drop(abort=abort)
        total = 0
        for rt in self.cluster.registry:
            if rt.plural == resource:
                total += self.cluster.watches.drop(rt.group_resource, abort=abort)
        return total

    # -- request dispatch ---------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.monotonic()
        try:
            response = await self._dispatch(request)
        except ApiError as e:
            response = _json_response(e.status(), e.code, e.headers)
        except Exception as e:
            log.exception("internal error serving %s %s", request.method, request.path_qs)
            err = errors.internal(str(e))
            response = _json_response(err.status(), err.code)
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "%s %s -> %s (%.1f ms)",
                request.method,
                request.path_qs,
                response.status,
                (time.monotonic() - started) * 1000,
            )
        return response

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        path = request.path.rstrip("/") or "/"
        self._authenticate(request)
        if path.startswith("/_sim/"):
            return await self._admin(request, path)
        if path in ("/healthz", "/readyz", "/livez"):
            return web.Response(text="ok")
        if path == "/version":
            return _json_response(KUBE_VERSION)
        if path.startswith("/openapi/"):
            return self._openapi(request, path)
        if path == "/api":
            return _json_response(
                {
                    "kind": "APIVersions",
                    "versions": ["v1"],
                    "serverAddressByClientCIDRs": [
                        {"clientCIDR": "0.0.0.0/0", "serverAddress": f"{self.host}:{self.port}"}
                    ],
                }
            )
        if path == "/apis":
            return _json_response(self.cluster.registry.group_list())
        parts = path.strip("/").split("/")
        if parts[0] == "apis" and len(parts) >= 2:
            for group in self.cluster.registry.group_list()["groups"]:
                if group["name"] == parts[1]:
                    if len(parts) == 2:
                        return _json_response({"kind": "APIGroup", "apiVersion": "v1", **group})
                    break
            else:
                # No such group (a CRD's group once its last CRD is gone): kube-apiserver's
                # mux answers in plain text, not with a Status.
                return _page_not_found()
        elif parts[0] != "api":
            return _page_not_found()
        if parts[0] == "api" and len(parts) >= 2:
            group, version, rest = "", parts[1], parts[2:]
        elif parts[0] == "apis" and len(parts) >= 3:
            group, version, rest = parts[1], parts[2], parts[3:]
        else:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if not rest:
            resources = self.cluster.registry.resource_list(group, version)
            if resources is None:
                raise ApiError(404, "NotFound", "the server could not find the requested resource")
            return _json_response(resources)
        if group == "" and len(rest) == 5 and rest[0] == "namespaces" and rest[2] == "pods":
            if rest[4] == "exec":
                return await self._exec(request, rest[1], rest[3])
            if rest[4] in ("attach", "portforward", "proxy"):
                raise errors.method_not_allowed(f"multinic-sim does not serve pods/{rest[4]}")
        info = self._route(request, group, version, rest)
        rule = self.faults.match(
            info.verb,
            info.rt.plural + (f"/{info.subresource}" if info.subresource else ""),
            request.path,
        )
        if rule is not None:
            await self._inject(rule)
        return await self._serve(request, info)

    # -- pods/exec: relayed to the kubelet of the pod's node -------------------

    async def _exec(self, request: web.Request, namespace: str, name: str) -> web.StreamResponse:
        """Relay an exec stream to the kubelet serving the pod's node.

        Like Kubernetes, the kubelet is found through the Node's
        ``status.daemonEndpoints.kubeletEndpoint.Port``; the simulation's
        kubelets listen on 127.0.0.1. Only the WebSocket protocols are served
        (the kubernetes client and kubectl >= 1.30 use them).
        """
        cluster = self.cluster
        pod = cluster.get(cluster.resource("", "v1", "pods"), namespace, name)
        spec, status = pod.get("spec") or {}, pod.get("status") or {}
        node = spec.get("nodeName")
        if not node:
            raise errors.bad_request(f"pod {name} does not have a host assigned")
        containers = [str(c.get("name")) for c in spec.get("containers") or []]
        container = request.query.get("container") or (
            containers[0] if len(containers) == 1 else ""
        )
        if container not in containers:
            raise errors.bad_request(
                f"container {container} is not valid for pod {name}"
                if container
                else f"a container name must be specified for pod {name}, choose one of: "
                f"{containers}"
            )
        if status.get("phase") != "Running":
            raise errors.bad_request(
                f"unable to upgrade connection: pod {name} is not running "
                f"(phase {status.get('phase') or 'Pending'})"
            )
        node_obj = cluster.get(cluster.resource("", "v1", "nodes"), None, node)
        endpoints = (node_obj.get("status") or {}).get("daemonEndpoints") or {}
        port = (endpoints.get("kubeletEndpoint") or {}).get("Port")
        if not port:
            raise errors.internal(
                f"no kubelet serves node {node} (no kubeletEndpoint in its status)"
            )
        if request.headers.get("Upgrade", "").lower() != "websocket":
            raise errors.bad_request(
                "multinic-sim serves exec over WebSocket only (protocols "
                + ", ".join(remote_command.PROTOCOLS)
                + ")"
            )
        requested = [
            p.strip() for p in request.headers.get("Sec-WebSocket-Protocol", "").split(",")
        ]
        offered = [p for p in requested if p in remote_command.PROTOCOLS]
        if not offered:
            raise errors.bad_request(
                f"exec stream protocols {requested} not supported; supported: "
                + ", ".join(remote_command.PROTOCOLS)
            )
        kubelet_query = _kubelet_exec_query(request.query)
        url = f"http://127.0.0.1:{port}/exec/{namespace}/{name}/{container}?{kubelet_query}"
        session = aiohttp.ClientSession()
        try:
            upstream = await session.ws_connect(url, protocols=offered, autoping=True)
        except aiohttp.WSServerHandshakeError as e:
            await session.close()
            raise ApiError(
                e.status if 400 <= e.status < 600 else 500,
                "InternalError" if e.status >= 500 else "BadRequest",
                f"the kubelet of node {node} refused the exec: {e.status} {e.message}",
            ) from e
        except (aiohttp.ClientError, OSError) as e:
            await session.close()
            raise errors.internal(f"error dialing backend (kubelet of node {node}): {e}") from e
        stream = web.WebSocketResponse(protocols=[upstream.protocol or offered[0]])
        try:
            await stream.prepare(request)
            await _relay(upstream, stream)
        finally:
            await upstream.close()
            await session.close()
            await stream.close()
        return stream

    def _authenticate(self, request: web.Request) -> None:
        if self.token is None:
            return
        if request.headers.get("Authorization", "") != f"Bearer {self.token}":
            raise errors.unauthorized()

    def _route(
        self, request: web.Request, group: str, version: str, rest: list[str]
    ) -> RequestInfo:
        namespace: str | None = None
        if (
            rest[0] == "namespaces"
            and len(rest) >= 3
            and not (len(rest) == 3 and rest[2] in ("status", "finalize"))
        ):
            namespace, rest = rest[1], rest[2:]
        if len(rest) > 3:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        rt = self.cluster.resource(group, version, rest[0])
        name = rest[1] if len(rest) > 1 else None
        sub = rest[2] if len(rest) > 2 else None
        if namespace is not None and not rt.namespaced:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if rt.namespaced and namespace is None and name is not None:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        if sub is not None and not (sub == "status" and rt.status_subresource):
            raise ApiError(404, "NotFound", "the server could not find the requested resource")
        method = request.method
        query = request.query
        if method == "GET":
            if name is None:
                verb = "watch" if query.get("watch") in ("true", "1") else "list"
            else:
                verb = "get"
        elif method == "POST" and name is None:
            verb = "create"
        elif method == "POST" and rt.is_custom and sub is None:
            # kube-apiserver's custom resource handler takes a POST to an object's
            # path as a create of the body (the name in the path is not used);
            # built-in resources answer 405.
            verb, name = "create", None
        elif method == "PUT" and name is not None:
            verb = "update"
        elif method == "PATCH" and name is not None:
            verb = "patch"
        elif method == "DELETE":
            verb = "delete" if name is not None else "deletecollection"
        else:
            raise errors.method_not_allowed()
        if sub is not None and verb not in ("get", "update", "patch"):
            raise errors.method_not_allowed()
        if rt.namespaced and namespace is None and verb in ("create", "deletecollection"):
            # Only list and watch exist across all namespaces.
            raise errors.method_not_allowed()
        return RequestInfo(rt, verb, namespace, name, sub)

    async def _inject(self, rule: FaultRule) -> None:
        if rule.action == "timeout":
            await asyncio.sleep(rule.delay)
            raise ApiError(
                504, "Timeout", rule.message or "the server was unable to return a response in time"
            )
        message = rule.message or f"injected fault (rule {rule.id})"
        raise errors.from_code(rule.status, message, rule.retry_after)

    # -- resource verbs -----------------------------------------------------

    async def _serve(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        rt, query = info.rt, request.query
        cluster = self.cluster
        dry_run = "All" in query.getall("dryRun", [])
        strict = query.get("fieldValidation") == "Strict"
        warnings: list[str] = []
        if info.verb == "watch":
            return await self._watch(request, info)
        if info.verb == "get":
            assert info.name is not None
            obj = cluster.get(rt, info.namespace, info.name)
            return self._object_response(request, rt, obj)
        if info.verb == "list":
            result = cluster.list_objects(
                rt,
                info.namespace,
                labels=LabelSelector.parse(query.get("labelSelector")),
                fields=FieldSelector.parse(query.get("fieldSelector"), rt.field_selectors, rt.kind),
                limit=_int_param(query, "limit"),
                continue_token=query.get("continue") or None,
                resource_version=query.get("resourceVersion"),
                resource_version_match=query.get("resourceVersionMatch") or None,
            )
            if _wants_table(request):
                return _json_response(
                    to_table(
                        rt,
                        result.items,
                        list_meta=result.list_meta(),
                        include_object=query.get("includeObject", "Metadata"),
                    )
                )
            if _wants_metadata(request):
                return _json_response(
                    {
                        "kind": "PartialObjectMetadataList",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": result.list_meta(),
                        "items": [partial_metadata(o) for o in result.items],
                    }
                )
            return _json_response(
                {
                    "kind": rt.list_kind(),
                    "apiVersion": rt.api_version,
                    "metadata": result.list_meta(),
                    "items": result.items,
                }
            )
        if info.verb == "create":
            body = await _read_body(request)
            obj = cluster.create(
                rt, info.namespace, body, dry_run=dry_run, strict=strict, warnings=warnings
            )
            return self._object_response(request, rt, obj, status=201, warnings=warnings)
        if info.verb == "update":
            assert info.name is not None
            body = await _read_body(request, subresource=info.subresource)
            obj = cluster.update(
                rt,
                info.namespace,
                info.name,
                body,
                subresource=info.subresource,
                dry_run=dry_run,
                strict=strict,
                warnings=warnings,
            )
            return self._object_response(request, rt, obj, warnings=warnings)
        if info.verb == "patch":
            assert info.name is not None
            content_type = request.content_type
            if content_type == APPLY_PATCH:
                raise errors.unsupported_media_type(
                    content_type + " (server-side apply is not implemented by multinic-sim)",
                    [
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/strategic-merge-patch+json",
                    ],
                )
            raw = await _read_raw(request)
            try:
                patch = json.loads(raw or b"null")
            except ValueError as e:
                raise errors.bad_request(f"error decoding patch: {e}") from e
            obj = cluster.patch(
                rt,
                info.namespace,
                info.name,
                content_type,
                patch,
                subresource=info.subresource,
                dry_run=dry_run,
                strict=strict,
                warnings=warnings,
            )
            return self._object_response(request, rt, obj, warnings=warnings)
        if info.verb == "delete":
            assert info.name is not None
            body = await _read_body(request, optional=True)
            options = DeleteOptions.parse(body, dict(query))
            obj = cluster.delete(rt, info.namespace, info.name, options)
            return self._object_response(request, rt, obj)
        # deletecollection
        body = await _read_body(request, optional=True)
        options = DeleteOptions.parse(body, dict(query))
        deleted = cluster.delete_collection(
            rt,
            info.namespace,
            labels=LabelSelector.parse(query.get("labelSelector")),
            fields=FieldSelector.parse(query.get("fieldSelector"), rt.field_selectors, rt.kind),
            options=options,
        )
        return _json_response(
            {
                "kind": rt.list_kind(),
                "apiVersion": rt.api_version,
                "metadata": {"resourceVersion": str(cluster.store.revision)},
                "items": deleted,
            }
        )

    def _object_response(
        self,
        request: web.Request,
        rt: ResourceType,
        obj: Obj,
        *,
        status: int = 200,
        warnings: list[str] | None = None,
    ) -> web.Response:
        headers = {"Warning": ", ".join(f'299 - "{w}"' for w in warnings)} if warnings else None
        if _wants_table(request):
            meta = {"resourceVersion": obj["metadata"].get("resourceVersion", "")}
            return _json_response(
                to_table(
                    rt,
                    [obj],
                    list_meta=meta,
                    include_object=request.query.get("includeObject", "Metadata"),
                ),
                status,
                headers,
            )
        if _wants_metadata(request):
            return _json_response(partial_metadata(obj), status, headers)
        encoded = self.cluster.encoded(obj)
        if encoded is not None:
            return web.Response(body=encoded, status=status, content_type=JSON, headers=headers)
        return _json_response(obj, status, headers)

    # -- watch --------------------------------------------------------------

    async def _watch(self, request: web.Request, info: RequestInfo) -> web.StreamResponse:
        rt, query = info.rt, request.query
        watcher = Watcher(
            rt.group_resource,
            info.namespace if rt.namespaced else None,
            LabelSelector.parse(query.get("labelSelector")),
            FieldSelector.parse(query.get("fieldSelector"), rt.field_selectors, rt.kind),
        )
        timeout = float(_int_param(query, "timeoutSeconds") or DEFAULT_WATCH_TIMEOUT)
        bookmarks = query.get("allowWatchBookmarks") in ("true", "1")
        initial, failure = self._start_watch(watcher, query)
        as_table = _wants_table(request)
        as_metadata = not as_table and _wants_metadata(request)
        include = query.get("includeObject", "Metadata")

        def render(obj: Obj) -> Any:
            viewed = self.cluster.view(rt, obj)
            if as_table:
                return to_table(
                    rt,
                    [viewed],
                    list_meta={"resourceVersion": viewed["metadata"].get("resourceVersion", "")},
                    include_object=include,
                )
            if as_metadata:
                return partial_metadata(viewed)
            return viewed

        shape = "table:" + include if as_table else "metadata" if as_metadata else "json"
        view_key = f"{rt.api_version}|{shape}"
        response = web.StreamResponse(
            status=200, headers={"Content-Type": JSON, "Cache-Control": "no-cache"}
        )
        response.enable_chunked_encoding()
        try:
            await response.prepare(request)
            if failure is not None:
                await response.write(dumps({"type": "ERROR", "object": failure.status()}) + b"\n")
                await response.write_eof()
                return response
            chunk = b"".join(d.encode(t, view_key, render) for t, d in initial)
            if query.get("sendInitialEvents") == "true" and bookmarks:
                chunk += self._bookmark(rt, self.cluster.store.revision, initial_events_end=True)
            if chunk:
                await response.write(chunk)
            await self._stream_events(
                response,
                watcher,
                rt=rt,
                timeout=timeout,
                bookmarks=bookmarks,
                encode=lambda t, d: d.encode(t, view_key, render),
            )
            if watcher.abort and request.transport is not None:
                request.transport.abort()
                return response
            await response.write_eof()
        except ConnectionError:
            log.debug("watch client went away")
        finally:
            self.cluster.watches.unsubscribe(watcher)
            watcher.closed = True
        return response

    def _start_watch(
        self, watcher: Watcher, query: Any
    ) -> tuple[list[tuple[str, Delivery]], ApiError | None]:
        """The events a new watch starts with, and subscribe it to live ones.

        Nothing here awaits, so no change can slip between the initial state (or
        the history it resumes from) and the live stream.
        """
        store = self.cluster.store
        rv_text = query.get("resourceVersion") or ""
        initial: list[tuple[str, Delivery]] = []
        if query.get("sendInitialEvents") == "true" or rv_text in ("", "0"):
            objs = sorted(
                store.objects(watcher.gr, watcher.namespace),
                key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]),
            )
            initial = [("ADDED", Delivery("ADDED", o, 0)) for o in objs if watcher.selects(o)]
        else:
            try:
                start_rv = int(rv_text)
            except ValueError as e:
                raise errors.bad_request(f"invalid resource version: {rv_text!r}") from e
            try:
                for event in store.events_since(start_rv, watcher.gr):
                    seen_as = watcher.translate(event)
                    if seen_as is not None:
                        initial.append((seen_as, Delivery(event.type, event.obj, event.rv)))
            except ApiError as e:
                return [], e
        self.cluster.watches.subscribe(watcher)
        return initial, None

    async def _stream_events(
        self,
        response: web.StreamResponse,
        watcher: Watcher,
        *,
        rt: ResourceType,
        timeout: float,
        bookmarks: bool,
        encode: Any,
    ) -> None:
        """Write the watcher's events until it closes or *timeout* seconds pass."""
        loop = asyncio.get_running_loop()
        queue = watcher.queue
        # timers[0] ends the watch, timers[1] (if any) is the next bookmark.
        timers = [loop.call_later(timeout, queue.put_nowait, Marker("timeout"))]

        def bookmark_tick() -> None:
            # Only when nothing is queued has this watcher seen everything up to
            # the store's revision, which is what a bookmark promises.
            if queue.empty():
                queue.put_nowait(Marker("bookmark", self.cluster.store.revision))
            timers[1] = loop.call_later(self.bookmark_interval, bookmark_tick)

        if bookmarks:
            timers.append(loop.call_later(self.bookmark_interval, bookmark_tick))
        try:
            while True:
                parts: list[bytes] = []
                item = await queue.get()
                while True:
                    if item is None or (isinstance(item, Marker) and item.kind == "timeout"):
                        if parts:
                            await response.write(b"".join(parts))
                        return
                    if isinstance(item, Marker):
                        parts.append(self._bookmark(rt, item.rv))
                    else:
                        parts.append(encode(*item))
                    if queue.empty():
                        break
                    item = queue.get_nowait()
                await response.write(b"".join(parts))
        finally:
            for timer in timers:
                timer.cancel()

    def _bookmark(self, rt: ResourceType, rv: int, *, initial_events_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        if initial_events_end:
            meta["annotations"] = {"k8s.io/initial-events-end": "true"}
        return (
            dumps(
                {
                    "type": "BOOKMARK",
                    "object": {"kind": rt.kind, "apiVersion": rt.api_version, "metadata": meta},
                }
            )
            + b"\n"
        )

    # -- openapi ------------------------------------------------------------

    def _openapi(self, request: web.Request, path: str) -> web.Response:
        if path == "/openapi/v2":
            if "protobuf" in request.headers.get("Accept", ""):
                # An empty protobuf message is a valid, empty OpenAPI v2 document:
                # kubectl then validates nothing client-side and relies on the server.
                return web.Response(body=b"", headers={"Content-Type": PROTOBUF_OPENAPI})
            return _json_response(
                {
                    "swagger": "2.0",
                    "info": {"title": "multinic-sim", "version": "v1.32.0"},
                    "paths": {},
                    "definitions": {},
                }
            )
        if path == "/openapi/v3":
            return _json_response({"paths": {}})
        raise ApiError(404, "NotFound", "the server could not find the requested resource")

    # -- admin API ----------------------------------------------------------

    async def _admin(self, request: web.Request, path: str) -> web.Response:
        method = request.method
        try:
            if path == "/_sim/faults":
                if method == "GET":
                    return _json_response({"rules": [r.to_json() for r in self.faults.rules()]})
                if method == "POST":
                    rule = FaultRule.from_json(await _read_body(request))
                    self.faults.add(rule)
                    return _json_response(rule.to_json(), 201)
                if method == "DELETE":
                    self.faults.clear()
                    return _json_response({"rules": []})
            elif path.startswith("/_sim/faults/") and method == "DELETE":
                try:
                    rule_id = int(path.rsplit("/", 1)[1])
                except ValueError as e:
                    raise errors.bad_request("fault rule ids are integers") from e
                if not self.faults.remove(rule_id):
                    raise ApiError(404, "NotFound", f"no fault rule {rule_id}")
                return _json_response({"deleted": rule_id})
            elif path == "/_sim/watches/drop" and method == "POST":
                body = await _read_body(request, optional=True) or {}
                if not isinstance(body, dict):
                    raise errors.bad_request("expected a JSON object")
                dropped = self.drop_watches(body.get("resource"), abort=bool(body.get("abort")))
                return _json_response({"dropped": dropped})
            elif path == "/_sim/compact" and method == "POST":
                self.compact()
                return _json_response({"compactedTo": str(self.cluster.store.revision)})
            elif path == "/_sim/reset" and method == "POST":
                self.reset()
                return _json_response({"resourceVersion": str(self.cluster.store.revision)})
            elif path == "/_sim/stats" and method == "GET":
                return _json_response(
                    {
                        "resourceVersion": str(self.cluster.store.revision),
                        "watches": self.cluster.watches.count(),
                    }
                )
            else:
                raise ApiError(404, "NotFound", f"no admin endpoint {method} {path}")
        except FaultRuleError as e:
            raise errors.bad_request(str(e)) from e
        raise errors.method_not_allowed()


async def _relay(upstream: aiohttp.ClientWebSocketResponse, client: web.WebSocketResponse) -> None:
    """Copy frames both ways until either side closes."""

    async def copy(source: Any, sink: Any) -> None:
        async for message in source:
            if message.type == aiohttp.WSMsgType.BINARY:
                await sink.send_bytes(message.data)
            elif message.type == aiohttp.WSMsgType.TEXT:
                await sink.send_str(message.data)

    tasks = [
        asyncio.create_task(copy(upstream, client)),
        asyncio.create_task(copy(client, upstream)),
    ]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await task


def _kubelet_exec_query(query: Any) -> str:
    """The kubelet's exec parameters for a pods/exec request, as kube-apiserver sends them.

    The kubelet API names the streams input, output, error and tty ("1" when on),
    not stdin, stdout, stderr and tty ("true") as pods/exec does.
    """
    params = [("command", c) for c in query.getall("command", [])]
    for ours, kubelets in (("stdin", "input"), ("stdout", "output"), ("stderr", "error")):
        if query.get(ours) in ("true", "1"):
            params.append((kubelets, "1"))
    if query.get("tty") in ("true", "1"):
        params.append(("tty", "1"))
    return urlencode(params)


def _page_not_found() -> web.Response:
    """kube-apiserver's answer for a path outside every API group it serves."""
    return web.Response(status=404, text="404 page not found\n", content_type="text/plain")


def _wants_table(request: web.Request) -> bool:
    return "as=Table" in request.headers.get("Accept", "")


def _wants_metadata(request: web.Request) -> bool:
    """``Accept: application/json;as=PartialObjectMetadata[List];g=meta.k8s.io;v=v1``
    (client-go's metadata client): objects are answered as their metadata only."""
    accept = request.headers.get("Accept", "")
    return "as=PartialObjectMetadata" in accept and "g=meta.k8s.io" in accept


def partial_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """An object as kube-apiserver answers a metadata-only request for it."""
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def _int_param(query: Any, name: str) -> int | None:
    value = query.get(name)
    if value in (None, ""):
        return None
    try:
        return int(value)
    except ValueError as e:
        raise errors.bad_request(f"{name}: invalid integer {value!r}") from e


async def _read_raw(request: web.Request) -> bytes:
    """The request body; over kube-apiserver's limit, 413 (before reading it when it says so)."""
    if (request.content_length or 0) > MAX_REQUEST_BODY_BYTES:
        raise errors.request_entity_too_large(MAX_REQUEST_BODY_BYTES)
    raw = await request.read()
    if len(raw) > MAX_REQUEST_BODY_BYTES:
        raise errors.request_entity_too_large(MAX_REQUEST_BODY_BYTES)
    return raw


async def _read_body(
    request: web.Request, *, optional: bool = False, subresource: str | None = None
) -> Any:
    raw = await _read_raw(request)
    if not raw.strip():
        if optional:
            return None
        raise errors.bad_request("the request body is empty")
    content_type = request.content_type
    if content_type in ("application/yaml", "application/x-yaml"):
        try:
            return yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise errors.bad_request(f"error decoding YAML: {e}") from e
    if content_type == PROTOBUF:
        try:
            return protobuf.decode(raw, subresource)
        except protobuf.ProtobufError as e:
            raise errors.unsupported_media_type(
                f"{content_type} ({e})", [JSON, "application/yaml"]
            ) from e
    try:
        return json.loads(raw)
    except ValueError as e:
        raise errors.bad_request(
            f"Object 'Kind' is missing in '{raw[:100]!r}'"
            if not raw.strip().startswith(b"{")
            else f"couldn't get version/kind; json parse error: {e}"
        ) from e
