"""The API mirror of the IPAM journal, and leak collection (SPEC section 5).

:class:`IPPoolMirror` makes each of this node's ``IPPool`` objects list, in
``spec.allocations``, exactly what the local journal holds for that pool.
The journal is authoritative for the node's own entries (those with a
``containerID``); entries without one were written by someone else (the
predecessor, a user): the journal adopts them (they hold their addresses like
the agent's own) and they are listed as they were, until a DEL or leak
collection naming their pod releases them.  A pool a plan edit retired (label
``multinic.fms.io/retired``) gets nothing new; once the journal refuses it,
the pass that lists its allocations also acknowledges the retirement
(annotation ``multinic.fms.io/retired-ack``), which tells the operator that the
list is complete and final but for releases.  Each pass writes at most one
merge patch per pool, carrying the resourceVersion it was computed from; a
409 re-reads the pool and computes again, so nothing another writer did is
overwritten blindly.  Every change since the last pass goes in one write.

:class:`LeakCollector` releases attachments whose pod is known to be gone:
the Pod with that namespace and name is NotFound, or exists with another
uid.  An API error or timeout proves nothing and releases nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import urllib3.exceptions
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from multinic_agent.cni_server import CniServer
from multinic_agent.kube_api import (
    REQUEST_TIMEOUT_S,
    ResourceWatch,
    call_with_retries,
    describe_error,
)
from multinic_core.errors import MultinicError, TryAgainError
from multinic_core.models import GROUP, POOL_RETIRED_ACK, POOL_RETIRED_LABEL, VERSION, IPPool
from multinic_ipam.journal import AllocationJournal, AttachmentKey, ForeignRow

log = logging.getLogger(__name__)

CONFLICT_RETRIES = 10
ALLOCATION_KEYS = ("pod", "namespace", "index", "address", "containerID", "ifName")


def _normal(allocations: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Allocations in a comparable form: sorted by index, missing keys as ''."""
    rows = [tuple(a.get(k, "") for k in ALLOCATION_KEYS) for a in allocations]
    return sorted(rows, key=lambda row: (int(row[2] or 0), row))


def _foreign_row(allocation: dict[str, Any]) -> ForeignRow | None:
    """An allocation no agent wrote, as the journal remembers it; None for an agent's."""
    if allocation.get("containerID"):
        return None
    try:
        return (
            int(allocation["index"]),
            str(allocation["address"]),
            str(allocation.get("pod") or ""),
            str(allocation.get("namespace") or ""),
        )
    except (KeyError, ValueError, TypeError):
        return None


def retired_generation(pool: dict[str, Any]) -> str | None:
    """The label value of a retired pool (the CIDR generation that replaced it)."""
    value = (pool["metadata"].get("labels") or {}).get(POOL_RETIRED_LABEL)
    return None if value is None else str(value)


def mirrored_allocations(pool: dict[str, Any], journal: AllocationJournal) -> list[dict[str, Any]]:
    """What ``spec.allocations`` of ``pool`` should be: the journal's entries.

    Those include the adopted ones (listed as they were).  Rows no agent
    wrote that the journal did not adopt (unreadable ones) stay as they are;
    adopted rows that a DEL released are dropped.
    """
    name = pool["metadata"]["name"]
    current = (pool.get("spec") or {}).get("allocations") or []
    ours = [e.ippool_allocation() for e in journal.pool_allocations(name)]
    listed = {_foreign_row(a) for a in ours}
    forgotten = journal.forgotten(name)
    others = [
        a
        for a in current
        if not a.get("containerID")
        and _foreign_row(a) not in listed
        and _foreign_row(a) not in forgotten
    ]
    return sorted([*others, *ours], key=lambda a: int(a.get("index", 0)))


