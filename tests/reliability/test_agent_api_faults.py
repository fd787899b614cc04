"""The agents under Kubernetes API faults: they keep serving, never drop state, converge.

Real agents (one per host network namespace, real shim and macvlan delegates)
run against the local API server through a recording proxy.  A fault-free
phase establishes the reference: every HostInterface written, the CIDR plan's
host routes programmed with status Success, pods attached and their
allocations mirrored.  Then, for a while, the API answers with 409 storms on
IPPool patches, 500/503 on gets, lists and status writes (pods included, which
the leak collection reads), requests that hang, and every watch stream is
dropped every 0.3-0.6 s.  Meanwhile pods start and stop, someone writes a
NIC the host does not have into its HostInterface, and the plan gains a host.  The agents must:

* answer every ADD and DEL with success (their pools are cached);
* never lose a route of the plan from a host, never free a live pod's
  allocation, never send a DELETE;
* once the faults stop, converge to the state a fault-free agent has:
  HostInterfaces equal to discovery, IPPool allocations equal to the
  journals, routes of the new plan programmed and reported Success for its
  generation.

Size: ``MULTINIC_CHAOS_HOSTS`` agents (3 by default) and ``MULTINIC_CHAOS_FAULTS``
(the fault phase lasts 8 s times it, with that multiple of the fault counts).
"""

from __future__ import annotations

import contextlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client import ApiException

from multinic_sim.faults import FaultRule
from multinic_sim.testing import wait_for

