"""The agent's Kubernetes side against the local API server (multinic-sim).

HostInterface from discovery, host routes from CIDR plans with their status,
the IPPool allocation mirror (also through a 409 storm), leak collection that
never frees on an API error, and a CNI ADD whose pools exist only in the API.
Netlink tests run on a host network namespace with veth NICs (root).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException

from multinic_agent.cni_server import CniServer
from multinic_agent.host_sync import HostInterfaceSync
from multinic_agent.kube_api import ResourceWatch
from multinic_agent.kube_state import KubeNodeState
from multinic_agent.node_state import FileNodeState
from multinic_agent.pod_netns import in_netns
from multinic_agent.pool_mirror import IPPoolMirror, LeakCollector
from multinic_agent.records import AttachmentRecord, RecordStore
from multinic_agent.route_sync import CidrRouteReconciler
from multinic_core.models import CIDRSpec, InterfaceInfo
from multinic_core.shards import shard_labels, shard_name, split_plan
from multinic_ipam.journal import AllocationJournal, PoolBlock
from multinic_sim.testing import KubeTestApi, wait_for

GROUP, VERSION = "multinic.fms.io", "v1"
CRD_DIR = Path(__file__).resolve().parents[3] / "deploy" / "crds"
VENV_BIN = Path(sys.executable).parent
SYSTEM_CNI = "/usr/lib/cni"


# --------------------------------------------------------------------------- helpers


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(ip("-n", netns, "-j", *args).stdout or "[]")


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


@contextlib.contextmanager
def running(work: Callable[[], Coroutine[Any, Any, None]]) -> Iterator[None]:
    """Run ``work()`` in an event loop of its own thread for the ``with`` block."""
    loop = asyncio.new_event_loop()
    task = loop.create_task(work())
    failure: list[BaseException] = []

    def run() -> None:
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        except BaseException as e:
            failure.append(e)
        finally:
            loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        loop.call_soon_threadsafe(task.cancel)
        thread.join(30)
    if failure:
        raise failure[0]


class ClusterObjects:
    """Cluster-scoped multinic objects a test created; all deleted afterwards."""

    def __init__(self, kube_api: KubeTestApi) -> None:
        self.api = kube_api.custom_objects
        self.created: list[tuple[str, str]] = []

    def create(self, plural: str, body: dict[str, Any]) -> dict[str, Any]:
        self.created.append((plural, body["metadata"]["name"]))
        created: dict[str, Any] = self.api.create_cluster_custom_object(
            GROUP, VERSION, plural, body
        )
        return created

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.api.get_cluster_custom_object(GROUP, VERSION, plural, name)
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return found

    def patch(self, plural: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        patched: dict[str, Any] = self.api.patch_cluster_custom_object(
            GROUP, VERSION, plural, name, patch
        )
        return patched

    def delete(self, plural: str, name: str) -> None:
        with contextlib.suppress(ApiException):
            self.api.delete_cluster_custom_object(GROUP, VERSION, plural, name)

    def track(self, plural: str, name: str) -> None:
        self.created.append((plural, name))

    def cleanup(self) -> None:
        for plural, name in reversed(self.created):
            self.delete(plural, name)


@pytest.fixture(scope="module")
def crds(kube_api: KubeTestApi) -> None:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        kube_api.apply_crd(yaml.safe_load(path.read_text()))


@pytest.fixture
def objects(kube_api: KubeTestApi, crds: None) -> Iterator[ClusterObjects]:
    tracked = ClusterObjects(kube_api)
    try:
        yield tracked
    finally:
        tracked.cleanup()


@pytest.fixture
def host_netns() -> Iterator[str]:
    """A host namespace whose eth1/eth2 (10.0.1.11/24, 10.0.2.11/24) are veth NICs."""
    name = unique("mnk-host")
    ip("netns", "add", name)
    try:
        ip("-n", name, "link", "set", "lo", "up")
        for nic, address in (("eth1", "10.0.1.11/24"), ("eth2", "10.0.2.11/24")):
            ip("-n", name, "link", "add", nic, "type", "veth", "peer", "name", f"{nic}p")
            ip("-n", name, "addr", "add", address, "dev", nic)
            ip("-n", name, "link", "set", nic, "up")
            ip("-n", name, "link", "set", f"{nic}p", "up")
        yield name
    finally:
        ip("netns", "del", name, check=False)


def netns_path(name: str) -> str:
    return f"/var/run/netns/{name}"


def spec_nics(hif: dict[str, Any] | None) -> dict[str, str]:
    """interfaceName -> netAddress of a HostInterface."""
    if hif is None:
        return {}
    return {i["interfaceName"]: i.get("netAddress", "") for i in hif["spec"]["interfaces"]}


def pool_body(network: str, node: str, nic: str, pod_cidr: str, vlan_cidr: str) -> dict[str, Any]:
    name = f"{network}-{pod_cidr.replace('/', '-')}"
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "IPPool",
        "metadata": {"name": name, "labels": {"hostname": node, "netname": network}},
        "spec": {
            "podCIDR": pod_cidr,
            "vlanCIDR": vlan_cidr,
            "netAttachDef": network,
            "hostName": node,
            "interfaceName": nic,
            "excludes": [],
            "allocations": [],
        },
    }


def cidr_body(
    network: str, hosts: list[tuple[str, str, str]], vlan_mode: str = "l3"
) -> dict[str, Any]:
    """A one-interface plan on eth1 (10.0.1.0/24); hosts are (name, hostIP, podCIDR)."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CIDR",
        "metadata": {"name": network},
        "spec": {
            "config": {
                "name": network,
                "type": "ipvlan",
                "subnet": "192.168.0.0/16",
                "masterNets": ["10.0.1.0/24"],
                "hostBlock": 6,
                "interfaceBlock": 2,
                "excludeCIDRs": [],
                "vlanMode": vlan_mode,
            },
            "cidr": [
                {
                    "netAddress": "10.0.1.0/24",
                    "interfaceIndex": 0,
                    "vlanCIDR": "192.168.0.0/18",
                    "hosts": [
                        {
                            "hostIndex": index,
                            "hostName": name,
                            "interfaceName": "eth1",
                            "hostIP": host_ip,
                            "podCIDR": pod_cidr,
                            "ippool": f"{network}-{pod_cidr.replace('/', '-')}",
                        }
                        for index, (name, host_ip, pod_cidr) in enumerate(hosts)
                    ],
                }
            ],
        },
    }


