"""The agent's access to the Kubernetes API: client settings, retries, and watches.

Everything goes through the ``kubernetes`` client (the agent serves no API).
Calls block, so the agent makes them in worker threads; a
:class:`ResourceWatch` keeps a list+watch cache of one resource in its own
thread, resumes from the last resourceVersion, and relists after a 410.

Transient failures (409, 429, 5xx, timeouts, connection errors) are retried
with backoff by :func:`call_with_retries`; an API error is never mistaken for
the absence of an object.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import urllib3.exceptions
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException

from multinic_core.errors import ConfigError, TryAgainError
from multinic_core.models import GROUP, VERSION

log = logging.getLogger(__name__)

# The kubernetes client is only partly annotated.
_config: Any = kube_config
T = TypeVar("T")

TRANSIENT_STATUSES = frozenset({409, 429, 500, 502, 503, 504})
REQUEST_TIMEOUT_S = 30.0
WATCH_TIMEOUT_S = 60
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"


Observer = Callable[[str, str, int], None]
"""Told of every API request: (HTTP method, URL, HTTP status; 0 when there was no answer)."""


class ObservedApiClient(client.ApiClient):
    """An ApiClient that tells ``observe`` about every request it makes (for the metrics)."""

    def __init__(self, configuration: client.Configuration, observe: Observer) -> None:
        super().__init__(configuration)
        self.observe = observe

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        try:
            response = super().call_api(method, url, *args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            self.observe(method, url, api_status(e))
            raise
        self.observe(method, url, int(response.status))
        return response


def load_api_client(
    kubeconfig: str = "", observe: Observer | None = None
) -> client.ApiClient | None:
    """A client for ``kubeconfig``, else the in-cluster config, else None (no cluster).

    None means the agent runs from its node-state file.  ``observe`` is told
    of every request the client makes.
    """
    configuration = client.Configuration()
    try:
        if kubeconfig:
            _config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)
        elif os.environ.get(IN_CLUSTER_ENV):
            _config.load_incluster_config(client_configuration=configuration)
        else:
            return None
    except (_config.ConfigException, OSError, ValueError) as e:
        where = f"kubeconfig {kubeconfig}" if kubeconfig else "in-cluster config"
        raise ConfigError(f"{where} unusable: {e}") from e
    # Several watches and the writers share the pool.
    configuration.connection_pool_maxsize = max(configuration.connection_pool_maxsize or 0, 16)
    api = (
        client.ApiClient(configuration)
        if observe is None
        else ObservedApiClient(configuration, observe)
    )
    api.user_agent = "multinic-agent/0.1.0"
    return api


def api_status(error: BaseException) -> int:
    """The HTTP status of a failed call; 0 when there was no HTTP answer."""
    if isinstance(error, ApiException):
        return int(error.status or 0)
    return 0


def is_transient(error: BaseException) -> bool:
    """Worth retrying: conflict, throttling, server error, timeout, no connection."""
    if isinstance(error, ApiException):
        return api_status(error) in TRANSIENT_STATUSES or api_status(error) == 0
    return isinstance(error, urllib3.exceptions.HTTPError | OSError | TimeoutError)


def call_with_retries(
    call: Callable[[], T],
    what: str,
    *,
    attempts: int = 5,
    delay: float = 0.2,
    max_delay: float = 5.0,
    stop: threading.Event | None = None,
    retry_conflicts: bool = True,
) -> T:
    """``call()``, retried with exponential backoff while it fails transiently.

    Raises the last error when it is not transient (a 409 too, unless
    ``retry_conflicts``: a write guarded by a resourceVersion must re-read, not
    repeat), and TryAgainError naming ``what`` when every attempt failed
    transiently.
    """
    last: BaseException | None = None
    for attempt in range(attempts):
        try:
            return call()
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as e:
            if not is_transient(e) or (api_status(e) == 409 and not retry_conflicts):
                raise
            last = e
            wait = min(max_delay, delay * 2**attempt)
            log.debug("%s failed (%s), retrying in %.1f s", what, describe_error(e), wait)
            if stop is not None:
                if stop.wait(wait):
                    break
            else:
                time.sleep(wait)
    raise TryAgainError(f"{what}: {describe_error(last) if last else 'stopped'}") from last


def describe_error(error: BaseException) -> str:
    """One line about a failed API call: status and reason, or the transport error."""
    if isinstance(error, ApiException):
        reason = error.reason or ""
        try:
            message = json.loads(error.body or "{}").get("message", "")
        except (ValueError, AttributeError):
            message = ""
        return f"HTTP {error.status} {reason}{': ' + message if message else ''}".strip()
    return f"{type(error).__name__}: {error}"


class ResourceWatch:
    """A cache of one cluster-scoped multinic resource, kept by list and watch.

    Runs in a daemon thread from :meth:`start` to :meth:`stop`.  The cache is
    replaced only by a successful list and changed only by watch events, so
    an API failure never makes objects disappear.  ``on_change`` is called
    (in the watch thread) after every change of the cache.
    """

    def __init__(
        self,
        api: client.ApiClient,
        plural: str,
        *,
        label_selector: str = "",
        field_selector: str = "",
        on_change: Callable[[], None] | None = None,
        timeout_seconds: int = WATCH_TIMEOUT_S,
        group: str = GROUP,
        version: str = VERSION,
    ) -> None:
        self.objects_api: Any = client.CustomObjectsApi(api)
        self.plural = plural
        self.group = group
        self.version = version
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.timeout_seconds = timeout_seconds
        self._listeners: list[Callable[[], None]] = [on_change] if on_change else []
        self._objects: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._response: Any = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()
        """Set once the first list succeeded."""
        self.resource_version = ""
        self.relists = 0

    # ------------------------------------------------------------------ reading

    def items(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self._objects.values())

    def get(self, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._objects.get(name)

    def add_listener(self, listener: Callable[[], None]) -> None:
        self._listeners.append(listener)

    def wait_synced(self, timeout: float) -> bool:
        return self.synced.wait(timeout)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> ResourceWatch:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"watch-{self.plural}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        response = self._response
        if response is not None:
            # Unblocks the read of the watch stream in the watch thread.
            response.shutdown()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ internals

    def _selectors(self) -> dict[str, str]:
        found = {}
        if self.label_selector:
            found["label_selector"] = self.label_selector
        if self.field_selector:
            found["field_selector"] = self.field_selector
        return found

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self._list()
                self._watch()
                failures = 0
            except Exception as e:
                # Whatever happened, the cache stays as it was and the watch goes on.
                if self._stopping.is_set():
                    break
                if api_status(e) == 410:
                    log.info("watch of %s expired (410): listing again", self.plural)
                    self.resource_version = ""
                    continue
                failures += 1
                wait = min(10.0, 0.2 * 2 ** min(failures, 6))
                log.warning(
                    "watch of %s failed (%s); retrying in %.1f s",
                    self.plural,
                    describe_error(e),
                    wait,
                )
                self._stopping.wait(wait)

    def _list(self) -> None:
        answer = self.objects_api.list_cluster_custom_object(
            self.group,
            self.version,
            self.plural,
            _request_timeout=REQUEST_TIMEOUT_S,
            **self._selectors(),
        )
        fresh = {}
        for item in answer.get("items") or []:
            # List items carry no apiVersion/kind; the models need them.
            item.setdefault("apiVersion", f"{self.group}/{self.version}")
            item.setdefault("kind", answer.get("kind", "").removesuffix("List"))
            fresh[item["metadata"]["name"]] = item
        with self._lock:
            changed = fresh != self._objects
            self._objects = fresh
        self.resource_version = str(answer["metadata"]["resourceVersion"])
        self.relists += 1
        self.synced.set()
        log.debug(
            "listed %d %s at resourceVersion %s", len(fresh), self.plural, self.resource_version
        )
        if changed:
            self._notify()

    def _watch(self) -> None:
        response = self.objects_api.list_cluster_custom_object(
            self.group,
            self.version,
            self.plural,
            watch=True,
            allow_watch_bookmarks=True,
            resource_version=self.resource_version,
            timeout_seconds=self.timeout_seconds,
            _preload_content=False,
            _request_timeout=(REQUEST_TIMEOUT_S, self.timeout_seconds + REQUEST_TIMEOUT_S),
            **self._selectors(),
        )
        self._response = response
        try:
            if self._stopping.is_set():
                return
            for line in response:
                if not line.strip():
                    continue
                event = json.loads(line)
                self._apply(event.get("type", ""), event.get("object") or {})
        finally:
            self._response = None
            response.close()
            response.release_conn()

    def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        if kind == "ERROR":
            code = int(obj.get("code") or 0)
            raise ApiException(status=code, reason=str(obj.get("message", "watch error")))
        version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
        if kind == "BOOKMARK":
            if version:
                self.resource_version = version
            return
        name = obj["metadata"]["name"]
        with self._lock:
            if kind == "DELETED":
                self._objects.pop(name, None)
            else:
                self._objects[name] = obj
        if version:
            self.resource_version = version
        self._notify()

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("listener of the %s watch failed", self.plural)
