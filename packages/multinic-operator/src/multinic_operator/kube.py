"""The operator's Kubernetes API access: one small REST client for every kind.

The service objects read and write plain JSON dicts through ``KubeApi``; the
resource path of a kind comes from a table of the kinds the operator knows
(and from API discovery for a driver's kinds).  Every request is counted by
verb, so tests and the benchmark can tell how much API work a change costs.

Errors: a missing object is ``None`` from ``get`` (and ignored by
``delete``); everything else raises ``KubeApiError``, whose ``transient``
says whether to retry later (409, 429, 5xx, timeouts, connection errors).
An API error is never mistaken for absence.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import urllib3.exceptions
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client import rest

from multinic_core.errors import MultinicError
from multinic_operator.metrics import OperatorMetrics

# The kubernetes client is only partly annotated; its loaders are used untyped.
config: Any = kube_config

log = logging.getLogger(__name__)

USER_AGENT = "multinic-operator/0.1.0"
MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"
METADATA_ONLY = f"{JSON};as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
"""Accept: the answer (or each watch event) is the object's metadata only, as client-go's
metadata client asks for it; the object's kind is then ``PartialObjectMetadata``."""
METADATA_LIST = f"{JSON};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
DEFAULT_TIMEOUT = 30.0


class KubeApiError(MultinicError):
    """A request to the Kubernetes API failed (``status`` 0 = no HTTP answer)."""

    def __init__(self, verb: str, what: str, status: int, detail: str) -> None:
        self.verb = verb
        self.what = what
        self.status = status
        self.detail = detail
        answer = f"HTTP {status}" if status else "no answer"
        super().__init__(f"{verb} {what}: {answer}: {detail}")

    @property
    def transient(self) -> bool:
        """Worth retrying later: a conflict, throttling, a server error or no answer."""
        return self.status == 0 or self.status in TRANSIENT_STATUSES

    @property
    def conflict(self) -> bool:
        return self.status == 409


@dataclass(frozen=True)
class ResourceKind:
    """Where objects of one kind live in the API's URL space."""

    api_version: str
    kind: str
    plural: str
    namespaced: bool

    def collection(self, namespace: str | None = None) -> str:
        base = (
            f"/api/{self.api_version}"
            if "/" not in self.api_version
            else (f"/apis/{self.api_version}")
        )
        if self.namespaced and namespace:
            return f"{base}/namespaces/{quote(namespace, safe='')}/{self.plural}"
        return f"{base}/{self.plural}"

    def item(self, name: str, namespace: str | None = None) -> str:
        return f"{self.collection(namespace)}/{quote(name, safe='')}"

    def describe(self, name: str = "", namespace: str | None = None) -> str:
        where = f"{namespace}/" if namespace else ""
        return f"{self.kind} {where}{name}".rstrip()


KNOWN_KINDS: tuple[ResourceKind, ...] = (
    ResourceKind("v1", "Namespace", "namespaces", namespaced=False),
    ResourceKind("v1", "Node", "nodes", namespaced=False),
    ResourceKind("v1", "ServiceAccount", "serviceaccounts", namespaced=True),
    ResourceKind("v1", "Event", "events", namespaced=True),
    ResourceKind("apps/v1", "DaemonSet", "daemonsets", namespaced=True),
    ResourceKind("multinic.fms.io/v1", "MultiNicNetwork", "multinicnetworks", namespaced=False),
    ResourceKind("multinic.fms.io/v1", "CIDR", "cidrs", namespaced=False),
    ResourceKind("multinic.fms.io/v1", "IPPool", "ippools", namespaced=False),
    ResourceKind("multinic.fms.io/v1", "HostInterface", "hostinterfaces", namespaced=False),
    ResourceKind("multinic.fms.io/v1", "Config", "configs", namespaced=False),
    ResourceKind("multinic.fms.io/v1", "DeviceClass", "deviceclasses", namespaced=False),
    ResourceKind(
        "k8s.cni.cncf.io/v1",
        "NetworkAttachmentDefinition",
        "network-attachment-definitions",
        namespaced=True,
    ),
)


def load_client_configuration(kubeconfig: str | None = None) -> client.Configuration:
    """Client settings from ``kubeconfig``, else in-cluster, else the default kubeconfig."""
    configuration = client.Configuration()
    if kubeconfig:
        config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        return configuration
    try:
        config.load_incluster_config(client_configuration=configuration)
    except config.ConfigException:
        config.load_kube_config(client_configuration=configuration)
    return configuration