def shard_bodies(
    network: str, hosts: list[tuple[int, str, str, str]], budget: int, at_least: int = 1
) -> list[dict[str, Any]]:
    """``cidr_body``'s plan split as the operator stores it: the CIDR, then its shards.

    hosts are (hostIndex, name, hostIP, podCIDR); ``budget`` host blocks per shard.
    """
    whole = cidr_body(network, [(name, host_ip, pod) for _, name, host_ip, pod in hosts])
    for host, (index, *_) in zip(whole["spec"]["cidr"][0]["hosts"], hosts, strict=True):
        host["hostIndex"] = index
    shards = split_plan(CIDRSpec.model_validate(whole["spec"]), budget, at_least)
    return [
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CIDR",
            "metadata": {"name": shard_name(network, k), "labels": shard_labels(network, k)},
            "spec": shard.to_dict(),
        }
        for k, shard in enumerate(shards)
    ]


# --------------------------------------------------------------------------- HostInterface


@pytest.mark.root
def test_host_interface_follows_the_nics(
    kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str
) -> None:
    node = unique("node")
    objects.track("hostinterfaces", node)
    # A resync interval of an hour: only netlink events can explain an update.
    sync = HostInterfaceSync(
        kube_api.api_client, node, netns=netns_path(host_netns), resync_interval=3600
    )
    with running(sync.run):
        # The status is a subresource: a real server stores it with a second
        # write, after the create.
        wait_for(
            lambda: (
                spec_nics(objects.get("hostinterfaces", node))
                == {"eth1": "10.0.1.0/24", "eth2": "10.0.2.0/24"}
                and ((objects.get("hostinterfaces", node) or {}).get("status") or {}).get(
                    "lastDiscoveryTime"
                )
            ),
            10,
            "HostInterface with eth1 and eth2, and its discovery time",
        )
        hif = objects.get("hostinterfaces", node)
        assert hif is not None
        assert hif["spec"]["hostName"] == node
        assert {i["hostIP"] for i in hif["spec"]["interfaces"]} == {"10.0.1.11", "10.0.2.11"}

        ip("-n", host_netns, "addr", "del", "10.0.1.11/24", "dev", "eth1")
        wait_for(
            lambda: spec_nics(objects.get("hostinterfaces", node)) == {"eth2": "10.0.2.0/24"},
            10,
            "eth1 gone from the HostInterface after its address was removed",
        )
        ip("-n", host_netns, "addr", "add", "10.0.3.11/24", "dev", "eth1")
        wait_for(
            lambda: (
                spec_nics(objects.get("hostinterfaces", node))
                == {"eth1": "10.0.3.0/24", "eth2": "10.0.2.0/24"}
            ),
            10,
            "eth1 back with its new network",
        )
        # The sync that wrote the spec writes the discovery time after it (a
        # second write on a real server): let that sync finish first. An event
        # makes sure a sync ends after this point.
        syncs = sync.syncs
        ip("-n", host_netns, "link", "set", "eth2p", "mtu", "1450")
        wait_for(lambda: sync.syncs > syncs, 10, "the sync that wrote eth1 to finish")
        # Nothing changed: the object is not written again.
        before = objects.get("hostinterfaces", node)
        assert before is not None
        syncs = sync.syncs
        ip("-n", host_netns, "link", "set", "eth2p", "mtu", "1400")  # an event, no NIC change
        wait_for(lambda: sync.syncs > syncs, 10, "a discovery after the event")
        after = objects.get("hostinterfaces", node)
        assert after is not None
        assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


