"""What the agent's ``/healthz`` and ``/readyz`` say (docs/metrics.md).

Ready means the node can start pods and its routes are right:

1. the IPAM journal was replayed and the addresses that attachment records
   and IPPools hold were reserved (before that an ADD could hand one out);
2. the CNI socket is served;
3. with a cluster: the watches the CNI server reads (this node's IPPools,
   the MultiNicNetworks, DeviceClasses, this node's HostInterface) each
   listed once, and the route sync listed the CIDR plans and reconciled the
   host routes with them once.

Once met, (1) and (3) stay met: the agent answers from its caches while the
API is away, so an API outage does not make a node unready.  A route that
fails to program is reported in the HostInterface status and
``multinic_route_sync_failures_total``, not here.

Alive means the agent's event loop (CNI requests, the cluster tasks) runs a
callback within a few seconds; the port itself is served from a thread of
its own from the start of the process, so a long journal replay answers
``/readyz`` with 503 and ``/healthz`` with 200.
"""

from __future__ import annotations

import asyncio

from multinic_agent.agent import AgentSocket
from multinic_agent.cluster_sync import ClusterSync
from multinic_agent.metrics import AgentMetrics
from multinic_core.health import HealthServer, HealthThread, loop_answers, parse_bind_address

_WATCHED = {
    "ippools": "this node's IPPools",
    "multinicnetworks": "the MultiNicNetworks",
    "deviceclasses": "the DeviceClasses",
    "hostinterfaces": "this node's HostInterface",
}


class AgentHealth:
    """The agent's readiness conditions, set by the agent as it starts."""

    def __init__(self, cluster: ClusterSync | None = None) -> None:
        self.cluster = cluster
        self.journal_ready = False
        self.socket: AgentSocket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None

    def listening(self, socket: AgentSocket) -> None:
        """Called on the agent's loop once the CNI socket is served."""
        self.socket = socket
        self.loop = asyncio.get_running_loop()

    async def readiness(self) -> list[str]:
        problems = []
        if not self.journal_ready:
            problems.append("replaying the IPAM journal and reserving recorded addresses")
        if self.socket is None or not self.socket.serving:
            problems.append("the CNI socket is not served yet")
        if self.cluster is not None:
            for watch in self.cluster.node_state.watches:
                if not watch.synced.is_set():
                    what = _WATCHED.get(watch.plural, watch.plural)
                    problems.append(f"{what} not listed from the Kubernetes API yet")
            routes = self.cluster.routes
            if not routes.cidrs.synced.is_set():
                problems.append("the CIDR plans not listed from the Kubernetes API yet")
            elif routes.reconciled == 0:
                problems.append("host routes not reconciled with the CIDR plans yet")
        return problems

    async def liveness(self) -> list[str]:
        return await loop_answers(self.loop, "the agent's event loop")


def start_health_port(
    address: str, health: AgentHealth, metrics: AgentMetrics
) -> HealthThread | None:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``address`` ("" or off: not at all).

    Raises ConfigError for an address that is malformed or cannot be had.
    """
    bind = parse_bind_address(address)
    if bind is None:
        return None
    server = HealthServer(
        bind, metrics=metrics.render, readiness=health.readiness, liveness=health.liveness
    )
    return HealthThread(server).start()
