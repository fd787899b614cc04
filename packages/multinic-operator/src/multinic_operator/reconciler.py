"""The network service: make a MultiNicNetwork's dependent objects match it.

``NetworkReconciler.reconcile(name)`` is level-based: it reads the network,
the hosts (HostInterfaces whose Node exists), the previous CIDR plan and what
exists of the network's IPPools, NADs and driver objects, computes what should
exist (``multinic_operator.desired``), writes only the difference, and writes
the status.  It is called by the kopf handlers (network created, changed,
resumed) and by the batched host/namespace/Config events; reconciles are
serialised by one lock, so two never interleave and each plans from a host
list read after the previous one was written.

Nothing is deleted unless everything it depends on was read successfully: an
API error aborts the reconcile before any delete (the caller retries later).
"""

from __future__ import annotations

import collections
import dataclasses
import gc
import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Self, TypeVar

from multinic_core.errors import ConfigError, MultinicError, PlanError, PluginError
from multinic_core.events import EventRecorder, network_ref
from multinic_core.hooktypes import DependentObject
from multinic_core.incremental import IncrementalPlanner
from multinic_core.models import (
    API_VERSION,
    CIDR,
    POOL_RETIRED_LABEL,
    CIDRSpec,
    Config,
    HostInterface,
    HostInterfaceInfo,
    IPPool,
    MultiNicNetwork,
    ObjectMeta,
    load_resource,
)
from multinic_core.nad import NAD_API_VERSION, NAD_KIND, nad_object
from multinic_core.planner import (
    PlanResult,
    PoolExcludes,
    cidr_object,
    cidr_processed,
    compute_results,
    plugin_config,
    stranded_allocations,
)
from multinic_core.plugins import MainPlugin, PluginRegistry
from multinic_core.shards import (
    SHARD_ENTRIES,
    ShardMismatch,
    merge_plan,
    plan_generation,
    restore_lost,
    same_models,
    shard_labels,
    shard_name,
    shard_of,
    shard_owner,
    split_plan,
)
from multinic_operator.cache import (
    ClusterView,
    LiveView,
    PoolBodies,
    pool_blocks,
    pools_holding,
)
from multinic_operator.desired import (
    DEPENDENT_KINDS_ANNOTATION,
    DEPENDENT_LABEL,
    DesiredPools,
    RetiredPools,
    cidr_spec_patch,
    dependent_body,
    dependent_patch,
    kind_key,
    nad_patch,
    owned_by,
    pool_patch,
    recorded_kinds,
    retire_pools,
)
from multinic_operator.kube import ApiClusterReader, KubeApi, KubeApiError
from multinic_operator.status import (
    RouteSummary,
    StatusInputs,
    failed_status,
    now,
    route_summary,
    status_patch,
    success_status,
)

log = logging.getLogger(__name__)

NETWORK = (API_VERSION, "MultiNicNetwork")
STRANDED = "AllocationsStranded"
"""The condition, and the reason of the Warning Event while it is True."""
CONFLICT_RETRIES = 3
T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class HostSnapshot:
    """The hosts as read at one moment: HostInterfaces whose Node exists.

    A HostInterface whose Node is gone (NotFound) is not a host; a failed
    read raises instead, so a host never leaves a plan because of an API error.
    """

    hosts: list[HostInterface]
    nodes: frozenset[str]
    by_name: dict[str, HostInterface] = field(default_factory=dict)
    """The hosts by plan name (``hostName``, else the object's name)."""
    version: int | None = None
    """The view's ``hosts_version()`` read before the hosts: every host change
    after it is in ``hosts_changed_since(version)``; None: not tracked."""

    @property
    def unique(self) -> bool:
        """Whether no two HostInterfaces give the same host name."""
        return len(self.by_name) == len(self.hosts)


@dataclass
class ReconcileResult:
    """What one reconcile did (for logs, tests and the benchmark)."""

    network: str
    config_status: str = ""
    writes: int = 0
    plan_seconds: float = 0.0
    """Time the planner took (0 for a network without multi-nic-ipam)."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Where the reconcile's time went: ``plan``, ``cidr``, ``pools``, ``rest``, ``total``."""
    problems: list[str] = field(default_factory=list)


