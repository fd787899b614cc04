"""Transient API errors, a predecessor's objects, Config changes, driver objects."""

from __future__ import annotations

import json
import time
from typing import Any

from multinic_sim.faults import FaultRule

from .conftest import API, L3_IPAM, network_body


def test_api_errors_never_drop_hosts(cluster: Any, operator_runner: Any) -> None:
    faults = cluster.kube_api.faults
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    with operator_runner() as op:
        op.services.api.timeout = 2.0
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 6, "converged")
        plan = cluster.pod_cidrs()
        deletes_before = [w for w in op.proxy.writes() if w[0] == "DELETE"]
        # The caches' watches lose their place (history compacted): they list
        # again, and those lists fail for a while.
        list_faults = [
            faults.add(FaultRule(status=500, verb="list", resource="nodes", count=2)),
            faults.add(
                FaultRule(
                    action="timeout", delay=4.0, verb="list", resource="hostinterfaces", count=1
                )
            ),
            faults.add(FaultRule(status=503, verb="list", resource="ippools", count=1)),
        ]
        cluster.kube_api.compact()
        for resource in ("nodes", "hostinterfaces", "ippools"):
            cluster.kube_api.drop_watches(resource)
        # An agent rewrites its HostInterface while the lists fail: the batch
        # plans from what was cached (every host), and its first try fails.
        batch_faults = [
            faults.add(FaultRule(status=503, verb="get", resource="multinicnetworks", count=1)),
        ]
        cluster.api.patch(API, "HostInterface", "node2", {"metadata": {"labels": {"touched": "1"}}})
        batcher = op.services.batcher
        cluster.wait(
            lambda: batcher.failures >= 1 and batcher.batches >= 1 and not batcher.pending,
            "a failed batch was retried successfully",
        )
        cluster.wait(
            lambda: all(r.exhausted() for r in list_faults), "every list fault was hit", 60
        )
        write_faults = [
            faults.add(FaultRule(status=409, verb="patch", resource="ippools", count=2)),
        ]
        ipam = dict(L3_IPAM, excludeCIDRs=[*L3_IPAM["excludeCIDRs"], "192.168.2.16/28"])
        cluster.api.patch(API, "MultiNicNetwork", "demo", {"spec": {"ipam": json.dumps(ipam)}})

        cluster.wait(
            lambda: all(r.exhausted() for r in batch_faults + write_faults),
            "every fault was hit",
            60,
        )
        cluster.wait(
            lambda: (
                cluster.pools()["demo-192.168.2.0-24"]["spec"]["excludes"] == ["192.168.2.16/28"]
            ),
            "the change went through after the errors",
            60,
        )
        assert cluster.pod_cidrs() == plan
        assert len(cluster.pools()) == 6
        assert [w for w in op.proxy.writes() if w[0] == "DELETE"] == deletes_before
        assert op.services.batcher.failures >= 1
        # The caches listed again after the failures and hold every host.
        caches = op.services.cache
        assert caches is not None
        relisted = (caches.nodes, caches.hosts, caches.pools)
        cluster.wait(lambda: all(i.lists >= 2 for i in relisted), "the caches listed again", 30)
        assert sorted(caches.node_names()) == ["node1", "node2", "node3"]
        assert sorted(h.name for h in caches.host_interfaces()) == ["node1", "node2", "node3"]
        assert len(caches.pools_of("demo")) == 6


