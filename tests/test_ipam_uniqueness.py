"""End to end: plan edits never hand out an address a running pod holds.

One simulated cluster (``multinic-sim demo --keep``: 3 hosts x 2 NICs, the
operator, a real agent per host in its network namespace, real macvlan
delegates, the API double) for every scenario, in order:

a) shrink (hostBlock 6 -> 8, /24 -> /26 per host, same base): running pods
   keep their addresses in their namespaces, the replaced IPPools are kept
   Retired (and acknowledged), new pods on every host get other addresses
   (host-1's new /26 lies inside host-0's old /24: a host-0 pod holds one of
   its addresses), AllocationsStranded names the pods outside the new plan
   and goes False once they are deleted, and the retired pools go with them;
b) grow back (hostBlock 8 -> 6) with pods running;
c) an exclude over a live pod's address;
d) an exclude pushing host-0's new pods up to the addresses host-1's and
   host-2's pods still hold from their old blocks inside host-0's new /24.

After each: among every live pod of the cluster, no (NIC index, address) is
held twice, in the pods' namespaces as in ``pod list``.  At the end ``down``
leaves nothing.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netaddr
import pytest
from kubernetes import client, config

from multinic_sim.fabric import run_ip
from multinic_sim.pods import view_of

from .test_end_to_end import HOSTS, NICS, assert_nothing_left, sim

pytestmark = [pytest.mark.root, pytest.mark.slow]

GROUP, VERSION = "multinic.fms.io", "v1"
NETWORK = "demo-macvlan"
RETIRED = f"{GROUP}/retired"
RETIRED_ACK = f"{GROUP}/retired-ack"
STRANDED = "AllocationsStranded"
SETTLE_S = 30.0
"""How long the operator and agents may take to converge after a change."""


@dataclass
class Cluster:
    state_dir: Path
    prefix: str
    api: client.ApiClient
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def custom(self) -> Any:
        return client.CustomObjectsApi(self.api)

    @property
    def state(self) -> list[str]:
        return ["--state-dir", str(self.state_dir)]

    # -- pods

    def pods(self) -> list[dict[str, Any]]:
        """``pod list --json``: the pods of the network under test (the demo's L3
        network's pods are on other addresses and NICs' links)."""
        listed = sim("pod", "list", "--json", *self.state)
        assert listed.returncode == 0, listed.stderr
        return [
            p
            for p in json.loads(listed.stdout)
            if all(i["network"] == NETWORK for i in p["interfaces"])
        ]

    def pod(self, name: str) -> dict[str, Any]:
        """One pod as ``pod list --json`` shows it, read from the API in-process (faster)."""
        view = view_of(client.CoreV1Api(self.api).read_namespaced_pod(name, "default"))
        return {
            "name": view.name,
            "namespace": view.namespace,
            "node": view.node,
            "phase": view.phase,
            "netns": view.netns,
            "interfaces": [
                {"name": i.name, "ip": i.ip, "network": i.network, "nic": i.nic_index}
                for i in view.interfaces
            ],
        }

    def add(self, name: str, host: int, timeout: float = 120) -> dict[str, Any]:
        """``pod add`` (it waits while the agent answers 'try again'); the pod as listed."""
        started = time.monotonic()
        added = sim(
            "pod", "add", name, "--host", f"host-{host}", "--network", NETWORK,
            "--timeout", str(timeout), *self.state,
        )  # fmt: skip
        self.timings[f"pod add {name}"] = time.monotonic() - started
        assert added.returncode == 0, f"pod add {name}:\n{added.stdout}\n{added.stderr}"
        return self.pod(name)

    def delete(self, name: str) -> None:
        deleted = sim("pod", "del", name, *self.state)
        assert deleted.returncode == 0, f"pod del {name}:\n{deleted.stdout}\n{deleted.stderr}"

    # -- API objects

    def network(self) -> dict[str, Any]:
        found: dict[str, Any] = self.custom.get_cluster_custom_object(
            GROUP, VERSION, "multinicnetworks", NETWORK
        )
        return found

    def patch_ipam(self, **changes: Any) -> None:
        """Change keys of spec.ipam (a JSON string); ``None`` removes a key."""
        ipam = json.loads(self.network()["spec"]["ipam"])
        for key, value in changes.items():
            if value is None:
                ipam.pop(key, None)
            else:
                ipam[key] = value
        self.custom.patch_cluster_custom_object(
            GROUP, VERSION, "multinicnetworks", NETWORK, {"spec": {"ipam": json.dumps(ipam)}}
        )

    def pools(self) -> dict[str, dict[str, Any]]:
        answer = self.custom.list_cluster_custom_object(
            GROUP, VERSION, "ippools", label_selector=f"netname={NETWORK}"
        )
        return {p["metadata"]["name"]: p for p in answer["items"]}

    def condition(self, kind: str = STRANDED) -> dict[str, Any]:
        conditions = (self.network().get("status") or {}).get("conditions") or []
        return next((c for c in conditions if c["type"] == kind), {})


def wait_for(what: str, check: Callable[[], Any], timeout: float = SETTLE_S) -> tuple[Any, float]:
    """Poll ``check`` until it returns something true; (that value, seconds taken)."""
    started = time.monotonic()
    while True:
        value = check()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.25)


def pool_name(cidr: str) -> str:
    return f"{NETWORK}-{cidr.replace('/', '-')}"


def is_retired(pool: dict[str, Any]) -> bool:
    return RETIRED in (pool["metadata"].get("labels") or {})


def addresses(pod: dict[str, Any]) -> dict[int, str]:
    """NIC index -> address of a listed pod."""
    return {i["nic"]: i["ip"] for i in pod["interfaces"]}


def netns_addresses(netns: str) -> dict[str, list[str]]:
    """IPv4 addresses per interface inside a pod's namespace (no prefix length)."""
    found = json.loads(run_ip("-n", netns, "-j", "-4", "addr", "show") or "[]")
    return {link["ifname"]: [a["local"] for a in link.get("addr_info", [])] for link in found}