@pytest.mark.root
def test_periodic_resync_repairs_the_host_interface(
    kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str
) -> None:
    node = unique("node")
    objects.track("hostinterfaces", node)
    sync = HostInterfaceSync(
        kube_api.api_client, node, netns=netns_path(host_netns), resync_interval=1
    )
    with running(sync.run):
        wait_for(
            lambda: len(spec_nics(objects.get("hostinterfaces", node))) == 2, 10, "HostInterface"
        )
        # Someone else empties the spec; no netlink event happens.
        objects.patch("hostinterfaces", node, {"spec": {"interfaces": []}})
        assert spec_nics(objects.get("hostinterfaces", node)) == {}
        wait_for(
            lambda: len(spec_nics(objects.get("hostinterfaces", node))) == 2,
            10,
            "the periodic resync to restore the NICs",
        )


@pytest.mark.root
def test_unmanaged_host_interface_is_left_untouched(
    kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str
) -> None:
    node = unique("node")
    body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "HostInterface",
        "metadata": {"name": node, "labels": {"multi-nic-unmanaged": "true"}},
        "spec": {
            "hostName": node,
            "interfaces": [{"interfaceName": "ib0", "netAddress": "", "hostIP": ""}],
        },
    }
    created = objects.create("hostinterfaces", body)
    sync = HostInterfaceSync(kube_api.api_client, node, netns=netns_path(host_netns))
    written, outcome = sync.sync_once()
    assert not written
    assert "unmanaged" in outcome
    after = objects.get("hostinterfaces", node)
    assert after is not None
    assert after["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
    assert spec_nics(after) == {"ib0": ""}


# --------------------------------------------------------------------------- routes


def table_routes(netns: str, table: int) -> dict[str, tuple[str, str]]:
    """dst -> (gateway, dev) in ``table`` of ``netns``."""
    routes = ip_json(netns, "route", "show", "table", str(table))
    return {r["dst"]: (r.get("gateway", ""), r.get("dev", "")) for r in routes}


def rules_of(netns: str, table: int) -> list[str]:
    return [
        f"{r['src']}/{r['srclen']}"
        for r in ip_json(netns, "rule", "show")
        if str(r.get("table")) == str(table) and "src" in r
    ]


def route_status(objects: ClusterObjects, node: str) -> dict[str, dict[str, Any]]:
    hif = objects.get("hostinterfaces", node) or {}
    return {r["network"]: r for r in (hif.get("status") or {}).get("routes") or []}


def synced_node(kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str) -> str:
    """A new node whose HostInterface the agent wrote from ``host_netns``'s NICs."""
    node = unique("node")
    objects.track("hostinterfaces", node)
    HostInterfaceSync(kube_api.api_client, node, netns=netns_path(host_netns)).sync_once()
    return node


@pytest.mark.root
def test_routes_follow_the_cidr_plan(
    kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str, tmp_path: Path
) -> None:
    node = synced_node(kube_api, objects, host_netns)
    network = unique("l3net")
    plan = [
        (node, "10.0.1.11", "192.168.0.0/24"),
        ("host-b", "10.0.1.12", "192.168.2.0/24"),
        ("host-c", "10.0.1.13", "192.168.3.0/24"),
    ]
    objects.track("cidrs", network)
    cidr = objects.create("cidrs", cidr_body(network, plan))
    reconciler = CidrRouteReconciler(
        kube_api.api_client, node, tmp_path, netns=netns_path(host_netns), resync_interval=3600
    )
    with running(reconciler.run):
        wait_for(
            lambda: network in reconciler.tables.registry.tables, 10, "a table for the network"
        )
        table = reconciler.tables.registry.tables[network]
        wait_for(
            lambda: (
                table_routes(host_netns, table)
                == {
                    "192.168.2.0/24": ("10.0.1.12", "eth1"),
                    "192.168.3.0/24": ("10.0.1.13", "eth1"),
                }
            ),
            10,
            "routes to host-b and host-c",
        )
        assert rules_of(host_netns, table) == ["192.168.0.0/16"]
        # the main table is not touched
        assert all(r.get("dst") != "192.168.2.0/24" for r in ip_json(host_netns, "route", "show"))
        wait_for(
            lambda: route_status(objects, node).get(network, {}).get("status") == "Success",
            10,
            "status.routes Success",
        )
        assert (
            route_status(objects, node)[network]["cidrGeneration"] == cidr["metadata"]["generation"]
        )

        # host-c leaves: its route goes, host-b's stays (the same route, not re-added)
        changed = objects.patch(
            "cidrs", network, {"spec": {"cidr": cidr_body(network, plan[:2])["spec"]["cidr"]}}
        )
        assert changed["metadata"]["generation"] > cidr["metadata"]["generation"]
        wait_for(
            lambda: table_routes(host_netns, table) == {"192.168.2.0/24": ("10.0.1.12", "eth1")},
            10,
            "host-c's route removed",
        )
        wait_for(
            lambda: (
                route_status(objects, node).get(network, {}).get("cidrGeneration")
                == changed["metadata"]["generation"]
            ),
            10,
            "status.routes with the new CIDR generation",
        )

        # the CIDR is deleted: table and rule go, and so does the status entry
        objects.delete("cidrs", network)
        wait_for(lambda: table_routes(host_netns, table) == {}, 10, "the table emptied")
        wait_for(lambda: rules_of(host_netns, table) == [], 10, "the rule removed")
        wait_for(lambda: network not in route_status(objects, node), 10, "status entry removed")
        assert network not in reconciler.tables.registry.tables


@pytest.mark.root
def test_routes_follow_a_plan_split_into_cidr_shards(
    kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str, tmp_path: Path
) -> None:
    node = synced_node(kube_api, objects, host_netns)
    network = unique("l3net")
    # Two hosts per shard (a budget of 2 host blocks, one interface entry): this
    # node in the CIDR itself, host-b and host-c in shard 1, host-d in shard 2.
    plan = [
        (0, node, "10.0.1.11", "192.168.0.0/24"),
        (2, "host-b", "10.0.1.12", "192.168.2.0/24"),
        (3, "host-c", "10.0.1.13", "192.168.3.0/24"),
        (4, "host-d", "10.0.1.14", "192.168.4.0/24"),
    ]
    bodies = shard_bodies(network, plan, budget=2)
    names = [b["metadata"]["name"] for b in bodies]
    assert names == [network, f"{network}.shard-1", f"{network}.shard-2"]
    assert [[h["hostName"] for h in b["spec"]["cidr"][0]["hosts"]] for b in bodies] == [
        [node],
        ["host-b", "host-c"],
        ["host-d"],
    ]
    for body in bodies:
        objects.track("cidrs", body["metadata"]["name"])
        objects.create("cidrs", body)

    def generations() -> int:
        found = [objects.get("cidrs", name) for name in names]
        return sum(int(o["metadata"]["generation"]) for o in found if o is not None)

    def status() -> dict[str, Any]:
        return route_status(objects, node).get(network, {})

    reconciler = CidrRouteReconciler(
        kube_api.api_client, node, tmp_path, netns=netns_path(host_netns), resync_interval=3600
    )
    with running(reconciler.run):
        wait_for(
            lambda: network in reconciler.tables.registry.tables, 10, "a table for the network"
        )
        # Only the network gets a table: its shards are not networks of their own.
        assert list(reconciler.tables.registry.tables) == [network]
        table = reconciler.tables.registry.tables[network]
        everyone = {
            "192.168.2.0/24": ("10.0.1.12", "eth1"),
            "192.168.3.0/24": ("10.0.1.13", "eth1"),
            "192.168.4.0/24": ("10.0.1.14", "eth1"),
        }
        wait_for(
            lambda: table_routes(host_netns, table) == everyone,
            10,
            "routes to the hosts of every shard",
        )
        assert rules_of(host_netns, table) == ["192.168.0.0/16"]
        wait_for(lambda: status().get("status") == "Success", 10, "status.routes Success")
        assert generations() == 3
        assert status()["cidrGeneration"] == 3
        assert set(route_status(objects, node)) == {network}

        # host-c leaves: only shard 1 is rewritten; only host-c's route goes.
        left = shard_bodies(network, [p for p in plan if p[1] != "host-c"], budget=2)
        objects.patch("cidrs", names[1], {"spec": {"cidr": left[1]["spec"]["cidr"]}})
        without_c = {k: v for k, v in everyone.items() if k != "192.168.3.0/24"}
        wait_for(lambda: table_routes(host_netns, table) == without_c, 10, "host-c's route removed")
        assert generations() == 4
        wait_for(
            lambda: status().get("cidrGeneration") == 4,
            10,
            "status.routes with the sum of the shards' generations",
        )
        assert status()["status"] == "Success"

        # Shard 2 is rewritten for another config (and host-d moved) before the
        # CIDR itself: the shards disagree, the routes stay as they were.
        moved = shard_bodies(
            network, [*plan[:2], (4, "host-d", "10.0.1.99", "192.168.4.0/24")], budget=2
        )
        objects.patch(
            "cidrs",
            names[2],
            {"spec": {"config": {"hostBlock": 7}, "cidr": moved[2]["spec"]["cidr"]}},
        )
        wait_for(
            lambda: status().get("status") == "WaitForRoutes", 10, "WaitForRoutes on the mismatch"
        )
        assert "CIDR shard 2 has another config" in status()["message"]
        assert status()["cidrGeneration"] == generations() == 5
        assert table_routes(host_netns, table) == without_c
        assert rules_of(host_netns, table) == ["192.168.0.0/16"]

        # The shards agree again: the plan is followed, host-d via its new address.
        objects.patch("cidrs", names[2], {"spec": {"config": {"hostBlock": 6}}})
        with_moved_d = {**without_c, "192.168.4.0/24": ("10.0.1.99", "eth1")}
        wait_for(
            lambda: table_routes(host_netns, table) == with_moved_d,
            10,
            "host-d's route via its new address",
        )
        wait_for(lambda: status().get("status") == "Success", 10, "Success again")
        assert status()["cidrGeneration"] == generations() == 6

        # A shard in the middle is deleted (by hand): its hosts' routes stay
        # (they are not in a plan that is whole) until it is back.
        objects.delete("cidrs", names[1])
        wait_for(
            lambda: status().get("status") == "WaitForRoutes", 10, "WaitForRoutes without shard 1"
        )
        assert f"CIDR {names[1]} is missing" in status()["message"]
        assert table_routes(host_netns, table) == with_moved_d
        objects.create("cidrs", left[1])
        wait_for(lambda: status().get("status") == "Success", 10, "Success with shard 1 back")
        assert table_routes(host_netns, table) == with_moved_d

        # The CIDR named after the network is deleted: the shards left behind
        # are no plan, so the table, the rule and the status entry go.
        objects.delete("cidrs", network)
        wait_for(lambda: table_routes(host_netns, table) == {}, 10, "the table emptied")
        wait_for(lambda: rules_of(host_netns, table) == [], 10, "the rule removed")
        wait_for(lambda: network not in route_status(objects, node), 10, "status entry removed")
        assert network not in reconciler.tables.registry.tables
        assert all(objects.get("cidrs", name) is not None for name in names[1:])
        assert route_status(objects, node) == {}


@pytest.mark.root
def test_l2_plans_get_no_routes_api_errors_remove_nothing_and_leaving_does(
    kube_api: KubeTestApi, objects: ClusterObjects, host_netns: str, tmp_path: Path
) -> None:
    node = unique("node")
    l2, l3 = unique("l2net"), unique("l3net")
    objects.track("hostinterfaces", node)
    HostInterfaceSync(kube_api.api_client, node, netns=netns_path(host_netns)).sync_once()
    plan = [(node, "10.0.1.11", "192.168.0.0/24"), ("host-b", "10.0.1.12", "192.168.2.0/24")]
    objects.track("cidrs", l2)
    objects.create("cidrs", cidr_body(l2, plan, vlan_mode="l2"))
    objects.track("cidrs", l3)
    objects.create("cidrs", cidr_body(l3, plan))
    reconciler = CidrRouteReconciler(
        kube_api.api_client, node, tmp_path, netns=netns_path(host_netns), resync_interval=0.5
    )
    with running(reconciler.run):
        wait_for(
            lambda: route_status(objects, node).get(l3, {}).get("status") == "Success",
            10,
            "l3 synced",
        )
        assert list(reconciler.tables.registry.tables) == [l3]
        table = reconciler.tables.registry.tables[l3]
        # The API fails every list and watch of CIDRs for a while: routes stay.
        rule = kube_api.faults.add(resource="cidrs", status=500, count=None)
        try:
            kube_api.drop_watches("cidrs")
            passes = reconciler.passes
            wait_for(lambda: reconciler.passes >= passes + 3, 10, "resyncs during the outage")
            assert rule.hits > 0
            assert table_routes(host_netns, table) == {"192.168.2.0/24": ("10.0.1.12", "eth1")}
        finally:
            kube_api.faults.remove(rule.id)
        # This node leaves the plan: its routes go and the status waits for a new plan.
        without = cidr_body(l3, [plan[1]])["spec"]["cidr"]
        objects.patch("cidrs", l3, {"spec": {"cidr": without}})
        wait_for(
            lambda: route_status(objects, node).get(l3, {}).get("status") == "WaitForRoutes",
            10,
            "WaitForRoutes",
        )
        assert table_routes(host_netns, table) == {}
        assert rules_of(host_netns, table) == []


# --------------------------------------------------------------------------- node state, IPPools


def test_watch_resumes_and_relists_after_410(
    kube_api: KubeTestApi, objects: ClusterObjects
) -> None:
    network = unique("net")
    first = pool_body(network, "n1", "eth1", "192.168.0.0/24", "192.168.0.0/18")
    second = pool_body(network, "n1", "eth2", "192.168.128.0/24", "192.168.128.0/18")
    objects.create("ippools", first)
    watch = ResourceWatch(kube_api.api_client, "ippools", label_selector=f"netname={network}")
    watch.start()
    try:
        assert watch.wait_synced(10)
        assert [o["metadata"]["name"] for o in watch.items()] == [first["metadata"]["name"]]
        assert watch.relists == 1
        # A dropped stream resumes from the last resourceVersion: no relist.
        kube_api.drop_watches("ippools")
        objects.create("ippools", second)
        wait_for(lambda: len(watch.items()) == 2, 10, "the second pool through the watch")
        assert watch.relists == 1
        # Disconnected while the pool is deleted and the history compacted: the
        # resumed watch gets 410, lists again and sees the deletion it missed.
        blocked = kube_api.faults.add(verb="watch", resource="ippools", status=500, count=None)
        try:
            kube_api.drop_watches("ippools")
            objects.delete("ippools", first["metadata"]["name"])
            kube_api.compact()
            wait_for(lambda: blocked.hits > 0, 10, "a refused watch")
            assert len(watch.items()) == 2
        finally:
            kube_api.faults.remove(blocked.id)
        wait_for(lambda: len(watch.items()) == 1, 10, "the deletion seen after the relist")
        assert [o["metadata"]["name"] for o in watch.items()] == [second["metadata"]["name"]]
        assert watch.relists == 2
    finally:
        watch.stop()


def test_kube_node_state_serves_the_nodes_pools(
    kube_api: KubeTestApi, objects: ClusterObjects
) -> None:
    node, network = unique("node"), unique("net")
    for body in (
        pool_body(network, node, "eth1", "192.168.0.0/24", "192.168.0.0/18"),
        pool_body(network, node, "eth2", "192.168.128.0/24", "192.168.128.0/18"),
        pool_body(network, "other-node", "eth1", "192.168.1.0/24", "192.168.0.0/18"),
    ):
        objects.create("ippools", body)
    state = KubeNodeState(kube_api.api_client, node).start()
    try:
        assert state.wait_synced(10)
        assert [(p.interface_name, p.pod_cidr) for p in state.pools_for(network)] == [
            ("eth1", "192.168.0.0/24"),
            ("eth2", "192.168.128.0/24"),
        ]
        assert state.network(network) is None
        objects.create(
            "deviceclasses",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "DeviceClass",
                "metadata": {"name": network},
                "spec": {"ids": [{"vendor": "15b3", "products": ["1017"]}]},
            },
        )
        wait_for(lambda: state.device_class(network) is not None, 10, "the DeviceClass")
        found = state.device_class(network)
        assert found is not None
        assert found.matches("15b3", "1017")
        objects.delete("ippools", f"{network}-192.168.128.0-24")
        wait_for(lambda: len(state.pools_for(network)) == 1, 10, "the deleted pool gone")

        # NICs: discovery's until the HostInterface exists, then the HostInterface's.
        local = [InterfaceInfo.model_validate({"interfaceName": "eth9", "hostIP": "10.9.0.1"})]
        state.local_nics = lambda: local
        assert [n.interface_name for n in state.nics()] == ["eth9"]
        objects.create(
            "hostinterfaces",
            {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": "HostInterface",
                "metadata": {"name": node},
                "spec": {
                    "hostName": node,
                    "interfaces": [
                        {"interfaceName": "eth1", "netAddress": "10.0.1.0/24", "hostIP": "10.0.1.5"}
                    ],
                },
            },
        )
        wait_for(lambda: [n.interface_name for n in state.nics()] == ["eth1"], 10, "the NICs")
    finally:
        state.stop()