def test_predecessor_objects_are_adopted_without_renumbering(
    cluster: Any, operator_runner: Any
) -> None:
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    # The predecessor gave node3 host index 5 and node1 index 7 (an older history).
    ips = {"node1": 12, "node2": 13, "node3": 14}
    hosts = {"node1": 7, "node2": 2, "node3": 5}
    entries = []
    for iface, (net, vlan, base) in enumerate(
        [("10.0.1.0/24", "192.168.0.0/18", 0), ("10.0.2.0/24", "192.168.128.0/18", 128)]
    ):
        entries.append(
            {
                "netAddress": net,
                "interfaceIndex": iface * 2,
                "vlanCIDR": vlan,
                "hosts": [
                    {
                        "hostIndex": index,
                        "hostName": name,
                        "interfaceName": f"eth{iface + 1}",
                        "hostIP": f"10.0.{iface + 1}.{ips[name]}",
                        "podCIDR": f"192.168.{base + index}.0/24",
                        "ippool": f"demo-192.168.{base + index}.0-24",
                    }
                    for name, index in hosts.items()
                ],
            }
        )
    cluster.create(
        {
            "apiVersion": API,
            "kind": "CIDR",
            "metadata": {"name": "demo"},
            "spec": {
                "config": {
                    "name": "demo",
                    "type": "ipvlan",
                    "subnet": "192.168.0.0/16",
                    "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
                    "hostBlock": 6,
                    "interfaceBlock": 2,
                    "excludeCIDRs": L3_IPAM["excludeCIDRs"],
                    "vlanMode": "l3",
                },
                "cidr": entries,
            },
        }
    )
    allocation = {"pod": "old-pod", "namespace": "default", "index": 3, "address": "192.168.7.3"}
    # A predecessor pool: no labels, an allocation made by the old daemon.
    cluster.create(
        {
            "apiVersion": API,
            "kind": "IPPool",
            "metadata": {"name": "demo-192.168.7.0-24"},
            "spec": {
                "podCIDR": "192.168.7.0/24",
                "vlanCIDR": "192.168.0.0/18",
                "netAttachDef": "demo",
                "hostName": "node1",
                "interfaceName": "eth1",
                "excludes": [],
                "allocations": [allocation],
            },
        }
    )
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 6, "pools for every planned host")
        assert {k: v for k, v in cluster.pod_cidrs().items() if k[1] == "eth1"} == {
            ("node1", "eth1"): "192.168.7.0/24",
            ("node2", "eth1"): "192.168.2.0/24",
            ("node3", "eth1"): "192.168.5.0/24",
        }
        adopted = cluster.pools()["demo-192.168.7.0-24"]
        assert adopted["spec"]["allocations"] == [allocation]
        assert adopted["metadata"]["labels"] == {"hostname": "node1", "netname": "demo"}


def test_config_drives_the_agent_daemonset(cluster: Any, operator_runner: Any) -> None:
    with operator_runner():
        cluster.wait(
            lambda: cluster.api.get(API, "Config", "multi-nicd") is not None,
            "default Config created",
        )

        def daemonset() -> dict[str, Any] | None:
            return cluster.api.get("apps/v1", "DaemonSet", "multinic-agent", "default")

        cluster.wait(lambda: daemonset() is not None, "agent DaemonSet")
        pod = daemonset()["spec"]["template"]["spec"]
        assert pod["hostNetwork"]
        assert pod["hostPID"]
        assert pod["serviceAccountName"] == "multinic-agent"
        agent = pod["containers"][0]
        assert agent["command"] == [
            "multinic-agent",
            "--node",
            "$(NODE_NAME)",
            "--health-address",
            ":11000",  # the Config's daemon.port
        ]
        assert agent["ports"] == [{"name": "health", "containerPort": 11000, "protocol": "TCP"}]
        assert agent["readinessProbe"]["httpGet"] == {
            "path": "/readyz",
            "port": "health",
            "scheme": "HTTP",
        }
        assert agent["securityContext"] == {"privileged": True}
        assert {m["mountPath"] for m in agent["volumeMounts"]} >= {
            "/host/opt/cni/bin",
            "/run/multinic",
            "/var/lib/multinic",
            "/var/run/netns",
            "/sys",
            "/var/lib/kubelet/pod-resources",
        }
        assert pod["initContainers"][0]["command"] == [
            "multinic-agent",
            "install-cni",
            "--bin-dir",
            "/host/opt/cni/bin",
            "--shim",
            "compiled",
        ]
        assert cluster.api.get("v1", "ServiceAccount", "multinic-agent", "default")

        cluster.api.patch(
            API,
            "Config",
            "multi-nicd",
            {
                "spec": {
                    "daemon": {
                        "image": "registry.example/multinic-agent:2",
                        "nodeSelector": {"nics": "many"},
                    }
                }
            },
        )

        cluster.wait(
            lambda: (
                daemonset()["spec"]["template"]["spec"]["containers"][0]["image"]
                == "registry.example/multinic-agent:2"
            ),
            "image updated",
        )
        assert daemonset()["spec"]["template"]["spec"]["nodeSelector"] == {"nics": "many"}

        # Deleted by mistake: the defaults come back, and so does the default image.
        cluster.api.delete(API, "Config", "multi-nicd")
        cluster.wait(
            lambda: (
                daemonset()["spec"]["template"]["spec"]["containers"][0]["image"]
                == "ghcr.io/multinic/multinic-agent:0.1.0"
            ),
            "default Config recreated and rendered",
        )
        assert "nodeSelector" not in daemonset()["spec"]["template"]["spec"]


