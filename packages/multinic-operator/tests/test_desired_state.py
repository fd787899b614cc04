"""Desired objects and minimal patches, without an API server."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest
import yaml

from multinic_core.errors import TryAgainError
from multinic_core.hooktypes import DependentObject, NetworkAttachment
from multinic_core.models import Config, HostInterface, MultiNicNetwork
from multinic_core.nad import nad_object
from multinic_core.planner import plan_cidrs, pool_excludes
from multinic_operator.agent import HASH_ANNOTATION, agent_daemonset, default_config
from multinic_operator.batching import ReconcileBatcher
from multinic_operator.desired import (
    cidr_spec_patch,
    dependent_body,
    dependent_patch,
    desired_pools,
    nad_patch,
    pool_patch,
)
from multinic_operator.status import StatusInputs, route_summary, status_patch, success_status

from .conftest import REPO, network_body


def _worked() -> tuple[MultiNicNetwork, list[HostInterface]]:
    """The worked example of SPEC section 2: hosts A, B, C on 10.0.1.0/24 and 10.0.2.0/24."""
    network = MultiNicNetwork.model_validate(network_body())
    network.metadata.uid = "uid-1"
    hosts = [
        HostInterface.model_validate(
            {
                "metadata": {"name": name},
                "spec": {
                    "hostName": name,
                    "interfaces": [
                        {
                            "interfaceName": "eth1",
                            "netAddress": "10.0.1.0/24",
                            "hostIP": f"10.0.1.{ip}",
                        },
                        {
                            "interfaceName": "eth2",
                            "netAddress": "10.0.2.0/24",
                            "hostIP": f"10.0.2.{ip}",
                        },
                    ],
                },
            }
        )
        for name, ip in (("A", 11), ("B", 12), ("C", 13))
    ]
    return network, hosts


def test_pools_of_the_worked_example() -> None:
    network, hosts = _worked()
    plan = plan_cidrs(network, hosts)

    pools = desired_pools("demo", plan.spec, pool_excludes(plan.spec))

    assert pools["demo-192.168.0.0-24"]["spec"] == {
        "podCIDR": "192.168.0.0/24",
        "vlanCIDR": "192.168.0.0/18",
        "netAttachDef": "demo",
        "hostName": "A",
        "interfaceName": "eth1",
        "excludes": ["192.168.0.128/25"],
        "allocations": [],
    }
    assert pools["demo-192.168.129.0-24"]["metadata"]["labels"] == {
        "hostname": "B",
        "netname": "demo",
    }
    assert len(pools) == 6


def test_pool_patch_never_touches_allocations_and_guards_with_resource_version() -> None:
    network, hosts = _worked()
    plan = plan_cidrs(network, hosts)
    desired = desired_pools("demo", plan.spec, pool_excludes(plan.spec))["demo-192.168.0.0-24"]
    existing = json.loads(json.dumps(desired))
    existing["metadata"]["resourceVersion"] = "42"
    existing["spec"]["allocations"] = [{"index": 2, "address": "192.168.0.2"}]
    assert pool_patch(existing, desired) is None

    existing["spec"]["excludes"] = []
    patch = pool_patch(existing, desired)

    assert patch == {
        "metadata": {"resourceVersion": "42"},
        "spec": {"excludes": ["192.168.0.128/25"]},
    }


def test_pool_patch_ignores_spelling_and_order() -> None:
    desired: dict[str, Any] = {
        "metadata": {"labels": {"netname": "n"}},
        "spec": {
            "podCIDR": "10.1.0.0/24",
            "vlanCIDR": "10.1.0.0/16",
            "netAttachDef": "n",
            "hostName": "h",
            "interfaceName": "eth1",
            "excludes": ["10.1.0.8/29", "10.1.0.128/25"],
        },
    }
    existing = {
        "metadata": {"labels": {"netname": "n"}, "resourceVersion": "1"},
        "spec": {**desired["spec"], "excludes": ["10.1.0.128/25", "10.1.0.8/29"]},
    }

    assert pool_patch(existing, desired) is None


def test_unchanged_plan_needs_no_cidr_patch() -> None:
    network, hosts = _worked()
    plan = plan_cidrs(network, hosts)
    stored = {"metadata": {"resourceVersion": "7"}, "spec": plan.spec.to_dict()}

    assert cidr_spec_patch(stored, plan_cidrs(network, hosts, plan.spec).spec) is None
    grown = plan_cidrs(
        network,
        [
            *hosts,
            HostInterface.model_validate(
                {
                    "metadata": {"name": "D"},
                    "spec": {
                        "hostName": "D",
                        "interfaces": [
                            {
                                "interfaceName": "eth1",
                                "netAddress": "10.0.1.0/24",
                                "hostIP": "10.0.1.14",
                            }
                        ],
                    },
                }
            ),
        ],
        plan.spec,
    )
    patch = cidr_spec_patch(stored, grown.spec)
    assert patch is not None
    assert patch["metadata"] == {"resourceVersion": "7"}


def test_nad_patch_adds_owner_and_annotation_but_keeps_equal_config() -> None:
    network, _ = _worked()
    attachment = NetworkAttachment(
        plugin={"type": "sriov", "cniVersion": "1.0.0"},
        annotations={"k8s.v1.cni.cncf.io/resourceName": "x/y"},
    )
    desired = nad_object(network, attachment, "team-a")
    config = json.loads(desired["spec"]["config"])
    # Same content, other formatting, no owner, no annotation (a predecessor's NAD).
    existing = {
        "metadata": {
            "name": "demo",
            "namespace": "team-a",
            "resourceVersion": "3",
            "labels": {"multi-nic-cni-generated": "true"},
        },
        "spec": {"config": json.dumps(config, indent=2)},
    }

    patch = nad_patch(existing, desired, "uid-1")

    assert patch is not None
    assert "spec" not in patch
    assert patch["metadata"]["annotations"] == {"k8s.v1.cni.cncf.io/resourceName": "x/y"}
    assert patch["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    existing["metadata"].update(patch["metadata"])
    assert nad_patch(existing, desired, "uid-1") is None


def test_dependent_patch_replaces_dropped_keys() -> None:
    network, _ = _worked()
    want = dependent_body(
        network,
        DependentObject(
            body={
                "apiVersion": "sriovnetwork.openshift.io/v1",
                "kind": "SriovNetwork",
                "metadata": {"name": "demo-net", "namespace": "ops"},
                "spec": {"resourceName": "r"},
            }
        ),
    )
    assert want["metadata"]["labels"] == {"multinic.fms.io/network": "demo"}
    have = json.loads(json.dumps(want))
    have["metadata"]["resourceVersion"] = "9"
    assert dependent_patch(have, want, "uid-1") is None
    have["spec"]["vlan"] = 5

    patch = dependent_patch(have, want, "uid-1")

    assert patch == {
        "spec": {"resourceName": "r", "vlan": None},
        "metadata": {"resourceVersion": "9"},
    }


def test_status_patch_ignores_timestamps_and_keeps_transition_times() -> None:
    network = MultiNicNetwork.model_validate(network_body())
    network.metadata.generation = 3
    desired = success_status(StatusInputs(network=network, cidr_processed=2)).to_dict()
    first = status_patch(None, desired, "2026-01-01T00:00:00Z")
    assert first is not None
    assert first["observedGeneration"] == 3

    assert status_patch(first, desired, "2026-01-01T00:05:00Z") is None
    changed = success_status(StatusInputs(network=network, cidr_processed=3)).to_dict()
    second = status_patch(first, changed, "2026-01-01T00:10:00Z")
    assert second is not None
    assert second["lastSyncTime"] == "2026-01-01T00:10:00Z"
    ready = next(c for c in second["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T00:00:00Z"


def test_route_status_is_not_applicable_without_l3_routes() -> None:
    body = network_body(
        ipam={"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "vlanMode": "l2"}
    )
    network = MultiNicNetwork.model_validate(body)

    assert route_summary(network, ["a"], {}, 1).state == "N/A"


def test_route_status_waits_for_the_current_generation() -> None:
    network = MultiNicNetwork.model_validate(network_body())
    host = HostInterface.model_validate(
        {
            "metadata": {"name": "a"},
            "spec": {"hostName": "a"},
            "status": {"routes": [{"network": "demo", "status": "Success", "cidrGeneration": 1}]},
        }
    )

    assert route_summary(network, ["a"], {"a": host}, 1).state == "Success"
    waiting = route_summary(network, ["a"], {"a": host}, 2)
    assert waiting.state == "WaitForRoutes"
    assert "a" in waiting.message


def test_daemonset_follows_the_config() -> None:
    config = Config.model_validate(default_config("img:1"))
    first = agent_daemonset(config, "multinic-system")
    config.spec.daemon.env = [{"name": "EXTRA", "value": "1"}]
    config.spec.daemon.image_pull_secret_name = "pull"
    second = agent_daemonset(config, "multinic-system")

    assert (
        first["metadata"]["annotations"][HASH_ANNOTATION]
        != (second["metadata"]["annotations"][HASH_ANNOTATION])
    )
    pod = second["spec"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    env = pod["containers"][0]["env"]
    assert env[0] == {
        "name": "NODE_NAME",
        "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}},
    }
    assert {"name": "EXTRA", "value": "1"} in env
    assert pod["containers"][0]["image"] == "img:1"
    assert agent_daemonset(config, "multinic-system") == second


def test_batcher_collapses_a_burst_into_few_batches() -> None:
    calls: list[set[str] | None] = []

    def reconcile(names: set[str] | None) -> None:
        calls.append(names)

    async def scenario() -> None:
        batcher = ReconcileBatcher(reconcile, window=0.2)
        task = asyncio.create_task(batcher.run())
        for i in range(1000):
            batcher.request([f"net{i % 3}"])
            if i % 100 == 0:
                await asyncio.sleep(0.01)
        deadline = time.monotonic() + 5
        while (batcher.pending or not calls) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        task.cancel()

    asyncio.run(scenario())

    assert 1 <= len(calls) <= 3
    assert set().union(*(c or set() for c in calls)) == {"net0", "net1", "net2"}


def test_batcher_retries_a_failed_batch() -> None:
    calls: list[set[str] | None] = []

    def reconcile(names: set[str] | None) -> None:
        calls.append(names)
        if len(calls) == 1:
            raise TryAgainError("API server unavailable")

    async def scenario() -> ReconcileBatcher:
        batcher = ReconcileBatcher(reconcile, window=0.05, retry_delay=0.05)
        task = asyncio.create_task(batcher.run())
        batcher.request(["demo"])
        deadline = time.monotonic() + 5
        while batcher.batches < 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        task.cancel()
        return batcher

    batcher = asyncio.run(scenario())

    assert calls == [{"demo"}, {"demo"}]
    assert (batcher.failures, batcher.batches) == (1, 1)


@pytest.mark.parametrize("name", ["ipvlan-l3", "macvlan", "sriov", "host-device"])
def test_sample_networks_validate(name: str) -> None:
    path = REPO / "deploy" / "operator" / "networks" / f"{name}.yaml"
    network = MultiNicNetwork.model_validate(yaml.safe_load(path.read_text()))
    assert network.spec.plugin.type == ("ipvlan" if name == "ipvlan-l3" else name)


def test_sample_config_validates_and_renders() -> None:
    body = yaml.safe_load((REPO / "deploy" / "operator" / "config.yaml").read_text())
    config = Config.model_validate(body)
    assert config.name == "multi-nicd"
    pod = agent_daemonset(config, "multinic-system")["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == config.spec.daemon.image


def test_nad_loses_the_resource_name_when_the_driver_drops_it() -> None:
    network, _ = _worked()
    desired = nad_object(network, NetworkAttachment(plugin={"type": "ipvlan"}), "default")
    existing = json.loads(json.dumps(desired))
    existing["metadata"]["resourceVersion"] = "4"
    existing["metadata"]["annotations"] = {
        "k8s.v1.cni.cncf.io/resourceName": "openshift.io/x",
        "team": "kept",
    }

    patch = nad_patch(existing, desired, "uid-1")

    assert patch == {
        "metadata": {
            "annotations": {"k8s.v1.cni.cncf.io/resourceName": None},
            "resourceVersion": "4",
        }
    }
