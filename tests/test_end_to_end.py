"""End to end (TESTING.md layer 4): the README's demo on a simulated cluster.

3 hosts x 2 NICs, the operator and one agent per host (each in its host
namespace), a macvlan network, a pod per host attached through the CNI shim,
ping across hosts on every NIC; then the pods are deleted and nothing is left:
no namespaces, links, processes, files, and no address allocations.
"""

from __future__ import annotations

import json
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

from multinic_sim.fabric import leftovers, run_ip
from multinic_sim.processes import processes_of

pytestmark = [pytest.mark.root, pytest.mark.slow]

SIM = str(Path(sys.executable).parent / "multinic-sim")
HOSTS, NICS = 3, 2


def sim(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SIM, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def assert_nothing_left(state_dir: Path, prefix: str) -> None:
    assert processes_of(state_dir) == [], "daemons of the simulated cluster still run"
    assert leftovers(prefix) == [], "network namespaces left behind"
    assert f"{prefix}-" not in run_ip("-o", "link", "show"), "links left behind"
    assert not state_dir.exists(), "state directory left behind"


@pytest.fixture
def cluster_names(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    state_dir, prefix = tmp_path / "state", f"e{secrets.token_hex(3)}"
    yield state_dir, prefix
    sim("down", "--state-dir", str(state_dir), "--prefix", prefix)


def test_demo_connects_every_host_pair_on_every_nic_and_leaves_nothing(
    cluster_names: tuple[Path, str],
) -> None:
    state_dir, prefix = cluster_names
    started = time.monotonic()
    demo = sim("demo", "--state-dir", str(state_dir), "--prefix", prefix)
    took = time.monotonic() - started
    assert demo.returncode == 0, f"demo failed after {took:.0f}s:\n{demo.stdout}\n{demo.stderr}"
    rows = [line for line in demo.stdout.splitlines() if line.startswith("demo-macvlan  host-")]
    assert len(rows) == HOSTS * (HOSTS - 1), demo.stdout
    assert all(f"{NICS}/{NICS} CONNECTED" in row for row in rows), demo.stdout
    pairs = {tuple(row.split()[1:3]) for row in rows}
    assert pairs == {
        (f"host-{a}", f"host-{b}") for a in range(HOSTS) for b in range(HOSTS) if a != b
    }
    assert "configStatus=Success" in demo.stdout
    assert re.search(
        r"computeResults: 10\.0\.1\.0/24 \(3 hosts\), 10\.0\.2\.0/24 \(3 hosts\)", demo.stdout
    )
    assert "every pair of 3 hosts CONNECTED on all 2 NICs" in demo.stdout
    # The L3 network (ipvlan L3, or the routed ptp driver on a kernel without
    # ipvlan) carries every pair too, over the host routes the demo prints.
    l3 = "demo-ipvlan-l3" if "demo-ipvlan-l3" in demo.stdout else "demo-ptp-l3"
    l3_rows = [line for line in demo.stdout.splitlines() if line.startswith(f"{l3}  ")]
    assert len(l3_rows) == HOSTS * (HOSTS - 1), demo.stdout
    assert all(f"{NICS}/{NICS} CONNECTED" in row for row in l3_rows), demo.stdout
    assert f"network {l3}: configStatus=Success routeStatus=Success" in demo.stdout
    assert re.search(r"172\.30\.1\.0/24 via 10\.0\.1\.12 dev eth1 table \d+", demo.stdout)
    assert_nothing_left(state_dir, prefix)


def _pools(kubeconfig: Path) -> list[dict[str, Any]]:
    api = config.new_client_from_config(config_file=str(kubeconfig))
    try:
        answer = client.CustomObjectsApi(api).list_cluster_custom_object(
            "multinic.fms.io", "v1", "ippools", label_selector="netname=demo-macvlan"
        )
        return list(answer["items"])
    finally:
        api.close()


def test_pods_deleted_release_their_addresses_and_links(cluster_names: tuple[Path, str]) -> None:
    state_dir, prefix = cluster_names
    kept = sim(
        "demo", "--keep", "--no-bandwidth", "--state-dir", str(state_dir), "--prefix", prefix
    )
    assert kept.returncode == 0, f"{kept.stdout}\n{kept.stderr}"
    state = ["--state-dir", str(state_dir)]

    check = sim("concheck", "--json", "--no-bandwidth", *state)
    assert check.returncode == 0, check.stdout + check.stderr
    report = json.loads(check.stdout)
    assert report["allConnected"] is True
    assert len(report["networks"]["demo-macvlan"]) == HOSTS * (HOSTS - 1)

    pods = json.loads(sim("pod", "list", "--json", *state).stdout)
    # One pod per host on each of the demo's two networks (L2 and L3).
    assert sorted(p["node"] for p in pods) == sorted([f"host-{h}" for h in range(HOSTS)] * 2)
    assert all(len(p["interfaces"]) == NICS for p in pods)
    kubeconfig = state_dir / "kubeconfig"
    # The agents mirror their allocations into the IPPools (in batches).
    deadline = time.monotonic() + 30
    while sum(len(p["spec"].get("allocations") or []) for p in _pools(kubeconfig)) < HOSTS * NICS:
        assert time.monotonic() < deadline, _pools(kubeconfig)
        time.sleep(0.5)

    for pod in pods:
        deleted = sim("pod", "del", pod["name"], *state)
        assert deleted.returncode == 0, deleted.stderr
        assert pod["netns"] not in leftovers(prefix)
    assert json.loads(sim("pod", "list", "--json", *state).stdout) == []
    deadline = time.monotonic() + 30
    while any(p["spec"].get("allocations") for p in _pools(kubeconfig)):
        assert time.monotonic() < deadline, _pools(kubeconfig)
        time.sleep(0.5)
    for host in range(HOSTS):
        links = run_ip("-n", f"{prefix}-host-{host}", "-o", "link", "show")
        assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == [
            "lo", "eth1", "eth2"
        ]  # fmt: skip

    down = sim("down", *state)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(state_dir, prefix)