class NetworkReconciler:
    """Reconciles MultiNicNetworks against the API (plain object, no kopf)."""

    def __init__(
        self,
        api: KubeApi,
        registry: PluginRegistry | None = None,
        *,
        config_name: str = Config.DEFAULT_NAME,
        workers: int = 8,
        events: EventRecorder | None = None,
        view: ClusterView | None = None,
        shard_entries: int = SHARD_ENTRIES,
    ) -> None:
        self.api = api
        self.shard_entries = shard_entries
        """Host blocks per CIDR object (``multinic_core.shards``)."""
        self.view: ClusterView = view if view is not None else LiveView(api)
        """Where the cluster is read: the operator's list/watch caches, or the API itself."""
        self.registry = registry if registry is not None else PluginRegistry()
        self.events = events
        """Where Events on networks go (best-effort, in the recorder's thread); None: nowhere."""
        self.config_name = config_name
        self.reader = ApiClusterReader(api)
        # One reconcile at a time: each reads the hosts inside the lock, so a
        # plan is never computed from a host list older than the last one
        # written (which would drop a host that just joined).
        self._lock = threading.RLock()
        self._workers = workers
        self._seen_nodes: set[str] = set()
        """The Nodes of the last host read: a HostInterface is deleted only after its Node went."""
        self.plan_seconds = 0.0
        """Time the last reconcile's planner took."""
        self._heap = HeapSettler()
        self._seconds: dict[str, float] = {}
        """The last reconcile's other phases (``ReconcileResult.seconds``)."""
        self._planners: dict[str, tuple[IncrementalPlanner, dict[int, str], int | None]] = {}
        """Per network: its planner, the resourceVersions of the CIDR shards it last
        wrote and the view's ``hosts_version()`` of the hosts it was brought to."""
        self._cidr_written: dict[str, dict[int, _Written]] = {}
        """Per network, per shard: the CIDR as this reconciler wrote it."""
        self._pools_checked: dict[str, dict[str, tuple[str, HostInterfaceInfo]]] = {}
        """Per network, per IPPool found equal to its plan block: (its resourceVersion, the block)."""

    # ------------------------------------------------------------------ entry points

    def network_names(self) -> list[str]:
        self.view.ready()
        return self.view.network_names()

    def read_hosts(self) -> HostSnapshot:
        """HostInterfaces whose Node exists (both lists must be read successfully)."""
        self.view.ready()
        version = self.view.hosts_version()
        nodes = self.view.node_names()
        hosts: list[HostInterface] = []
        by_name: dict[str, HostInterface] = {}
        for host in self.view.host_interfaces():
            name = host.spec.host_name or host.name
            if name in nodes:
                hosts.append(host)
                by_name[name] = host
            elif not host.unmanaged and name in self._seen_nodes:
                # Its Node was there at an earlier read and is gone now. A Node
                # never seen may just not exist yet (an agent can write its
                # HostInterface first): that HostInterface stays.
                self._forget_host(host)
        self._seen_nodes = set(nodes)
        return HostSnapshot(hosts, nodes, by_name, version)

    def _forget_host(self, host: HostInterface) -> None:
        """Delete the HostInterface of a Node that is gone (its agent went with it).

        Only after the Node list was read successfully and the Node was in the
        previous one, so "gone" is proven; a user's ``multi-nic-unmanaged``
        HostInterface is never deleted.
        """
        self.view.deleting(API_VERSION, "HostInterface", host.name)
        try:
            # Only the version read with the Node list: a Node (and agent) that
            # came back meanwhile rewrote it, and then it stays.
            self.api.delete(
                API_VERSION,
                "HostInterface",
                host.name,
                resource_version=host.metadata.resource_version,
            )
        except KubeApiError as e:
            self.view.deleted(API_VERSION, "HostInterface", host.name, gone=False)
            log.warning("HostInterface %s of a deleted Node not deleted: %s", host.name, e)
            return
        self.view.deleted(API_VERSION, "HostInterface", host.name, gone=True)
        log.info("deleted HostInterface %s: its Node is gone", host.name)

    def reconcile(self, name: str, snapshot: HostSnapshot | None = None) -> ReconcileResult | None:
        """Bring network ``name`` up to date; None when it is gone or being deleted.

        ``snapshot`` must have been read while holding the reconcile lock
        (``reconcile_many`` does); by default the hosts are read now.
        """
        with self._lock:
            started = time.perf_counter()
            outcome = "error"
            try:
                body = self.api.get(*NETWORK, name)
                if body is None or body["metadata"].get("deletionTimestamp"):
                    outcome = ""
                    return None
                result = self._reconcile(body, snapshot)
                outcome = result.config_status.lower() or "error"
                return result
            finally:
                if outcome:
                    self.api.metrics.network_reconciled(outcome, time.perf_counter() - started)

    def reconcile_many(self, names: Iterable[str] | None = None) -> list[ReconcileResult]:
        """Reconcile several networks (all when ``names`` is None) with one host read.

        Every network is tried; the first error is raised after all were tried.
        """
        with self._lock:
            wanted = self.network_names() if names is None else sorted(set(names))
            if not wanted:
                return []
            snapshot = self.read_hosts()
            results: list[ReconcileResult] = []
            first_error: MultinicError | None = None
            for name in wanted:
                try:
                    result = self.reconcile(name, snapshot)
                except MultinicError as e:
                    log.warning("network %s: %s", name, e)
                    first_error = first_error or e
                    continue
                if result is not None:
                    results.append(result)
            self._heap.settle()
        if first_error is not None:
            raise first_error
        return results

    def cleanup(self, name: str) -> None:
        """Delete everything made for network ``name`` (before its finalizer goes)."""
        with self._lock:
            self._planners.pop(name, None)
            self._cidr_written.pop(name, None)
            self._pools_checked.pop(name, None)
            body = self.api.get(*NETWORK, name)
            if body is None:
                return
            network = _network_or_none(body)
            # Read from the API itself: nothing made for the network may be
            # missed because a cache has not seen it yet.
            live = LiveView(self.api)
            for pool in live.pools_of(name):
                self._delete(API_VERSION, "IPPool", pool)
            for nad in live.nads(name):
                if network is None or owned_by(nad, network):
                    meta = nad["metadata"]
                    self._delete(NAD_API_VERSION, NAD_KIND, meta["name"], meta["namespace"])
            for api_version, kind in recorded_kinds(body):
                for obj in self._existing_dependents(api_version, kind, name):
                    meta = obj["metadata"]
                    self.api.delete(api_version, kind, meta["name"], meta.get("namespace"))
            self._delete_plan(name, live.cidr_shards(name))
            log.info("network %s: cleaned up its CIDR, IPPools, NADs and driver objects", name)

    # ------------------------------------------------------------------ one network

    def _reconcile(self, body: dict[str, Any], snapshot: HostSnapshot | None) -> ReconcileResult:
        name = body["metadata"]["name"]
        writes_before = self.api.writes
        started = time.perf_counter()
        self._seconds = {}
        result = ReconcileResult(network=name)
        try:
            network = load_resource(MultiNicNetwork, body)
        except ConfigError as e:
            return self._fail(body, result, str(e), "InvalidSpec")
        owner = shard_owner(name)
        if owner is not None:
            return self._fail(
                body,
                result,
                f"the name {name} is reserved: it is the name of CIDR shard {owner[1]} of "
                f"network {owner[0]}'s plan, which this network's CIDR would share; "
                "give the network another name",
                "ReservedName",
            )
        try:
            driver = self.registry.main_plugin(network.spec.plugin.type)
        except PluginError as e:
            return self._fail(body, result, str(e), "DriverMissing")
        snapshot = snapshot if snapshot is not None else self.read_hosts()
        try:
            outcome = self._apply(body, network, driver, snapshot)
        except (ConfigError, PlanError, PluginError) as e:
            return self._fail(body, result, str(e), "InvalidConfig")
        except PlanTooLarge as e:
            # Retrying cannot help: the user has to act (or hosts leave).
            return self._fail(body, result, str(e), "PlanTooLarge")
        except CIDRNameTaken as e:
            return self._fail(body, result, str(e), "CIDRNameTaken")
        except KubeApiError as e:
            if e.transient:
                raise
            # Refused by the API (a schema, a kind not served...): the user has to act.
            return self._fail(body, result, str(e), "Refused")
        status = success_status(outcome).to_dict()
        self._write_status(body, status)
        self._report(network, status)
        result.config_status = "Success"
        result.problems = outcome.problems
        result.writes = self.api.writes - writes_before
        result.plan_seconds = self.plan_seconds
        total = time.perf_counter() - started
        result.seconds = {"plan": self.plan_seconds, **self._seconds}
        result.seconds["rest"] = max(0.0, total - sum(result.seconds.values()))
        result.seconds["total"] = total
        log.info(
            "network %s reconciled: %d host(s), planned in %.3fs, %d write(s) (%s)",
            name,
            len(snapshot.hosts),
            result.plan_seconds,
            result.writes,
            ", ".join(f"{k} {v:.3f}s" for k, v in result.seconds.items() if k != "plan"),
        )
        return result

    def _fail(
        self, body: dict[str, Any], result: ReconcileResult, message: str, reason: str
    ) -> ReconcileResult:
        log.warning("network %s: %s", result.network, message)
        generation = body["metadata"].get("generation")
        self._write_status(body, failed_status(body.get("status"), generation, message, reason))
        result.config_status = "Failed"
        result.problems = [message]
        return result

    def _report(self, network: MultiNicNetwork, status: Mapping[str, Any]) -> None:
        """Events for what a user must see in the status just computed.

        Posted on every reconcile that finds it (the recorder folds repeats
        into one Event with a count, as kubelet's does).
        """
        if self.events is None:
            return
        for condition in status.get("conditions") or []:
            if condition.get("type") == STRANDED and condition.get("status") == "True":
                self.events.warning(
                    network_ref(network.name, network.metadata.uid or ""),
                    STRANDED,
                    str(condition.get("message") or ""),
                )

    def _write_status(self, body: dict[str, Any], status: Mapping[str, Any]) -> None:
        patch = status_patch(body.get("status"), status, now())
        if patch is None:
            return
        self.api.patch(*NETWORK, body["metadata"]["name"], {"status": patch}, status=True)

    def _apply(
        self,
        body: dict[str, Any],
        network: MultiNicNetwork,
        driver: MainPlugin,
        snapshot: HostSnapshot,
    ) -> StatusInputs:
        self.plan_seconds = 0.0
        hosts = snapshot.hosts
        attachment = driver.network_attachment(network, self.reader)
        dependents = driver.dependent_objects(network, hosts, self.reader)
        config = self._config()
        inputs = StatusInputs(network=network)
        wanted = set(network.spec.master_nets)
        inputs.exist_daemon = sum(1 for h in hosts if not h.unmanaged)
        inputs.info_available = sum(
            1
            for h in hosts
            if any(
                n.net_address and (not wanted or n.net_address in wanted) for n in h.spec.interfaces
            )
        )
        cidr_generation: int | None = None
        planned: set[str] = set()
        if network.spec.multi_nic_ipam_config is not None:
            shards = self._read_shards(network.name)
            planning = time.perf_counter()
            planner = self._planner(network, snapshot, shards)
            plan = planner.result()
            self.plan_seconds = time.perf_counter() - planning
            stored = self._apply_cidr(network, plan, shards)
            versions = _shard_versions(stored)
            if all(versions.values()):
                self._planners[network.name] = (planner, versions, snapshot.version)
            cidr_generation = plan_generation(
                [stored[i]["metadata"].get("generation") for i in sorted(stored)]
            )
            self._seconds["cidr"] = time.perf_counter() - planning - self.plan_seconds
            pooling = time.perf_counter()
            agents = {h.spec.host_name or h.name for h in hosts if not h.unmanaged}
            retired = self._apply_pools(network.name, plan, cidr_generation, agents)
            # The bookkeeping; its API calls are "pool_writes".
            self._seconds["pools"] = time.perf_counter() - pooling - self._seconds["pool_writes"]
            inputs.stranded = retired.stranded
            inputs.retiring = retired.waiting
            inputs.compute_results = compute_results(plan.spec)
            inputs.cidr_processed = cidr_processed(plan.spec)
            inputs.problems.extend(str(p) for p in plan.problems if p.kind != "nic-missing")
            planned = {h.host_name for e in plan.spec.cidr for h in e.hosts}
        else:
            # Not (or no longer) a multi-nic-ipam network: no plan, no pools.
            self._planners.pop(network.name, None)
            self._cidr_written.pop(network.name, None)
            self._apply_pools(network.name, None)
            self._delete_plan(network.name, self.view.cidr_shards(network.name))
        inputs.problems.extend(self._apply_nads(network, attachment, config))
        self._apply_dependents(body, network, dependents)
        inputs.routes = (
            route_summary(network, planned, snapshot.by_name, cidr_generation)
            if network.spec.multi_nic_ipam_config is not None
            else RouteSummary("N/A")
        )
        return inputs

    def _config(self) -> Config | None:
        body = self.api.get(API_VERSION, "Config", self.config_name)
        if body is None:
            return None
        try:
            return load_resource(Config, body)
        except ConfigError as e:
            log.warning("ignoring invalid Config %s: %s", self.config_name, e)
            return None

    # ------------------------------------------------------------------ CIDR

    def _planner(
        self,
        network: MultiNicNetwork,
        snapshot: HostSnapshot,
        shards: Mapping[int, dict[str, Any]],
    ) -> IncrementalPlanner:
        """The network's planner, brought to ``hosts``.

        The last one continues (only the hosts that joined, left or changed
        are planned) when the CIDR shards are still the ones it wrote (same
        resourceVersions) and the network's plan inputs are the same; anything
        else (a restart, a spec change, someone else's write) plans from
        scratch from the CIDR shards as they are.  Both give the same plan.
        A shard deleted by hand is no reason to replan: the planner knows its
        hosts' blocks (planning without them would move those hosts), and
        the shard is written again.
        """
        config = plugin_config(network)
        cached = self._planners.pop(network.name, None)
        versions = _shard_versions(shards)
        if (
            cached is not None
            and all(versions.values())
            and versions.items() <= cached[1].items()
            and cached[0].config == config
        ):
            planner, _, planned_at = cached
            if planned_at is not None and snapshot.version is not None and snapshot.unique:
                # Only the hosts that changed since the planner's last read.
                changed = self.view.hosts_changed_since(planned_at)
                planner.apply(*_host_changes(planner, changed, snapshot.by_name))
            else:
                planner.sync(snapshot.hosts)
            return planner
        return IncrementalPlanner(
            config, snapshot.hosts, self._previous_plan(network.name, shards, snapshot)
        )

    def _previous_plan(
        self, network: str, shards: Mapping[int, dict[str, Any]], snapshot: HostSnapshot
    ) -> CIDRSpec | None:
        """The plan the CIDR shards hold, read whole from the API (the caches hold metadata).

        Shards that disagree (a rewrite cut short) give the plan of the CIDR
        itself (shard 0), or of the first readable shard.  The hosts of a
        shard that is missing (deleted by hand) are put back from their
        IPPools, so that they keep their blocks.
        """
        specs: list[CIDRSpec] = []
        for index in sorted(shards):
            body: dict[str, Any] | None = shards[index]
            if body is not None and "spec" not in body:
                body = self.api.get(API_VERSION, "CIDR", shard_name(network, index))
            if body is None:
                continue
            try:
                specs.append(load_resource(CIDR, body, f"CIDR {shard_name(network, index)}").spec)
            except ConfigError as e:
                log.warning("network %s: planning without an unreadable CIDR shard: %s", network, e)
        if not specs:
            return None
        try:
            previous = merge_plan(network, specs)
        except ShardMismatch as e:
            log.warning("network %s: %s; planning from the first shard", network, e)
            return specs[0]
        previous, restored = restore_lost(
            previous,
            shards,
            pool_blocks(self.view.pools_of(network)),
            _host_ip(snapshot),
            self.shard_entries,
        )
        if restored:
            log.warning(
                "network %s: %d host block(s) of missing CIDR shards taken back from their "
                "IPPools (the shards are written again)",
                network,
                restored,
            )
        return previous

    def _apply_cidr(
        self,
        network: MultiNicNetwork,
        plan: PlanResult,
        existing: Mapping[int, dict[str, Any]],
    ) -> dict[int, dict[str, Any]]:
        """Create or patch the CIDR shards; their metadata as stored (not their specs).

        The plan is split into shards of ``shard_entries`` host blocks
        (``multinic_core.shards``): a join or leave rewrites the shard of the
        host, not the whole plan, and no object outgrows what etcd stores.
        Shards that exist are kept (emptied) so their generations only add up.
        Each is encoded once (the same bytes give its digest and the patch),
        the API's answers are asked for as metadata only (``KubeApi``
        ``metadata_only``), and what this reconciler wrote (spec digest,
        status problems) is remembered with the resourceVersion it got.
        """
        name = network.name
        desired = cidr_object(network, plan)
        owners = desired.metadata.owner_references
        status = desired.status.to_dict() if desired.status is not None else {"problems": []}
        del desired
        parts = split_plan(plan.spec, self.shard_entries, at_least=1 + max(existing, default=0))
        written = self._cidr_written.setdefault(name, {})
        # The status (problems) is on shard 0, the CIDR named after the network.
        base = existing.get(0)
        problems: list[str] | None
        if base is None:
            problems = []  # a new object has no status
        elif "status" in base or "spec" in base:
            problems = list((base.get("status") or {}).get("problems") or [])
        else:
            mine = written.get(0)
            problems = (
                mine.problems if mine is not None and mine.version == _version_of(base) else None
            )
        stored: dict[int, dict[str, Any]] = {}
        for index, part in enumerate(parts):
            stored[index] = self._apply_shard(
                name, index, part, owners, existing=existing.get(index), written=written
            )
        if problems != status["problems"]:
            stored[0] = self._cidr_stored(
                self.api.patch(
                    API_VERSION, "CIDR", name, {"status": status}, status=True, metadata_only=True
                )
            )
        written[0] = dataclasses.replace(
            written[0], version=_version_of(stored[0]), problems=list(status["problems"])
        )
        return stored

    def _apply_shard(
        self,
        network: str,
        index: int,
        part: CIDRSpec,
        owners: list[Any],
        *,
        existing: dict[str, Any] | None,
        written: dict[int, _Written],
    ) -> dict[str, Any]:
        """Create or patch one CIDR shard; its metadata as stored.

        A shard this reconciler wrote, still at that version, whose part of
        the plan is made of the same models (the planner keeps those of the
        hosts that did not change) is left as it is without being encoded:
        a join at 10,000 hosts encodes its own shard, not all 20.
        """
        name = shard_name(network, index)
        mine = written.get(index)
        version = _version_of(existing) if existing is not None else ""
        ours = mine is not None and mine.version == version
        if existing is not None and ours and mine is not None and same_models(mine.part, part):
            written[index] = dataclasses.replace(mine, part=part)
            return _cidr_metadata(existing)
        # Encoded straight from the models (no dicts of the whole plan on the way).
        spec = part.model_dump_json(exclude_none=True).encode()
        digest = _digest(spec)
        size = len(spec)
        if existing is None:
            body = CIDR(
                metadata=ObjectMeta(
                    name=name,
                    labels=shard_labels(network, index),
                    owner_references=owners,
                ),
                spec=part,
            ).to_dict()
            try:
                stored = self._write_cidr(
                    name, part, size, lambda: self.api.create(body, metadata_only=True)
                )
            except KubeApiError as e:
                if not e.conflict:
                    raise
                existing = self._shard_found(network, index, e)
                ours = False
            else:
                log.info("network %s: created CIDR %s", network, name)
                written[index] = _Written(_version_of(stored), digest, [], part)
                return stored
            finally:
                del body
        patch: dict[str, Any] | bytes | None
        if "spec" in existing:
            patch = cidr_spec_patch(existing, part)
        elif ours and mine is not None and mine.digest == digest:
            patch = None  # the shard this reconciler wrote, unchanged
        else:
            guard = json.dumps({"resourceVersion": version}).encode()
            patch = b"".join((b'{"metadata":', guard, b',"spec":', spec, b"}"))
        del spec  # one copy of the shard's JSON at a time
        stored = _cidr_metadata(existing)
        if patch is not None:
            change = patch
            stored = self._write_cidr(
                name,
                part,
                size,
                lambda: self.api.patch(API_VERSION, "CIDR", name, change, metadata_only=True),
            )
            del patch, change
            log.info("network %s: updated CIDR %s", network, name)
        written[index] = _Written(
            _version_of(stored), digest, mine.problems if mine is not None else [], part
        )
        return stored

    def _shard_found(self, network: str, index: int, error: KubeApiError) -> dict[str, Any]:
        """The shard a create found existing (written meanwhile, not yet in the view).

        Raises ``CIDRNameTaken`` when the CIDR of that name is not this shard.
        """
        name = shard_name(network, index)
        found = self.api.get(API_VERSION, "CIDR", name)
        if found is not None and shard_of(found.get("metadata") or {}) == (network, index):
            return found
        labels = ", ".join(f"{k}={v}" for k, v in shard_labels(network, index).items())
        raise CIDRNameTaken(
            f"CIDR {name} exists and is not shard {index} of network {network}'s plan "
            f"(it lacks the labels {labels}): the hosts of that shard are not planned "
            "until it is deleted or renamed"
        ) from error

    def _write_cidr(
        self, name: str, part: CIDRSpec, size: int, write: Callable[[], dict[str, Any]]
    ) -> dict[str, Any]:
        """``write`` of CIDR ``name`` (``size`` bytes of spec); a refusal for its size
        raises ``PlanTooLarge`` (no retry can store it)."""
        try:
            return self._cidr_stored(write())
        except KubeApiError as e:
            too_large = PlanTooLarge.of(e, name, part, size, self.shard_entries)
            if too_large is None:
                raise
            raise too_large from e

    def _read_shards(self, network: str) -> dict[int, dict[str, Any]]:
        """The network's CIDR shards: as the view holds them, or whole from the API when needed.

        The caches keep a CIDR without its spec (at 10,000 hosts the plan is
        MBs): a shard this reconciler wrote is known by its version.  After a
        restart or someone else's write, the shard is read from the API.
        """
        shards = self.view.cidr_shards(network)
        written = self._cidr_written.get(network, {})
        for index, body in list(shards.items()):
            if "spec" in body:
                continue
            mine = written.get(index)
            if mine is not None and mine.version == _version_of(body):
                continue
            whole = self.api.get(API_VERSION, "CIDR", shard_name(network, index))
            if whole is None:
                del shards[index]
            else:
                shards[index] = whole
        return shards

    def _delete_plan(self, network: str, shards: Iterable[int]) -> None:
        """Delete the network's CIDR shards, the CIDR named after it last."""
        for shard in sorted(shards, reverse=True):
            self._delete(API_VERSION, "CIDR", shard_name(network, shard))

    def _cidr_stored(self, answer: dict[str, Any]) -> dict[str, Any]:
        """A metadata-only answer about a CIDR: the view sees it; the CIDR's metadata."""
        stored = _cidr_metadata(answer)
        self.view.observe(stored)
        return stored

    # ------------------------------------------------------------------ IPPools

    def _apply_pools(
        self,
        network_name: str,
        plan: PlanResult | None,
        generation: int | None = None,
        agent_hosts: Iterable[str] = (),
    ) -> RetiredPools:
        existing = self.view.pools_of(network_name)
        # Each desired body is built when it is compared or created, not all at once.
        desired = DesiredPools(
            network_name,
            plan.spec if plan is not None else None,
            PoolExcludes(plan.spec) if plan is not None else {},
        )
        planned: set[str] = set()
        if plan is not None:
            planned = {h.host_name for e in plan.spec.cidr for h in e.hosts}
        retired = retire_pools(existing, desired, generation, planned, agent_hosts)
        if plan is not None:
            # Only pools holding addresses can strand any (most hold none).
            holding = pools_holding(existing)
            if holding:
                retired.stranded = stranded_allocations(plan.spec, _valid_pools(holding))
        for name, extra in retired.excludes.items():
            desired.exclude(name, extra)
        deferred = set(retired.deferred)
        creates = [n for n in desired if n not in existing and n not in deferred]
        # A pool found equal to its block earlier (or made from it), unchanged
        # since (same resourceVersion) and whose block is the same object of the
        # same plan, is still equal: only the others are compared (a join
        # compares its own pools, not the 80,000 others).
        checked = self._pools_checked.setdefault(network_name, {})
        spent = 0.0  # in API calls ("pool_writes"), the rest is bookkeeping

        def writing(action: Callable[..., R], *args: Any) -> R:
            nonlocal spent
            started = time.perf_counter()
            try:
                return action(*args)
            finally:
                spent += time.perf_counter() - started

        def create(name: str) -> None:
            version = self._create_pool(desired[name])
            block = desired.block(name)
            if block is not None and version:
                checked[name] = (version, block)

        writing(self._parallel, create, creates)
        for name in desired:
            if name not in existing:
                continue
            version = _pool_version(existing, name)
            block = desired.block(name)
            seen = checked.get(name)
            if seen is not None and block is not None and seen[0] == version and seen[1] is block:
                continue
            stored = writing(self._update_pool, existing[name], desired[name])
            if block is not None:
                checked[name] = (stored or version, block)
        for name in [n for n in checked if n not in desired]:
            del checked[name]
        for name, value in retired.retire.items():
            writing(self._retire_pool, existing[name], value, retired)
        writing(self._parallel, lambda n: self._delete(API_VERSION, "IPPool", n), retired.delete)
        self._seconds["pool_writes"] = spent
        if creates or retired.delete or retired.retire:
            log.info(
                "network %s: %d IPPool(s) created, %d deleted, %d kept retired "
                "(%d stranded allocation(s)), %d new pool(s) wait for an agent's list",
                network_name,
                len(creates),
                len(retired.delete),
                len(retired.retire),
                len(retired.stranded),
                len(retired.deferred),
            )
        return retired

    def _retire_pool(self, pool: dict[str, Any], value: str, retired: RetiredPools) -> None:
        """Label a replaced pool retired and say on its status what it still holds."""
        name = pool["metadata"]["name"]
        labels = pool["metadata"].get("labels") or {}
        if labels.get(POOL_RETIRED_LABEL) != value:
            self._written(
                self.api.patch(
                    API_VERSION,
                    "IPPool",
                    name,
                    {"metadata": {"labels": {POOL_RETIRED_LABEL: value}}},
                )
            )
        held = len((pool.get("spec") or {}).get("allocations") or [])
        stranded = [s for s in retired.stranded if s.pool == name]
        status = {
            "phase": "Retired",
            "retiredByCIDRGeneration": value,
            "heldAllocations": held,
            "strandedAllocations": len(stranded),
            "message": (
                f"replaced by CIDR generation {value}: nothing new is allocated from it; "
                f"{held} allocation(s) stay until their pods are deleted"
                + (f" ({len(stranded)} outside the current plan)" if stranded else "")
                + (
                    "; waiting for the node's agent to acknowledge"
                    if name in retired.waiting
                    else ""
                )
            ),
        }
        if (pool.get("status") or {}) != status:
            self._written(
                self.api.patch(API_VERSION, "IPPool", name, {"status": status}, status=True)
            )

    def _create_pool(self, body: dict[str, Any]) -> str:
        """Create the pool (or adopt one of its name); the resourceVersion it then has."""
        try:
            return _version_of(self._written(self.api.create(body)))
        except KubeApiError as e:
            if not e.conflict:
                raise
            # A pool of that name exists without our label (e.g. the predecessor's): adopt it.
            return self._update_pool(None, body)

    def _update_pool(self, existing: dict[str, Any] | None, desired: dict[str, Any]) -> str:
        """Make the pool match ``desired``; the resourceVersion it then has ("" if not known)."""
        name = desired["metadata"]["name"]
        for _ in range(CONFLICT_RETRIES):
            if existing is None:
                existing = self.api.get(API_VERSION, "IPPool", name)
                if existing is None:
                    return _version_of(self._written(self.api.create(desired)))
            patch = pool_patch(existing, desired)
            if patch is None:
                return _version_of(existing)
            try:
                return _version_of(
                    self._written(self.api.patch(API_VERSION, "IPPool", name, patch))
                )
            except KubeApiError as e:
                if not e.conflict:
                    raise
                # The agent wrote allocations meanwhile: re-read, keep them, try again.
                existing = None
        raise KubeApiError("patch", f"IPPool {name}", 409, "kept conflicting with other writers")

    # ------------------------------------------------------------------ NADs

    def _existing_nads(self, name: str) -> list[dict[str, Any]]:
        return self.view.nads(name)

    def _target_namespaces(self, network: MultiNicNetwork) -> list[str]:
        if network.spec.namespaces:
            return sorted(set(network.spec.namespaces))
        return sorted(self.view.namespaces())

    def _apply_nads(
        self, network: MultiNicNetwork, attachment: Any, config: Config | None
    ) -> list[str]:
        """Create/update the NAD in every target namespace, delete it elsewhere."""
        problems: list[str] = []
        uid = network.metadata.uid or ""
        targets = self._target_namespaces(network)
        existing = {n["metadata"]["namespace"]: n for n in self._existing_nads(network.name)}
        missing_namespaces: list[str] = []
        for namespace in targets:
            desired = nad_object(network, attachment, namespace, config)
            have = existing.get(namespace)
            if have is None:
                try:
                    self._written(self.api.create(desired))
                except KubeApiError as e:
                    if e.status == 404:
                        missing_namespaces.append(namespace)
                        continue
                    if not e.conflict:
                        raise
                    # An unlabelled NAD of that name exists: adopt it.
                    have = self.api.get(NAD_API_VERSION, NAD_KIND, network.name, namespace)
                    if have is None:
                        raise
            if have is not None:
                patch = nad_patch(have, desired, uid)
                if patch is not None:
                    self._written(
                        self.api.patch(NAD_API_VERSION, NAD_KIND, network.name, patch, namespace)
                    )
        for namespace, nad in existing.items():
            if namespace not in targets and owned_by(nad, network):
                self._delete(NAD_API_VERSION, NAD_KIND, network.name, namespace)
                log.info("network %s: deleted NAD in namespace %s", network.name, namespace)
        if missing_namespaces:
            problems.append(
                f"namespace(s) {', '.join(missing_namespaces)} in spec.namespaces do not exist: "
                "create them (their NADs follow) or remove them from the list"
            )
        return problems

    # ------------------------------------------------------------------ driver objects

    def _existing_dependents(
        self, api_version: str, kind: str, network_name: str
    ) -> list[dict[str, Any]]:
        try:
            return self.api.list(
                api_version, kind, label_selector=f"{DEPENDENT_LABEL}={network_name}"
            )
        except KubeApiError as e:
            if e.verb == "discover" and e.status == 404:
                return []
            raise

    def _apply_dependents(
        self,
        body: dict[str, Any],
        network: MultiNicNetwork,
        dependents: Sequence[DependentObject],
    ) -> None:
        desired = {d.key: dependent_body(network, d) for d in dependents}
        kinds = sorted(set(recorded_kinds(body)) | {(k[0], k[1]) for k in desired})
        if kinds != sorted(set(recorded_kinds(body))):
            # Recorded before creating, so that a crash in between cannot
            # leave an object the cleanup does not know to look for.
            value = json.dumps([kind_key(*k) for k in kinds])
            self.api.patch(
                *NETWORK,
                network.name,
                {"metadata": {"annotations": {DEPENDENT_KINDS_ANNOTATION: value}}},
            )
        uid = network.metadata.uid or ""
        for api_version, kind in kinds:
            try:
                self.api.kind(api_version, kind)
            except KubeApiError as e:
                if e.verb == "discover" and (api_version, kind) in {k[:2] for k in desired}:
                    raise ConfigError(
                        f"MultiNicNetwork {network.name}: driver {network.spec.plugin.type!r} "
                        f"needs {kind} ({api_version}), which this cluster does not serve: "
                        "install the operator that provides it"
                    ) from e
                if e.verb != "discover":
                    raise
            existing = {
                (api_version, kind, o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
                for o in self._existing_dependents(api_version, kind, network.name)
            }
            for key, want in desired.items():
                if key[:2] != (api_version, kind):
                    continue
                have = existing.get(key)
                if have is None:
                    have = self.api.get(api_version, kind, key[3], key[2] or None)
                if have is None:
                    self.api.create(want)
                    log.info("network %s: created %s %s", network.name, kind, key[3])
                    continue
                patch = dependent_patch(have, want, uid)
                if patch is not None:
                    self.api.patch(api_version, kind, key[3], patch, key[2] or None)
            for key, _obj in existing.items():
                if key not in desired:
                    self.api.delete(api_version, kind, key[3], key[2] or None)
                    log.info("network %s: deleted %s %s", network.name, kind, key[3])

    # ------------------------------------------------------------------ shared

    def _written(self, stored: dict[str, Any]) -> dict[str, Any]:
        """The answer to a create or patch: the view sees it before the next read."""
        self.view.observe(stored)
        return stored

    def _delete(self, api_version: str, kind: str, name: str, namespace: str | None = None) -> bool:
        """Delete an object the view holds; readers stop seeing it at once."""
        self.view.deleting(api_version, kind, name, namespace)
        try:
            gone = self.api.delete(api_version, kind, name, namespace)
        except KubeApiError:
            self.view.deleted(api_version, kind, name, namespace, gone=False)
            raise
        self.view.deleted(api_version, kind, name, namespace, gone=True)
        return gone

    def _parallel(self, action: Callable[[T], Any], items: Sequence[T]) -> None:
        """Run ``action`` on every item; independent writes go out concurrently."""
        if len(items) <= 1:
            for item in items:
                action(item)
            return
        # At most a few requests queued per worker: 80,000 futures at once
        # would be tens of MB for nothing.
        window = self._workers * 4
        with ThreadPoolExecutor(max_workers=self._workers) as pool:
            pending: collections.deque[Future[Any]] = collections.deque()
            for item in items:
                if len(pending) >= window:
                    pending.popleft().result()
                pending.append(pool.submit(action, item))
            while pending:
                pending.popleft().result()


class CIDRNameTaken(MultinicError):
    """A CIDR shard's name is held by an object that is not that shard."""


class PlanTooLarge(MultinicError):
    """The API server refused the CIDR for its size: no retry can store it."""

    SIGNS = ("request is too large", "larger than max", "Request entity too large")
    """How kube-apiserver (and etcd behind it) say so: 500 from etcd's request
    limit or from kube-apiserver's 2 MiB to etcd, 413 over its 3 MiB body limit."""

    @classmethod
    def of(
        cls, error: KubeApiError, name: str, part: CIDRSpec, size: int, shard_entries: int
    ) -> Self | None:
        """``error`` as a PlanTooLarge when it is one (else None)."""
        if error.status not in (413, 500) or not any(s in error.detail for s in cls.SIGNS):
            return None
        hosts = len({h.host_name for e in part.cidr for h in e.hosts})
        return cls(
            f"CIDR {name}: {hosts} host(s) in {size / 1048576:.1f} MiB, more than this "
            f"cluster stores in one object ({error.detail}). etcd takes 1.5 MiB per request "
            "by default (--max-request-bytes); the operator splits a plan into CIDR objects "
            f"of {shard_entries} host blocks each (--cidr-shard-entries): lower it."
        )


class HeapSettler:
    """Keeps Python's cyclic garbage collector off the operator's caches.

    At 10,000 hosts x 8 NICs the caches and the plan are millions of
    long-lived objects, and every full collection walks all of them: the
    reconcile of one joining host spent most of its time there (building the
    80,000 desired pools' index: 237 ms with collections, 21 ms without).
    After each batch of reconciles the survivors are collected once and then
    frozen (``gc.freeze``): later collections skip them.  Objects freed by
    reference counting (nearly all) are freed as before; garbage cycles
    among frozen objects would wait, so every ``UNFREEZE_EVERY`` batches
    everything is unfrozen and collected whole.
    """

    UNFREEZE_EVERY = 50

    def __init__(self) -> None:
        self.batches = 0

    def settle(self) -> None:
        self.batches += 1
        if self.batches % self.UNFREEZE_EVERY == 0:
            gc.unfreeze()
        gc.collect()
        gc.freeze()


@dataclass(frozen=True)
class _Written:
    """A CIDR shard as this reconciler wrote it."""

    version: str
    """Its resourceVersion then."""
    digest: str
    """Of its spec's JSON."""
    problems: list[str]
    """Its status problems (shard 0's)."""
    part: CIDRSpec
    """The plan's part it holds (``same_models`` tells an unchanged one)."""


def _host_ip(snapshot: HostSnapshot) -> Callable[[str, str], str | None]:
    """The address of a host's NIC now (None: no such host or NIC)."""

    def find(host: str, interface: str) -> str | None:
        found = snapshot.by_name.get(host)
        for nic in found.spec.interfaces if found is not None else ():
            if nic.interface_name == interface:
                return nic.host_ip or None
        return None

    return find


def _shard_versions(shards: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
    """The resourceVersions of a plan's CIDR shards by shard index."""
    return {index: _version_of(body) for index, body in shards.items()}


def _cidr_metadata(body: Mapping[str, Any]) -> dict[str, Any]:
    """A CIDR (or the PartialObjectMetadata of one) as its apiVersion, kind and metadata."""
    return {"apiVersion": API_VERSION, "kind": "CIDR", "metadata": body["metadata"]}


def _version_of(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _pool_version(pools: Mapping[str, dict[str, Any]], name: str) -> str:
    if isinstance(pools, PoolBodies):
        return pools.version(name)
    return _version_of(pools[name])


def _host_changes(
    planner: IncrementalPlanner, changed: Iterable[str], hosts: Mapping[str, HostInterface]
) -> tuple[list[HostInterface], list[str], list[HostInterface]]:
    """(joined, left, updated) of the hosts named in ``changed``, for ``planner.apply``."""
    joined: list[HostInterface] = []
    left: list[str] = []
    updated: list[HostInterface] = []
    for name in sorted(set(changed)):
        host = hosts.get(name)
        if host is None:
            if name in planner:
                left.append(name)
        elif name in planner:
            updated.append(host)
        else:
            joined.append(host)
    return joined, left, updated


def _digest(encoded: bytes) -> str:
    return hashlib.blake2b(encoded, digest_size=16).hexdigest()


def _valid_pools(bodies: Iterable[dict[str, Any]]) -> list[IPPool]:
    pools = []
    for body in bodies:
        try:
            pools.append(load_resource(IPPool, body))
        except ConfigError as e:
            log.warning("ignoring an invalid IPPool: %s", e)
    return pools


def _network_or_none(body: Mapping[str, Any]) -> MultiNicNetwork | None:
    try:
        return load_resource(MultiNicNetwork, body)
    except ConfigError:
        return None
