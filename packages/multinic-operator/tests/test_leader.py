"""Leader election on a Lease, against the local API server."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from multinic_operator.batching import ReconcileBatcher
from multinic_operator.health import OperatorHealth
from multinic_operator.kube import KubeApi, load_client_configuration
from multinic_operator.leader import LeaderElection
from multinic_operator.metrics import OperatorMetrics


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _election(cluster: Any, identity: str, clock: Clock) -> LeaderElection:
    api = KubeApi(load_client_configuration(str(cluster.kube_api.kubeconfig)))
    return LeaderElection(api, "default", identity, lease_seconds=15, clock=clock)


def test_one_leader_until_the_lease_expires_on_the_observers_clock(cluster: Any) -> None:
    clock = Clock()
    first, second = _election(cluster, "a", clock), _election(cluster, "b", clock)

    assert first.try_acquire_or_renew()
    assert not second.try_acquire_or_renew()
    clock.now += 10
    assert first.try_acquire_or_renew()  # renewed: the record changed
    clock.now += 10
    assert not second.try_acquire_or_renew()  # only 10 s since it saw the renewal

    clock.now += 16  # "a" stopped renewing
    assert second.try_acquire_or_renew()
    lease = cluster.api.get("coordination.k8s.io/v1", "Lease", "multinic-operator", "default")
    assert lease["spec"]["holderIdentity"] == "b"
    assert lease["spec"]["leaseTransitions"] == 1
    assert not first.try_acquire_or_renew()


def test_release_hands_over_at_once(cluster: Any) -> None:
    clock = Clock()
    first, second = _election(cluster, "a", clock), _election(cluster, "b", clock)
    assert first.try_acquire_or_renew()

    first.release()

    assert second.try_acquire_or_renew()


def test_keep_reports_a_lost_lease(cluster: Any) -> None:
    clock = Clock()
    first = _election(cluster, "a", clock)
    first.renew_seconds = 0.05
    assert first.try_acquire_or_renew()
    lost = threading.Event()
    stop = threading.Event()
    # Someone else takes the Lease (e.g. after this replica was partitioned away).
    lease = cluster.api.get("coordination.k8s.io/v1", "Lease", "multinic-operator", "default")
    cluster.api.patch(
        "coordination.k8s.io/v1",
        "Lease",
        "multinic-operator",
        {"spec": {"holderIdentity": "intruder"}},
        "default",
    )
    del lease

    thread = first.keep(lost.set, stop)
    try:
        assert lost.wait(5)
    finally:
        stop.set()
        thread.join(5)


def test_a_replica_that_won_the_lease_does_not_say_it_is_a_standby(cluster: Any) -> None:
    """Between winning the Lease and acting, /readyz must not answer "ok: standby"."""
    clock = Clock()
    first, second = _election(cluster, "a", clock), _election(cluster, "b", clock)
    health = OperatorHealth(ReconcileBatcher(lambda names: None), OperatorMetrics())
    health.waiting_for_lease(first)
    assert first.acquire(threading.Event())  # won; the caller has not called health.acts() yet
    problems = asyncio.run(health.readiness())
    assert problems == ["this replica won the Lease and is starting to act"]
    health.acts()
    assert health.ready_text().startswith("ok: acting")
    stop = threading.Event()

    # A replica that loses its rounds is the standby it says it is.
    standby = OperatorHealth(ReconcileBatcher(lambda names: None), OperatorMetrics())
    standby.waiting_for_lease(second)
    second.retry_seconds = 0.05
    waiting = threading.Event()
    thread = threading.Thread(target=lambda: waiting.set() if not second.acquire(stop) else None)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while second.round_error is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert asyncio.run(standby.readiness()) == []
        assert standby.ready_text().startswith("ok: standby")
    finally:
        stop.set()
        thread.join(5)
    assert waiting.is_set()  # it gave up waiting when told to, never leading
