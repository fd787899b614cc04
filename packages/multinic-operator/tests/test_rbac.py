"""deploy/operator/rbac.yaml against the calls the operator really makes.

Every operator run in this suite checks that its calls are allowed (see
``check_rbac`` in conftest).  This test checks the other direction: one run
that exercises every flow uses every verb the ClusterRole grants, so the role
grants nothing the code does not use.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from multinic_sim.faults import FaultRule

from .conftest import (
    API,
    L3_IPAM,
    OPERATOR_ROLE,
    allowed,
    api_call,
    cluster_role_rules,
    network_body,
)

# Granted for what only the command does (the harness runs kopf in a thread):
# test_cli.py checks these with replicas of the real command.
UNEXERCISED = {
    ("coordination.k8s.io", "leases"): "leader election of multinic-operator replicas",
}

NIC_CLUSTER_POLICY = {
    "apiVersion": "mellanox.com/v1alpha1",
    "kind": "NicClusterPolicy",
    "metadata": {"name": "nic-cluster-policy"},
    "spec": {
        "sriovDevicePlugin": {
            "config": json.dumps(
                {
                    "resourceList": [
                        {
                            "resourceName": "hostdev",
                            "resourcePrefix": "nvidia.com",
                            "selectors": {"vendors": ["15b3"]},
                        }
                    ]
                }
            )
        }
    },
}


def test_every_granted_verb_is_used(cluster: Any, operator_runner: Any) -> None:
    cluster.add_namespace("openshift-sriov-network-operator")
    cluster.add_namespace("team-a")
    cluster.create(NIC_CLUSTER_POLICY)
    for host in ("node1", "node2"):
        cluster.add_host(host, pci=True)
    # A pool of the predecessor without labels: adopted (get + patch).
    cluster.create(
        {
            "apiVersion": API,
            "kind": "IPPool",
            "metadata": {"name": "demo-192.168.0.0-24"},
            "spec": {
                "podCIDR": "192.168.0.0/24",
                "vlanCIDR": "192.168.0.0/18",
                "netAttachDef": "demo",
                "hostName": "node1",
                "interfaceName": "eth1",
            },
        }
    )
    # Its pool of node1's eth2, with a pod's address that the plan edit below strands:
    # an Event on the network, patched (count) by the reconciles after it.
    cluster.create(
        {
            "apiVersion": API,
            "kind": "IPPool",
            "metadata": {"name": "demo-192.168.128.0-24"},
            "spec": {
                "podCIDR": "192.168.128.0/24",
                "vlanCIDR": "192.168.128.0/18",
                "netAttachDef": "demo",
                "hostName": "node1",
                "interfaceName": "eth2",
                "allocations": [
                    {
                        "pod": "old",
                        "namespace": "default",
                        "index": 200,
                        "address": "192.168.128.200",
                    }
                ],
            },
        }
    )
    # A NAD someone made by hand where the operator wants one: adopted (get + patch).
    cluster.create(
        {
            "apiVersion": "k8s.cni.cncf.io/v1",
            "kind": "NetworkAttachmentDefinition",
            "metadata": {"name": "fast", "namespace": "team-a"},
            "spec": {"config": "{}"},
        }
    )
    l2 = dict(L3_IPAM, vlanMode="l2")
    with operator_runner() as op:
        # A status write fails once: kopf retries the handler and posts an event.
        cluster.kube_api.faults.add(
            FaultRule(status=500, verb="patch", resource="multinicnetworks/status", count=1)
        )
        cluster.create(network_body())
        cluster.create(
            network_body(
                "fast",
                ipam=l2,
                namespaces=["team-a"],
                plugin={"cniVersion": "1.0.0", "type": "sriov", "args": {"numVfs": "2"}},
            )
        )
        cluster.create(
            network_body("hostdev", ipam=l2, plugin={"cniVersion": "1.0.0", "type": "host-device"})
        )
        # Three networks for 2 interface indexes: one is unplaced (CIDR status problems).
        crowded = dict(L3_IPAM, interfaceBlock=1, excludeCIDRs=[])
        cluster.set_host_nics(
            "node2",
            [
                ("eth1", "10.0.1.0/24", "10.0.1.13"),
                ("eth2", "10.0.2.0/24", "10.0.2.13"),
                ("eth3", "10.0.3.0/24", "10.0.3.13"),
            ],
            pci=True,
        )
        cluster.create(
            network_body(
                "crowded", ipam=crowded, master_nets=("10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24")
            )
        )
        for name in ("demo", "fast", "hostdev", "crowded"):
            cluster.wait(
                lambda name=name: cluster.status(name).get("configStatus") == "Success",
                f"{name} reconciled",
            )
        cluster.wait(
            lambda: (cluster.cidr("crowded") or {}).get("status", {}).get("problems"),
            "plan problems recorded",
        )
        # A plan edit retires the replaced pools (label + status) instead of deleting them.
        old_pools = set(cluster.pools())
        ipam = json.loads(network_body()["spec"]["ipam"])
        cluster.api.patch(
            API, "MultiNicNetwork", "demo", {"spec": {"ipam": json.dumps({**ipam, "hostBlock": 7})}}
        )
        cluster.wait(
            lambda: all(
                (cluster.pools().get(n) or {}).get("status", {}).get("phase") == "Retired"
                for n in old_pools
            ),
            "replaced pools retired",
        )
        cluster.api.patch(
            API, "Config", "multi-nicd", {"spec": {"daemon": {"image": "registry.example/agent:2"}}}
        )
        cluster.wait(
            lambda: (
                (cluster.api.get("apps/v1", "DaemonSet", "multinic-agent", "default") or {})
                .get("spec", {})
                .get("template", {})
                .get("spec", {})
                .get("containers", [{}])[0]
                .get("image")
                == "registry.example/agent:2"
            ),
            "DaemonSet updated",
        )
        cluster.api.patch(
            API,
            "MultiNicNetwork",
            "fast",
            {"spec": {"plugin": {"args": {"numVfs": "2", "vlan": "7"}}}},
        )
        cluster.wait(
            lambda: '"vlan":7' in cluster.nads("fast")["team-a"]["spec"]["config"], "NAD updated"
        )

        def sriov(kind: str) -> list[dict[str, Any]]:
            return cluster.api.list("sriovnetwork.openshift.io/v1", kind)

        cluster.wait(
            lambda: sriov("SriovNetwork")[0]["spec"].get("vlan") == 7, "SriovNetwork updated"
        )
        cluster.wait(
            lambda: (
                len(sriov("SriovNetworkNodePolicy")[0]["spec"]["nicSelector"]["rootDevices"]) == 4
            ),
            "the policy selects every host's PFs",
        )
        cluster.delete_node("node2")
        cluster.wait(
            lambda: not any(h == "node2" for h, _ in cluster.pod_cidrs("fast")),
            "node2 left the plan",
        )
        cluster.wait(
            lambda: (
                len(sriov("SriovNetworkNodePolicy")[0]["spec"]["nicSelector"]["rootDevices"]) == 2
            ),
            "node2's PFs left the policy",
        )
        cluster.wait(
            lambda: cluster.api.list("v1", "Event", "default"),
            "kopf posted the handler failure as an event",
        )
        cluster.wait(
            lambda: any(
                (e.get("count") or 0) > 1
                for e in cluster.api.list(
                    "v1", "Event", "default", field_selector="reason=AllocationsStranded"
                )
            ),
            "the stranded allocation's Event counted again",
        )
        for name in ("demo", "fast", "hostdev", "crowded"):
            cluster.api.delete(API, "MultiNicNetwork", name)
        cluster.wait(lambda: not cluster.api.list(API, "MultiNicNetwork"), "networks cleaned up")
        calls = {c for m, p, q in op.proxy.calls() if (c := api_call(m, p, q)) is not None}

    unused = []
    for rule in cluster_role_rules(OPERATOR_ROLE):
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                if (group, resource) in UNEXERCISED:
                    continue
                for verb in rule["verbs"]:
                    if (group, resource, verb) not in calls:
                        unused.append((group, resource, verb))
    assert not unused, f"the ClusterRole grants verbs the operator never used: {unused}"


def test_agent_role_grants_what_the_agent_needs() -> None:
    rules = cluster_role_rules("multinic-agent")
    needed = (
        [
            ("multinic.fms.io", resource, v)
            for resource in ("cidrs", "multinicnetworks", "deviceclasses")
            for v in ("get", "list", "watch")
        ]
        + [("multinic.fms.io", "ippools", v) for v in ("get", "list", "watch", "update", "patch")]
        + [
            ("multinic.fms.io", "hostinterfaces", v)
            for v in ("get", "list", "watch", "create", "update", "patch")
        ]
        + [
            ("multinic.fms.io", "hostinterfaces/status", "patch"),
            ("", "nodes", "get"),
            ("", "pods", "get"),
            ("", "pods", "list"),
            ("", "events", "create"),
            ("", "events", "patch"),
        ]
    )
    assert [n for n in needed if not allowed(rules, n)] == []
    # And nothing that would let an agent change a plan, a network, or another host's pools.
    for forbidden in [
        ("multinic.fms.io", "cidrs", "patch"),
        ("multinic.fms.io", "ippools", "delete"),
        ("multinic.fms.io", "multinicnetworks", "patch"),
        ("multinic.fms.io", "deviceclasses", "update"),
        ("", "secrets", "get"),
        ("", "nodes", "patch"),
    ]:
        assert not allowed(rules, forbidden), forbidden


def test_deployment_runs_the_command_under_the_bound_service_account() -> None:
    from .conftest import REPO

    operator_dir = REPO / "deploy" / "operator"
    deployment = yaml.safe_load((operator_dir / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    bindings = [
        d
        for d in yaml.safe_load_all((operator_dir / "rbac.yaml").read_text())
        if d
        and d["kind"] in ("ClusterRoleBinding", "RoleBinding")
        and d["roleRef"]["name"] == OPERATOR_ROLE
    ]
    assert {b["kind"] for b in bindings} == {"ClusterRoleBinding", "RoleBinding"}
    for binding in bindings:
        assert binding["subjects"] == [
            {
                "kind": "ServiceAccount",
                "name": pod["serviceAccountName"],
                "namespace": deployment["metadata"]["namespace"],
            }
        ]
    command = pod["containers"][0]["command"]
    assert command[0] == "multinic-operator"
    assert "--standalone" not in command  # two replicas: leader election must be on
    assert deployment["spec"]["replicas"] == 2
