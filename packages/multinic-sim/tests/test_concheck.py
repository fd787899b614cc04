"""concheck through the API on a simulated cluster: pods, network-status, pods/exec.

A 3 hosts x 2 NICs cluster (API server, operator, agents, kubelet) with a
macvlan network. concheck finds the pods through the API, reads their
addresses from Multus' network-status annotation and pings through
``pods/exec``, exactly as it does on a real cluster; a NIC cut in the fabric
must fail the pairs that use it, and the exit status.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from multinic_sim.cluster_builder import SimCluster
from multinic_sim.concheck import all_connected, concheck_pod_name, render
from multinic_sim.demo import network_body, wait_for_network
from multinic_sim.fabric import leftovers, run_ip
from multinic_sim.progress import ProgressLog

from .conftest import simulated_cluster

CLI = [str(Path(sys.executable).parent / "multinic-sim")]
HOSTS, NICS = 3, 2


def sim(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, check=False, timeout=timeout
    )


def network(name: str, subnet: str) -> dict[str, Any]:
    plugin = {"cniVersion": "1.0.0", "type": "macvlan", "args": {"mode": "bridge"}}
    return network_body(name, subnet, "l2", ["10.0.1.0/24", "10.0.2.0/24"], plugin)


def apply_network(cluster: SimCluster, body: dict[str, Any]) -> None:
    """Create the network and wait for its plan on every host, its IPPools and its NAD."""
    api = config.new_client_from_config(config_file=str(cluster.kubeconfig))
    try:
        client.CustomObjectsApi(api).create_cluster_custom_object(
            "multinic.fms.io", "v1", "multinicnetworks", body
        )
    finally:
        api.close()
    wait_for_network(cluster, body["metadata"]["name"], ProgressLog(quiet=True), 90)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    with simulated_cluster(tmp_path_factory, "concheck", hosts=HOSTS, nics=NICS) as cluster:
        apply_network(cluster, network("rails", "192.168.0.0/16"))
        for host in range(HOSTS):
            added = sim("pod", "add", f"p{host}", "--host", str(host), "--network", "rails",
                        "--state-dir", str(cluster.state_dir))  # fmt: skip
            assert added.returncode == 0, added.stderr
        yield cluster


def concheck(cluster: SimCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return sim("concheck", "--state-dir", str(cluster.state_dir), *args)


def kubectl(cluster: SimCluster, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", "--kubeconfig", str(cluster.kubeconfig), *args],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip


@pytest.mark.root
@pytest.mark.slow
def test_every_ordered_pair_on_every_nic_is_checked_with_the_running_pods(
    cluster: SimCluster,
) -> None:
    done = concheck(cluster, "--json", "--no-bandwidth", "--network", "rails")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["allConnected"] is True
    pairs = report["networks"]["rails"]
    assert sorted((p["from"], p["to"]) for p in pairs) == [
        (f"host-{a}", f"host-{b}") for a in range(HOSTS) for b in range(HOSTS) if a != b
    ]
    # The pods `pod add` made are used; no concheck pod was created.
    assert {p["fromPod"] for p in pairs} == {"p0", "p1", "p2"}
    assert "creating concheck pods" not in done.stderr
    first = next(p for p in pairs if (p["from"], p["to"]) == ("host-0", "host-2"))
    assert (first["connected"], first["total"]) == (NICS, NICS)
    # The addresses are the pods' own, as their network-status annotation has them:
    # NIC k's address in the k-th /18 of the subnet (interfaceBlock 2).
    listing = sim("pod", "list", "--json", "--state-dir", str(cluster.state_dir))
    addresses = {
        (p["node"], i["name"]): i["ip"] for p in json.loads(listing.stdout) for i in p["interfaces"]
    }
    assert [(link["interface"], link["source"], link["target"]) for link in first["links"]] == [
        (f"net1-{k}", addresses[("host-0", f"net1-{k}")], addresses[("host-2", f"net1-{k}")])
        for k in range(NICS)
    ]
    for (_, interface), ip in addresses.items():
        nic = int(interface.rsplit("-", 1)[1])
        assert ipaddress.ip_address(ip) in ipaddress.ip_network(f"192.168.{64 * nic}.0/18")
    assert all(link["rtt_ms"] is not None for p in pairs for link in p["links"])


@pytest.mark.root
@pytest.mark.slow
def test_cni_args_of_the_selection_reach_the_agent(cluster: SimCluster) -> None:
    state = ["--state-dir", str(cluster.state_dir)]
    added = sim("pod", "add", "one-nic", "--host", "host-2", "--network", "rails", "--nics", "1",
                *state)  # fmt: skip
    assert added.returncode == 0, added.stderr
    try:
        listing = json.loads(sim("pod", "list", "--json", *state).stdout)
        pod = next(p for p in listing if p["name"] == "one-nic")
        assert [i["name"] for i in pod["interfaces"]] == ["net1-0"]
    finally:
        deleted = sim("pod", "del", "one-nic", *state)
    assert deleted.returncode == 0, deleted.stderr
    assert pod["netns"] not in leftovers(cluster.layout.prefix)


@pytest.mark.root
@pytest.mark.slow
def test_a_cut_nic_fails_the_pairs_that_use_it_and_the_exit_status(cluster: SimCluster) -> None:
    port = cluster.layout.fabric_port(1, 1)  # host-1's second NIC, on the fabric's bridge
    run_ip("-n", cluster.layout.fabric_netns, "link", "set", port, "down")
    try:
        done = concheck(cluster, "--no-bandwidth", "--network", "rails")
    finally:
        run_ip("-n", cluster.layout.fabric_netns, "link", "set", port, "up")
    assert done.returncode == 1, done.stdout + done.stderr
    rows = {tuple(line.split()[1:3]): line for line in done.stdout.splitlines()[1:7]}
    assert "1/2 FAILED" in rows[("host-0", "host-1")]
    assert "1/2 FAILED" in rows[("host-1", "host-2")]
    assert "2/2 CONNECTED" in rows[("host-0", "host-2")]
    assert "rails host-0->host-1 net1-1:" in done.stdout
    assert "Traceback" not in done.stderr


@pytest.mark.root
@pytest.mark.slow
def test_concheck_creates_pods_where_a_network_has_none_and_deletes_them(
    cluster: SimCluster,
) -> None:
    apply_network(cluster, network("spare", "172.20.0.0/16"))
    done = concheck(cluster, "--json", "--no-bandwidth", "--network", "spare")
    assert done.returncode == 0, done.stdout + done.stderr
    pairs = json.loads(done.stdout)["networks"]["spare"]
    assert {p["fromPod"] for p in pairs} == {
        concheck_pod_name("spare", f"host-{h}") for h in range(HOSTS)
    }
    assert all(p["connected"] == p["total"] == NICS for p in pairs)
    assert "creating concheck pods of spare on host-0, host-1, host-2" in done.stderr
    # Deleted again through the API; the kubelet detached them (CNI DEL) first.
    listing = json.loads(sim("pod", "list", "--json", "--state-dir", str(cluster.state_dir)).stdout)
    assert sorted(p["name"] for p in listing) == ["p0", "p1", "p2"]
    assert not [ns for ns in leftovers(cluster.layout.prefix) if "concheck" in ns]


@pytest.mark.root
@pytest.mark.slow
def test_bandwidth_is_measured_when_iperf3_is_installed(cluster: SimCluster) -> None:
    if shutil.which("iperf3") is None:
        pytest.skip("iperf3 is not installed")
    done = concheck(cluster, "--json", "--network", "rails")
    assert done.returncode == 0, done.stderr
    links = [link for p in json.loads(done.stdout)["networks"]["rails"] for link in p["links"]]
    assert all(link["bandwidth_gbps"] and link["bandwidth_gbps"] > 0.01 for link in links)
    # No iperf3 server outlives its run.
    assert subprocess.run(["pgrep", "-f", "iperf3 --server"], check=False).returncode == 1


@pytest.mark.root
@pytest.mark.slow
def test_unknown_network_and_unreachable_cluster_are_one_line_errors(
    cluster: SimCluster, tmp_path: Path
) -> None:
    done = concheck(cluster, "--network", "nosuch")
    assert done.returncode == 1
    assert done.stderr.strip() == "multinic-sim: error: no MultiNicNetwork 'nosuch' in the cluster"
    dead = tmp_path / "kubeconfig"
    dead.write_text(
        cluster.kubeconfig.read_text().replace(cluster.server_url, "http://127.0.0.1:9")
    )
    done = sim("concheck", "--kubeconfig", str(dead))
    assert done.returncode == 1
    assert "does not answer" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.kubectl
def test_kubectl_exec_runs_in_the_pod_network_namespace(cluster: SimCluster) -> None:
    done = kubectl(cluster, "exec", "p0", "--", "ip", "-o", "-4", "addr", "show")
    assert done.returncode == 0, done.stderr
    listing = sim("pod", "list", "--json", "--state-dir", str(cluster.state_dir))
    p0 = next(p for p in json.loads(listing.stdout) if p["name"] == "p0")
    for interface in p0["interfaces"]:
        assert f"{interface['name']}    inet {interface['ip']}/18" in done.stdout
    failed = kubectl(cluster, "exec", "p0", "--", "sh", "-c", "echo oops >&2; exit 3")
    assert failed.returncode == 3
    assert "oops" in failed.stderr


def test_an_empty_result_is_not_a_success() -> None:
    assert all_connected([]) is False
    assert render([]).splitlines()[0].split() == [
        "NETWORK", "FROM", "TO", "CONNECTED/TOTAL", "ADDRESSES", "BANDWIDTH", "(Gbit/s)"
    ]  # fmt: skip


def test_concheck_pod_names_are_valid_pod_names() -> None:
    name = concheck_pod_name("My.Net", "node-" + "x" * 80 + ".example.com")
    assert len(name) <= 63
    assert name.startswith("multinic-concheck-my-net-node-")
    assert not name.endswith("-")


@pytest.mark.skipif(
    not (os.environ.get("MULTINIC_TEST_KUBECONFIG") and os.environ.get("MULTINIC_TEST_NETWORK")),
    reason="set MULTINIC_TEST_KUBECONFIG and MULTINIC_TEST_NETWORK to check a real cluster",
)
def test_concheck_on_a_real_cluster_connects_every_pair_and_leaves_no_pod() -> None:
    kubeconfig = os.environ["MULTINIC_TEST_KUBECONFIG"]
    network_name = os.environ["MULTINIC_TEST_NETWORK"]
    done = sim(
        "concheck", "--kubeconfig", kubeconfig, "--network", network_name, "--json",
        "--namespace", os.environ.get("MULTINIC_TEST_NAMESPACE", "default"),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["allConnected"] is True
    api = config.new_client_from_config(config_file=kubeconfig)
    try:
        left = client.CoreV1Api(api).list_pod_for_all_namespaces(
            label_selector="app.kubernetes.io/created-by=multinic-concheck"
        )
        assert left.items == []
    finally:
        api.close()
