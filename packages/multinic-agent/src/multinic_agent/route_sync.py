"""L3 host routes from the CIDR plans (SPEC section 7), and their result in the API.

Watches every ``CIDR`` object.  A network's plan is its CIDR, or the CIDR
and its shards (``multinic_core.shards``: a large plan is split by host
index), merged.  For each plan whose ``spec.config.vlanMode``
is l3 or l3s, this node's routes (:func:`multinic_core.routes.host_routes`)
are reconciled into the network's own table with :class:`HostRouteTables`
(diff, never flush).  Tables of networks whose CIDR is gone (or no longer
l3) are removed with their rule.  Deletions follow only from what a
successful list or a watch event says: an API error changes nothing.

The outcome per network goes to this node's ``HostInterface``
``status.routes`` (status subresource, guarded by resourceVersion), written
only when it changed.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException
from pyroute2.netlink.exceptions import NetlinkError

from multinic_agent.host_routes import HostRouteTables, RouteSync, RouteTableError
from multinic_agent.host_sync import now_iso
from multinic_agent.kube_api import (
    REQUEST_TIMEOUT_S,
    ResourceWatch,
    call_with_retries,
    describe_error,
)
from multinic_agent.metrics import AgentMetrics
from multinic_agent.pod_netns import in_netns
from multinic_core.errors import ConfigError, MultinicError
from multinic_core.models import (
    CIDR,
    GROUP,
    L3_VLAN_MODES,
    VERSION,
    CIDRSpec,
    HostInterface,
    RouteSyncStatus,
    load_resource,
)
from multinic_core.routes import host_routes
from multinic_core.shards import ShardMismatch, merge_plan, plan_generation, shard_of

log = logging.getLogger(__name__)

STATUS_RETRY_S = 2.0
"""How soon to try again when the status could not be written (e.g. no HostInterface yet)."""


class CidrRouteReconciler:
    """Keeps this node's multinic routing tables equal to the CIDR plans."""

    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        state_dir: Path,
        *,
        netns: str | None = None,
        resync_interval: float = 60.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.objects_api: Any = client.CustomObjectsApi(api)
        self.node = node
        self.metrics = metrics if metrics is not None else AgentMetrics()
        self.netns = netns
        self.resync_interval = resync_interval
        self.cidrs = ResourceWatch(api, CIDR.plural)
        # netns=None: the reconciler enters the namespace itself (setns in a
        # worker thread) instead of pyroute2 forking a helper per call.
        self.tables = HostRouteTables(state_dir)
        self.changed = asyncio.Event()
        self.passes = 0
        self.reconciled = 0
        """Passes that reconciled the tables with the listed CIDRs (readiness: routes synced)."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._models: dict[tuple[str, str], CIDR] = {}
        """Parsed CIDR objects by (name, resourceVersion): a join re-parses one shard."""
        self.cidrs.add_listener(self._wake)

    def _wake(self) -> None:
        """Called in the watch thread on every CIDR change."""
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):  # the loop is closing
                self._loop.call_soon_threadsafe(self.changed.set)

    # ------------------------------------------------------------------ blocking

    def reconcile_once(self, *, verify: bool = True) -> dict[str, RouteSyncStatus]:
        """Reconcile every table with the cached CIDRs; the result per l3 network.

        ``verify``: each table is read from the kernel and repaired; without
        it, a table is diffed against what the last pass left
        (``HostRouteTables.reconcile``): a plan change costs its routes only.
        """
        cidrs = self.cidrs.items()

        def work() -> dict[str, RouteSyncStatus]:
            return self._reconcile(cidrs, verify=verify)

        return in_netns(self.netns, work) if self.netns else work()

    def _parsed(self, obj: dict[str, Any]) -> CIDR:
        """``obj`` as a model; a shard whose version was parsed before is not parsed again."""
        meta = obj["metadata"]
        key = (str(meta["name"]), str(meta.get("resourceVersion") or ""))
        cidr = self._models.get(key)
        if cidr is None or not key[1]:
            cidr = load_resource(CIDR, obj)
            self._models[key] = cidr
        return cidr

    def _plans(self, objects: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
        """The CIDR objects by network and shard index, in index order; networks
        without shard 0 (the CIDR named after the network) are left out."""
        shards: dict[str, dict[int, dict[str, Any]]] = {}
        for obj in objects:
            network, index = shard_of(obj["metadata"])
            shards.setdefault(network, {})[index] = obj
        return {
            network: {i: parts[i] for i in sorted(parts)}
            for network, parts in shards.items()
            if 0 in parts
        }

    def _reconcile(
        self, objects: list[dict[str, Any]], *, verify: bool = True
    ) -> dict[str, RouteSyncStatus]:
        results: dict[str, RouteSyncStatus] = {}
        routed: set[str] = set()
        plans = self._plans(objects)
        live = {
            (str(o["metadata"]["name"]), str(o["metadata"].get("resourceVersion") or ""))
            for parts in plans.values()
            for o in parts.values()
        }
        for key in self._models.keys() - live:
            del self._models[key]
        for name, parts in plans.items():
            generation = plan_generation([o["metadata"].get("generation") for o in parts.values()])
            try:
                cidrs = [self._parsed(o) for o in parts.values()]
                spec = merge_plan(name, [c.spec for c in cidrs], list(parts))
            except ShardMismatch as e:
                # Shards being rewritten: keep the routes until they agree again.
                routed.add(name)
                results[name] = _status(name, "WaitForRoutes", str(e), generation)
                continue
            except ConfigError as e:
                # Unreadable plan: keep whatever routes the last good one gave.
                routed.add(name)
                results[name] = _status(name, "Failed", str(e), generation)
                self.metrics.route_failed(name)
                continue
            if spec.config.vlan_mode not in L3_VLAN_MODES:
                continue
            routed.add(name)
            results[name] = self._reconcile_network(name, spec, generation, verify=verify)
        for network in self.tables.networks():
            if network in routed:
                continue
            try:
                removed = self._observed(self.tables.remove(network))
            except (RouteTableError, NetlinkError, OSError) as e:
                log.error("routes of network %s (CIDR gone) not removed: %s", network, e)
                self.metrics.route_failed(network)
                continue
            log.info(
                "routes of network %s removed (its CIDR is gone or not l3): %d routes and the rule",
                network,
                len(removed.removed),
            )
        return results

    def _reconcile_network(
        self, name: str, spec: CIDRSpec, generation: int | None, *, verify: bool = True
    ) -> RouteSyncStatus:
        in_plan = any(h.host_name == self.node for e in spec.cidr for h in e.hosts)
        if not in_plan:
            if name in self.tables.networks():
                try:
                    removed = self._observed(self.tables.remove(name))
                except (RouteTableError, NetlinkError, OSError) as e:
                    self.metrics.route_failed(name)
                    return _status(name, "Failed", f"stale routes not removed: {e}", generation)
                log.info(
                    "routes of network %s removed: node %s left its plan (%d routes)",
                    name,
                    self.node,
                    len(removed.removed),
                )
            return _status(
                name, "WaitForRoutes", f"node {self.node} is not in the plan yet", generation
            )
        routes = host_routes(spec, self.node)
        try:
            sync = self._observed(
                self.tables.reconcile(name, spec.config.subnet, routes, verify=verify)
            )
        except (RouteTableError, ValueError, NetlinkError, OSError) as e:
            log.error("routes of network %s: %s", name, e)
            self.metrics.route_failed(name)
            return _status(name, "Failed", str(e), generation)
        if not sync.ok:
            return _status(name, "Failed", "; ".join(sync.errors), generation)
        # A stable message: the status is rewritten only when the routes change.
        return _status(name, "Success", f"{len(routes)} routes in table {sync.table}", generation)

    def _observed(self, sync: RouteSync) -> RouteSync:
        self.metrics.route_sync(sync)
        return sync

    def write_status(self, results: dict[str, RouteSyncStatus]) -> bool:
        """Put ``results`` into the HostInterface's ``status.routes``; False if it does not exist."""
        for _ in range(5):
            found = call_with_retries(self._get_host_interface, f"get HostInterface {self.node}")
            if found is None:
                return False
            current = load_resource(HostInterface, found)
            if current.unmanaged:
                return True
            before = current.status.routes if current.status else []
            previous = {r.network: r for r in before}
            routes = []
            for name in sorted(results):
                result = results[name]
                old = previous.get(name)
                if old is not None and (old.status, old.message, old.cidr_generation) == (
                    result.status,
                    result.message,
                    result.cidr_generation,
                ):
                    routes.append(old)
                else:
                    routes.append(result.model_copy(update={"last_sync_time": now_iso()}))
            if [r.to_dict() for r in routes] == [r.to_dict() for r in before]:
                return True
            patch = {
                "metadata": {"resourceVersion": found["metadata"]["resourceVersion"]},
                "status": {"routes": [r.to_dict() for r in routes]},
            }
            try:
                call_with_retries(
                    lambda body=patch: self.objects_api.patch_cluster_custom_object_status(  # type: ignore[misc]
                        GROUP,
                        VERSION,
                        HostInterface.plural,
                        self.node,
                        body,
                        _request_timeout=REQUEST_TIMEOUT_S,
                    ),
                    f"status of HostInterface {self.node}",
                    retry_conflicts=False,
                )
            except ApiException as e:
                if e.status == 409:
                    continue
                raise
            log.info(
                "HostInterface %s status.routes: %s",
                self.node,
                ", ".join(f"{r.network} {r.status}" for r in routes) or "none",
            )
            return True
        raise MultinicError(f"HostInterface {self.node} status kept changing under the agent")

    def _get_host_interface(self) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.objects_api.get_cluster_custom_object(
                GROUP, VERSION, HostInterface.plural, self.node, _request_timeout=REQUEST_TIMEOUT_S
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return found

    # ------------------------------------------------------------------ async

    async def run(self) -> None:
        """Reconcile on every CIDR change and every ``resync_interval`` s; until cancelled.

        The first pass and one every ``resync_interval`` s read the tables
        from the kernel (a route someone removed is put back); the passes a
        CIDR change triggers in between diff against the last pass.
        """
        self._loop = asyncio.get_running_loop()
        self.cidrs.start()
        try:
            while not await asyncio.to_thread(self.cidrs.wait_synced, 1.0):
                pass
            verified = -math.inf
            while True:
                woken = self.changed.is_set()
                self.changed.clear()
                wait = self.resync_interval
                complete = False
                verify = not woken or time.monotonic() - verified >= self.resync_interval
                try:
                    if verify:
                        verified = time.monotonic()
                    results = await asyncio.to_thread(
                        functools.partial(self.reconcile_once, verify=verify)
                    )
                    self.reconciled += 1
                    complete = await asyncio.to_thread(self.write_status, results)
                    if not complete:
                        log.debug(
                            "HostInterface %s does not exist yet: route status later", self.node
                        )
                        wait = STATUS_RETRY_S
                except (MultinicError, ApiException, OSError) as e:
                    log.warning(
                        "route sync of node %s incomplete (%s); trying again",
                        self.node,
                        describe_error(e) if isinstance(e, ApiException) else e,
                    )
                    wait = STATUS_RETRY_S
                self.metrics.route_pass(complete)
                self.passes += 1
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wait)
                await asyncio.sleep(0.1)
        finally:
            await asyncio.to_thread(self.cidrs.stop)


def _status(network: str, status: str, message: str, generation: Any) -> RouteSyncStatus:
    return RouteSyncStatus.model_validate(
        {
            "network": network,
            "status": status,
            "message": message,
            "cidrGeneration": int(generation) if generation is not None else None,
        }
    )
