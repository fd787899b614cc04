"""The operator's list/watch caches: what they hold, relists, its own writes; no LIST per reconcile."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from multinic_core.models import (
    CIDR,
    POOL_RETIRED_ACK,
    POOL_RETIRED_LABEL,
    HostInterface,
    MultiNicNetwork,
    load_resource,
)
from multinic_core.planner import plan_cidrs
from multinic_operator.cache import CachedPool, ClusterCache, pool_body, slim_pool
from multinic_operator.informer import Informer, newer
from multinic_operator.kube import KubeApi, load_client_configuration
from multinic_sim.faults import FaultRule

from .conftest import API, api_call, network_body


def new_pool(name: str, host: str = "node1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": "IPPool",
        "metadata": {"name": name, "labels": {"netname": "demo", "hostname": host}},
        "spec": {
            "podCIDR": "192.168.0.0/26",
            "vlanCIDR": "192.168.0.0/18",
            "netAttachDef": "demo",
            "hostName": host,
            "interfaceName": "eth1",
            "excludes": [],
            "allocations": [],
            **spec,
        },
    }


class Changes:
    """What an informer's listener was told, for waiting on it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool, bool]] = []
        self._lock = threading.Lock()

    def __call__(self, key: str, old: Any, new: Any) -> None:
        with self._lock:
            self.seen.append((key, old is not None, new is not None))

    def of(self, key: str) -> list[tuple[bool, bool]]:
        with self._lock:
            return [(o, n) for k, o, n in self.seen if k == key]


@pytest.fixture
def informer_api(cluster: Any) -> Iterator[KubeApi]:
    api = KubeApi(load_client_configuration(str(cluster.kube_api.kubeconfig)))
    yield api
    api.close()


@pytest.fixture
def pools(informer_api: KubeApi) -> Iterator[tuple[Informer[CachedPool], Changes]]:
    changes = Changes()
    informer: Informer[CachedPool] = Informer(
        informer_api, API, "IPPool", slim_pool, index=lambda p: p.label("hostname")
    )
    informer.on_change = changes
    informer.start()
    informer.ready()
    yield informer, changes
    informer.stop()


def test_the_cache_follows_creates_changes_and_deletes(cluster: Any, pools: Any) -> None:
    informer, changes = pools
    cluster.create(new_pool("demo-a"))
    cluster.wait(lambda: informer.get("demo-a") is not None, "the new pool in the cache")
    assert changes.of("demo-a") == [(False, True)]
    assert list(informer.indexed("node1")) == ["demo-a"]
    allocation = {"index": 5, "address": "192.168.0.5", "pod": "p", "namespace": "default"}
    cluster.api.patch(API, "IPPool", "demo-a", {"spec": {"allocations": [allocation]}})
    cluster.wait(
        lambda: pool_body(informer.get("demo-a"))["spec"]["allocations"],
        "the agent's allocation in the cache",
    )
    cluster.api.delete(API, "IPPool", "demo-a")
    cluster.wait(lambda: informer.get("demo-a") is None, "the deleted pool gone from the cache")
    assert informer.indexed("node1") == {}
    assert changes.of("demo-a")[-1] == (True, False)
    assert informer.lists == 1  # one list; the rest came by the watch


def test_a_lost_watch_history_lists_again_and_misses_nothing(cluster: Any, pools: Any) -> None:
    informer, changes = pools
    cluster.kube_api.require_sim()  # compaction is a control of the local server
    cluster.create(new_pool("demo-kept"))
    cluster.create(new_pool("demo-gone"))
    cluster.wait(lambda: len(informer) == 2, "both pools cached")
    faults = cluster.kube_api.faults
    # The watch is down while a pool goes and another comes, and its history is lost.
    rule = faults.add(FaultRule(status=503, verb="watch", resource="ippools", count=3))
    cluster.kube_api.drop_watches("ippools")
    cluster.wait(rule.exhausted, "the watch refused")
    cluster.api.delete(API, "IPPool", "demo-gone")
    cluster.create(new_pool("demo-new", host="node2"))
    cluster.kube_api.compact()
    cluster.wait(lambda: informer.lists >= 2, "a list after 410 Gone", 30)
    cluster.wait(lambda: informer.get("demo-new") is not None, "the pool made meanwhile")
    assert sorted(informer.keys()) == ["demo-kept", "demo-new"]
    assert changes.of("demo-gone")[-1] == (True, False)
    assert changes.of("demo-new") == [(False, True)]
    assert list(informer.indexed("node2")) == ["demo-new"]
    # And it watches again from the list's version.
    cluster.api.patch(API, "IPPool", "demo-kept", {"metadata": {"labels": {"x": "1"}}})
    cluster.wait(
        lambda: informer.get("demo-kept").label("x") == "1",
        "a change after the relist",
    )