def assert_no_address_twice(cluster: Cluster) -> list[dict[str, Any]]:
    """The global invariant, on what the pods' namespaces really carry; the live pods."""
    pods = cluster.pods()
    holders: dict[tuple[int, str], list[str]] = defaultdict(list)
    for pod in pods:
        assert pod["phase"] == "Running", pod
        assert len(pod["interfaces"]) == NICS, pod
        real = netns_addresses(pod["netns"])
        for interface in pod["interfaces"]:
            assert real.get(interface["name"]) == [interface["ip"]], (pod["name"], real)
            holders[(interface["nic"], interface["ip"])].append(pod["name"])
    twice = {slot: names for slot, names in holders.items() if len(names) > 1}
    assert not twice, f"addresses held by more than one live pod: {twice}"
    return pods


def host_block(host: int, nic: int, host_block_bits: int) -> netaddr.IPNetwork:
    """The demo plan: NIC n's vlanCIDR 192.168.(64 n).0/18, host h's h-th block of it."""
    size = 2 ** (32 - 18 - host_block_bits)
    base = netaddr.IPNetwork(f"192.168.{64 * nic}.0/18").first
    return netaddr.IPNetwork(f"{netaddr.IPAddress(base + host * size)}/{18 + host_block_bits}")


def outside_plan(pods: list[dict[str, Any]], host_block_bits: int) -> set[str]:
    """Pods holding an address outside their host's block of the current plan."""
    return {
        pod["name"]
        for pod in pods
        for nic, ip in addresses(pod).items()
        if netaddr.IPAddress(ip) not in host_block(int(pod["node"][-1]), nic, host_block_bits)
    }


def stranded_pods(condition: dict[str, Any]) -> tuple[int, set[str], bool]:
    """(pods counted, pods named, whether the list is cut short) of AllocationsStranded."""
    message = condition.get("message", "")
    counted = re.search(r" of (\d+) pod\(s\) ", message)
    head = message.split("; addresses: ")[0]
    listed = head.split("): ", 1)[1] if "): " in head else ""
    cut = re.search(r" and \d+ more$", listed) is not None
    listed = re.sub(r" and \d+ more$", "", listed)
    named = {who.split("/", 1)[1] for who in listed.split(", ") if "/" in who}
    return (int(counted.group(1)) if counted else 0), named, cut


def stranded_naming(cluster: Cluster, names: set[str]) -> dict[str, Any] | None:
    """The AllocationsStranded condition, once it is True and names exactly ``names``."""
    condition = cluster.condition()
    if (condition.get("status"), condition.get("reason")) != ("True", "PlanChanged"):
        return None
    counted, named, cut = stranded_pods(condition)
    if counted != len(names):
        return None
    if (cut and named <= names) or named == names:
        return condition
    return None


