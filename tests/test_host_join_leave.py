"""A host joins a running cluster and leaves it again, proven by netlink changes and packets.

Three hosts x 2 NICs with an L3 network (routed ptp pods, per-network host
routes) and a pod per host; then ``multinic-sim host add``:

* on every other host, ``ip monitor route`` sees exactly the new host's
  blocks added (one route per NIC, via its NIC address) and nothing deleted:
  the routes are a diff, not a flush;
* the new host gets a route to every other host's block on every NIC;
* a pod on it reaches a pod on every other host on both NICs (concheck ping).

Then ``multinic-sim host remove``: its pod is drained, the other hosts'
routes lose exactly its blocks (nothing added), its IPPools, HostInterface
and namespace are gone, and the remaining hosts are still all connected.

The operator keeps the plan in CIDR shards of one host each
(``MULTINIC_CIDR_SHARD_ENTRIES=2``, as a 10,000-host network would be in
shards of 512): a join writes its own shard, and every agent's routes come
from the shards merged.

The API server is the double unless ``MULTINIC_TEST_SIM_APISERVER=real``
(scripts/test-real-cluster runs it so, with ``MULTINIC_TEST_SIM_MULTUS=real``).
"""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from multinic_sim.concheck import plan_objects
from multinic_sim.demo import network_body
from multinic_sim.fabric import leftovers, run_ip
from multinic_sim.processes import processes_of

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/lib/cni/ptp").exists(),
        reason="needs containernetworking-plugins (/usr/lib/cni/ptp)",
    ),
]

SIM = str(Path(sys.executable).parent / "multinic-sim")
NETWORK = "join-l3"
NICS = 2
ROUTE = re.compile(r"^(?P<deleted>Deleted )?(?P<dest>[0-9a-f.:]+/\d+) via (?P<via>[0-9a-f.:]+) ")


SHARD_ENTRIES = "2"
"""Host blocks per CIDR object: 2 NICs, so one host per shard."""