from .conftest import CHAOS_FAULTS, CHAOS_HOSTS, node_fixtures, operator_fixtures
from .test_crash_storm import SimHost, host_pools
from .test_crash_storm_api import (
    GROUP,
    NETWORK,
    VERSION,
    ApiRuntime,
    api_agent,
    api_allocations,
    create_ippools,
    journal_mirrored,
    pool_name,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

FAULT_SECONDS = 8.0 * CHAOS_FAULTS
CONVERGE_S = 60.0
NEW_HOST = ("host-x", 9)
"""The host the plan gains during the faults, and its index (addresses .20+9)."""


def host_ip(nic: int, index: int) -> str:
    return f"10.0.{nic}.{20 + index}"


def make_host(index: int) -> Any:
    """A host namespace whose eth1/eth2 have addresses of their own (10.0.x.20+i)."""
    host = node_fixtures.Host(node_fixtures.unique("host"))
    ip = node_fixtures.ip
    ip("netns", "add", host.netns)
    ip("-n", host.netns, "link", "set", "lo", "up")
    for nic in (1, 2):
        ip(
            "-n",
            host.netns,
            "link",
            "add",
            f"eth{nic}",
            "type",
            "veth",
            "peer",
            "name",
            f"eth{nic}p",
        )
        ip("-n", host.netns, "addr", "add", f"{host_ip(nic, index)}/24", "dev", f"eth{nic}")
        ip("-n", host.netns, "link", "set", f"eth{nic}", "up")
        ip("-n", host.netns, "link", "set", f"eth{nic}p", "up")
    return host


def plan_hosts(indexes: list[int]) -> list[tuple[str, int]]:
    return [(f"host-{i}", i) for i in indexes]


def cidr_spec(hosts: list[tuple[str, int]]) -> dict[str, Any]:
    """The operator's plan (vlanMode l3) for ``hosts`` as (name, index)."""
    entries = []
    for interface_index, (nic, vlan, third) in enumerate(
        ((1, "192.168.0.0/18", 0), (2, "192.168.128.0/18", 128))
    ):
        entries.append(
            {
                "netAddress": f"10.0.{nic}.0/24",
                "interfaceIndex": interface_index,
                "vlanCIDR": vlan,
                "hosts": [
                    {
                        "hostIndex": index,
                        "hostName": name,
                        "interfaceName": f"eth{nic}",
                        "hostIP": host_ip(nic, index),
                        "podCIDR": f"192.168.{third + index}.0/24",
                        "ippool": f"{NETWORK}-192.168.{third + index}.0-24",
                    }
                    for name, index in hosts
                ],
            }
        )
    return {
        "config": {
            "name": NETWORK,
            "type": "macvlan",
            "subnet": "192.168.0.0/16",
            "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
            "hostBlock": 6,
            "interfaceBlock": 2,
            "excludeCIDRs": [],
            "vlanMode": "l3",
        },
        "cidr": entries,
    }


def expected_routes(me: int, hosts: list[tuple[str, int]]) -> set[tuple[str, str, str]]:
    """(dst, gateway, dev) the plan asks of host ``me``: every other host's pod blocks."""
    return {
        (f"192.168.{third + index}.0/24", host_ip(nic, index), f"eth{nic}")
        for _, index in hosts
        if index != me
        for nic, third in ((1, 0), (2, 128))
    }


def host_routes(netns: str) -> set[tuple[str, str, str]]:
    return {
        (r["dst"], r.get("gateway", ""), r.get("dev", ""))
        for r in node_fixtures.ip_json(netns, "route", "show", "table", "all")
        if str(r.get("dst", "")).startswith("192.168.") and r.get("gateway")
    }


def discovered_nics(index: int) -> list[tuple[str, str, str]]:
    return [(f"eth{nic}", f"10.0.{nic}.0/24", host_ip(nic, index)) for nic in (1, 2)]


def discovered_objects(index: int) -> list[dict[str, str]]:
    return [
        {"interfaceName": name, "netAddress": net, "hostIP": address}
        for name, net, address in discovered_nics(index)
    ]


@dataclass
class FaultCluster:
    kube_api: Any
    proxy: Any
    hosts: list[SimHost] = field(default_factory=list)
    forwards: list[Any] = field(default_factory=list)

    def get(self, plural: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.kube_api.custom_objects.get_cluster_custom_object(
                GROUP, VERSION, plural, name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise
        return found

    def nics(self, sim: SimHost) -> list[tuple[str, str, str]]:
        hif = self.get("hostinterfaces", sim.agent.node) or {}
        return sorted(
            (i["interfaceName"], i.get("netAddress", ""), i.get("hostIP", ""))
            for i in (hif.get("spec") or {}).get("interfaces") or []
        )

    def route_status(self, sim: SimHost) -> dict[str, Any]:
        hif = self.get("hostinterfaces", sim.agent.node) or {}
        for entry in (hif.get("status") or {}).get("routes") or []:
            if entry.get("network") == NETWORK:
                return dict(entry)
        return {}

    def mirrored(self, sim: SimHost) -> bool:
        return journal_mirrored(self.kube_api, sim)

    def converged(self, sim: SimHost, plan: list[tuple[str, int]], generation: int) -> bool:
        status = self.route_status(sim)
        return (
            self.nics(sim) == discovered_nics(sim.index)
            and status.get("status") == "Success"
            and status.get("cidrGeneration") == generation
            and host_routes(sim.host.netns) == expected_routes(sim.index, plan)
            and self.mirrored(sim)
        )


def retrying(call: Callable[[], Any], what: str) -> Any:
    """The test's own API call while faults are on (they hit every client)."""
    for _ in range(50):
        try:
            return call()
        except ApiException as e:
            last = e
            time.sleep(0.1)
    raise AssertionError(f"{what}: {last}")


@pytest.fixture
def fault_cluster(cluster: Any, installed_shim: Path, tmp_path: Path) -> Iterator[FaultCluster]:
    if not Path(node_fixtures.SYSTEM_CNI, "macvlan").exists():
        pytest.skip(f"no CNI plugins in {node_fixtures.SYSTEM_CNI}")
    kube_api = cluster.kube_api
    sim_server = kube_api.require_sim()
    proxy = operator_fixtures.RecordingProxy(sim_server.url).start()
    address, port = proxy.url.removeprefix("http://").rsplit(":", 1)
    made = FaultCluster(kube_api, proxy)
    indexes = list(range(CHAOS_HOSTS))
    # The pods of the runtime (all named default/pod): alive, so that the leak
    # collection has no reason to free anything.
    with contextlib.suppress(ApiException):
        kube_api.core_v1.create_namespace({"metadata": {"name": "default"}})
    kube_api.core_v1.create_namespaced_pod(
        "default",
        {
            "metadata": {"name": "pod"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    kube_api.custom_objects.create_cluster_custom_object(
        GROUP,
        VERSION,
        "cidrs",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "CIDR",
            "metadata": {"name": NETWORK},
            "spec": cidr_spec(plan_hosts(indexes)),
        },
    )
    try:
        for index in indexes:
            create_ippools(kube_api, index)
            host = make_host(index)
            agent = api_agent(
                host,
                index,
                (address, port),
                tmp_path,
                made.forwards,
                # Resync and look for leaks every second: faults meet every path.
                extra_args=["--resync-interval", "1", "--leak-interval", "1"],
            )
            made.hosts.append(SimHost(index, host, agent, ApiRuntime(installed_shim, agent)))
            agent.start()
        yield made
    finally:
        kube_api.faults.clear()
        for sim in made.hosts:
            sim.agent.stop()
            node_fixtures.ip("netns", "del", sim.host.netns, check=False)
        for forward in made.forwards:
            forward.close()
        proxy.stop()


def agent_faults(n: int) -> list[FaultRule]:
    """What the API does to the agents during the fault phase (``n``: multiplier)."""
    return [
        FaultRule(status=409, verb="patch", resource="ippools", probability=0.5, count=30 * n),
        FaultRule(status=500, verb="get", resource="ippools", probability=0.3, count=10 * n),
        FaultRule(status=500, verb="list", resource="ippools", count=3 * n),
        FaultRule(status=503, verb="list", resource="cidrs", count=3 * n),
        FaultRule(status=500, verb="list", resource="hostinterfaces", count=3 * n),
        FaultRule(status=500, verb="get", resource="hostinterfaces", probability=0.5, count=10 * n),
        FaultRule(status=409, verb="update", resource="hostinterfaces", count=3 * n),
        FaultRule(status=500, verb="watch", count=3 * n),
        FaultRule(status=500, verb="patch", resource="hostinterfaces/status", count=5 * n),
        FaultRule(status=503, verb="get", resource="pods", probability=0.5, count=None),
        FaultRule(action="timeout", delay=3.0, verb="patch", resource="ippools", count=n),
        FaultRule(action="timeout", delay=3.0, verb="list", resource="cidrs", count=n),
        FaultRule(action="timeout", delay=3.0, verb="get", resource="pods", count=n),
    ]


def test_agents_keep_serving_and_converge_under_api_faults(
    fault_cluster: FaultCluster, pods: Any, figures: dict[str, Any]
) -> None:
    cluster = fault_cluster
    kube_api = cluster.kube_api
    plan = plan_hosts([sim.index for sim in cluster.hosts])
    cidr = cluster.get("cidrs", NETWORK)
    assert cidr is not None
    for sim in cluster.hosts:
        wait_for(
            lambda sim=sim: cluster.converged(sim, plan, cidr["metadata"]["generation"]),
            30,
            f"host-{sim.index}: fault-free HostInterface, routes and status",
        )
    # Fault-free reference: pods on every host, mirrored.
    for sim in cluster.hosts:
        for n in range(3):
            netns = pods.new()
            added = sim.runtime.add(f"h{sim.index}p{n}", netns)
            assert added.status == 0, added
            sim.live[f"h{sim.index}p{n}"] = netns
    for sim in cluster.hosts:
        wait_for(lambda sim=sim: cluster.mirrored(sim), 15, f"host-{sim.index} mirrored")
    reference_routes = {sim.index: expected_routes(sim.index, plan) for sim in cluster.hosts}
    calls_before = len(cluster.proxy.calls())

    # Faults on: rules, watch streams dropped, and a sampler of the host routes.
    rules = [kube_api.faults.add(rule) for rule in agent_faults(CHAOS_FAULTS)]
    stop = threading.Event()
    dropped = 0
    missing: list[tuple[int, set[tuple[str, str, str]]]] = []

    def drop_watches() -> None:
        nonlocal dropped
        rng = random.Random(5)
        while not stop.wait(rng.uniform(0.3, 0.6)):
            # Every third time the history goes too: the resumed watch gets 410
            # and the agent must list again (through the list faults).
            if dropped % 3 == 0:
                kube_api.compact()
            dropped += kube_api.drop_watches()

    def sample_routes() -> None:
        while not stop.wait(0.1):
            for sim in cluster.hosts:
                lost = reference_routes[sim.index] - host_routes(sim.host.netns)
                if lost:
                    missing.append((sim.index, lost))

    threads = [threading.Thread(target=t, daemon=True) for t in (drop_watches, sample_routes)]
    for thread in threads:
        thread.start()
    started = time.monotonic()
    outcomes: dict[str, int] = {"ADD ok": 0, "DEL ok": 0}
    try:
        # Someone writes a NIC that host-0 does not have into its HostInterface
        # (outside masterNets, so pods are not affected); the plan gains a host.
        first = cluster.hosts[0]
        bogus = {"interfaceName": "eth9", "netAddress": "10.0.9.0/24", "hostIP": "10.0.9.1"}
        retrying(
            lambda: kube_api.custom_objects.patch_cluster_custom_object(
                GROUP,
                VERSION,
                "hostinterfaces",
                first.agent.node,
                {"spec": {"interfaces": [*discovered_objects(first.index), bogus]}},
            ),
            "writing a wrong HostInterface",
        )
        new_plan = [*plan, NEW_HOST]
        changed = retrying(
            lambda: kube_api.custom_objects.patch_cluster_custom_object(
                GROUP, VERSION, "cidrs", NETWORK, {"spec": {"cidr": cidr_spec(new_plan)["cidr"]}}
            ),
            "adding a host to the plan",
        )
        generation = changed["metadata"]["generation"]
        assert generation > cidr["metadata"]["generation"]
        round_ = 0
        while time.monotonic() - started < FAULT_SECONDS:
            round_ += 1
            for sim in cluster.hosts:
                # One pod stops, one starts: both must succeed despite the API.
                cid = sorted(sim.live)[0]
                deleted = sim.runtime.delete(cid, sim.live[cid])
                assert deleted.status == 0, deleted
                outcomes["DEL ok"] += 1
                pods.remove(sim.live.pop(cid))
                netns = pods.new()
                cid = f"h{sim.index}r{round_}"
                added = sim.runtime.add(cid, netns)
                assert added.status == 0, added
                outcomes["ADD ok"] += 1
                sim.live[cid] = netns
        # Nothing live was freed while the API failed.
        for sim in cluster.hosts:
            assert set(sim.agent.held_addresses()) == {(cid, "net1") for cid in sim.live}
    finally:
        injected = sum(rule.hits for rule in rules)
        hits = {
            f"{rule.verb} {rule.resource} {rule.status if rule.action == 'error' else 'hang'}": (
                rule.hits
            )
            for rule in rules
        }
        kube_api.faults.clear()
        stop.set()
        for thread in threads:
            thread.join(5)
    fault_seconds = time.monotonic() - started

    converge_started = time.monotonic()
    for sim in cluster.hosts:
        wait_for(
            lambda sim=sim: cluster.converged(sim, new_plan, generation),
            CONVERGE_S,
            f"host-{sim.index} converged after the faults",
        )
    converge_seconds = time.monotonic() - converge_started
    assert not missing, f"a route of the plan was removed during the faults: {missing[:3]}"
    every_address = [
        a["address"]
        for sim in cluster.hosts
        for pool in host_pools(sim.index)
        for a in api_allocations(kube_api, pool_name(pool))
    ]
    assert (
        len(every_address)
        == len(set(every_address))
        == 2 * sum(len(sim.live) for sim in cluster.hosts)
    )
    for sim in cluster.hosts:
        assert set(sim.agent.held_addresses()) == {(cid, "net1") for cid in sim.live}
        for cid, netns in sim.live.items():
            assert sim.runtime.check(cid, netns).status == 0, cid
    calls = cluster.proxy.calls()
    deletes = [(m, p) for m, p, _ in calls if m == "DELETE"]
    assert deletes == [], deletes
    # Every kind of fault met the agents (a rule nobody hit proves nothing);
    # which rule of a kind is hit depends on timing (the HostInterface repair
    # may come only after its backoff, once the faults are gone).
    for kind in ("patch ", "get ", "list ", "watch ", " hang"):
        assert sum(n for rule, n in hits.items() if kind in f" {rule} "), (kind, hits)
    figures.update(
        hosts=len(cluster.hosts),
        faults_injected=injected,
        fault_hits=hits,
        watches_dropped=dropped,
        fault_seconds=round(fault_seconds, 1),
        cni_during_faults=outcomes,
        api_calls_during_and_after_faults=len(calls) - calls_before,
        converge_seconds=round(converge_seconds, 1),
        routes_lost=0,
        freed=0,
        deleted=0,
    )
