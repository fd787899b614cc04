"""The network service against the local API server, without kopf."""

from __future__ import annotations

import json
from typing import Any

import pytest

from multinic_core.models import CIDR, HostInterface, MultiNicNetwork, load_resource
from multinic_core.planner import plan_cidrs
from multinic_core.plugins import PluginRegistry
from multinic_operator.kube import KubeApi, load_client_configuration
from multinic_operator.reconciler import NetworkReconciler

from .conftest import API, L3_IPAM, network_body


@pytest.fixture
def reconciler(cluster: Any) -> Any:
    api = KubeApi(load_client_configuration(str(cluster.kube_api.kubeconfig)))
    yield NetworkReconciler(api, PluginRegistry())
    api.close()


def test_worked_example_plan_pools_nads_and_status(cluster: Any, reconciler: Any) -> None:
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    cluster.create(network_body())

    result = reconciler.reconcile("demo")

    assert result.config_status == "Success"
    assert cluster.pod_cidrs() == {
        ("node1", "eth1"): "192.168.0.0/24",
        ("node2", "eth1"): "192.168.2.0/24",
        ("node3", "eth1"): "192.168.3.0/24",
        ("node1", "eth2"): "192.168.128.0/24",
        ("node2", "eth2"): "192.168.129.0/24",
        ("node3", "eth2"): "192.168.130.0/24",
    }
    pools = cluster.pools()
    assert sorted(pools) == sorted(
        f"demo-{c.replace('/', '-')}" for c in cluster.pod_cidrs().values()
    )
    first = pools["demo-192.168.0.0-24"]
    assert first["spec"]["excludes"] == ["192.168.0.128/25"]
    assert first["spec"]["vlanCIDR"] == "192.168.0.0/18"
    assert first["metadata"]["labels"] == {"hostname": "node1", "netname": "demo"}
    status = cluster.status()
    assert status["computeResults"] == [
        {"netAddress": "10.0.1.0/24", "numOfHosts": 3},
        {"netAddress": "10.0.2.0/24", "numOfHosts": 3},
    ]
    assert status["discovery"]["cidrProcessed"] == 3
    assert status["configStatus"] == "Success"
    assert status["routeStatus"] == "WaitForRoutes"
    # Every namespace gets the NAD (namespaces is empty).
    nads = cluster.nads()
    assert "default" in nads
    config = json.loads(nads["default"]["spec"]["config"])
    assert config["type"] == "multi-nic"
    assert config["plugin"]["mode"] == "l3"
    assert nads["default"]["metadata"]["ownerReferences"][0]["name"] == "demo"


def test_second_reconcile_writes_nothing(cluster: Any, reconciler: Any) -> None:
    for host in ("node1", "node2"):
        cluster.add_host(host)
    cluster.create(network_body())
    reconciler.reconcile("demo")

    again = reconciler.reconcile("demo")

    assert again.writes == 0


def test_agent_allocations_survive_a_spec_change(cluster: Any, reconciler: Any) -> None:
    cluster.add_host("node1")
    cluster.create(network_body())
    reconciler.reconcile("demo")
    allocation = {
        "pod": "p",
        "namespace": "default",
        "index": 5,
        "address": "192.168.0.5",
        "containerID": "c1",
        "ifName": "net1",
    }
    cluster.api.patch(API, "IPPool", "demo-192.168.0.0-24", {"spec": {"allocations": [allocation]}})
    ipam = dict(L3_IPAM, excludeCIDRs=[*L3_IPAM["excludeCIDRs"], "192.168.0.16/28"])
    cluster.api.patch(API, "MultiNicNetwork", "demo", {"spec": {"ipam": json.dumps(ipam)}})

    reconciler.reconcile("demo")

    pool = cluster.pools()["demo-192.168.0.0-24"]
    assert pool["spec"]["excludes"] == ["192.168.0.16/28", "192.168.0.128/25"]
    assert pool["spec"]["allocations"] == [allocation]


def test_invalid_network_is_failed_and_nothing_else_is_touched(
    cluster: Any, reconciler: Any
) -> None:
    cluster.add_host("node1")
    body = network_body()
    cluster.create(body)
    reconciler.reconcile("demo")
    before = cluster.pools()
    bad = dict(L3_IPAM, vlanMode="l7")
    cluster.api.patch(API, "MultiNicNetwork", "demo", {"spec": {"ipam": json.dumps(bad)}})

    result = reconciler.reconcile("demo")

    assert result.config_status == "Failed"
    status = cluster.status()
    assert status["configStatus"] == "Failed"
    assert "vlanMode 'l7'" in status["message"]
    assert cluster.pools() == before
    assert status["computeResults"][0]["numOfHosts"] == 1