def allocations(objects: ClusterObjects, name: str) -> list[dict[str, Any]]:
    pool = objects.get("ippools", name) or {}
    return list((pool.get("spec") or {}).get("allocations") or [])


def test_pool_mirror_writes_the_journal_and_survives_a_conflict_storm(
    kube_api: KubeTestApi, objects: ClusterObjects, tmp_path: Path
) -> None:
    node, network = unique("node"), unique("net")
    first = pool_body(network, node, "eth1", "192.168.0.0/24", "192.168.0.0/18")
    # An entry nobody's journal knows (the predecessor's): it is kept.
    legacy = {"pod": "old", "namespace": "default", "index": 200, "address": "192.168.0.200"}
    first["spec"]["allocations"] = [legacy]
    second = pool_body(network, node, "eth2", "192.168.128.0/24", "192.168.128.0/18")
    for body in (first, second):
        objects.create("ippools", body)
    names = [first["metadata"]["name"], second["metadata"]["name"]]
    blocks = [
        PoolBlock(names[0], "192.168.0.0/24", "192.168.0.0/18", "eth1"),
        PoolBlock(names[1], "192.168.128.0/24", "192.168.128.0/18", "eth2"),
    ]
    journal = AllocationJournal(tmp_path)
    state = KubeNodeState(kube_api.api_client, node).start()
    try:
        assert state.wait_synced(10)
        mirror = IPPoolMirror(kube_api.api_client, journal, state.pools)
        for i in range(3):
            journal.allocate(network, f"c{i}", "net1", blocks, pod=f"p{i}", namespace="ns")
        assert mirror.mirror_once() == 2
        assert [
            (a["address"], a.get("containerID", "")) for a in allocations(objects, names[0])
        ] == [
            ("192.168.0.1", "c0"),
            ("192.168.0.2", "c1"),
            ("192.168.0.3", "c2"),
            ("192.168.0.200", ""),
        ]
        assert [a["ifName"] for a in allocations(objects, names[1])] == ["net1"] * 3
        # A second pass with nothing new writes nothing.
        assert mirror.mirror_once() == 0

        storm = kube_api.faults.add(verb="patch", resource="ippools", status=409, count=7)
        journal.release(network, "c1", "net1")
        journal.allocate(network, "c3", "net1", blocks, pod="p3", namespace="ns")
        # Each 409 re-reads the pool and tries again: one pass gets through.
        assert mirror.mirror_once() == 2
        assert storm.hits == 7
        for name in names:
            expected = [e.ippool_allocation() for e in journal.pool_allocations(name)]
            got = [a for a in allocations(objects, name) if a.get("containerID")]
            assert got == expected
        assert legacy in allocations(objects, names[0])
        assert "c1" not in {a.get("containerID") for a in allocations(objects, names[0])}
    finally:
        state.stop()
        journal.close()