def test_sriov_dependent_objects_follow_the_network(cluster: Any, operator_runner: Any) -> None:
    cluster.add_namespace("openshift-sriov-network-operator")
    cluster.add_host("node1", pci=True)
    sriov = {"cniVersion": "1.0.0", "type": "sriov", "args": {"numVfs": "4", "vlan": "100"}}
    l2 = dict(L3_IPAM, vlanMode="l2")
    with operator_runner():
        cluster.create(network_body("fast", plugin=sriov, ipam=l2))

        def objects(kind: str) -> list[dict[str, Any]]:
            return cluster.api.list(
                "sriovnetwork.openshift.io/v1", kind, label_selector="multinic.fms.io/network=fast"
            )

        cluster.wait(lambda: len(objects("SriovNetworkNodePolicy")) == 1, "policy created")
        cluster.wait(lambda: len(objects("SriovNetwork")) == 1, "SriovNetwork created")
        policy = objects("SriovNetworkNodePolicy")[0]
        assert policy["spec"]["numVfs"] == 4
        assert policy["spec"]["nicSelector"]["rootDevices"] == ["0000:0c:00.0", "0000:0c:00.1"]
        nad = cluster.nads("fast")["default"]
        assert nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] == (
            "openshift.io/fast"
        )

        cluster.add_host("node2", pci=True)
        cluster.wait(
            lambda: (
                len(objects("SriovNetworkNodePolicy")[0]["spec"]["nicSelector"]["rootDevices"]) == 4
            ),
            "policy covers the new host's PFs",
        )

        cluster.api.delete(API, "MultiNicNetwork", "fast")
        cluster.wait(lambda: cluster.network("fast") is None, "network gone")
        assert objects("SriovNetworkNodePolicy") == []
        assert objects("SriovNetwork") == []


def test_route_status_aggregates_agent_reports(cluster: Any, operator_runner: Any) -> None:
    for host in ("node1", "node2"):
        cluster.add_host(host)
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(
            lambda: cluster.status().get("routeStatus") == "WaitForRoutes", "waiting for routes"
        )
        assert "node1" in cluster.status()["message"]
        generation = cluster.cidr()["metadata"]["generation"]

        def report(host: str, status: str, message: str = "") -> None:
            cluster.api.patch(
                API,
                "HostInterface",
                host,
                {
                    "status": {
                        "routes": [
                            {
                                "network": "demo",
                                "status": status,
                                "message": message,
                                "cidrGeneration": generation,
                            }
                        ]
                    }
                },
                status=True,
            )

        report("node1", "Success")
        report("node2", "Failed", "table 1001: file exists")
        cluster.wait(lambda: cluster.status().get("routeStatus") == "Failed", "failed")
        assert "node2: table 1001: file exists" in cluster.status()["message"]

        report("node2", "Success")
        cluster.wait(lambda: cluster.status().get("routeStatus") == "Success", "success")
        routes = next(c for c in cluster.status()["conditions"] if c["type"] == "RoutesReady")
        assert routes["status"] == "True"