def retire_and_settle(pools: list[dict[str, Any]], journal: AllocationJournal) -> None:
    """Before a pass lists the pools: refuse the retired ones, forget settled releases.

    Refusing first makes the acknowledgement true: nothing is allocated from
    a retired pool after the list that carries it.
    """
    retired = {p["metadata"]["name"] for p in pools if retired_generation(p) is not None}
    journal.set_retired(retired, {p["metadata"]["name"] for p in pools} - retired)
    for pool in pools:
        listed = {_foreign_row(a) for a in (pool.get("spec") or {}).get("allocations") or []}
        journal.settle_forgotten(pool["metadata"]["name"], {r for r in listed if r})


class IPPoolMirror:
    """Writes the journal's allocations into this node's IPPool objects."""

    def __init__(
        self,
        api: client.ApiClient,
        journal: AllocationJournal,
        pools: ResourceWatch,
        *,
        interval: float = 1.0,
        adopt: Callable[[], int] = lambda: 0,
    ) -> None:
        self.objects_api: Any = client.CustomObjectsApi(api)
        self.journal = journal
        self.pools = pools
        self.interval = interval
        self.adopt = adopt
        """Adopts the pools' allocations no agent wrote into the journal (the CNI server's)."""
        # After a write the watch cache lags a moment: the object we wrote
        # stands in for the cached one until the cache moves past it.
        self._written: dict[str, tuple[str, dict[str, Any]]] = {}
        self.writes = 0

    def desired(self, pool: dict[str, Any]) -> list[dict[str, Any]]:
        return mirrored_allocations(pool, self.journal)

    def mirror_once(self) -> int:
        """One pass over the node's pools; the number of pools written."""
        self.adopt()
        pools = self.pools.items()
        retire_and_settle(pools, self.journal)
        written = 0
        for pool in pools:
            try:
                written += self._mirror(pool)
            except (MultinicError, ApiException, urllib3.exceptions.HTTPError, OSError) as e:
                log.warning(
                    "IPPool %s not mirrored this time: %s",
                    pool["metadata"]["name"],
                    describe_error(e) if isinstance(e, ApiException) else e,
                )
        return written

    def _mirror(self, pool: dict[str, Any]) -> int:
        name = pool["metadata"]["name"]
        remembered = self._written.get(name)
        if remembered is not None:
            stale_version, ours = remembered
            if pool["metadata"]["resourceVersion"] == stale_version:
                pool = ours
            else:
                del self._written[name]
        for attempt in range(CONFLICT_RETRIES):
            current = (pool.get("spec") or {}).get("allocations") or []
            desired = self.desired(pool)
            retired = retired_generation(pool)
            acked = (pool["metadata"].get("annotations") or {}).get(POOL_RETIRED_ACK)
            ack = retired is not None and acked != retired
            if _normal(current) == _normal(desired) and not ack:
                return 0
            version = pool["metadata"]["resourceVersion"]
            metadata: dict[str, Any] = {"resourceVersion": version}
            if ack:
                metadata["annotations"] = {POOL_RETIRED_ACK: retired}
            patch = {"metadata": metadata, "spec": {"allocations": desired}}
            try:
                stored = call_with_retries(
                    lambda body=patch: self.objects_api.patch_cluster_custom_object(  # type: ignore[misc]
                        GROUP,
                        VERSION,
                        IPPool.plural,
                        name,
                        body,
                        _request_timeout=REQUEST_TIMEOUT_S,
                    ),
                    f"patch IPPool {name}",
                    retry_conflicts=False,
                )
            except ApiException as e:
                if e.status == 404:
                    return 0  # deleted by the operator meanwhile
                if e.status != 409:
                    raise
                time.sleep(min(1.0, 0.02 * 2**attempt))
                fresh = self._get(name)
                if fresh is None:
                    return 0
                pool = fresh
                continue
            self._written[name] = (version, stored)
            self.writes += 1
            before = {row[4:] for row in _normal(current)}
            after = {row[4:] for row in _normal(desired)}
            log.info(
                "mirrored %d allocations to IPPool %s (%d new, %d gone)%s",
                len(desired),
                name,
                len(after - before),
                len(before - after),
                f"; acknowledged its retirement by CIDR generation {retired}" if ack else "",
            )
            return 1
        raise TryAgainError(f"IPPool {name} kept changing: {CONFLICT_RETRIES} conflicts in a row")

    def _get(self, name: str) -> dict[str, Any] | None:
        def get() -> dict[str, Any] | None:
            try:
                found: dict[str, Any] = self.objects_api.get_cluster_custom_object(
                    GROUP, VERSION, IPPool.plural, name, _request_timeout=REQUEST_TIMEOUT_S
                )
            except ApiException as e:
                if e.status == 404:
                    return None
                raise
            return found

        return call_with_retries(get, f"get IPPool {name}")

    async def run(self) -> None:
        """Mirror every ``interval`` seconds (all changes since the last pass at once)."""
        while True:
            await asyncio.to_thread(self.mirror_once)
            await asyncio.sleep(self.interval)