def test_the_operators_own_writes_are_seen_before_their_events(
    cluster: Any, informer_api: KubeApi, pools: Any
) -> None:
    informer, _changes = pools
    created = informer_api.create(new_pool("demo-mine"))
    informer.observe(created)
    assert informer.get("demo-mine") is not None  # at once, not after the watch event
    patched = informer_api.patch(
        API, "IPPool", "demo-mine", {"spec": {"excludes": ["192.168.0.1/32"]}}
    )
    informer.observe(patched)
    informer.observe(created)  # an older version never replaces a newer one
    assert pool_body(informer.get("demo-mine"))["spec"]["excludes"] == ["192.168.0.1/32"]
    cluster.wait(
        lambda: informer.resource_version == patched["metadata"]["resourceVersion"], "events"
    )
    assert informer.get("demo-mine").resource_version == (patched["metadata"]["resourceVersion"])

    informer.deleting("demo-mine")
    assert informer.get("demo-mine") is None
    assert informer_api.delete(API, "IPPool", "demo-mine")
    informer.deleted("demo-mine", gone=True)
    assert informer.get("demo-mine") is None
    # Created again (by anyone): visible again.
    cluster.create(new_pool("demo-mine"))
    cluster.wait(lambda: informer.get("demo-mine") is not None, "the pool made again")

    # A delete that failed: the object is visible again.
    informer.deleting("demo-mine")
    informer.deleted("demo-mine", gone=False)
    assert informer.get("demo-mine") is not None


def test_a_pool_is_cached_without_what_the_reconciler_does_not_read() -> None:
    body = new_pool("demo-a", allocations=[{"index": 5, "address": "192.168.0.5", "pod": "p"}])
    body["metadata"].update(
        resourceVersion="7",
        uid="u",
        managedFields=[{"manager": "agent"}],
        annotations={POOL_RETIRED_ACK: "2", "other": "x"},
    )
    body["status"] = {"phase": "Current"}
    slim = pool_body(slim_pool(body))
    assert slim["metadata"] == {
        "name": "demo-a",
        "resourceVersion": "7",
        "labels": {"netname": "demo", "hostname": "node1"},
        "annotations": {POOL_RETIRED_ACK: "2"},
    }
    assert slim["spec"] == body["spec"]
    assert "status" not in slim
    body["metadata"]["labels"][POOL_RETIRED_LABEL] = "2"
    assert pool_body(slim_pool(body))["status"] == {"phase": "Current"}


def test_resource_versions_compare_as_numbers() -> None:
    assert newer("10", "9")
    assert not newer("9", "10")
    assert not newer("9", "9")
    assert newer("b", "a")  # opaque: a different one counts as later


def test_no_list_per_reconcile(cluster: Any, operator_runner: Any) -> None:
    """After the caches' first lists, hosts join and re-plans happen without a LIST."""
    for host in ("node1", "node2"):
        cluster.add_host(host)
    with operator_runner() as op:
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 4, "converged")
        cluster.wait(
            lambda: (
                (cluster.status().get("discovery") or {}).get("cidrProcessed") == 2
                and "multinic.fms.io/last-handled-configuration"
                in ((cluster.network() or {})["metadata"].get("annotations") or {})
            ),
            "the status written and kopf done with the new network",
        )
        time.sleep(0.5)  # nothing else is under way
        calls_before = len(op.proxy.calls())
        batches_before = op.services.batcher.batches
        cluster.add_host("node3")
        cluster.wait(lambda: len(cluster.pools()) == 6, "the new host's pools")
        cluster.wait(
            lambda: (cluster.status().get("discovery") or {}).get("cidrProcessed") == 3,
            "the status counts the new host",
        )
        cluster.wait(lambda: op.services.batcher.batches > batches_before, "a re-plan")
        calls = [api_call(*c) for c in op.proxy.calls()[calls_before:]]
        verbs = [c for c in calls if c is not None]
        assert [c for c in verbs if c[2] == "list"] == []
        writes = [c for c in verbs if c[2] in ("create", "patch", "delete")]
        # The new host's two pools, the plan, the network's status: nothing else.
        assert sorted(writes) == [
            ("multinic.fms.io", "cidrs", "patch"),
            ("multinic.fms.io", "ippools", "create"),
            ("multinic.fms.io", "ippools", "create"),
            ("multinic.fms.io", "multinicnetworks/status", "patch"),
        ]