def sim(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [SIM, *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        env={**os.environ, "MULTINIC_CIDR_SHARD_ENTRIES": SHARD_ENTRIES},
    )
    assert done.returncode == 0, f"multinic-sim {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    state_dir, prefix = tmp_path / "state", f"j{secrets.token_hex(3)}"
    options = [
        "--apiserver",
        os.environ.get("MULTINIC_TEST_SIM_APISERVER", "double"),
        "--multus",
        os.environ.get("MULTINIC_TEST_SIM_MULTUS", "sim"),
    ]
    try:
        sim("up", "--state-dir", str(state_dir), "--prefix", prefix, "--nics", str(NICS), *options)
        yield state_dir, prefix
    finally:
        subprocess.run(
            [SIM, "down", "--state-dir", str(state_dir), "--prefix", prefix],
            capture_output=True,
            check=False,
        )
    assert processes_of(state_dir) == []
    assert leftovers(prefix) == []


def custom(state_dir: Path) -> Any:
    api = config.new_client_from_config(config_file=str(state_dir / "kubeconfig"))
    return client.CustomObjectsApi(api)


def blocks_of(state_dir: Path) -> dict[str, set[tuple[str, str]]]:
    """Per host: the (podCIDR, hostIP) of each of its NICs in the network's CIDR plan."""
    try:
        plans = plan_objects(custom(state_dir), NETWORK)
    except client.ApiException as e:
        if e.status == 404:  # not planned yet
            return {}
        raise
    blocks: dict[str, set[tuple[str, str]]] = {}
    for cidr in plans:
        for entry in cidr["spec"]["cidr"] or []:
            for host in entry["hosts"] or []:
                blocks.setdefault(host["hostName"], set()).add((host["podCIDR"], host["hostIP"]))
    return blocks


def routes(netns: str) -> set[tuple[str, str]]:
    """(destination, gateway) of every gatewayed route in every table of the namespace."""
    found = set()
    for line in run_ip("-n", netns, "route", "show", "table", "all").splitlines():
        match = ROUTE.match(line)
        if match:
            found.add((match["dest"], match["via"]))
    return found


def wait_until(predicate: Any, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


class RouteMonitor:
    """``ip monitor route`` in each namespace: every route added or deleted, as netlink says."""

    def __init__(self, namespaces: list[str]) -> None:
        self.processes = {
            ns: subprocess.Popen(
                ["ip", "-n", ns, "monitor", "route"], stdout=subprocess.PIPE, text=True
            )
            for ns in namespaces
        }
        time.sleep(0.5)  # subscribed before anything changes

    def stop(self) -> dict[str, tuple[set[tuple[str, str]], set[tuple[str, str]], list[str]]]:
        """Per namespace: (added, deleted, every line)."""
        time.sleep(1.0)  # late changes (a reconciler's second pass) count too
        changes = {}
        for ns, process in self.processes.items():
            process.terminate()
            out, _ = process.communicate(timeout=10)
            # The kernel's own routes (a pod veth's link-local address) are not the agents'.
            lines = [line for line in out.splitlines() if "proto kernel" not in line]
            added, deleted = set(), set()
            for line in lines:
                match = ROUTE.match(line)
                if match:
                    (deleted if match["deleted"] else added).add((match["dest"], match["via"]))
            changes[ns] = (added, deleted, lines)
        return changes


def concheck(state_dir: Path) -> list[dict[str, Any]]:
    done = subprocess.run(
        [SIM, "concheck", "--state-dir", str(state_dir), "--network", NETWORK, "--json",
         "--no-bandwidth"],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, f"not every pair connected:\n{done.stdout}\n{done.stderr}"
    return list(json.loads(done.stdout)["networks"][NETWORK])


def test_a_host_joins_and_leaves_by_route_diffs_and_traffic(cluster: tuple[Path, str]) -> None:
    state_dir, prefix = cluster
    layout_nets = [f"10.0.{n + 1}.0/24" for n in range(NICS)]
    body = network_body(NETWORK, "172.30.0.0/16", "l3", layout_nets,
                        {"cniVersion": "1.0.0", "type": "ptp"})  # fmt: skip
    custom(state_dir).create_cluster_custom_object(
        "multinic.fms.io", "v1", "multinicnetworks", body
    )
    old_hosts = [f"host-{h}" for h in range(3)]
    wait_until(lambda: set(blocks_of(state_dir)) == set(old_hosts), "the plan of 3 hosts")
    for h in range(3):
        sim("pod", "add", f"p{h}", "--host", str(h), "--network", NETWORK, "--state-dir",
            str(state_dir))  # fmt: skip
    netns = {f"host-{h}": f"{prefix}-host-{h}" for h in range(4)}
    blocks = blocks_of(state_dir)
    # One host per shard: the CIDR and two shards (hosts' indexes agree on both NICs).
    assert len(plan_objects(custom(state_dir), NETWORK)) == 3
    for name in old_hosts:
        peers = set().union(*(blocks[p] for p in old_hosts if p != name))
        wait_until(lambda n=name, b=peers: b <= routes(netns[n]), f"{name}'s routes to its peers")

    unknown = subprocess.run(
        [SIM, "host", "remove", "host-9", "--state-dir", str(state_dir)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert unknown.returncode == 1
    assert "no host 'host-9'" in unknown.stderr, unknown.stderr
    assert "Traceback" not in unknown.stderr

    # -- join ---------------------------------------------------------------------------
    monitor = RouteMonitor([netns[n] for n in old_hosts])
    joined = sim("host", "add", "--state-dir", str(state_dir))
    assert "host-3 joined" in joined.stdout
    wait_until(lambda: "host-3" in blocks_of(state_dir), "host-3 in the plan")
    blocks = blocks_of(state_dir)
    new_blocks = blocks["host-3"]
    assert len(new_blocks) == NICS
    for name in old_hosts:
        wait_until(lambda n=name: new_blocks <= routes(netns[n]), f"{name}'s routes to host-3")
    changes = monitor.stop()
    for name in old_hosts:
        added, deleted, lines = changes[netns[name]]
        assert added == new_blocks, f"{name} gained other routes than host-3's blocks: {lines}"
        assert deleted == set(), f"{name} deleted routes when host-3 joined: {lines}"
        assert len(lines) == NICS, f"{name}: {len(lines)} route changes, not {NICS}: {lines}"
    peers_of_new = set().union(*(blocks[p] for p in old_hosts))
    wait_until(lambda: peers_of_new <= routes(netns["host-3"]), "host-3's routes to every peer")

    sim("pod", "add", "p3", "--host", "host-3", "--network", NETWORK, "--state-dir",
        str(state_dir))  # fmt: skip
    pairs = concheck(state_dir)
    with_new = [p for p in pairs if "host-3" in (p["from"], p["to"])]
    assert len(with_new) == 6, pairs  # to and from each of the 3 others
    assert all(p["connected"] == p["total"] == NICS for p in with_new), with_new

    # -- leave --------------------------------------------------------------------------
    monitor = RouteMonitor([netns[n] for n in old_hosts])
    removed = sim("host", "remove", "host-3", "--state-dir", str(state_dir))
    assert "host-3 removed" in removed.stdout
    for name in old_hosts:
        wait_until(
            lambda n=name: not new_blocks & routes(netns[n]), f"{name}'s routes to host-3 gone"
        )
    changes = monitor.stop()
    for name in old_hosts:
        added, deleted, lines = changes[netns[name]]
        assert deleted == new_blocks, f"{name} lost other routes than host-3's: {lines}"
        assert added == set(), f"{name} added routes when host-3 left: {lines}"
    assert "host-3" not in blocks_of(state_dir)
    pools = custom(state_dir).list_cluster_custom_object("multinic.fms.io", "v1", "ippools")
    assert not [p for p in pools["items"] if p["spec"]["hostName"] == "host-3"]
    assert f"{prefix}-host-3" not in leftovers(prefix)
    pairs = concheck(state_dir)
    assert len(pairs) == 6, pairs
    assert all(p["connected"] == p["total"] == NICS for p in pairs), pairs
