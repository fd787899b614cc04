"""The operator's Prometheus metrics (docs/metrics.md lists them all).

One :class:`OperatorMetrics` per operator process, with its own
``CollectorRegistry`` (not prometheus_client's global one), so the tests can
run several operators in one process.

* reconciles: the duration of each network's reconcile by result, and of
  each batched re-plan by scope and result; the batch queue's depth;
* the Kubernetes API: requests by verb and answers other than 2xx by verb and
  HTTP code (0: no answer), from every request of the operator's own client
  (kopf's watches and its annotation patches go through kopf's client and
  are not counted);
* leadership: whether this replica holds the Lease.

Label values are bounded: results, scopes, verbs and HTTP codes.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import generate_latest

from multinic_core.health import PROMETHEUS_TEXT

RECONCILE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
NETWORK_RESULTS = ("success", "failed", "error")
VERBS = ("get", "list", "create", "patch", "delete")


class OperatorMetrics:
    """Every metric of one operator process, in its own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        # No *_created series: in the text format they are gauges of their own
        # that double the series for nothing (process-wide; the operator's alone).
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = registry if registry is not None else CollectorRegistry()
        self.network_reconcile = Histogram(
            "multinic_network_reconcile_duration_seconds",
            "Time one reconcile of one MultiNicNetwork took (read, plan, write the CIDR, "
            "IPPools, NADs, driver objects and status), by result: success (configStatus "
            "Success), failed (configStatus Failed: the network or its driver needs a user), "
            "error (an API error; retried).",
            ["result"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.batch_reconcile = Histogram(
            "multinic_reconcile_batch_duration_seconds",
            "Time one batched re-plan took (after host, node, namespace or Config events), by "
            "scope (all: every network; some: the networks named by events) and result "
            "(ok; error: retried with backoff).",
            ["scope", "result"],
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "multinic_reconcile_queue_depth",
            "Networks waiting for a batched re-plan (a re-plan of every network counts as the "
            "number of networks at the last full re-plan, at least 1).",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "multinic_api_requests",
            "Requests the operator's client made to the Kubernetes API, by verb (kopf's own "
            "watches and patches are not counted).",
            ["verb"],
            registry=self.registry,
        )
        self.api_errors = Counter(
            "multinic_api_errors",
            "Answers of the Kubernetes API other than 2xx to the operator's client, by verb and "
            "HTTP code (0: no answer). Includes expected ones such as 404 for an object that "
            "does not exist yet and 409 conflicts that are retried.",
            ["verb", "code"],
            registry=self.registry,
        )
        self.leader = Gauge(
            "multinic_operator_leader",
            "1 while this replica acts (holds the Lease multinic-operator, or runs "
            "--standalone), 0 while it waits for the Lease.",
            registry=self.registry,
        )
        for result in NETWORK_RESULTS:
            self.network_reconcile.labels(result)
        for scope in ("all", "some"):
            for outcome in ("ok", "error"):
                self.batch_reconcile.labels(scope, outcome)
        for verb in VERBS:
            self.api_requests.labels(verb)

    def network_reconciled(self, result: str, seconds: float) -> None:
        self.network_reconcile.labels(result).observe(seconds)

    def batch_reconciled(self, everything: bool, ok: bool, seconds: float) -> None:
        self.batch_reconcile.labels(
            "all" if everything else "some", "ok" if ok else "error"
        ).observe(seconds)

    def api_response(self, verb: str, status: int) -> None:
        self.api_requests.labels(verb).inc()
        if not 200 <= status <= 299:
            self.api_errors.labels(verb, str(status)).inc()

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """``multinic_reconcile_queue_depth`` is ``depth()`` when scraped."""
        self.queue_depth.set_function(lambda: float(depth()))

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), PROMETHEUS_TEXT