def add_above(cluster: Cluster, name: str, host: int, block: str) -> dict[str, Any]:
    """A pod whose NIC 0 address is in ``block`` (above a new exclude); a pod the
    agent attached before its watch brought the exclude is deleted and made again."""
    for attempt in range(3):
        pod = cluster.add(f"{name}-{attempt}" if attempt else name, host)
        if netaddr.IPAddress(addresses(pod)[0]) in netaddr.IPNetwork(block):
            return pod
        cluster.delete(pod["name"])
    pytest.fail(f"host-{host}'s pods never got an address in {block} (last: {pod})")


def acknowledged(cluster: Cluster, names: set[str]) -> bool:
    """Every pool of ``names`` that still exists is retired and acknowledged by its agent."""
    for name, pool in cluster.pools().items():
        if name not in names:
            continue
        label = (pool["metadata"].get("labels") or {}).get(RETIRED)
        ack = (pool["metadata"].get("annotations") or {}).get(RETIRED_ACK)
        if label is None or ack != label:
            return False
    return True


def none_stranded(cluster: Cluster) -> dict[str, Any] | None:
    condition = cluster.condition()
    if (condition.get("status"), condition.get("reason")) == ("False", "NoneStranded"):
        return condition
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    state_dir = tmp_path_factory.mktemp("uniqueness") / "state"
    prefix = f"u{secrets.token_hex(3)}"
    try:
        started = time.monotonic()
        kept = sim(
            "demo", "--keep", "--no-bandwidth", "--state-dir", str(state_dir), "--prefix", prefix
        )
        assert kept.returncode == 0, f"{kept.stdout}\n{kept.stderr}"
        api = config.new_client_from_config(config_file=str(state_dir / "kubeconfig"))
        cluster = Cluster(state_dir, prefix, api)
        cluster.timings["demo --keep"] = time.monotonic() - started
        try:
            yield cluster
        finally:
            api.close()
            print("\ntimings (s):")
            for what, seconds in cluster.timings.items():
                print(f"  {what}: {seconds:.1f}")
    finally:
        sim("down", "--state-dir", str(state_dir), "--prefix", prefix)