# --------------------------------------------------------------------------- leak collection


def make_pod(kube_api: KubeTestApi, namespace: str, name: str) -> str:
    pod = kube_api.core_v1.create_namespaced_pod(
        namespace,
        {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    return str(pod.metadata.uid)


def test_leak_collection_frees_only_pods_known_to_be_gone(
    kube_api: KubeTestApi, kube_namespace: str, tmp_path: Path
) -> None:
    network = unique("net")
    block = [PoolBlock(f"{network}-192.168.0.0-24", "192.168.0.0/24", "192.168.0.0/18", "eth1")]
    journal = AllocationJournal(tmp_path)
    records = RecordStore(tmp_path)
    server = CniServer(
        node="n", node_state=FileNodeState(tmp_path / "none.json"), journal=journal, records=records
    )
    alive_uid = make_pod(kube_api, kube_namespace, "alive")
    make_pod(kube_api, kube_namespace, "renamed")
    for cid, pod in (("c-alive", "alive"), ("c-gone", "gone"), ("c-renamed", "renamed")):
        journal.allocate(network, cid, "net1", block, pod=pod, namespace=kube_namespace)
    # An attachment recorded for an earlier pod of the same name: another uid now.
    records.put(
        AttachmentRecord(
            container_id="c-renamed",
            ifname="net1",
            netns="",
            network=network,
            cni_version="1.0.0",
            ipam_type="multi-nic-ipam",
            ipam={},
            delegates=[],
            addresses=["192.168.0.3/18"],
            pod="renamed",
            namespace=kube_namespace,
            pod_uid="uid-of-an-earlier-pod",
        )
    )
    collector = LeakCollector(kube_api.api_client, server)
    try:
        released = asyncio.run(collector.collect_once())
        assert sorted(released) == [(network, "c-gone", "net1"), (network, "c-renamed", "net1")]
        assert journal.attachments() == [(network, "c-alive", "net1")]
        assert records.all() == []

        # While the pods API answers 500, nothing is freed, even for a deleted pod.
        kube_api.core_v1.delete_namespaced_pod("alive", kube_namespace)
        outage = kube_api.faults.add(verb="get", resource="pods", status=500, count=None)
        try:
            assert asyncio.run(collector.collect_once()) == []
            assert outage.hits >= 1
            assert journal.attachments() == [(network, "c-alive", "net1")]
        finally:
            kube_api.faults.remove(outage.id)
        # A pod of that name exists again, with another uid: the journal has no uid
        # to compare, so it is kept (never freed on doubt).
        assert make_pod(kube_api, kube_namespace, "alive") != alive_uid
        assert asyncio.run(collector.collect_once()) == []
        kube_api.core_v1.delete_namespaced_pod("alive", kube_namespace)
        assert asyncio.run(collector.collect_once()) == [(network, "c-alive", "net1")]
        assert journal.attachments() == []
    finally:
        journal.close()


# --------------------------------------------------------------------------- the agent process


class NetnsPortForward:
    """Listens on 127.0.0.1 inside a network namespace and relays to ``target``.

    The agent runs in the host namespace, as on a node; the local API server
    listens on the test's own loopback.
    """

    def __init__(self, netns: str, target: tuple[str, int]) -> None:
        self.target = target
        self.listener = in_netns(netns, lambda: socket.create_server(("127.0.0.1", 0)))
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.target)
            except OSError:
                return
            self.sockets += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        for s in self.sockets:
            with contextlib.suppress(OSError):
                s.close()


def shim_call(
    shim: Path, socket_path: Path, command: str, netns: str, config: dict[str, Any]
) -> subprocess.CompletedProcess[str]:
    """The shim exec'd as a runtime does, for container ``c1`` of pod default/web."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": netns,
        "CNI_IFNAME": "net1",
        "CNI_PATH": SYSTEM_CNI,
        "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "MULTINIC_AGENT_SOCKET": str(socket_path),
    }
    return subprocess.run(
        [str(shim)],
        input=json.dumps(config),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("shim_kind", ["python", "compiled"])
def test_agent_adds_a_pod_with_pools_only_in_the_api(
    kube_api: KubeTestApi,
    objects: ClusterObjects,
    host_netns: str,
    tmp_path: Path,
    *,
    shim_kind: str,
    request: pytest.FixtureRequest,
) -> None:
    if not Path(SYSTEM_CNI, "macvlan").exists():
        pytest.skip(f"no CNI plugins in {SYSTEM_CNI}: apt-get install containernetworking-plugins")
    sim = kube_api.require_sim()
    from multinic_sim.kubeconfig import write_kubeconfig

    # Imported here: test_crash_storm_api.py loads this module outside its package.
    from .conftest import SERVER_NETCONF

    node, network = unique("node"), unique("net")
    objects.track("hostinterfaces", node)
    for body in (
        pool_body(network, node, "eth1", "192.168.0.0/24", "192.168.0.0/18"),
        pool_body(network, node, "eth2", "192.168.128.0/24", "192.168.128.0/18"),
    ):
        objects.create("ippools", body)
    names = [f"{network}-192.168.0.0-24", f"{network}-192.168.128.0-24"]
    host, port = sim.url.removeprefix("http://").rsplit(":", 1)
    forward = NetnsPortForward(netns_path(host_netns), (host, int(port)))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{forward.port}")
    bin_dir = tmp_path / "bin"
    agent_bin = str(VENV_BIN / "multinic-agent")
    install = [agent_bin, "install-cni", "--bin-dir", str(bin_dir), "--shim", shim_kind]
    if shim_kind == "compiled":
        install += ["--shim-binary", str(request.getfixturevalue("compiled_shim"))]
    subprocess.run(install, check=True)
    socket_path = tmp_path / "run" / "agent.sock"
    log_path = tmp_path / "agent.log"
    pod = unique("mnk-pod")
    ip("netns", "add", pod)
    config = {**SERVER_NETCONF, "name": network}
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [
                "ip", "netns", "exec", host_netns, agent_bin,
                "--node", node,
                "--kubeconfig", str(kubeconfig),
                "--socket", str(socket_path),
                "--state-dir", str(tmp_path / "state"),
                "--cni-path", SYSTEM_CNI,
                "--log-level", "DEBUG",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(
            lambda: (
                spec_nics(objects.get("hostinterfaces", node))
                == {"eth1": "10.0.1.0/24", "eth2": "10.0.2.0/24"}
            ),
            30,
            "the agent to write its HostInterface",
        )
        wait_for(socket_path.exists, 10, "the agent's socket")
        added = shim_call(bin_dir / "multi-nic", socket_path, "ADD", netns_path(pod), config)
        assert added.returncode == 0, (added.stdout, log_path.read_text()[-3000:])
        assert [i["address"] for i in json.loads(added.stdout)["ips"]] == [
            "192.168.0.1/18",
            "192.168.128.1/18",
        ]
        wait_for(
            lambda: (
                [a.get("containerID") for a in allocations(objects, names[0])] == ["c1"]
                and [a.get("address") for a in allocations(objects, names[1])] == ["192.168.128.1"]
            ),
            15,
            "the allocations mirrored to both IPPools",
        )
        deleted = shim_call(bin_dir / "multi-nic", socket_path, "DEL", netns_path(pod), config)
        assert deleted.returncode == 0, deleted.stdout
        wait_for(
            lambda: allocations(objects, names[0]) == [] and allocations(objects, names[1]) == [],
            15,
            "the allocations removed from the IPPools",
        )
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        forward.close()
        ip("netns", "del", pod, check=False)
    text = log_path.read_text()
    assert "created HostInterface" in text
    assert "mirrored 1 allocations to IPPool" in text