def test_missing_driver_is_reported_by_the_operator(cluster: Any, operator_runner: Any) -> None:
    with operator_runner():
        cluster.create(network_body(plugin={"type": "infiniband-sdn"}))
        cluster.wait(lambda: cluster.status().get("configStatus") == "Failed", "failed")
        assert cluster.status()["message"].startswith("no main plugin 'infiniband-sdn' installed")
        assert cluster.pools() == {}
        assert cluster.nads() == {}


def test_host_device_nads_follow_the_nic_cluster_policy(cluster: Any, operator_runner: Any) -> None:
    cluster.add_host("node1", pci=True)
    policy = {
        "apiVersion": "mellanox.com/v1alpha1",
        "kind": "NicClusterPolicy",
        "metadata": {"name": "nic-cluster-policy"},
        "spec": {
            "sriovDevicePlugin": {
                "config": json.dumps(
                    {
                        "resourceList": [
                            {"resourceName": "hostdev", "selectors": {"vendors": ["15b3"]}}
                        ]
                    }
                )
            }
        },
    }
    cluster.create(policy)
    l2 = dict(L3_IPAM, vlanMode="l2")
    with operator_runner():
        cluster.create(network_body("hd", ipam=l2, plugin={"type": "host-device"}))

        def resource() -> str | None:
            nad = cluster.nads("hd").get("default") or {}
            annotations = (nad.get("metadata") or {}).get("annotations") or {}
            return annotations.get("k8s.v1.cni.cncf.io/resourceName")

        cluster.wait(lambda: resource() == "nvidia.com/hostdev", "NAD with the resource name")

        config = {
            "resourceList": [
                {
                    "resourceName": "rdma_hostdev",
                    "resourcePrefix": "example.com",
                    "selectors": {"vendors": ["15b3"]},
                }
            ]
        }
        cluster.api.patch(
            "mellanox.com/v1alpha1",
            "NicClusterPolicy",
            "nic-cluster-policy",
            {"spec": {"sriovDevicePlugin": {"config": json.dumps(config)}}},
        )

        cluster.wait(
            lambda: resource() == "example.com/rdma_hostdev", "NAD follows the NicClusterPolicy"
        )

        cluster.api.delete("mellanox.com/v1alpha1", "NicClusterPolicy", "nic-cluster-policy")
        cluster.wait(
            lambda: cluster.status("hd").get("configStatus") == "Failed",
            "a missing NicClusterPolicy is reported",
        )
        assert "NicClusterPolicy" in cluster.status("hd")["message"]


def test_a_plan_too_large_for_the_api_server_is_a_clear_failure(
    cluster: Any, operator_runner: Any
) -> None:
    """kube-apiserver + etcd refuse a CIDR over 1.5 MiB (measured: 1,500 hosts x 8 NICs,
    "HTTP 500: etcdserver: request is too large"): no retry can store it, so the status says
    why and what to do, instead of the operator retrying it for ever."""
    faults = cluster.kube_api.faults
    for host in ("node1", "node2"):
        cluster.add_host(host)
    with operator_runner() as op:
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 4, "converged")
        too_large = faults.add(
            FaultRule(
                status=500,
                verb="patch",
                resource="cidrs",
                count=None,
                message="etcdserver: request is too large",
            )
        )
        failures_before = op.services.batcher.failures
        cluster.add_host("node3")
        cluster.wait(lambda: cluster.status().get("configStatus") == "Failed", "the network failed")
        condition = cluster.status()["conditions"][0]
        assert condition["reason"] == "PlanTooLarge"
        assert "CIDR demo: 3 host(s)" in condition["message"]
        assert "etcdserver: request is too large" in condition["message"]
        assert "--cidr-shard-entries" in condition["message"]
        hits = too_large.hits
        time.sleep(1.5)  # not retried: nothing changed
        assert too_large.hits == hits
        assert op.services.batcher.failures == failures_before
        # The cluster takes the plan again (limits raised): the next change converges.
        faults.remove(too_large.id)
        cluster.add_host("node4")
        cluster.wait(lambda: cluster.status().get("configStatus") == "Success", "recovered")
        cluster.wait(lambda: len(cluster.pools()) == 8, "node3's and node4's pools")