def test_missing_driver_names_the_package(cluster: Any, reconciler: Any) -> None:
    cluster.create(network_body(plugin={"type": "no-such-driver"}))

    reconciler.reconcile("demo")

    status = cluster.status()
    assert status["configStatus"] == "Failed"
    assert "no main plugin 'no-such-driver' installed" in status["message"]


def test_driver_kind_not_served_says_what_to_install(cluster: Any, reconciler: Any) -> None:
    cluster.api.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "sriovnetworks.sriovnetwork.openshift.io",
    )
    cluster.api.delete(
        "apiextensions.k8s.io/v1",
        "CustomResourceDefinition",
        "sriovnetworknodepolicies.sriovnetwork.openshift.io",
    )
    cluster.wait(
        lambda: (
            cluster.api.get(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                "sriovnetworks.sriovnetwork.openshift.io",
            )
            is None
        ),
        "SR-IOV CRDs gone",
    )
    cluster.add_host("node1", pci=True)
    l2 = dict(L3_IPAM, vlanMode="l2")
    cluster.create(network_body(plugin={"type": "sriov"}, ipam=l2))

    result = reconciler.reconcile("demo")

    assert result.config_status == "Failed"
    message = cluster.status()["message"]
    assert "SriovNetwork" in message
    assert "install the operator that provides it" in message


def test_leaving_multi_nic_ipam_removes_plan_and_pools(cluster: Any, reconciler: Any) -> None:
    cluster.add_host("node1")
    cluster.create(network_body())
    reconciler.reconcile("demo")
    assert cluster.cidr() is not None
    whereabouts = {"type": "whereabouts", "range": "192.168.0.0/16"}
    cluster.api.patch(
        API,
        "MultiNicNetwork",
        "demo",
        {"spec": {"ipam": json.dumps(whereabouts), "multiNICIPAM": False}},
    )

    reconciler.reconcile("demo")

    assert cluster.cidr() is None
    assert cluster.pools() == {}
    config = json.loads(cluster.nads()["default"]["spec"]["config"])
    assert config["ipam"] == whereabouts
    assert cluster.status()["routeStatus"] == "N/A"


def hosts_now(cluster: Any) -> list[HostInterface]:
    """The HostInterfaces whose Node exists, as the reconciler plans them."""
    nodes = {n["metadata"]["name"] for n in cluster.api.list("v1", "Node")}
    return [
        HostInterface.model_validate(body)
        for body in cluster.api.list(API, "HostInterface")
        if body["spec"]["hostName"] in nodes
    ]


def test_joins_changes_and_leaves_plan_like_a_replan_from_scratch(
    cluster: Any, reconciler: Any
) -> None:
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    cluster.create(network_body())
    reconciler.reconcile("demo")
    network = load_resource(MultiNicNetwork, cluster.network())
    steps = [
        lambda: cluster.add_host("node4"),
        lambda: cluster.set_host_nics("node2", [("eth1", "10.0.1.0/24", "10.0.1.99")]),
        lambda: cluster.delete_node("node1"),
        lambda: cluster.add_host("node5"),
    ]
    for step in steps:
        previous = CIDR.model_validate(cluster.cidr()).spec
        step()
        reconciler.reconcile("demo")
        expected = plan_cidrs(network, hosts_now(cluster), previous)
        assert CIDR.model_validate(cluster.cidr()).spec == expected.spec
    assert cluster.pod_cidrs() == {
        ("node2", "eth1"): "192.168.2.0/24",
        ("node3", "eth1"): "192.168.3.0/24",
        ("node4", "eth1"): "192.168.4.0/24",
        ("node5", "eth1"): "192.168.5.0/24",
        ("node3", "eth2"): "192.168.130.0/24",
        ("node4", "eth2"): "192.168.131.0/24",
        ("node5", "eth2"): "192.168.132.0/24",
    }
    host_ips = {h["hostName"]: h["hostIP"] for h in cluster.cidr()["spec"]["cidr"][0]["hosts"]}
    assert host_ips["node2"] == "10.0.1.99"


def test_a_cidr_written_by_someone_else_is_planned_from_as_it_is(
    cluster: Any, reconciler: Any
) -> None:
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    cluster.create(network_body())
    reconciler.reconcile("demo")
    # Another writer (an admin, another replica) moves node3 to host index 10.
    cidr = cluster.cidr()
    entries = cidr["spec"]["cidr"]
    moved = next(h for h in entries[0]["hosts"] if h["hostName"] == "node3")
    moved.update(hostIndex=10, podCIDR="192.168.10.0/24", ippool="demo-192.168.10.0-24")
    cluster.api.patch(API, "CIDR", "demo", {"spec": {"cidr": entries}})
    cluster.add_host("node4")

    reconciler.reconcile("demo")

    pods = cluster.pod_cidrs()
    assert pods[("node3", "eth1")] == "192.168.10.0/24"
    # The newcomer goes above the highest index in use: the edited one.
    assert pods[("node4", "eth1")] == "192.168.11.0/24"
