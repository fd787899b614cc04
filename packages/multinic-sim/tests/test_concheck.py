"""concheck on real namespaces: the matrix, JSON, and a broken link failing the run.

The pods here are network namespaces wired into the fabric's bridges by veth
pairs (no agent involved), so concheck's own behaviour is tested: which pairs
it checks, what it reports, and its exit status when a NIC is cut.
"""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import pytest

from multinic_sim.cluster_builder import SimCluster
from multinic_sim.concheck import all_connected, render
from multinic_sim.fabric import FabricLayout, build, run_ip, teardown
from multinic_sim.pods import PodRecord

CLI = [str(Path(sys.executable).parent / "multinic-sim")]
pytestmark = pytest.mark.root


def wire_pod(cluster: SimCluster, host: int) -> PodRecord:
    """A pod namespace on ``host`` with ``net1-<k>`` on the bridge of NIC k."""
    layout = cluster.layout
    record = PodRecord(
        name=f"p{host}",
        namespace="default",
        uid=f"uid-{host}",
        node=layout.host_name(host),
        network="wired",
        netns=f"{layout.prefix}-pod-p{host}",
        container_id=secrets.token_hex(32),
    )
    run_ip("netns", "add", record.netns)
    for nic in range(layout.nics):
        port = f"p{host}n{nic}"
        run_ip("-n", record.netns, "link", "add", f"net1-{nic}", "type", "veth", "peer",
               "name", port, "netns", layout.fabric_netns)  # fmt: skip
        run_ip(
            "-n", record.netns, "addr", "add", f"192.168.{nic}.{host + 1}/24", "dev", f"net1-{nic}"
        )
        run_ip("-n", record.netns, "link", "set", f"net1-{nic}", "up")
        run_ip("-n", layout.fabric_netns, "link", "set", port, "master", layout.bridge_name(nic))
        run_ip("-n", layout.fabric_netns, "link", "set", port, "up")
    cluster.pods_dir.mkdir(parents=True, exist_ok=True)
    (cluster.pods_dir / f"{record.name}.json").write_text(json.dumps(asdict(record)))
    return record


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[SimCluster]:
    layout = FabricLayout(hosts=3, nics=2, prefix=f"c{secrets.token_hex(3)}")
    cluster = SimCluster(state_dir=tmp_path, layout=layout)
    build(layout)
    try:
        cluster.save()
        for host in range(layout.hosts):
            wire_pod(cluster, host)
        yield cluster
    finally:
        teardown(layout.prefix)


def concheck(cluster: SimCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "concheck", "--state-dir", str(cluster.state_dir), *args],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip


def test_every_ordered_pair_on_every_nic_is_checked(wired: SimCluster) -> None:
    done = concheck(wired, "--json", "--no-bandwidth")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["allConnected"] is True
    pairs = report["networks"]["wired"]
    assert sorted((p["from"], p["to"]) for p in pairs) == [
        (f"host-{a}", f"host-{b}") for a in range(3) for b in range(3) if a != b
    ]
    first = next(p for p in pairs if (p["from"], p["to"]) == ("host-0", "host-2"))
    assert (first["connected"], first["total"]) == (2, 2)
    assert [(link["interface"], link["source"], link["target"]) for link in first["links"]] == [
        ("net1-0", "192.168.0.1", "192.168.0.3"),
        ("net1-1", "192.168.1.1", "192.168.1.3"),
    ]
    assert all(link["rtt_ms"] is not None for p in pairs for link in p["links"])


def test_a_cut_nic_fails_the_pairs_that_use_it_and_the_exit_status(wired: SimCluster) -> None:
    # Unplug host-1's pod from the second rail only.
    run_ip("-n", wired.layout.fabric_netns, "link", "set", "p1n1", "down")
    done = concheck(wired, "--no-bandwidth")
    assert done.returncode == 1
    rows = {tuple(line.split()[1:3]): line for line in done.stdout.splitlines()[1:7]}
    assert "1/2 FAILED" in rows[("host-0", "host-1")]
    assert "1/2 FAILED" in rows[("host-1", "host-2")]
    assert "2/2 CONNECTED" in rows[("host-0", "host-2")]
    assert "host-0->host-1 net1-1:" in done.stdout


def test_bandwidth_is_measured_when_iperf3_is_installed(wired: SimCluster) -> None:
    if subprocess.run(["which", "iperf3"], capture_output=True, check=False).returncode != 0:
        pytest.skip("iperf3 is not installed")
    done = concheck(wired, "--json", "--network", "wired")
    assert done.returncode == 0, done.stderr
    links = [link for p in json.loads(done.stdout)["networks"]["wired"] for link in p["links"]]
    assert all(link["bandwidth_gbps"] and link["bandwidth_gbps"] > 0.01 for link in links)


def test_concheck_needs_pods_on_two_hosts(tmp_path: Path) -> None:
    layout = FabricLayout(hosts=2, nics=1, prefix=f"c{secrets.token_hex(3)}")
    cluster = SimCluster(state_dir=tmp_path, layout=layout)
    build(layout)
    try:
        cluster.save()
        wire_pod(cluster, 0)
        done = concheck(cluster)
        assert done.returncode == 1
        assert "needs pods of network 'wired' on at least two hosts; found them on: host-0" in (
            done.stderr
        )
    finally:
        teardown(layout.prefix)


def test_an_empty_result_is_not_a_success() -> None:
    assert all_connected([]) is False
    assert render([]).splitlines()[0].split() == [
        "NETWORK", "FROM", "TO", "CONNECTED/TOTAL", "ADDRESSES", "BANDWIDTH", "(Gbit/s)"
    ]  # fmt: skip
