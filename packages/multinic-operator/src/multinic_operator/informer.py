"""A list/watch cache of one kind (an informer), kept in its own thread.

One paged LIST, then a WATCH from the list's resourceVersion with bookmarks;
a watch that ends is resumed from the last version seen (an event's or a
bookmark's); 410 Gone (that version is no longer in the server's history)
lists again.  The cache is replaced only by a successful list and changed
only by watch events and by the answers to the operator's own writes, so an
API failure never makes an object disappear from it.

What is kept of each object is ``transform(body)``: only what its readers
need (e.g. of an IPPool not its status), so that a cache of 80,000 pools
stays small.

Read-your-writes: the answer to the operator's own create or patch is put in
the cache (``observe``) unless the cache already holds a newer version, and
an object the operator deletes is hidden from readers from the moment the
delete is sent (``deleting``/``deleted``) until its DELETED event arrives.
So the next reconcile never plans from a cache that has not seen the
previous reconcile's writes, without waiting for the watch.

``on_change(name, old, new)`` is called in the watch thread after each change
an event or a relist made (not after ``observe``: the operator knows what it
wrote); ``old``/``new`` are None for an added/deleted object.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Generic, TypeVar

from multinic_operator.kube import KubeApi, KubeApiError, WatchStream

log = logging.getLogger(__name__)

T = TypeVar("T")
WATCH_SECONDS = 300
"""How long one watch request lasts before the server ends it (then it is resumed)."""
MAX_BACKOFF = 10.0
SYNC_TIMEOUT = 30.0


def object_key(body: dict[str, Any]) -> str:
    """``namespace/name`` of a namespaced object, ``name`` of a cluster-scoped one."""
    meta = body.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta['name']}" if namespace else str(meta["name"])


def newer(candidate: str, held: str) -> bool:
    """Whether version ``candidate`` is later than ``held``.

    resourceVersions are opaque strings by contract; every server this runs
    against (etcd's revisions, the double's counter) uses integers, and those
    are compared.  Anything else counts as newer (the later write wins).
    """
    if candidate.isdigit() and held.isdigit():
        return int(candidate) > int(held)
    return candidate != held


class Informer(Generic[T]):
    """A list/watch cache of one kind, cluster-wide (all namespaces for a namespaced kind)."""

    def __init__(
        self,
        api: KubeApi,
        api_version: str,
        kind: str,
        transform: Callable[[dict[str, Any]], T],
        *,
        label_selector: str = "",
        index: Callable[[T], str | None] | None = None,
        on_change: Callable[[str, T | None, T | None], None] | None = None,
        watch_seconds: int = WATCH_SECONDS,
        metadata_only: bool = False,
    ) -> None:
        self.api = api
        self.metadata_only = metadata_only
        """List and watch the objects' metadata only (``transform`` gets PartialObjectMetadata)."""
        self.api_version = api_version
        self.kind = kind
        self.transform = transform
        self.label_selector = label_selector
        self._index_of = index
        self.on_change = on_change
        self.watch_seconds = watch_seconds
        self._items: dict[str, tuple[str, T]] = {}
        """key -> (resourceVersion, what is kept of the object)."""
        self._index: dict[str, set[str]] = {}
        self._hidden: set[str] = set()
        """Keys of objects the operator is deleting (or deleted, DELETED event not seen yet)."""
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._stream: WatchStream | None = None
        self._thread: threading.Thread | None = None
        self.synced = threading.Event()
        """Set once the first list succeeded."""
        self.resource_version = ""
        """Where the watch resumes: the last version seen in the stream (or the list's)."""
        self.lists = 0
        self.watches = 0
        self.last_error: KubeApiError | None = None

    # ------------------------------------------------------------------ reading

    def get(self, key: str) -> T | None:
        with self._lock:
            if key in self._hidden:
                return None
            found = self._items.get(key)
            return None if found is None else found[1]

    def items(self) -> list[T]:
        with self._lock:
            return [v for k, (_, v) in self._items.items() if k not in self._hidden]

    def keys(self) -> list[str]:
        with self._lock:
            return [k for k in self._items if k not in self._hidden]

    def indexed(self, value: str) -> dict[str, T]:
        """The objects whose ``index`` is ``value``, by key."""
        with self._lock:
            return {
                k: self._items[k][1] for k in self._index.get(value, ()) if k not in self._hidden
            }

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def ready(self, timeout: float = SYNC_TIMEOUT) -> None:
        """Return once the first list succeeded; raise its error (or a timeout) otherwise.

        A list refused for good (404: the kind is not served, 403) raises at once.
        """
        deadline = time.monotonic() + timeout
        while not self.synced.wait(min(0.1, timeout)):
            error = self.last_error
            if error is not None and not error.transient:
                raise error
            if time.monotonic() > deadline:
                detail = str(error) if error else f"not listed within {timeout:.0f}s"
                raise KubeApiError("list", f"{self.kind} cache", 0, detail)

    # ------------------------------------------------------------------ the operator's writes

    def observe(self, body: dict[str, Any]) -> None:
        """The answer to one of the operator's own writes: cache it unless a newer one is there."""
        key = object_key(body)
        version = str((body.get("metadata") or {}).get("resourceVersion") or "")
        with self._lock:
            held = self._items.get(key)
            if held is not None and not newer(version, held[0]):
                return
            self._hidden.discard(key)
            self._store(key, version, self.transform(body))

    def deleting(self, key: str) -> None:
        """The operator is about to delete ``key``: readers no longer see it."""
        with self._lock:
            self._hidden.add(key)

    def deleted(self, key: str, *, gone: bool) -> None:
        """The delete answered: ``gone`` (deleted or already absent), else it failed."""
        with self._lock:
            if gone:
                # Hidden until its DELETED event (a late MODIFIED must not bring it back).
                self._drop(key)
            else:
                self._hidden.discard(key)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> Informer[T]:
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"informer-{self.kind}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        stream = self._stream
        if stream is not None:
            stream.close()
        if self._thread is not None:
            self._thread.join(timeout)

    # ------------------------------------------------------------------ internals

    def _store(self, key: str, version: str, value: T) -> None:
        """Put ``value`` under ``key`` (lock held), keeping the index up to date."""
        old = self._items.get(key)
        if self._index_of is not None:
            if old is not None:
                self._unindex(key, old[1])
            where = self._index_of(value)
            if where is not None:
                self._index.setdefault(where, set()).add(key)
        self._items[key] = (version, value)

    def _drop(self, key: str) -> T | None:
        old = self._items.pop(key, None)
        if old is None:
            return None
        if self._index_of is not None:
            self._unindex(key, old[1])
        return old[1]

    def _unindex(self, key: str, value: T) -> None:
        assert self._index_of is not None
        where = self._index_of(value)
        if where is not None:
            members = self._index.get(where)
            if members is not None:
                members.discard(key)
                if not members:
                    del self._index[where]

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                if not self.resource_version:
                    self._relist()
                self._watch()
                failures = 0
            except KubeApiError as e:
                if self._stopping.is_set():
                    break
                if e.status == 410:
                    log.info("%s watch: version %s expired: listing again", self.kind, e.detail)
                    self.resource_version = ""
                    continue
                self.last_error = e
                failures += 1
                wait = min(MAX_BACKOFF, 0.2 * 2 ** min(failures, 6))
                log.warning("%s cache: %s; retrying in %.1fs", self.kind, e, wait)
                self._stopping.wait(wait)
            except Exception:
                if self._stopping.is_set():
                    break
                failures += 1
                log.exception("%s cache failed; retrying", self.kind)
                self._stopping.wait(min(MAX_BACKOFF, 0.2 * 2 ** min(failures, 6)))

    def _relist(self) -> None:
        fresh: dict[str, tuple[str, T]] = {}

        def keep(body: dict[str, Any]) -> None:
            version = str(body["metadata"].get("resourceVersion") or "")
            fresh[object_key(body)] = (version, self.transform(body))

        version = self.api.list_versioned(
            self.api_version,
            self.kind,
            keep,
            label_selector=self.label_selector,
            metadata_only=self.metadata_only,
        )
        changes: list[tuple[str, T | None, T | None]] = []
        with self._lock:
            old = self._items
            self._items, self._index = {}, {}
            for key, (v, value) in fresh.items():
                self._store(key, v, value)
            # Objects the operator deleted that the list no longer has: their
            # DELETED event is not coming (the list replaces it).
            self._hidden &= set(fresh)
            if self.on_change is not None:
                for key, (_, value) in fresh.items():
                    before = old.get(key)
                    if before is None or before[1] != value:
                        changes.append((key, None if before is None else before[1], value))
                changes.extend((k, v, None) for k, (_, v) in old.items() if k not in fresh)
        self.resource_version = version
        self.lists += 1
        self.last_error = None
        self.synced.set()
        log.debug("listed %d %s at resourceVersion %s", len(fresh), self.kind, version)
        self._notify(changes)

    def _watch(self) -> None:
        stream = self.api.watch(
            self.api_version,
            self.kind,
            self.resource_version,
            label_selector=self.label_selector,
            timeout_seconds=self.watch_seconds,
            metadata_only=self.metadata_only,
        )
        self._stream = stream
        self.watches += 1
        try:
            if self._stopping.is_set():
                return
            for kind, obj in stream:
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "")
                if kind != "BOOKMARK":
                    self._notify(self._apply(kind, obj, version))
                if version:
                    self.resource_version = version
        finally:
            self._stream = None
            stream.close()

    def _apply(
        self, kind: str, obj: dict[str, Any], version: str
    ) -> Iterable[tuple[str, T | None, T | None]]:
        key = object_key(obj)
        with self._lock:
            held = self._items.get(key)
            hidden = key in self._hidden
            if kind == "DELETED":
                self._hidden.discard(key)
                old = self._drop(key)
                # The operator's own delete: nothing to react to.
                return [] if hidden or old is None else [(key, old, None)]
            if held is not None and not newer(version, held[0]):
                return []  # the answer to the operator's write got here first
            if kind == "ADDED":
                # Created (again) after a delete of the operator's: visible again.
                self._hidden.discard(key)
                hidden = False
            value = self.transform(obj)
            self._store(key, version, value)
            before = None if held is None else held[1]
            if hidden or before == value:
                return []
            return [(key, before, value)]

    def _notify(self, changes: Iterable[tuple[str, T | None, T | None]]) -> None:
        if self.on_change is None:
            return
        for key, old, new in changes:
            try:
                self.on_change(key, old, new)
            except Exception:
                log.exception("listener of the %s cache failed", self.kind)
