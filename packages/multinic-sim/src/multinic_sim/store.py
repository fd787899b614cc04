"""The object store: current objects, one global resourceVersion counter and a
bounded history of change events (what watches resume from).

Stored objects are never modified in place: every write stores a new dict.
That lets the history, open watches and list responses share them safely.
All methods run on the API server's event loop thread.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from multinic_sim.errors import expired

log = logging.getLogger(__name__)

GroupResource = tuple[str, str]  # (group, plural)
Obj = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One change: ``ADDED``, ``MODIFIED`` or ``DELETED`` at revision ``rv``.

    ``obj`` is the object after the change (for DELETED: the last state, stamped
    with the deletion's resourceVersion); ``prev`` the object before it.
    """

    rv: int
    type: str
    group_resource: GroupResource
    obj: Obj
    prev: Obj | None


def object_key(obj: Obj) -> tuple[str, str]:
    meta = obj["metadata"]
    return (meta.get("namespace") or "", meta["name"])


def with_resource_version(obj: Obj, rv: int) -> Obj:
    out = dict(obj)
    out["metadata"] = {**obj["metadata"], "resourceVersion": str(rv)}
    return out


class ObjectStore:
    """Objects by (group, plural) -> namespace -> name, plus the event history."""

    def __init__(self, history_limit: int = 50_000) -> None:
        self.history_limit = history_limit
        self._data: dict[GroupResource, dict[str, dict[str, Obj]]] = {}
        self.by_uid: dict[str, tuple[GroupResource, str, str]] = {}
        self.with_owners: set[tuple[GroupResource, str, str]] = set()
        # Objects with a deletionTimestamp (waiting for finalizers).
        self.deleting: set[tuple[GroupResource, str, str]] = set()
        self.revision = 0
        self._history: deque[StoredEvent] = deque()
        # The history holds every event with rv > oldest_rv.
        self.oldest_rv = 0
        self.listeners: list[Callable[[StoredEvent], None]] = []

    # -- reads --------------------------------------------------------------

    def get(self, gr: GroupResource, namespace: str, name: str) -> Obj | None:
        return self._data.get(gr, {}).get(namespace, {}).get(name)

    def objects(self, gr: GroupResource, namespace: str | None = None) -> Iterator[Obj]:
        spaces = self._data.get(gr, {})
        if namespace is not None:
            yield from spaces.get(namespace, {}).values()
            return
        for objs in spaces.values():
            yield from objs.values()

    def count(self, gr: GroupResource, namespace: str | None = None) -> int:
        spaces = self._data.get(gr, {})
        if namespace is not None:
            return len(spaces.get(namespace, {}))
        return sum(len(objs) for objs in spaces.values())

    def group_resources(self) -> list[GroupResource]:
        return [gr for gr, spaces in self._data.items() if any(spaces.values())]

    def lookup_uid(self, uid: str) -> tuple[GroupResource, Obj] | None:
        where = self.by_uid.get(uid)
        if where is None:
            return None
        obj = self.get(*where)
        return (where[0], obj) if obj is not None else None

    # -- writes -------------------------------------------------------------

    def next_revision(self) -> int:
        self.revision += 1
        return self.revision

    def put(self, gr: GroupResource, obj: Obj, prev: Obj | None) -> StoredEvent:
        """Store *obj* (already stamped with a fresh resourceVersion)."""
        rv = int(obj["metadata"]["resourceVersion"])
        ns, name = object_key(obj)
        self._data.setdefault(gr, {}).setdefault(ns, {})[name] = obj
        uid = obj["metadata"].get("uid")
        if uid:
            self.by_uid[uid] = (gr, ns, name)
        self._index(gr, ns, name, obj)
        event = StoredEvent(rv, "ADDED" if prev is None else "MODIFIED", gr, obj, prev)
        self._record(event)
        return event

    def remove(self, gr: GroupResource, obj: Obj) -> StoredEvent:
        """Delete *obj*; the DELETED event carries a fresh resourceVersion."""
        ns, name = object_key(obj)
        prev = self._data[gr][ns].pop(name)
        if not self._data[gr][ns]:
            del self._data[gr][ns]
        uid = prev["metadata"].get("uid")
        if uid and self.by_uid.get(uid) == (gr, ns, name):
            del self.by_uid[uid]
        self.with_owners.discard((gr, ns, name))
        self.deleting.discard((gr, ns, name))
        rv = self.next_revision()
        event = StoredEvent(rv, "DELETED", gr, with_resource_version(prev, rv), prev)
        self._record(event)
        return event

    def _index(self, gr: GroupResource, ns: str, name: str, obj: Obj) -> None:
        key = (gr, ns, name)
        meta = obj["metadata"]
        if meta.get("ownerReferences"):
            self.with_owners.add(key)
        else:
            self.with_owners.discard(key)
        if meta.get("deletionTimestamp"):
            self.deleting.add(key)
        else:
            self.deleting.discard(key)

    def _record(self, event: StoredEvent) -> None:
        self._history.append(event)
        while len(self._history) > self.history_limit:
            self.oldest_rv = self._history.popleft().rv
        for listener in list(self.listeners):
            listener(event)

    # -- history ------------------------------------------------------------

    def events_since(self, rv: int, gr: GroupResource) -> list[StoredEvent]:
        """Events of *gr* after *rv*; 410 Expired when the history no longer reaches back."""
        if rv < self.oldest_rv:
            raise expired(f"too old resource version: {rv} ({self.oldest_rv + 1})")
        return [e for e in self._history if e.rv > rv and e.group_resource == gr]

    def state_at(self, gr: GroupResource, rv: int) -> dict[tuple[str, str], Obj]:
        """The objects of *gr* as they were at revision *rv* (for exact/paged lists)."""
        if rv < self.oldest_rv:
            raise expired(
                f"The provided continue parameter is too old to display a consistent list "
                f"result (resourceVersion {rv}, oldest {self.oldest_rv + 1})"
            )
        state = {object_key(o): o for o in self.objects(gr)}
        for event in reversed(self._history):
            if event.rv <= rv:
                break
            if event.group_resource != gr:
                continue
            key = object_key(event.obj)
            if event.type == "ADDED":
                state.pop(key, None)
            elif event.prev is not None:
                state[key] = event.prev
        return state

    def compact(self, rv: int | None = None) -> None:
        """Forget history up to *rv* (default: everything), like etcd compaction."""
        target = self.revision if rv is None else min(rv, self.revision)
        while self._history and self._history[0].rv <= target:
            self._history.popleft()
        self.oldest_rv = max(self.oldest_rv, target)
        log.info("compacted event history up to resourceVersion %d", target)

    def clear(self) -> None:
        self._data.clear()
        self.by_uid.clear()
        self.with_owners.clear()
        self.deleting.clear()
        self._history.clear()
        self.oldest_rv = self.revision

    # -- persistence --------------------------------------------------------

    def dump(self) -> dict[str, Any]:
        objects = []
        for (group, plural), spaces in self._data.items():
            for objs in spaces.values():
                for obj in objs.values():
                    objects.append({"group": group, "resource": plural, "object": obj})
        return {"resourceVersion": self.revision, "objects": objects}

    def load(self, state: dict[str, Any]) -> None:
        self.clear()
        self.revision = int(state.get("resourceVersion", 0))
        for entry in state.get("objects", []):
            gr = (entry["group"], entry["resource"])
            obj = entry["object"]
            ns, name = object_key(obj)
            self._data.setdefault(gr, {}).setdefault(ns, {})[name] = obj
            uid = obj["metadata"].get("uid")
            if uid:
                self.by_uid[uid] = (gr, ns, name)
            self._index(gr, ns, name, obj)
        # Watches cannot resume across a restart: the history is gone.
        self.oldest_rv = self.revision
