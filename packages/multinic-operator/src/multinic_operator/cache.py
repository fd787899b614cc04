"""What the reconciler reads of the cluster: from list/watch caches, or from the API.

``ClusterView`` is the reconciler's window on the cluster: the networks'
names, the Nodes, the HostInterfaces, a network's IPPools, CIDR and NADs,
the namespaces; and the hooks by which it tells the view about its own
writes.  Two implementations:

* ``ClusterCache`` (the operator): one informer per kind
  (``multinic_operator.informer``): one LIST when the operator starts, then
  WATCH, so a reconcile makes no LIST at all.  What each informer keeps is
  cut to what the reconciler reads: of a Node its name, of an IPPool its
  labels, the retired-ack annotation, its spec (and its status only while it
  is retired), of a HostInterface the validated model.  Its informers'
  events also trigger the batched re-plans that kopf's watches used to
  (``listen``): a host's NICs, labels or route results changed, a Node or a
  namespace came or went, a retired pool moved, an object the operator made
  was deleted by someone else.
* ``LiveView``: every read is a request (tests that drive a reconciler
  without an operator around it, and one-off tools).
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from multinic_core.models import (
    API_VERSION,
    POOL_RETIRED_ACK,
    POOL_RETIRED_LABEL,
    HostInterface,
    compact,
)
from multinic_core.nad import GENERATED_LABEL, NAD_API_VERSION, NAD_KIND
from multinic_core.shards import NETWORK_LABEL, SHARD_LABEL, shard_of
from multinic_operator.desired import POOL_NETWORK_LABEL
from multinic_operator.informer import Informer
from multinic_operator.kube import KubeApi

log = logging.getLogger(__name__)

Request = Callable[[Iterable[str] | None], None]
"""Ask for a re-plan of some networks (None: of every network)."""


class ClusterView(Protocol):
    def ready(self) -> None:
        """Return when reads can be served; raise ``KubeApiError`` when they cannot."""

    def network_names(self) -> list[str]: ...

    def node_names(self) -> frozenset[str]: ...

    def host_interfaces(self) -> list[HostInterface]:
        """The valid HostInterfaces (invalid ones are logged and left out)."""

    def hosts_version(self) -> int | None:
        """A counter of host changes (None: not tracked; the reconciler then compares all).

        A host changes when its HostInterface's NICs, labels or route results
        change, or it or its Node comes or goes.
        """

    def hosts_changed_since(self, version: int) -> set[str]:
        """The host names that changed after ``hosts_version()`` gave ``version``."""

    def pools_of(self, network: str) -> Mapping[str, dict[str, Any]]:
        """The IPPools labelled with ``network``, by name."""

    def cidr(self, network: str) -> dict[str, Any] | None: ...

    def cidr_shards(self, network: str) -> dict[int, dict[str, Any]]:
        """The CIDRs holding ``network``'s plan by shard index (0: the one named ``network``)."""

    def nads(self, network: str) -> list[dict[str, Any]]:
        """The generated NADs named ``network``, in every namespace."""

    def namespaces(self) -> list[str]:
        """Namespaces that exist and are not being deleted."""

    def observe(self, body: Mapping[str, Any]) -> None:
        """The answer to one of the reconciler's creates or patches."""

    def deleting(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> None:
        """The reconciler is about to delete this object."""

    def deleted(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, gone: bool
    ) -> None:
        """The delete answered (``gone``: the object no longer exists)."""


def host_digest(body: Mapping[str, Any]) -> str:
    """What of a HostInterface a plan or a status depends on, as a comparable string.

    Agents rewrite their status often (a new ``lastSyncTime`` per route sync);
    only a change of the NICs, the labels or a route result is worth a re-plan.
    """
    status = body.get("status") or {}
    routes = sorted(
        (r.get("network"), r.get("status"), r.get("message"), r.get("cidrGeneration"))
        for r in status.get("routes") or []
        if isinstance(r, Mapping)
    )
    relevant = {
        "labels": (body.get("metadata") or {}).get("labels") or {},
        "spec": body.get("spec") or {},
        "routes": routes,
    }
    return json.dumps(relevant, sort_keys=True, default=str)


# --------------------------------------------------------------------------- what is kept


@dataclass(frozen=True)
class CachedHost:
    """A HostInterface as cached: the model (None when invalid) and its plan digest."""

    host: HostInterface | None
    digest: bytes


LAST_APPLIED = "kubectl.kubernetes.io/last-applied-configuration"


def cached_host(body: dict[str, Any]) -> CachedHost:
    """The HostInterface as the reconciler reads it, compacted (10,000 of them are cached).

    What the API adds that no plan reads is left out: ``managedFields`` and
    kubectl's copy of the last applied object.
    """
    digest = hashlib.blake2b(host_digest(body).encode(), digest_size=16).digest()
    meta = body.get("metadata") or {}
    if "managedFields" in meta or LAST_APPLIED in (meta.get("annotations") or {}):
        meta = {k: v for k, v in meta.items() if k != "managedFields"}
        if LAST_APPLIED in (meta.get("annotations") or {}):
            meta["annotations"] = {
                k: v for k, v in meta["annotations"].items() if k != LAST_APPLIED
            }
        body = {**body, "metadata": meta}
    try:
        return CachedHost(compact(HostInterface.model_validate(body)), digest)
    except ValueError as e:
        log.warning("ignoring invalid HostInterface %s: %s", body["metadata"]["name"], e)
        return CachedHost(None, digest)


def _interned(value: Any) -> Any:
    return sys.intern(value) if isinstance(value, str) else value


POOL_SHARED_FIELDS = frozenset({"vlanCIDR", "netAttachDef", "hostName", "interfaceName"})
"""IPPool spec fields whose values many pools share (interned: stored once)."""
POOL_SPEC_FIELDS = (
    "podCIDR",
    "vlanCIDR",
    "netAttachDef",
    "hostName",
    "interfaceName",
    "excludes",
    "allocations",
)
_ABSENT = "\x00absent"
"""Where a pool's spec lacks one of ``POOL_SPEC_FIELDS``."""
_SPEC_INDEX = {field: i for i, field in enumerate(POOL_SPEC_FIELDS)}


class CachedPool(NamedTuple):
    """An IPPool as cached: what the reconciler reads of it, in tuples.

    80,000 pools (10,000 hosts x 8 NICs) as dicts would take ~1.4 KB each;
    as tuples about a third.  ``pool_body`` gives the dict the reconciler reads.
    """

    name: str
    resource_version: str
    labels: tuple[str, ...]
    """Keys and values, flat: (k1, v1, k2, v2, ...)."""
    ack: str | None
    """The agent's retired-ack annotation."""
    spec: tuple[Any, ...]
    """The values of ``POOL_SPEC_FIELDS`` (lists as tuples), ``_ABSENT`` where missing."""
    other_spec: tuple[tuple[str, Any], ...]
    status: Any
    """Only while the pool is retired (None otherwise)."""

    def value(self, field: str) -> Any:
        """The spec's ``field`` of ``POOL_SPEC_FIELDS`` (lists as tuples); None where absent."""
        value = self.spec[_SPEC_INDEX[field]]
        return None if value == _ABSENT else value

    def label(self, key: str) -> str | None:
        for i in range(0, len(self.labels), 2):
            if self.labels[i] == key:
                return self.labels[i + 1]
        return None


def slim_pool(body: dict[str, Any]) -> CachedPool:
    """An IPPool cut to what the reconciler reads: labels, retired-ack, spec, retired status."""
    meta = body.get("metadata") or {}
    labels: list[str] = []
    for key, value in (meta.get("labels") or {}).items():
        labels += (sys.intern(key), _interned(value))
    spec = body.get("spec") or {}
    values = []
    for field in POOL_SPEC_FIELDS:
        value = spec.get(field, _ABSENT)
        if field in POOL_SHARED_FIELDS:
            value = _interned(value)
        elif isinstance(value, list):
            value = tuple(value) if value else ()
        values.append(value)
    other = tuple((k, v) for k, v in spec.items() if k not in POOL_SPEC_FIELDS)
    retired = POOL_RETIRED_LABEL in (meta.get("labels") or {})
    return CachedPool(
        name=meta["name"],
        resource_version=str(meta.get("resourceVersion", "")),
        labels=tuple(labels),
        ack=(meta.get("annotations") or {}).get(POOL_RETIRED_ACK),
        spec=tuple(values),
        other_spec=other,
        status=body.get("status") if retired else None,
    )


def pool_body(pool: CachedPool) -> dict[str, Any]:
    """The cached pool as the dict the reconciler reads (a new one each time)."""
    metadata: dict[str, Any] = {
        "name": pool.name,
        "resourceVersion": pool.resource_version,
        "labels": dict(zip(pool.labels[::2], pool.labels[1::2], strict=True)),
    }
    if pool.ack is not None:
        metadata["annotations"] = {POOL_RETIRED_ACK: pool.ack}
    spec: dict[str, Any] = {}
    for field, value in zip(POOL_SPEC_FIELDS, pool.spec, strict=True):
        if value is not _ABSENT and value != _ABSENT:
            spec[field] = list(value) if isinstance(value, tuple) else value
    spec.update(pool.other_spec)
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "IPPool",
        "metadata": metadata,
        "spec": spec,
    }
    if pool.status is not None:
        body["status"] = pool.status
    return body


