"""The agent's Prometheus metrics (docs/metrics.md lists them all).

One :class:`AgentMetrics` per agent process, each with its own
``CollectorRegistry`` (not prometheus_client's global one), so several agents
in one test process never share a counter.

* CNI requests: a latency histogram by command and result, errors by CNI code
  (:class:`MeasuredCniServer` times :meth:`CniServer.handle`);
* IPPools of this node: addresses the pool can hand out, used (the journal's
  allocations) and stranded (what the operator wrote on a retired pool's
  status), read when scraped;
* host routes: routes added, replaced and removed, and failed syncs;
* the Kubernetes API: requests by verb and answers other than 2xx by verb and
  HTTP code (0: no answer), from every call of the agent's client.

Label values are bounded: the CNI commands, results, CNI codes up to 999,
the API verbs and HTTP codes, and names of this node's pools and networks.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from multinic_agent.cni_server import COMMANDS, CniServer
from multinic_agent.host_routes import RouteSync
from multinic_agent.kube_api import ResourceWatch
from multinic_agent.node_state import NodeState
from multinic_core.errors import MultinicError
from multinic_core.health import PROMETHEUS_TEXT
from multinic_ipam.journal import AllocationJournal, PoolBlock

log = logging.getLogger(__name__)

CNI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
"""Seconds; ADD runs delegates in parallel (tens of ms) and times them out at 120 s."""
RESULTS = ("ok", "error")
ROUTE_CHANGES = ("added", "replaced", "removed")
_METHOD_VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch"}


def cni_command(env: Mapping[str, str]) -> str:
    """The command label of a request: one of COMMANDS, else ``invalid``."""
    command = env.get("CNI_COMMAND", "")
    return command if command in COMMANDS else "invalid"


def cni_error_code(stdout: str) -> str:
    """The ``code`` of a CNI error reply, as a label (``other`` past 999 or unreadable)."""
    try:
        code = json.loads(stdout).get("code")
    except (ValueError, AttributeError):
        return "other"
    return str(code) if isinstance(code, int) and 0 < code < 1000 else "other"


def api_verb(method: str, url: str) -> str:
    """The Kubernetes verb of a request (get, list, watch, create, update, patch, delete...)."""
    method = method.upper()
    parts = urlsplit(url)
    if method in _METHOD_VERBS:
        return _METHOD_VERBS[method]
    if method not in ("GET", "DELETE"):
        return "other"
    collection = _is_collection(parts.path)
    if method == "DELETE":
        return "deletecollection" if collection else "delete"
    if parse_qs(parts.query).get("watch", [""])[0].lower() in ("true", "1"):
        return "watch"
    return "list" if collection else "get"


def _is_collection(path: str) -> bool:
    """Whether ``path`` names a collection (``.../pods``), not an object (``.../pods/p``)."""
    segments = [s for s in path.split("/") if s]
    for at, segment in enumerate(segments):
        if segment == "api":
            rest = segments[at + 2 :]  # api/v1/...
            break
        if segment == "apis":
            rest = segments[at + 3 :]  # apis/group/version/...
            break
    else:
        return False
    if len(rest) >= 3 and rest[0] == "namespaces":
        rest = rest[2:]
    return len(rest) == 1


class AgentMetrics:
    """Every metric of one agent process, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series: in the text format they are gauges of their own
        # that double the series for nothing (process-wide; the agent's alone).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        self.cni_duration = Histogram(
            "multinic_cni_request_duration_seconds",
            "Time the agent took to answer a CNI request from the shim, by CNI command and "
            "result (ok: exit status 0; error: a CNI error reply). _count is the number of "
            "requests.",
            ["command", "result"],
            buckets=CNI_BUCKETS,
            registry=self.registry,
        )
        self.cni_errors = Counter(
            "multinic_cni_errors",
            "CNI error replies, by command and CNI error code (1 incompatible version, "
            "4 invalid environment, 6 decoding, 7 invalid config, 11 try again, 50 not "
            "available, 999 other; 'other' for codes over 999).",
            ["command", "code"],
            registry=self.registry,
        )
        self.route_changes = Counter(
            "multinic_route_changes",
            "Host routes the route sync changed in a network's routing table, by network and "
            "change (added, replaced, removed).",
            ["network", "change"],
            registry=self.registry,
        )
        self.route_failures = Counter(
            "multinic_route_sync_failures",
            "Route syncs of one network that failed (a route, the rule or a stale table could "
            "not be programmed, or the CIDR plan is unreadable), by network.",
            ["network"],
            registry=self.registry,
        )
        self.route_passes = Counter(
            "multinic_route_sync_passes",
            "Route sync passes over every CIDR plan, by result (ok; error: the pass or its "
            "HostInterface status write did not complete and is tried again).",
            ["result"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "multinic_api_requests",
            "Requests the agent made to the Kubernetes API, by verb.",
            ["verb"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "multinic_api_errors",
            "Answers of the Kubernetes API other than 2xx, by verb and HTTP code (0: no "
            "answer: connection refused or reset, timeout). Includes expected ones such as "
            "404 for an object not created yet and 409 conflicts that are retried.",
            ["verb", "code"],
            registry=self.registry,
        )
        for command in COMMANDS:
            for result in RESULTS:
                self.cni_duration.labels(command, result)
        for result in RESULTS:
            self.route_passes.labels(result)

    # ------------------------------------------------------------------ observers

    def cni_request(self, env: Mapping[str, str], status: int, stdout: str, seconds: float) -> None:
        command = cni_command(env)
        self.cni_duration.labels(command, "ok" if status == 0 else "error").observe(seconds)
        if status != 0:
            self.cni_errors.labels(command, cni_error_code(stdout)).inc()

    def route_sync(self, sync: RouteSync) -> None:
        """One network's reconcile or removal (``HostRouteTables``' answer)."""
        for change, routes in zip(
            ROUTE_CHANGES, (sync.added, sync.replaced, sync.removed), strict=True
        ):
            if routes:
                self.route_changes.labels(sync.network, change).inc(len(routes))
        if sync.errors:
            self.route_failures.labels(sync.network).inc()

    def route_failed(self, network: str) -> None:
        self.route_failures.labels(network).inc()

    def route_pass(self, ok: bool) -> None:
        self.route_passes.labels("ok" if ok else "error").inc()

    def api_response(self, method: str, url: str, status: int) -> None:
        """One API request and its HTTP status (0: no answer)."""
        verb = api_verb(method, url)
        self.api_requests.labels(verb).inc()
        if not 200 <= status <= 299:
            self.api_errors.labels(verb, str(status)).inc()

    def watch_pools(
        self,
        node_state: NodeState,
        journal: AllocationJournal,
        stranded: Callable[[str], int] | None = None,
    ) -> None:
        """Export the node's IPPools (read when scraped); ``stranded`` from their status."""
        self.registry.register(PoolCollector(node_state, journal, stranded or (lambda _: 0)))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), PROMETHEUS_TEXT


def stranded_in(pools: ResourceWatch) -> Callable[[str], int]:
    """``status.strandedAllocations`` of a pool in the watch cache (0 when not retired)."""

    def stranded(name: str) -> int:
        status = (pools.get(name) or {}).get("status") or {}
        value = status.get("strandedAllocations") if isinstance(status, dict) else None
        return value if isinstance(value, int) and value >= 0 else 0

    return stranded


class PoolCollector(Collector):
    """Gauges per IPPool of this node: addresses, used, stranded."""

    def __init__(
        self, node_state: NodeState, journal: AllocationJournal, stranded: Callable[[str], int]
    ) -> None:
        self.node_state = node_state
        self.journal = journal
        self.stranded = stranded

    def collect(self) -> Iterator[Metric]:
        labels = ["pool", "network", "interface"]
        size = GaugeMetricFamily(
            "multinic_ippool_addresses",
            "Addresses an IPPool of this node can hand out (its podCIDR without network and "
            "broadcast addresses and without its excludes).",
            labels=labels,
        )
        used = GaugeMetricFamily(
            "multinic_ippool_used_addresses",
            "Addresses of an IPPool held by pods (the agent's journal, adopted allocations "
            "included).",
            labels=labels,
        )
        stranded = GaugeMetricFamily(
            "multinic_ippool_stranded_addresses",
            "Allocations of a retired IPPool outside the current CIDR plan, kept until their "
            "pods go (status.strandedAllocations, written by the operator; 0 for current pools).",
            labels=labels,
        )
        try:
            pools = self.node_state.all_pools()
        except (MultinicError, OSError, ValueError) as e:
            log.debug("no IPPool metrics this scrape: %s", e)
            pools = []
        for spec in pools:
            block = PoolBlock.from_spec(spec)
            values = [block.name, spec.net_attach_def, spec.interface_name]
            size.add_metric(values, block.capacity())
            used.add_metric(values, len(self.journal.pool_allocations(block.name)))
            stranded.add_metric(values, self.stranded(block.name))
        yield from (size, used, stranded)

    def describe(self) -> Iterator[Metric]:
        return iter(())


class MeasuredCniServer(CniServer):
    """A CniServer whose answers are timed and counted in ``metrics``."""

    def __init__(self, *, metrics: AgentMetrics, **options: Any) -> None:
        super().__init__(**options)
        self.metrics = metrics

    async def handle(self, env: Mapping[str, str], stdin: str) -> tuple[int, str, str]:
        started = time.perf_counter()
        status, stdout, stderr = await super().handle(env, stdin)
        self.metrics.cni_request(env, status, stdout, time.perf_counter() - started)
        return status, stdout, stderr
