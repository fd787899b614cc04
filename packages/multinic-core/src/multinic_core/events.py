"""Kubernetes Events for what a user must see, deduplicated as kubelet's recorder does.

The agent posts Events on a Pod (an unknown attach policy fell back to
``none``, a pool is exhausted, a NIC is missing), the operator on a
MultiNicNetwork (allocations stranded by a plan edit).  Both use one
:class:`EventRecorder`, which does what client-go's ``tools/record`` does for
kubelet (``EventCorrelator``, v0.37):

* **dedup**: an Event with the same source, involved object, type, reason
  and message as one already posted (a bounded LRU cache of 4,096) is not
  created again: the existing Event's ``count`` goes up and its
  ``lastTimestamp`` (and ``message``) are patched;
* **aggregation**: from the 10th *different* message of the same (object,
  type, reason) within 10 minutes, the messages are combined into one Event
  ``(combined from similar events): <latest message>``;
* **rate limit**: a token bucket per (source, object, type), 25 at once, one
  more every 5 minutes; what exceeds it is dropped (its count still grows in
  the cache, so the next write that passes carries it).

Posting is best-effort and never on the caller's path: :meth:`EventRecorder.event`
puts the event in a bounded queue and returns at once (a full queue drops it);
one worker thread correlates and writes, retrying a transport failure a few
times with backoff, and abandoning an Event the server refuses.  An Event can
never fail or delay a CNI ADD or a reconcile.

Core has no Kubernetes client: the writes go through an :class:`EventSink`,
which the agent and the operator implement over their own clients.  Events
are ``v1`` (core) Events, as kubelet, Multus and kopf post them; one about a
cluster-scoped object (a MultiNicNetwork) goes to namespace ``default``, as
client-go puts it.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from multinic_core.errors import MultinicError
from multinic_core.models import API_VERSION

log = logging.getLogger(__name__)

EventType = Literal["Normal", "Warning"]
NORMAL: EventType = "Normal"
WARNING: EventType = "Warning"

DEFAULT_NAMESPACE = "default"
"""Where an Event about a cluster-scoped object goes (client-go's choice, and kubectl's)."""
CACHE_SIZE = 4096
"""Entries of each correlation cache (client-go's ``maxLruCacheEntries``)."""
AGGREGATE_MAX_EVENTS = 10
AGGREGATE_INTERVAL_S = 600.0
SPAM_BURST = 25
SPAM_REFILL_S = 300.0
"""One more Event per (source, object, type) every 5 minutes once the burst is spent."""
QUEUE_SIZE = 1000
"""Events waiting to be written (client-go's ``maxQueuedEvents``); more are dropped."""
MAX_TRIES = 5
RETRY_DELAY_S = 0.5
MAX_RETRY_DELAY_S = 10.0
MAX_MESSAGE = 1024
"""Longest message written (the events.k8s.io limit of a note), cut with an ellipsis."""
AGGREGATED_PREFIX = "(combined from similar events): "
_MAX_NAME = 253


class EventRejectedError(MultinicError):
    """The API server refused an Event for good (validation, a terminating namespace...)."""


@dataclass(frozen=True)
class ObjectRef:
    """The object an Event is about (``involvedObject``)."""

    kind: str
    name: str
    namespace: str = ""
    """Empty for a cluster-scoped object."""
    uid: str = ""
    api_version: str = "v1"

    @property
    def event_namespace(self) -> str:
        """The namespace the Event lives in: the object's, else ``default``."""
        return self.namespace or DEFAULT_NAMESPACE

    def to_dict(self) -> dict[str, str]:
        """As an ``involvedObject`` (empty fields left out)."""
        found = {"apiVersion": self.api_version, "kind": self.kind, "name": self.name}
        if self.namespace:
            found["namespace"] = self.namespace
        if self.uid:
            found["uid"] = self.uid
        return found


def pod_ref(namespace: str, name: str, uid: str = "") -> ObjectRef:
    return ObjectRef(kind="Pod", name=name, namespace=namespace, uid=uid)


def network_ref(name: str, uid: str = "") -> ObjectRef:
    return ObjectRef(kind="MultiNicNetwork", name=name, uid=uid, api_version=API_VERSION)


class EventSink(Protocol):
    """Writes core v1 Events; the agent's and the operator's Kubernetes clients implement it.

    Both methods block (they are called in the recorder's worker thread).
    They raise :class:`EventRejectedError` when the server refused the write
    for good, and anything else for a failure worth retrying.
    """

    def create(self, namespace: str, event: Mapping[str, Any]) -> None:
        """Create ``event`` (a whole Event object) in ``namespace``."""

    def patch(self, namespace: str, name: str, changes: Mapping[str, Any]) -> bool:
        """Merge-patch Event ``namespace/name``; False when it does not exist (any more)."""

    def close(self) -> None:
        """Release what the sink holds of its own (called once by ``EventRecorder.close``)."""


def timestamp(seconds: float) -> str:
    """``seconds`` since the epoch as a Kubernetes ``Time`` (RFC 3339, UTC, whole seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def event_name(object_name: str, nanoseconds: int) -> str:
    """client-go's Event name: ``<object>.<nanoseconds in hex>``, a UUID when that is too long."""
    name = f"{object_name}.{nanoseconds:x}"
    return name if len(name) <= _MAX_NAME else str(uuid.uuid4())


def _cut(message: str) -> str:
    return message if len(message) <= MAX_MESSAGE else f"{message[: MAX_MESSAGE - 3]}..."


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class _LruCache(Generic[K, V]):
    """A dict that forgets its least recently used entry beyond ``size`` entries."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K) -> V | None:
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: K, value: V) -> None:
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


@dataclass
class _TokenBucket:
    tokens: float
    updated: float


@dataclass
class _Aggregate:
    messages: set[str]
    last: float


@dataclass(frozen=True)
class _Observation:
    """What was last written for one event key: the Event's name, count, first time."""

    name: str
    count: int
    first: float


@dataclass(frozen=True)
class _Recorded:
    ref: ObjectRef
    type: EventType
    reason: str
    message: str
    at: float


_FLUSH = object()


class EventRecorder:
    """Posts Events through ``sink``, correlated like kubelet's; never blocks the caller.

    :param component: ``source.component`` / ``reportingComponent`` (``multinic-agent``).
    :param host: ``source.host`` / ``reportingInstance`` (the node's name), or "".
    :param clock: seconds since the epoch (tests pass their own).
    """

    def __init__(
        self,
        sink: EventSink,
        component: str,
        host: str = "",
        *,
        clock: Callable[[], float] = time.time,
        cache_size: int = CACHE_SIZE,
        burst: int = SPAM_BURST,
        refill_s: float = SPAM_REFILL_S,
        aggregate_max: int = AGGREGATE_MAX_EVENTS,
        aggregate_interval_s: float = AGGREGATE_INTERVAL_S,
        queue_size: int = QUEUE_SIZE,
        max_tries: int = MAX_TRIES,
        retry_delay_s: float = RETRY_DELAY_S,
    ) -> None:
        self.sink = sink
        self.component = component
        self.host = host
        self.clock = clock
        self.burst = burst
        self.refill_s = refill_s
        self.aggregate_max = aggregate_max
        self.aggregate_interval_s = aggregate_interval_s
        self.max_tries = max_tries
        self.retry_delay_s = retry_delay_s
        self._queue: queue.Queue[_Recorded | object] = queue.Queue(maxsize=queue_size)
        # Touched only by the worker thread.
        self._observed: _LruCache[tuple[Any, ...], _Observation] = _LruCache(cache_size)
        self._aggregates: _LruCache[tuple[Any, ...], _Aggregate] = _LruCache(cache_size)
        self._buckets: _LruCache[tuple[Any, ...], _TokenBucket] = _LruCache(cache_size)
        self._last_ns = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0
        self._stopping = threading.Event()
        self._worker: threading.Thread | None = None
        self.counts: dict[str, int] = {
            "created": 0,
            "patched": 0,
            "throttled": 0,
            "dropped": 0,
            "failed": 0,
        }
        """What became of the recorded events (for logs and tests)."""

    # ------------------------------------------------------------------ callers' side

    def event(self, ref: ObjectRef, type_: EventType, reason: str, message: str) -> bool:
        """Queue an Event about ``ref``; False when it was dropped (queue full or closed).

        Returns at once, whatever the API server does.
        """
        if self._stopping.is_set() or not ref.name:
            return False
        recorded = _Recorded(ref, type_, reason, _cut(message), self.clock())
        with self._lock:
            self._start_worker()
            try:
                self._queue.put_nowait(recorded)
            except queue.Full:
                self.counts["dropped"] += 1
                log.warning("event queue full: dropped %s %s about %s", type_, reason, ref.name)
                return False
            self._unfinished += 1
        return True

    def warning(self, ref: ObjectRef, reason: str, message: str) -> bool:
        return self.event(ref, WARNING, reason, message)

    def normal(self, ref: ObjectRef, reason: str, message: str) -> bool:
        return self.event(ref, NORMAL, reason, message)

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued Event was written (or given up); False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._unfinished:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued for up to ``timeout`` seconds, stop the worker, close the sink."""
        if self._stopping.is_set():
            return
        self.flush(timeout)
        self._stopping.set()
        worker = self._worker
        if worker is not None:
            # Wakes a worker waiting for work; one in a retry pause sees _stopping.
            with contextlib.suppress(queue.Full):
                self._queue.put_nowait(_FLUSH)
            worker.join(timeout)
        self.sink.close()

    # ------------------------------------------------------------------ worker

    def _start_worker(self) -> None:
        if self._worker is None:
            self._worker = threading.Thread(
                target=self._run, name=f"events-{self.component}", daemon=True
            )
            self._worker.start()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _FLUSH:
                if self._stopping.is_set():
                    return
                continue
            try:
                if isinstance(item, _Recorded):
                    self._record(item)
            except Exception:
                # A bug here must not stop the events of the rest of the process.
                log.exception("event not recorded")
            finally:
                with self._idle:
                    self._unfinished -= 1
                    if not self._unfinished:
                        self._idle.notify_all()

    def _record(self, item: _Recorded) -> None:
        body, key = self._aggregate(item)
        previous = self._observed.get(key)
        if previous is not None:
            body["metadata"]["name"] = previous.name
            body["count"] = previous.count + 1
            body["firstTimestamp"] = timestamp(previous.first)
        first = previous.first if previous is not None else item.at
        # Observed before the spam filter, as client-go does: a throttled
        # occurrence still counts, and the next write that passes says so.
        self._observed.put(key, _Observation(body["metadata"]["name"], body["count"], first))
        if not self._allowed(item):
            self.counts["throttled"] += 1
            log.debug("event %s about %s throttled", item.reason, item.ref.name)
            return
        self._write(body, key, item.at, update=previous is not None)

    def _aggregate(self, item: _Recorded) -> tuple[dict[str, Any], tuple[Any, ...]]:
        """The Event to write and its dedup key, after combining similar messages."""
        group = (item.ref, item.type, item.reason)
        record = self._aggregates.get(group)
        if record is None or item.at - record.last > self.aggregate_interval_s:
            record = _Aggregate(set(), item.at)
        record.messages.add(item.message)
        record.last = item.at
        self._aggregates.put(group, record)
        message = item.message
        key: tuple[Any, ...] = (*group, item.message)
        if len(record.messages) >= self.aggregate_max:
            record.messages.pop()
            message, key = _cut(AGGREGATED_PREFIX + item.message), group
        return self._body(item, message), key

    def _body(self, item: _Recorded, message: str) -> dict[str, Any]:
        at = timestamp(item.at)
        source = {"component": self.component}
        if self.host:
            source["host"] = self.host
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {
                "name": self._name(item.ref.name, item.at),
                "namespace": item.ref.event_namespace,
            },
            "involvedObject": item.ref.to_dict(),
            "type": item.type,
            "reason": item.reason,
            "message": message,
            "count": 1,
            "firstTimestamp": at,
            "lastTimestamp": at,
            "source": source,
            "reportingComponent": self.component,
            "reportingInstance": self.host,
        }
        return body

    def _name(self, object_name: str, at: float) -> str:
        """A new Event's name, from the time; never one this recorder gave before
        (two Events within a clock tick would otherwise clash)."""
        nanoseconds = max(int(at * 1e9), self._last_ns + 1)
        self._last_ns = nanoseconds
        return event_name(object_name, nanoseconds)

    def _allowed(self, item: _Recorded) -> bool:
        """The token bucket of (object, type): ``burst`` at once, one per ``refill_s`` more."""
        key = (item.ref, item.type)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = _TokenBucket(float(self.burst), item.at)
        elapsed = max(0.0, item.at - bucket.updated)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed / self.refill_s)
        bucket.updated = item.at
        allowed = bucket.tokens >= 1.0
        if allowed:
            bucket.tokens -= 1.0
        self._buckets.put(key, bucket)
        return allowed

    def _write(
        self, body: dict[str, Any], key: tuple[Any, ...], at: float, *, update: bool
    ) -> None:
        namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
        what = f"{body['type']} event {body['reason']} on {body['involvedObject']['kind']} {name}"
        delay = self.retry_delay_s
        for attempt in range(1, self.max_tries + 1):
            try:
                if update:
                    changes = {
                        "count": body["count"],
                        "lastTimestamp": body["lastTimestamp"],
                        "message": body["message"],
                    }
                    if self.sink.patch(namespace, name, changes):
                        self.counts["patched"] += 1
                        log.debug("%s: count %d", what, body["count"])
                        return
                    # Gone (expired, or deleted): written again, from count 1 on.
                    update = False
                    name = self._name(body["involvedObject"]["name"], at)
                    body["metadata"]["name"] = name
                    body["count"] = 1
                    body["firstTimestamp"] = body["lastTimestamp"]
                    self._observed.put(key, _Observation(name, 1, at))
                self.sink.create(namespace, body)
                self.counts["created"] += 1
                log.debug("%s: created", what)
                return
            except EventRejectedError as e:
                self.counts["failed"] += 1
                log.warning("%s refused by the API server (not retried): %s", what, e)
                return
            except Exception as e:
                if attempt == self.max_tries or self._stopping.is_set():
                    self.counts["failed"] += 1
                    log.warning("%s not written after %d tries: %s", what, attempt, e)
                    return
                log.debug("%s failed (%s); retrying in %.1f s", what, e, delay)
                if self._stopping.wait(delay):
                    self.counts["failed"] += 1
                    return
                delay = min(MAX_RETRY_DELAY_S, delay * 2)