def test_a_shrink_keeps_live_addresses_and_hands_out_others(cluster: Cluster) -> None:
    first = cluster.pod("macvlan-0")
    assert first["node"] == "host-0"
    assert addresses(first) == {0: "192.168.0.1", 1: "192.168.64.1"}
    assert_no_address_twice(cluster)

    # A host-0 pod holding an address inside what will be host-1's new /26 (.64/26):
    # an exclude over the bottom of host-0's /24 pushes its allocation up.
    cluster.patch_ipam(excludeCIDRs=["192.168.0.0/26", "192.168.0.64/32"])
    wait_for(
        "host-0's /24 pool gets the excludes",
        lambda: (
            {"192.168.0.0/26", "192.168.0.64/32"}
            <= set(cluster.pools()[pool_name("192.168.0.0/24")]["spec"].get("excludes") or [])
        ),
    )
    # macvlan-0's .1 is now under a new exclude: stranded, and kept.
    wait_for("macvlan-0 stranded by the exclude", lambda: stranded_naming(cluster, {"macvlan-0"}))
    far = add_above(cluster, "far", 0, "192.168.0.64/26")
    far_address = addresses(far)[0]
    assert far_address == "192.168.0.65", far
    assert_no_address_twice(cluster)

    # The shrink (and the exclude undone).  A host-0 pod right away: it may wait
    # (try again) while the new pools wait for the agents' acknowledgements.
    old = {name for name, pool in cluster.pools().items() if not is_retired(pool)}
    live = {(n, ip) for p in cluster.pods() for n, ip in addresses(p).items()}
    started = time.monotonic()
    cluster.patch_ipam(hostBlock=8, excludeCIDRs=None)
    new0 = cluster.add("new-0", 0)
    cluster.timings["shrink: patch to a new host-0 pod Running"] = time.monotonic() - started
    assert not set(addresses(new0).items()) & live, (new0, live)
    new_pools = {pool_name(str(host_block(h, n, 8))) for h in range(HOSTS) for n in range(NICS)}
    wait_for("the /26 pools", lambda: new_pools <= set(cluster.pools()))
    cluster.timings["shrink: patch to every /26 pool created"] = time.monotonic() - started
    wait_for("every agent acknowledged its retired pools", lambda: acknowledged(cluster, old))
    # Host-1's new .64/26 lies inside host-0's old /24, where far-0 holds .65:
    # a host-1 pod must not get it (host-1's agent knows nothing of host-0's pods).
    new1 = cluster.add("new-1", 1)
    assert netaddr.IPAddress(addresses(new1)[0]) in host_block(1, 0, 8), new1
    assert addresses(new1)[0] != far_address, new1
    new2 = cluster.add("new-2", 2)
    assert netaddr.IPAddress(addresses(new2)[0]) in host_block(2, 0, 8), new2
    pools = cluster.pools()
    host1 = pools[pool_name("192.168.0.64/26")]
    assert f"{far_address}/32" in (host1["spec"].get("excludes") or []), host1["spec"]
    pods = assert_no_address_twice(cluster)

    # The first pod (and far-0) still have their addresses, in their namespaces.
    assert netns_addresses(first["netns"]) == {
        "lo": ["127.0.0.1"], "net1-0": ["192.168.0.1"], "net1-1": ["192.168.64.1"]
    }  # fmt: skip
    assert netns_addresses(far["netns"])["net1-0"] == [far_address]

    # Stranded: the pods whose addresses are outside their host's new /26.  macvlan-0's
    # .1 and .64.1 lie inside host-0's new .0/26 and .64.0/26 (held there by a /32
    # exclude of the new pool): it fits the new plan, so it is not named.
    expected = outside_plan(pods, 8)
    assert {far["name"], "macvlan-1", "macvlan-2"} <= expected
    assert "macvlan-0" not in expected
    wait_for(
        "AllocationsStranded names the pods outside the new plan",
        lambda: stranded_naming(cluster, expected),
    )
    host0 = pools[pool_name("192.168.0.0/26")]
    assert "192.168.0.1/32" in (host0["spec"].get("excludes") or []), host0["spec"]

    # The replaced pools: kept, labelled, acknowledged, with what they hold.
    for name in old:
        pool = pools[name]
        labels = pool["metadata"].get("labels") or {}
        annotations = pool["metadata"].get("annotations") or {}
        assert labels.get(RETIRED, "").isdigit(), pool["metadata"]
        assert annotations.get(RETIRED_ACK) == labels[RETIRED], pool["metadata"]
        status = pool.get("status") or {}
        assert status.get("phase") == "Retired", pool
        assert status.get("retiredByCIDRGeneration") == labels[RETIRED], status
        held = pool["spec"].get("allocations") or []
        assert status.get("heldAllocations") == len(held), pool
    old0 = pools[pool_name("192.168.0.0/24")]
    held0 = {(a["pod"], a["address"]) for a in old0["spec"]["allocations"]}
    assert {("macvlan-0", "192.168.0.1"), (far["name"], far_address)} <= held0, held0
    assert held0 <= {(p["name"], addresses(p)[0]) for p in pods if p["node"] == "host-0"}
    assert old0["status"]["strandedAllocations"] == sum(
        1 for _, a in held0 if netaddr.IPAddress(a) not in host_block(0, 0, 8)
    ), old0["status"]

    # The pods of the old plan go: nothing is stranded, the retired pools are deleted
    # and the new pools lose their /32 excludes.
    for pod in pods:
        if pod["name"] in expected or pod["name"] == "macvlan-0":
            cluster.delete(pod["name"])
    started = time.monotonic()
    wait_for("AllocationsStranded False (NoneStranded)", lambda: none_stranded(cluster))
    wait_for(
        "every retired pool deleted",
        lambda: (
            not any(is_retired(p) or p["metadata"]["name"] in old for p in cluster.pools().values())
        ),
    )
    wait_for(
        "no /32 exclude left in the new pools",
        lambda: all(not p["spec"].get("excludes") for p in cluster.pools().values()),
    )
    cluster.timings["shrink: old pods deleted to none stranded, retired pools gone"] = (
        time.monotonic() - started
    )
    assert_no_address_twice(cluster)