def pools_holding(pools: Mapping[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """The pools that list allocations (as dicts), without building the others' dicts."""
    if isinstance(pools, PoolBodies):
        return [pool_body(p) for p in pools.records() if p.value("allocations")]
    return [p for p in pools.values() if (p.get("spec") or {}).get("allocations")]


def pool_blocks(pools: Mapping[str, dict[str, Any]]) -> Iterator[tuple[str, str, str, str, str]]:
    """(name, vlanCIDR, podCIDR, host, interface) of each live (not retired) pool,
    read from the cached records without building the pools' dicts."""
    if isinstance(pools, PoolBodies):
        for p in pools.records():
            if p.label(POOL_RETIRED_LABEL) is None:
                yield _block_of(p.name, p.value)
        return
    for name, pool in pools.items():
        if POOL_RETIRED_LABEL not in ((pool.get("metadata") or {}).get("labels") or {}):
            yield _block_of(name, (pool.get("spec") or {}).get)


def _block_of(name: str, value: Callable[[str], Any]) -> tuple[str, str, str, str, str]:
    def text(field: str) -> str:
        return str(value(field) or "")

    return name, text("vlanCIDR"), text("podCIDR"), text("hostName"), text("interfaceName")


def pool_network(pool: CachedPool) -> str | None:
    return pool.label(POOL_NETWORK_LABEL)


class PoolBodies(Mapping[str, dict[str, Any]]):
    """Cached pools by name, each given as a dict when it is read."""

    def __init__(self, pools: Mapping[str, CachedPool]) -> None:
        self._pools = pools

    def __getitem__(self, name: str) -> dict[str, Any]:
        return pool_body(self._pools[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._pools)

    def __len__(self) -> int:
        return len(self._pools)

    def __contains__(self, name: object) -> bool:
        return name in self._pools

    def records(self) -> Iterable[CachedPool]:
        return self._pools.values()

    def version(self, name: str) -> str:
        """The pool's resourceVersion (without building its dict)."""
        return self._pools[name].resource_version


def _name(body: dict[str, Any]) -> str:
    return sys.intern(str(body["metadata"]["name"]))


def _whole(body: dict[str, Any]) -> dict[str, Any]:
    return body


def slim_cidr(body: dict[str, Any]) -> dict[str, Any]:
    """A CIDR as its metadata: name, resourceVersion, generation (the informer
    lists and watches CIDRs metadata-only; the plan is MBs at 10,000 hosts).

    The reconciler knows the plan and status it wrote by the resourceVersion,
    and reads the object from the API when the version is not one it wrote.
    """
    meta = body.get("metadata") or {}
    slim: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "CIDR",
        "metadata": {
            "name": meta["name"],
            "resourceVersion": meta.get("resourceVersion", ""),
            "generation": meta.get("generation"),
        },
    }
    labels = meta.get("labels")
    if labels:  # which network's plan, and which shard of it (multinic_core.shards)
        slim["metadata"]["labels"] = labels
    return slim


def cidr_network(body: dict[str, Any]) -> str:
    """The network whose plan (or shard of it) a CIDR is."""
    return shard_of(body.get("metadata") or {})[0]


def _namespace(body: dict[str, Any]) -> tuple[str, bool]:
    """(name, active): not Terminating and no deletionTimestamp."""
    active = (body.get("status") or {}).get("phase") != "Terminating" and not body["metadata"].get(
        "deletionTimestamp"
    )
    return str(body["metadata"]["name"]), active


def _nad_name(body: dict[str, Any]) -> str:
    return str(body["metadata"]["name"])


# --------------------------------------------------------------------------- the caches


class ClusterCache:
    """Informers for every kind the reconciler reads (see the module doc)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self._request: Request | None = None
        self._changes = threading.Lock()
        self._hosts_version = 0
        self._host_changes: dict[str, int] = {}
        """Host name -> the version of its last change, oldest first."""
        self.networks: Informer[str] = Informer(api, API_VERSION, "MultiNicNetwork", _name)
        self.nodes: Informer[str] = Informer(api, "v1", "Node", _name, on_change=self._node)
        self.hosts: Informer[CachedHost] = Informer(
            api, API_VERSION, "HostInterface", cached_host, on_change=self._host
        )
        self.pools: Informer[CachedPool] = Informer(
            api, API_VERSION, "IPPool", slim_pool, index=pool_network, on_change=self._pool
        )
        # Metadata only: a CIDR is the whole plan (~13 MB at 10,000 x 8), and
        # every write of it would come back as a watch event of that size.
        self.cidrs: Informer[dict[str, Any]] = Informer(
            api,
            API_VERSION,
            "CIDR",
            slim_cidr,
            index=cidr_network,
            on_change=self._cidr,
            metadata_only=True,
        )
        self.nad_cache: Informer[dict[str, Any]] = Informer(
            api,
            NAD_API_VERSION,
            NAD_KIND,
            _whole,
            label_selector=f"{GENERATED_LABEL}=true",
            index=_nad_name,
            on_change=self._nad,
        )
        self.namespace_cache: Informer[tuple[str, bool]] = Informer(
            api, "v1", "Namespace", _namespace, on_change=self._namespace
        )
        self._by_kind: dict[tuple[str, str], Informer[Any]] = {
            (API_VERSION, "IPPool"): self.pools,
            (API_VERSION, "CIDR"): self.cidrs,
            (API_VERSION, "HostInterface"): self.hosts,
            (NAD_API_VERSION, NAD_KIND): self.nad_cache,
        }

    @property
    def informers(self) -> list[Informer[Any]]:
        return [
            self.networks,
            self.nodes,
            self.hosts,
            self.pools,
            self.cidrs,
            self.nad_cache,
            self.namespace_cache,
        ]

    # ------------------------------------------------------------------ lifecycle

    def listen(self, request: Request) -> None:
        """Where the informers' events ask for re-plans (the batcher's ``request_threadsafe``)."""
        self._request = request

    def start(self) -> None:
        for informer in self.informers:
            informer.start()

    def stop(self) -> None:
        for informer in self.informers:
            informer.stop()
        self.api.close()

    @property
    def required(self) -> list[Informer[Any]]:
        """The informers every reconcile needs (NADs are a third party's CRD: see ``nads``)."""
        return [i for i in self.informers if i is not self.nad_cache]

    def wait_synced(self, timeout: float) -> bool:
        return all(i.synced.wait(timeout) for i in self.required)

    # ------------------------------------------------------------------ ClusterView

    def ready(self) -> None:
        for informer in self.required:
            informer.ready()

    def network_names(self) -> list[str]:
        return sorted(self.networks.items())

    def node_names(self) -> frozenset[str]:
        return frozenset(self.nodes.items())

    def host_interfaces(self) -> list[HostInterface]:
        return [c.host for c in self.hosts.items() if c.host is not None]

    def hosts_version(self) -> int | None:
        with self._changes:
            return self._hosts_version

    def hosts_changed_since(self, version: int) -> set[str]:
        changed: set[str] = set()
        with self._changes:
            for name, at in reversed(self._host_changes.items()):
                if at <= version:
                    break
                changed.add(name)
        return changed

    def _host_changed(self, *names: str | None) -> None:
        with self._changes:
            self._hosts_version += 1
            for name in names:
                if name:
                    self._host_changes.pop(name, None)  # re-inserted last: in version order
                    self._host_changes[name] = self._hosts_version

    def pools_of(self, network: str) -> Mapping[str, dict[str, Any]]:
        return PoolBodies(self.pools.indexed(network))

    def cidr(self, network: str) -> dict[str, Any] | None:
        return self.cidrs.get(network)

    def cidr_shards(self, network: str) -> dict[int, dict[str, Any]]:
        return {
            shard_of(body["metadata"])[1]: body for body in self.cidrs.indexed(network).values()
        }

    def nads(self, network: str) -> list[dict[str, Any]]:
        # Not listed (the NAD CRD is not installed?): the reconcile says why.
        self.nad_cache.ready()
        return list(self.nad_cache.indexed(network).values())

    def namespaces(self) -> list[str]:
        return [name for name, active in self.namespace_cache.items() if active]

    def observe(self, body: Mapping[str, Any]) -> None:
        informer = self._by_kind.get((str(body.get("apiVersion")), str(body.get("kind"))))
        if informer is None:
            return
        if informer is self.nad_cache:
            labels = (body.get("metadata") or {}).get("labels") or {}
            if labels.get(GENERATED_LABEL) != "true":
                return  # not what that informer lists
        informer.observe(dict(body))

    def deleting(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> None:
        informer = self._by_kind.get((api_version, kind))
        if informer is not None:
            informer.deleting(f"{namespace}/{name}" if namespace else name)

    def deleted(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, gone: bool
    ) -> None:
        informer = self._by_kind.get((api_version, kind))
        if informer is not None:
            informer.deleted(f"{namespace}/{name}" if namespace else name, gone=gone)

    # ------------------------------------------------------------------ events -> re-plans

    def _ask(self, names: Iterable[str] | None) -> None:
        if self._request is not None:
            self._request(names)

    def _node(self, key: str, old: str | None, new: str | None) -> None:
        # Only a Node that came or went: heartbeats change nothing a plan uses.
        if old is None or new is None:
            self._host_changed(key)
            self._ask(None)

    def _host(self, key: str, old: CachedHost | None, new: CachedHost | None) -> None:
        if old is None or new is None or old.digest != new.digest:
            # Marked under its object name and its hostName (the plan's name), old and new.
            self._host_changed(key, *(_plan_name(c) for c in (old, new)))
            self._ask(None)

    def _pool(self, _key: str, old: CachedPool | None, new: CachedPool | None) -> None:
        # A retired pool's agent acknowledged it or a pod holding one of its
        # addresses went (new pools may start, excludes shrink), or someone
        # else deleted a pool (it is put back).
        pool = new if new is not None else old
        network = pool_network(pool) if pool is not None else None
        if network is None:
            return
        retired = any(p is not None and p.label(POOL_RETIRED_LABEL) is not None for p in (old, new))
        if retired or new is None:
            self._ask([network])

    def _cidr(self, _key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None and old is not None:  # deleted by someone else: the plan is written again
            self._ask([cidr_network(old)])

    def _nad(self, _key: str, old: dict[str, Any] | None, new: dict[str, Any] | None) -> None:
        if new is None and old is not None:
            self._ask([_nad_name(old)])

    def _namespace(
        self, _key: str, old: tuple[str, bool] | None, new: tuple[str, bool] | None
    ) -> None:
        if old is None and new is not None:  # a new namespace gets the NADs
            self._ask(None)


def _plan_name(cached: CachedHost | None) -> str | None:
    if cached is None or cached.host is None:
        return None
    return cached.host.spec.host_name or cached.host.name


class LiveView:
    """``ClusterView`` by requests: each read lists or gets."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def ready(self) -> None:
        return None

    def network_names(self) -> list[str]:
        return sorted(
            o["metadata"]["name"] for o in self.api.iterate(API_VERSION, "MultiNicNetwork")
        )

    def node_names(self) -> frozenset[str]:
        return frozenset(n["metadata"]["name"] for n in self.api.iterate("v1", "Node"))

    def host_interfaces(self) -> list[HostInterface]:
        hosts = []
        for body in self.api.iterate(API_VERSION, "HostInterface"):
            cached = cached_host(body)
            if cached.host is not None:
                hosts.append(cached.host)
        return hosts

    def hosts_version(self) -> int | None:
        return None

    def hosts_changed_since(self, version: int) -> set[str]:
        raise NotImplementedError("LiveView does not track host changes")

    def pools_of(self, network: str) -> dict[str, dict[str, Any]]:
        return {
            p["metadata"]["name"]: p
            for p in self.api.iterate(
                API_VERSION, "IPPool", label_selector=f"{POOL_NETWORK_LABEL}={network}"
            )
        }

    def cidr(self, network: str) -> dict[str, Any] | None:
        return self.api.get(API_VERSION, "CIDR", network)

    def cidr_shards(self, network: str) -> dict[int, dict[str, Any]]:
        shards = {
            index: body
            for body in self.api.iterate(
                API_VERSION, "CIDR", label_selector=f"{NETWORK_LABEL}={network},{SHARD_LABEL}"
            )
            for name, index in [shard_of(body["metadata"])]
            if name == network
        }
        base = self.api.get(API_VERSION, "CIDR", network)
        if base is not None:
            shards[0] = base
        return shards

    def nads(self, network: str) -> list[dict[str, Any]]:
        return self.api.list(
            NAD_API_VERSION,
            NAD_KIND,
            label_selector=f"{GENERATED_LABEL}=true",
            field_selector=f"metadata.name={network}",
        )

    def namespaces(self) -> list[str]:
        return [
            name
            for name, active in (_namespace(ns) for ns in self.api.iterate("v1", "Namespace"))
            if active
        ]

    def observe(self, body: Mapping[str, Any]) -> None:
        return None

    def deleting(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> None:
        return None

    def deleted(
        self, api_version: str, kind: str, name: str, namespace: str | None = None, *, gone: bool
    ) -> None:
        return None