class KubeApi:
    """Synchronous JSON access to the API; thread-safe (one connection pool)."""

    def __init__(
        self,
        configuration: client.Configuration,
        timeout: float = DEFAULT_TIMEOUT,
        metrics: OperatorMetrics | None = None,
    ) -> None:
        configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 16)
        self.configuration = configuration
        self.api_client: Any = client.ApiClient(configuration)
        self.api_client.user_agent = USER_AGENT
        self.timeout = timeout
        self.metrics = metrics if metrics is not None else OperatorMetrics()
        self._kinds: dict[tuple[str, str], ResourceKind] = {
            (k.api_version, k.kind): k for k in KNOWN_KINDS
        }
        self._lock = threading.Lock()
        self.requests: Counter[str] = Counter()
        """Requests made, by verb (get, list, create, patch, delete)."""

    @classmethod
    def from_kubeconfig(cls, kubeconfig: str | None = None) -> KubeApi:
        return cls(load_client_configuration(kubeconfig))

    def close(self) -> None:
        self.api_client.close()

    @property
    def writes(self) -> int:
        """Number of create, patch and delete requests made so far."""
        with self._lock:
            return sum(self.requests[v] for v in ("create", "patch", "update", "delete"))

    # ------------------------------------------------------------------ kinds

    def kind(self, api_version: str, kind: str) -> ResourceKind:
        """The resource of ``kind``; unknown kinds are looked up by API discovery."""
        key = (api_version, kind)
        found = self._kinds.get(key)
        if found is not None:
            return found
        base = f"/apis/{api_version}" if "/" in api_version else f"/api/{api_version}"
        try:
            listing = self._request("get", "GET", base, what=f"API discovery of {api_version}")
        except KubeApiError as e:
            if e.status == 404:
                raise KubeApiError(
                    "discover", f"{kind} in {api_version}", 404, "API group is not served"
                ) from e
            raise
        for resource in listing.get("resources", []) if isinstance(listing, dict) else []:
            if resource.get("kind") == kind and "/" not in resource.get("name", ""):
                found = ResourceKind(api_version, kind, resource["name"], resource["namespaced"])
                self._kinds[key] = found
                return found
        raise KubeApiError("discover", f"{kind} in {api_version}", 404, "kind is not served")

    # ------------------------------------------------------------------ verbs

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        """The object, or ``None`` when it does not exist (HTTP 404)."""
        rk = self.kind(api_version, kind)
        try:
            obj: dict[str, Any] = self._request(
                "get", "GET", rk.item(name, namespace), what=rk.describe(name, namespace)
            )
        except KubeApiError as e:
            if e.status == 404:
                return None
            raise
        return obj

    def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
    ) -> list[dict[str, Any]]:
        """Every matching object (all namespaces when ``namespace`` is None)."""
        return list(
            self.iterate(
                api_version,
                kind,
                namespace,
                label_selector=label_selector,
                field_selector=field_selector,
            )
        )

    def iterate(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        *,
        label_selector: str = "",
        field_selector: str = "",
        page: int = 500,
    ) -> Iterator[dict[str, Any]]:
        rk = self.kind(api_version, kind)
        query: dict[str, str] = {"limit": str(page)}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        while True:
            answer = self._request(
                "list", "GET", rk.collection(namespace), query=query, what=f"{rk.kind} list"
            )
            for item in answer.get("items") or []:
                # List items carry no apiVersion/kind; drivers and models expect them.
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                yield item
            token = (answer.get("metadata") or {}).get("continue")
            if not token:
                return
            query["continue"] = token

    def list_versioned(
        self,
        api_version: str,
        kind: str,
        each: Callable[[dict[str, Any]], None],
        *,
        label_selector: str = "",
        page: int = 500,
        metadata_only: bool = False,
    ) -> str:
        """Call ``each`` on every object (page by page); the list's resourceVersion.

        The resourceVersion is the first page's: every page belongs to that
        one snapshot, and a watch from it misses nothing.  ``metadata_only``:
        each object is its metadata only (kind ``PartialObjectMetadata``).
        """
        rk = self.kind(api_version, kind)
        query: dict[str, str] = {"limit": str(page)}
        if label_selector:
            query["labelSelector"] = label_selector
        version = ""
        while True:
            answer = self._request(
                "list",
                "GET",
                rk.collection(),
                query=query,
                what=f"{rk.kind} list",
                accept=METADATA_LIST if metadata_only else JSON,
            )
            meta = answer.get("metadata") or {}
            version = version or str(meta.get("resourceVersion") or "")
            for item in answer.get("items") or []:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                each(item)
            token = meta.get("continue")
            if not token:
                return version
            query["continue"] = token

    def watch(
        self,
        api_version: str,
        kind: str,
        resource_version: str,
        *,
        label_selector: str = "",
        timeout_seconds: int = 300,
        metadata_only: bool = False,
    ) -> WatchStream:
        """A watch from ``resourceVersion`` with bookmarks; iterate it for (type, object).

        An ``ERROR`` event raises ``KubeApiError`` with its code (410: the
        version is too old, list again).  ``close()`` ends it from any thread.
        ``metadata_only``: each event's object is its metadata only.
        """
        rk = self.kind(api_version, kind)
        query = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            query["labelSelector"] = label_selector
        what = f"{rk.kind} watch"
        response = self._send(
            "watch",
            "GET",
            rk.collection(),
            what=what,
            query=query,
            timeout=(self.timeout, timeout_seconds + self.timeout),
            accept=METADATA_ONLY if metadata_only else JSON,
        )
        if not 200 <= response.status <= 299:
            data = response.read()
            raise KubeApiError("watch", what, response.status, _status_message(data))
        return WatchStream(response.response, what)

    def create(self, body: Mapping[str, Any], *, metadata_only: bool = False) -> dict[str, Any]:
        """Create ``body``; the object as stored (``metadata_only``: its metadata, see
        ``METADATA_ONLY``: what a big object's writer needs of the answer)."""
        rk, name, namespace = self._identify(body)
        obj: dict[str, Any] = self._request(
            "create",
            "POST",
            rk.collection(namespace),
            body=dict(body),
            what=rk.describe(name, namespace),
            accept=METADATA_ONLY if metadata_only else JSON,
        )
        return obj

    def patch(
        self,
        api_version: str,
        kind: str,
        name: str,
        patch: Mapping[str, Any] | bytes,
        namespace: str | None = None,
        *,
        status: bool = False,
        metadata_only: bool = False,
    ) -> dict[str, Any]:
        """A JSON merge patch; put ``metadata.resourceVersion`` in it to guard a change.

        ``patch`` may be given JSON-encoded already (bytes).  ``metadata_only``:
        the answer is the object's metadata only (``METADATA_ONLY``).
        """
        rk = self.kind(api_version, kind)
        path = rk.item(name, namespace) + ("/status" if status else "")
        obj: dict[str, Any] = self._request(
            "patch",
            "PATCH",
            path,
            body=patch if isinstance(patch, bytes) else dict(patch),
            content_type=MERGE_PATCH,
            what=rk.describe(name, namespace) + (" status" if status else ""),
            accept=METADATA_ONLY if metadata_only else JSON,
        )
        return obj

    def delete(
        self,
        api_version: str,
        kind: str,
        name: str,
        namespace: str | None = None,
        *,
        resource_version: str | None = None,
    ) -> bool:
        """Delete the object; False when it was already gone.

        With ``resource_version`` the delete only happens if the object did not
        change since it was read (a precondition, 409 otherwise).
        """
        rk = self.kind(api_version, kind)
        body: dict[str, Any] = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if resource_version:
            body["preconditions"] = {"resourceVersion": resource_version}
        try:
            self._request(
                "delete",
                "DELETE",
                rk.item(name, namespace),
                body=body,
                what=rk.describe(name, namespace),
            )
        except KubeApiError as e:
            if e.status == 404:
                return False
            raise
        return True

    # ------------------------------------------------------------------ transport

    def _identify(self, body: Mapping[str, Any]) -> tuple[ResourceKind, str, str | None]:
        meta = body.get("metadata") or {}
        rk = self.kind(str(body["apiVersion"]), str(body["kind"]))
        return rk, str(meta.get("name", "")), meta.get("namespace") if rk.namespaced else None

    def _request(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        what: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str = JSON,
    ) -> Any:
        response = self._send(
            verb,
            method,
            path,
            what=what,
            query=query,
            body=body,
            content_type=content_type,
            accept=accept,
        )
        try:
            data: bytes = response.read()
        except (urllib3.exceptions.HTTPError, OSError) as e:
            raise KubeApiError(verb, what, 0, f"{type(e).__name__}: {e}") from e
        if not 200 <= response.status <= 299:
            raise KubeApiError(verb, what, response.status, _status_message(data))
        return json.loads(data) if data else {}

    def _send(
        self,
        verb: str,
        method: str,
        path: str,
        *,
        what: str,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        timeout: float | tuple[float, float] | None = None,
        accept: str = JSON,
    ) -> Any:
        """Send one request (counted by verb); the response, its body not read yet.

        ``body`` is JSON-encoded here (or sent as is when it is bytes: already
        encoded).  The kubernetes client builds the URL and the headers (its
        authentication included); the body does not go through its
        ``sanitize_for_serialization``, which copies every dict and list of it
        (a plan of 10,000 hosts is tens of MB of them).
        """
        with self._lock:
            self.requests[verb] += 1
        headers = {"Accept": accept, "Content-Type": content_type}
        wait = timeout or self.timeout
        try:
            _, url, headers, _, _ = self.api_client.param_serialize(
                method,
                path,
                query_params=list((query or {}).items()),
                header_params=headers,
                auth_settings=["BearerToken"],
            )
            payload = body if body is None or isinstance(body, bytes) else json.dumps(body).encode()
            raw = self.api_client.rest_client.pool_manager.request(
                method,
                url,
                body=payload,
                headers=headers,
                timeout=(
                    urllib3.Timeout(connect=wait[0], read=wait[1])
                    if isinstance(wait, tuple)
                    else urllib3.Timeout(total=wait)
                ),
                preload_content=False,
            )
            response = rest.RESTResponse(raw)
        except (urllib3.exceptions.HTTPError, OSError) as e:
            self.metrics.api_response(verb, 0)
            raise KubeApiError(verb, what, 0, f"{type(e).__name__}: {e}") from e
        self.metrics.api_response(verb, response.status)
        return response


