"""What the operator's ``/healthz`` and ``/readyz`` say (docs/metrics.md).

A replica that acts (it holds the Lease, or runs ``--standalone``) is ready
when it is watching and caught up:

1. kopf's startup handlers are done (the default Config exists) and its
   watches started (kopf's ready flag);
2. a re-plan of every network succeeded since it started acting: it needs
   the networks, HostInterfaces, Nodes, previous plans and pools read from
   the API, so it fails (and is retried) until the reads and watches answer.

Once met they stay met; a later failed batch is retried and shows in
``multinic_reconcile_batch_duration_seconds{result="error"}``.

A replica that waits for the Lease is ready while its election rounds reach
the API: it is a working standby.  (Were it unready, a rolling update of the
two-replica Deployment would wait forever for a new pod that cannot lead
while the old one holds the Lease.)  Its ``/readyz`` body says ``standby``.

Alive means kopf's event loop, once it runs, runs a callback within a few
seconds.  The port is served from a thread of its own from the start of the
process, before the Lease is won.
"""

from __future__ import annotations

import asyncio
import threading

from multinic_core.health import HealthServer, HealthThread, loop_answers, parse_bind_address
from multinic_operator.batching import ReconcileBatcher
from multinic_operator.leader import LEASE_NAME, LeaderElection
from multinic_operator.metrics import OperatorMetrics


class OperatorHealth:
    """The operator's readiness and liveness, updated as it starts and acts."""

    def __init__(self, batcher: ReconcileBatcher, metrics: OperatorMetrics) -> None:
        self.batcher = batcher
        self.metrics = metrics
        self.election: LeaderElection | None = None
        """Set while the replica waits for the Lease."""
        self.acting = False
        self.kopf_ready = threading.Event()
        """kopf's ready flag: set once its startup handlers are done."""
        self.loop: asyncio.AbstractEventLoop | None = None

    def waiting_for_lease(self, election: LeaderElection) -> None:
        self.election = election
        self.metrics.leader.set(0)

    def acts(self) -> None:
        """This replica leads (or runs standalone) from now on."""
        self.election = None
        self.acting = True
        self.metrics.leader.set(1)

    def kopf_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    async def readiness(self) -> list[str]:
        if not self.acting:
            if self.election is None:
                return ["starting"]
            if self.election.won:
                return ["this replica won the Lease and is starting to act"]
            error = self.election.round_error
            if error is None:
                return ["the first leader election round has not answered yet"]
            if error:
                return [f"cannot take part in the leader election: {error}"]
            return []
        problems = []
        if not self.kopf_ready.is_set():
            problems.append(
                "kopf has not finished its startup handlers (the default Config) nor started "
                "its watches yet"
            )
        if self.batcher.full_batches == 0:
            problem = "no re-plan of every network has succeeded yet"
            if self.batcher.last_error:
                problem += f" (the last one failed, retrying: {self.batcher.last_error})"
            problems.append(problem)
        return problems

    def ready_text(self) -> str:
        if not self.acting:
            return f"ok: standby, waiting for the Lease {LEASE_NAME} (another replica acts)"
        return "ok: acting, watching, every network re-planned"

    async def liveness(self) -> list[str]:
        return await loop_answers(self.loop, "kopf's event loop")


def start_health_port(address: str, health: OperatorHealth) -> HealthThread | None:
    """Serve ``/healthz``, ``/readyz`` and ``/metrics`` on ``address`` ("" or off: not at all).

    Raises ConfigError for an address that is malformed or cannot be had.
    """
    bind = parse_bind_address(address)
    if bind is None:
        return None
    server = HealthServer(
        bind,
        metrics=health.metrics.render,
        readiness=health.readiness,
        liveness=health.liveness,
        ready_text=health.ready_text,
    )
    return HealthThread(server).start()
