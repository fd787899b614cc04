"""Watch fan-out: every stored change is offered to the open watches of its resource.

Each event is encoded once per (event type, apiVersion, format) no matter how
many watchers receive it, which is what keeps a thousand watchers cheap.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multinic_sim.selectors import FieldSelector, LabelSelector
from multinic_sim.store import GroupResource, Obj, ObjectStore, StoredEvent

log = logging.getLogger(__name__)

# A watcher that falls this far behind is closed, as the real server does with
# slow watchers; the client sees its stream end and re-lists.
MAX_QUEUED_EVENTS = 20_000


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass(slots=True)
class Delivery:
    """One event as sent to watchers, with its encodings cached."""

    type: str
    obj: Obj
    rv: int
    encoded: dict[tuple[str, str], bytes] = field(default_factory=dict)

    def encode(self, event_type: str, view: str, render: Callable[[Obj], Any]) -> bytes:
        key = (event_type, view)
        data = self.encoded.get(key)
        if data is None:
            data = dumps({"type": event_type, "object": render(self.obj)}) + b"\n"
            self.encoded[key] = data
        return data


@dataclass(frozen=True, slots=True)
class Marker:
    """A non-event queue item: ``timeout`` or ``bookmark`` (at revision ``rv``)."""

    kind: str
    rv: int = 0


QueueItem = tuple[str, Delivery] | Marker | None


class Watcher:
    """One open watch: its filter and its queue of (event type, delivery)."""

    def __init__(
        self,
        gr: GroupResource,
        namespace: str | None,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> None:
        self.gr = gr
        self.namespace = namespace
        self.labels = labels
        self.fields = fields
        self.queue: asyncio.Queue[QueueItem] = asyncio.Queue()
        self.closed = False
        self.abort = False
        # The common case (a whole collection) needs no per-event filtering.
        self.selects_all = namespace is None and labels.empty and fields.empty

    def selects(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        meta = obj["metadata"]
        if self.namespace is not None and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def translate(self, event: StoredEvent) -> str | None:
        """The event type this watcher sees (selector transitions become ADDED/DELETED)."""
        if self.selects_all:
            return event.type
        now = self.selects(event.obj) if event.type != "DELETED" else False
        before = self.selects(event.prev) if event.prev is not None else False
        if event.type == "DELETED":
            return "DELETED" if self.selects(event.obj) else None
        if now and before:
            return "MODIFIED"
        if now:
            return "ADDED"
        if before:
            return "DELETED"
        return None

    def offer(self, event_type: str, delivery: Delivery) -> None:
        if self.closed:
            return
        if self.queue.qsize() >= MAX_QUEUED_EVENTS:
            log.warning(
                "closing a watch of %s that fell %d events behind",
                "/".join(self.gr),
                MAX_QUEUED_EVENTS,
            )
            self.close()
            return
        self.queue.put_nowait((event_type, delivery))

    def close(self, *, abort: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self.abort = abort
            self.queue.put_nowait(None)


class WatchHub:
    """Routes stored events to the open watches of their resource."""

    def __init__(self, store: ObjectStore) -> None:
        self._watchers: dict[GroupResource, set[Watcher]] = {}
        store.listeners.append(self.publish)

    def subscribe(self, watcher: Watcher) -> None:
        self._watchers.setdefault(watcher.gr, set()).add(watcher)

    def unsubscribe(self, watcher: Watcher) -> None:
        self._watchers.get(watcher.gr, set()).discard(watcher)

    def publish(self, event: StoredEvent) -> None:
        watchers = self._watchers.get(event.group_resource)
        if not watchers:
            return
        delivery = Delivery(event.type, event.obj, event.rv)
        for watcher in list(watchers):
            seen_as = watcher.translate(event)
            if seen_as is not None:
                watcher.offer(seen_as, delivery)

    def count(self) -> int:
        return sum(len(w) for w in self._watchers.values())

    def drop(self, gr: GroupResource | None = None, *, abort: bool = False) -> int:
        """End open watches (of one resource, or all); returns how many."""
        dropped = 0
        for key, watchers in self._watchers.items():
            if gr is not None and key != gr:
                continue
            for watcher in list(watchers):
                watcher.close(abort=abort)
                dropped += 1
        return dropped