class WatchStream:
    """One open watch: iterate for (type, object); ``close()`` from any thread ends it."""

    def __init__(self, response: Any, what: str) -> None:
        self._response = response
        self.what = what
        self._closed = False

    def __iter__(self) -> Iterator[tuple[str, dict[str, Any]]]:
        try:
            for line in self._response:
                if not line.strip():
                    continue
                event = json.loads(line)
                kind = str(event.get("type") or "")
                obj = event.get("object") or {}
                if kind == "ERROR":
                    code = int(obj.get("code") or 0)
                    raise KubeApiError("watch", self.what, code, str(obj.get("message") or ""))
                yield kind, obj
        except (urllib3.exceptions.HTTPError, OSError) as e:
            if self._closed:
                return
            raise KubeApiError("watch", self.what, 0, f"{type(e).__name__}: {e}") from e
        finally:
            if not self._closed:
                # Ended by the server (its timeout) or by an error event: the
                # connection goes back to the pool, or is dropped when unusable.
                with contextlib.suppress(Exception):
                    self._response.release_conn()

    def close(self) -> None:
        """End the watch (from any thread): a read in progress returns at once."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):  # a socket already gone
            self._response.shutdown()
        with contextlib.suppress(Exception):
            self._response.close()


def _status_message(data: bytes | None) -> str:
    """The ``message`` of a Status answer, else the start of the body."""
    text = (data or b"").decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
    except ValueError:
        return text[:200]
    if isinstance(parsed, dict) and parsed.get("message"):
        return str(parsed["message"])
    return text[:200]


class ApiClusterReader:
    """``multinic_core.hooktypes.ClusterReader`` over the live API, for drivers."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        try:
            return self.api.get(api_version, kind, name, namespace)
        except KubeApiError as e:
            # A kind that is not served (its operator is not installed) has no objects.
            if e.verb == "discover" and e.status == 404:
                return None
            raise

    def list(
        self, api_version: str, kind: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        try:
            return self.api.list(api_version, kind, namespace)
        except KubeApiError as e:
            if e.verb == "discover" and e.status == 404:
                return []
            raise