def test_b_grow_back_with_pods_running(cluster: Cluster) -> None:
    running = {p["name"] for p in cluster.pods()}
    for name, host in (("new-0", 0), ("new-1", 1), ("new-2", 2)):
        if name not in running:
            cluster.add(name, host)
    cluster.add("new-1b", 1)
    cluster.add("new-2b", 2)
    before = assert_no_address_twice(cluster)
    assert {p["node"] for p in before} == {f"host-{h}" for h in range(HOSTS)}
    live = {(n, ip) for p in before for n, ip in addresses(p).items()}

    started = time.monotonic()
    cluster.patch_ipam(hostBlock=6)
    grown = [cluster.add(f"grow-{h}", h) for h in range(HOSTS)]
    cluster.timings["grow: patch to a pod Running on every host"] = time.monotonic() - started
    for pod in grown:
        assert not set(addresses(pod).items()) & live, (pod, live)
    wanted = {pool_name(str(host_block(h, n, 6))) for h in range(HOSTS) for n in range(NICS)}
    wait_for("the /24 pools", lambda: wanted <= set(cluster.pools()))
    replaced = {pool_name(str(host_block(h, n, 8))) for h in range(HOSTS) for n in range(NICS)}
    wait_for("every agent acknowledged its retired pools", lambda: acknowledged(cluster, replaced))
    # Created after the acknowledgements: from the new pools only (the first ones,
    # added right after the edit, may have come from the old pools).
    more = [cluster.add(f"grow-{h}b", h) for h in range(HOSTS)]
    pods = assert_no_address_twice(cluster)
    for pod in [*grown, *more]:
        for nic, ip in addresses(pod).items():
            assert netaddr.IPAddress(ip) in host_block(int(pod["node"][-1]), nic, 6), pod

    # host-0's new /24 covers host-1's and host-2's old /26 blocks: what their pods
    # still hold there is excluded from it.
    pools = cluster.pools()
    host0 = pools[pool_name("192.168.0.0/24")]
    held_elsewhere = {
        addresses(p)[0]
        for p in pods
        if p["node"] != "host-0" and netaddr.IPAddress(addresses(p)[0]) in host_block(0, 0, 6)
    }
    assert held_elsewhere, "no pod of host-1/2 holds an address in host-0's new /24"
    assert {f"{a}/32" for a in held_elsewhere} <= set(host0["spec"].get("excludes") or [])
    expected = outside_plan(pods, 6)
    assert {"new-1", "new-1b", "new-2", "new-2b"} <= expected, expected
    wait_for("AllocationsStranded names host-1's and host-2's /26 pods",
             lambda: stranded_naming(cluster, expected))  # fmt: skip
    for name in ("192.168.0.64/26", "192.168.0.128/26"):
        status = pools[pool_name(name)].get("status") or {}
        assert status.get("phase") == "Retired", (name, status)
        assert status.get("strandedAllocations") >= 2, (name, status)


def test_c_exclude_over_a_live_address(cluster: Cluster) -> None:
    target = cluster.pod("grow-0")
    address = addresses(target)[0]
    stranded_before = outside_plan(cluster.pods(), 6)
    cluster.patch_ipam(excludeCIDRs=[f"{address}/32"])
    wait_for(
        "the exclude in host-0's pool",
        lambda: (
            f"{address}/32"
            in (cluster.pools()[pool_name("192.168.0.0/24")]["spec"].get("excludes") or [])
        ),
    )
    condition, _ = wait_for(
        f"AllocationsStranded names grow-0 ({address})",
        lambda: stranded_naming(cluster, stranded_before | {"grow-0"}),
    )
    assert "grow-0" in stranded_pods(condition)[1], condition
    assert netns_addresses(target["netns"])["net1-0"] == [address]
    given = [addresses(cluster.add(f"excl-{i}", 0))[0] for i in range(3)]
    assert address not in given, given
    assert netns_addresses(cluster.pod("grow-0")["netns"])["net1-0"] == [address]
    assert_no_address_twice(cluster)


def test_d_new_pods_skip_what_other_hosts_hold_in_the_new_block(cluster: Cluster) -> None:
    """host-0's agent never saw host-1's and host-2's pods: only the operator's /32
    excludes keep it from handing out their addresses in host-0's new /24."""
    pods = cluster.pods()
    held_elsewhere = {
        addresses(p)[0]
        for p in pods
        if p["node"] != "host-0" and netaddr.IPAddress(addresses(p)[0]) in host_block(0, 0, 6)
    }
    assert len(held_elsewhere) >= 4, held_elsewhere
    excludes = json.loads(cluster.network()["spec"]["ipam"]).get("excludeCIDRs") or []
    cluster.patch_ipam(excludeCIDRs=[*excludes, "192.168.0.0/26"])
    wait_for(
        "the exclude in host-0's pool",
        lambda: (
            "192.168.0.0/26"
            in (cluster.pools()[pool_name("192.168.0.0/24")]["spec"].get("excludes") or [])
        ),
    )
    given = [addresses(add_above(cluster, "push-0", 0, "192.168.0.64/26"))[0]]
    given += [addresses(cluster.add(f"push-{i}", 0))[0] for i in range(1, 6)]
    assert not set(given) & held_elsewhere, (given, held_elsewhere)
    assert all(netaddr.IPAddress(a) in netaddr.IPNetwork("192.168.0.64/25") for a in given), given
    assert_no_address_twice(cluster)


def test_z_down_leaves_nothing(cluster: Cluster) -> None:
    down = sim("down", *cluster.state)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(cluster.state_dir, cluster.prefix)
