"""The agent's Kubernetes side, run next to the CNI server in the same event loop.

* :class:`~multinic_agent.kube_state.KubeNodeState`: the watches the CNI
  server reads its pools, networks, device classes and NICs from;
* :class:`~multinic_agent.host_sync.HostInterfaceSync`: discovery -> HostInterface;
* :class:`~multinic_agent.route_sync.CidrRouteReconciler`: CIDR -> host routes;
* :class:`~multinic_agent.pool_mirror.IPPoolMirror`: journal -> IPPool allocations;
* :class:`~multinic_agent.pool_mirror.LeakCollector`: releases attachments of gone pods.

Each runs as its own task; one that fails unexpectedly is logged and started
again after a pause, so that the others (and the CNI socket) keep working.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from kubernetes import client

from multinic_agent.cni_server import CniServer
from multinic_agent.host_sync import HostInterfaceSync
from multinic_agent.kube_state import KubeNodeState
from multinic_agent.metrics import AgentMetrics
from multinic_agent.pool_mirror import IPPoolMirror, LeakCollector
from multinic_agent.route_sync import CidrRouteReconciler

log = logging.getLogger(__name__)

RESTART_DELAY_S = 5.0


class ClusterSync:
    """Builds and runs the agent's API-facing tasks for one node."""

    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        state_dir: Path,
        *,
        netns: str | None = None,
        resync_interval: float = 60.0,
        mirror_interval: float = 1.0,
        leak_interval: float = 300.0,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.api = api
        self.node = node
        self.mirror_interval = mirror_interval
        self.leak_interval = leak_interval
        self.node_state = KubeNodeState(api, node)
        self.host = HostInterfaceSync(api, node, netns=netns, resync_interval=resync_interval)
        self.routes = CidrRouteReconciler(
            api, node, state_dir, netns=netns, resync_interval=resync_interval, metrics=metrics
        )
        self.node_state.local_nics = lambda: self.host.discovered

    async def run(self, server: CniServer) -> None:
        """Run every task until cancelled."""
        mirror = IPPoolMirror(
            self.api,
            server.journal,
            self.node_state.pools,
            interval=self.mirror_interval,
            adopt=server.adopt_foreign,
        )
        leaks = LeakCollector(self.api, server, interval=self.leak_interval)
        self.node_state.start()
        tasks = [
            asyncio.create_task(_supervised("HostInterface sync", self.host.run)),
            asyncio.create_task(_supervised("route sync", self.routes.run)),
            asyncio.create_task(_supervised("IPPool mirror", mirror.run)),
            asyncio.create_task(_supervised("leak collection", leaks.run)),
        ]
        log.info("node %s: watching the Kubernetes API", self.node)
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await asyncio.to_thread(self.node_state.stop)


async def _supervised(name: str, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
    while True:
        try:
            await work()
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("%s failed; starting it again in %.0f s", name, RESTART_DELAY_S)
            await asyncio.sleep(RESTART_DELAY_S)