@dataclass(frozen=True)
class PodIdentity:
    namespace: str
    name: str
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


class LeakCollector:
    """Releases attachments of pods that are known to be gone."""

    def __init__(
        self, api: client.ApiClient, server: CniServer, *, interval: float = 300.0
    ) -> None:
        self.core_api: Any = client.CoreV1Api(api)
        self.server = server
        self.interval = interval

    def candidates(self) -> dict[AttachmentKey, PodIdentity]:
        """Every attachment the node holds, with the pod it was made for."""
        found: dict[AttachmentKey, PodIdentity] = {}
        for record in self.server.records.all():
            if record.pod and record.namespace:
                key = (record.network, record.container_id, record.ifname)
                found[key] = PodIdentity(record.namespace, record.pod, record.pod_uid)
        for key in self.server.journal.attachments():
            if key in found:
                continue
            entries = self.server.journal.entries(*key)
            if entries and entries[0].pod and entries[0].namespace:
                found[key] = PodIdentity(entries[0].namespace, entries[0].pod)
        return found

    def pod_gone(self, pod: PodIdentity) -> str | None:
        """Why ``pod`` is known to be gone, or None (it exists, or the API did not say)."""
        try:
            response = self.core_api.read_namespaced_pod(
                pod.name, pod.namespace, _preload_content=False, _request_timeout=REQUEST_TIMEOUT_S
            )
            body = json.loads(response.data)
        except ApiException as e:
            if e.status == 404:
                return "NotFound"
            log.warning("pod %s: %s; its attachments are kept", pod, describe_error(e))
            return None
        except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
            log.warning("pod %s: %s; its attachments are kept", pod, e)
            return None
        uid = (body.get("metadata") or {}).get("uid", "")
        if pod.uid and uid and uid != pod.uid:
            return f"the pod of that name is another one (uid {uid}, not {pod.uid})"
        return None

    async def collect_once(self) -> list[AttachmentKey]:
        """Check every attachment's pod once; release those of gone pods."""
        by_pod: dict[PodIdentity, list[AttachmentKey]] = defaultdict(list)
        for key, pod in self.candidates().items():
            by_pod[pod].append(key)
        released: list[AttachmentKey] = []
        for pod, keys in by_pod.items():
            reason = await asyncio.to_thread(self.pod_gone, pod)
            if reason is None:
                continue
            for network, container_id, ifname in keys:
                try:
                    addresses = await self.server.release_attachment(network, container_id, ifname)
                except Exception as e:  # a delegate's DEL failed: the next pass retries
                    log.error(
                        "leak collection: container %s ifname %s of pod %s not released: %s",
                        container_id,
                        ifname,
                        pod,
                        e,
                    )
                    continue
                released.append((network, container_id, ifname))
                log.info(
                    "leak collection: released container %s ifname %s of network %s "
                    "(pod %s: %s): %s",
                    container_id,
                    ifname,
                    network,
                    pod,
                    reason,
                    ", ".join(addresses) or "no address",
                )
        return released

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.collect_once()