def _plan_from_scratch(cluster: Any) -> dict[tuple[str, str], str]:
    """The blocks a from-scratch plan of the hosts now gives, with the stored plan as previous."""
    network = load_resource(MultiNicNetwork, cluster.network())
    nodes = {n["metadata"]["name"] for n in cluster.api.list("v1", "Node")}
    hosts = [
        load_resource(HostInterface, h)
        for h in cluster.api.list(API, "HostInterface")
        if (h["spec"].get("hostName") or h["metadata"]["name"]) in nodes
    ]
    previous = load_resource(CIDR, cluster.cidr()).spec
    plan = plan_cidrs(network, hosts, previous)
    return {(h.host_name, h.interface_name): h.pod_cidr for e in plan.spec.cidr for h in e.hosts}


def test_replans_from_the_changed_hosts_equal_planning_from_scratch(
    cluster: Any, operator_runner: Any
) -> None:
    """Joins, a NIC change, a HostInterface before its Node, a Node gone and back.

    After the first plan the operator gives its planner only the hosts that
    changed (the caches track them); every plan must still be what planning
    all hosts from scratch gives, and the planner must have seen the changes.
    """
    for host in ("node1", "node2"):
        cluster.add_host(host)
    with operator_runner() as op:
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 4, "converged")
        planned = op.services.reconciler._planners["demo"][0]

        def settled(hosts: int) -> bool:
            return (cluster.status().get("discovery") or {}).get("cidrProcessed") == hosts

        # A HostInterface whose Node does not exist yet is not planned...
        cluster.set_host_nics(
            "node3",
            [("eth1", "10.0.1.0/24", "10.0.1.33"), ("eth2", "10.0.2.0/24", "10.0.2.33")],
            create=True,
        )
        cluster.add_host("node4")
        cluster.wait(lambda: settled(3), "node4 planned")
        assert {host for host, _ in cluster.pod_cidrs()} == {"node1", "node2", "node4"}
        # ...until it comes.
        cluster.api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node3"}})
        cluster.nodes.add("node3")
        cluster.wait(lambda: settled(4), "node3 planned once its Node came")
        assert cluster.pod_cidrs() == _plan_from_scratch(cluster)
        # node2 loses its eth2 network; node1's eth1 address changes.
        cluster.set_host_nics("node2", [("eth1", "10.0.1.0/24", "10.0.1.13")])
        cluster.set_host_nics(
            "node1", [("eth1", "10.0.1.0/24", "10.0.1.99"), ("eth2", "10.0.2.0/24", "10.0.2.12")]
        )
        cluster.wait(
            lambda: ("node2", "eth2") not in cluster.pod_cidrs(), "node2 left eth2's entry"
        )
        cluster.wait(
            lambda: any(
                h.get("hostIP") == "10.0.1.99"
                for e in cluster.cidr()["spec"]["cidr"]
                for h in e.get("hosts") or []
            ),
            "node1's new address in the plan",
        )
        assert cluster.pod_cidrs() == _plan_from_scratch(cluster)
        # node4's Node goes (it leaves), then comes back (it joins again).
        cluster.delete_node("node4")
        cluster.wait(lambda: settled(3), "node4 left")
        assert cluster.pod_cidrs() == _plan_from_scratch(cluster)
        cluster.add_host("node4")
        cluster.wait(lambda: settled(4), "node4 back")
        assert cluster.pod_cidrs() == _plan_from_scratch(cluster)
        # The same planner followed all of it (no from-scratch rebuild on the way).
        assert op.services.reconciler._planners["demo"][0] is planned
        assert sorted(planned.host_names) == ["node1", "node2", "node3", "node4"]


def test_the_cache_names_the_hosts_that_changed(cluster: Any, informer_api: KubeApi) -> None:
    cache = ClusterCache(informer_api)
    cache.start()
    try:
        cache.ready()
        start = cache.hosts_version()
        assert start is not None
        cluster.add_host("node1")
        cluster.wait(
            lambda: (
                [h.name for h in cache.host_interfaces()] == ["node1"]
                and cache.node_names() == {"node1"}
            ),
            "node1's Node and HostInterface cached",
        )
        assert cache.hosts_changed_since(start) == {"node1"}
        seen = cache.hosts_version()
        assert seen is not None
        # A status-only change (the agents' sync times) is not a change of the plan's inputs.
        cluster.api.patch(
            API,
            "HostInterface",
            "node1",
            {"status": {"lastDiscoveryTime": "2026-12-07T01:00:00Z"}},
            status=True,
        )
        cluster.add_host("node2")
        cluster.wait(lambda: cache.hosts_changed_since(seen) == {"node2"}, "only node2 named")
        assert cache.hosts_changed_since(start) == {"node1", "node2"}
    finally:
        cache.stop()
