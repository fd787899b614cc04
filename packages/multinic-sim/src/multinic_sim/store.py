"""The object store: current objects, one global resourceVersion counter and a
bounded history of change events (what watches resume from).

Stored objects are never modified in place: every write stores a new dict.
That lets the history, open watches and list responses share them safely.
All methods run on the API server's event loop thread.
"""

from __future__ import annotations

import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from multinic_sim import errors
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


# -- what etcd refuses to store (etcd and kube-apiserver with default flags) ---

ETCD_MAX_REQUEST_BYTES = 1572864  # etcd --max-request-bytes (1.5 MiB)
ETCD_CLIENT_MAX_SEND_BYTES = 2 * 1024 * 1024  # kube-apiserver's etcd client: MaxCallSendMsgSize
# etcd checks the raft request wrapping the Txn: header field 100 (tag 2 bytes, length 1)
# holding a request ID (tag 1, varint of up to 10 bytes), then the Txn's own tag.
_RAFT_HEADER_BYTES = 2 + 1 + 1 + 10
# Built-in resources whose etcd key prefix is not their plural.
_KEY_PREFIXES = {("", "nodes"): "minions", ("", "services"): "services/specs"}
_GO_HTML_ESCAPES = (b"<", b">", b"&")  # Go's encoding/json writes these as \u003c etc.
_LINE_SEPARATORS = ("\u2028".encode(), "\u2029".encode())  # and these as \u2028, \u2029


_GROUP_KEYED = frozenset({"apiextensions.k8s.io", "apiregistration.k8s.io"})


def etcd_key(gr: GroupResource, namespace: str, name: str, *, custom: bool) -> str:
    """The etcd key kube-apiserver stores an object under (``/registry/...``).

    Custom resources (and CRDs themselves) are keyed by group and plural, other
    built-in resources by their plural only.
    """
    group, plural = gr
    if custom or group in _GROUP_KEYED:
        prefix = f"{group}/{plural}"
    else:
        prefix = _KEY_PREFIXES.get(gr, plural)
    return f"/registry/{prefix}/{namespace}/{name}" if namespace else f"/registry/{prefix}/{name}"


def stored_size(encoded: bytes, obj: Obj) -> int:
    """Bytes of *obj* as kube-apiserver stores a custom resource in etcd.

    That is Go's JSON of the object without its resourceVersion, plus a newline.
    *encoded* is ``json.dumps(obj)`` (compact, ASCII) with the resourceVersion.
    ASCII escapes of other characters only overstate the size, so the exact
    UTF-8 size is worked out only when that matters.
    """
    rv = obj["metadata"].get("resourceVersion")
    # '"resourceVersion":"<rv>",' leaves, the newline comes.
    fixed = 1 - (len(rv) + len('"resourceVersion":"",') if rv else 0)
    size = len(encoded) + fixed + 5 * sum(encoded.count(c) for c in _GO_HTML_ESCAPES)
    if size > ETCD_MAX_REQUEST_BYTES // 2 and b"\\u" in encoded:
        utf8 = json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode(
            errors="surrogatepass"
        )
        size = (
            len(utf8)
            + fixed
            + 5 * sum(utf8.count(c) for c in _GO_HTML_ESCAPES)
            + 3 * sum(utf8.count(c) for c in _LINE_SEPARATORS)
        )
    return size


def _varint_len(value: int) -> int:
    return max(1, (value.bit_length() + 6) // 7)


def _field_len(payload: int) -> int:
    """A length-delimited protobuf field (one-byte tag) carrying *payload* bytes."""
    return 1 + _varint_len(payload) + payload


def etcd_txn_size(key_len: int, value_len: int, mod_revision: int) -> int:
    """Bytes of the Txn kube-apiserver sends etcd to write a value.

    A create is ``If(mod_revision(key) == 0) Then(Put(key, value))``; an update
    ``If(mod_revision(key) == rv) Then(Put(key, value)) Else(Get(key))``.
    """
    key = _field_len(key_len)
    compare = 2 + key + 1 + _varint_len(mod_revision)  # target MOD, key, mod_revision
    put = key + _field_len(value_len)
    size = _field_len(compare) + _field_len(_field_len(put))
    if mod_revision:
        size += _field_len(_field_len(key))
    return size


def check_storable(key: str, size: int, mod_revision: int) -> None:
    """Refuse, as kube-apiserver does, to write *size* bytes under *key* in etcd.

    Over 2 MiB the API server's etcd client refuses to send the request; over
    1.5 MiB etcd refuses it. Both answer 500 with the etcd error as the message.
    """
    txn = etcd_txn_size(len(key.encode()), size, mod_revision)
    if txn > ETCD_CLIENT_MAX_SEND_BYTES:
        raise errors.storage_failure(
            "rpc error: code = ResourceExhausted desc = trying to send message larger than "
            f"max ({txn} vs. {ETCD_CLIENT_MAX_SEND_BYTES})"
        )
    if _RAFT_HEADER_BYTES + _field_len(txn) > ETCD_MAX_REQUEST_BYTES:
        raise errors.storage_failure("etcdserver: request is too large")


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
