"""The simulated cluster on a real kernel: up, the API inside host namespaces, pods, down.

These start the real daemons (API server, operator, agents in their host
namespaces) through the ``multinic-sim`` command, as a user does.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client, config

from multinic_sim.cluster_builder import SimCluster
from multinic_sim.fabric import leftovers, run_ip
from multinic_sim.processes import alive, processes_of, program, start_daemon

from .conftest import simulated_cluster

CLI = [str(Path(sys.executable).parent / "multinic-sim")]


def sim(*args: str, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [*CLI, *args], capture_output=True, text=True, check=False, timeout=timeout
    )
    if check and done.returncode != 0:
        pytest.fail(
            f"multinic-sim {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
        )
    return done


def assert_nothing_left(state_dir: Path, prefix: str) -> None:
    assert processes_of(state_dir) == []
    assert leftovers(prefix) == []
    assert f"{prefix}-" not in run_ip("-o", "link", "show")
    assert not state_dir.exists()


def netns_inode(path: str) -> int:
    return os.stat(path).st_ino


def python_in_netns(netns: str, code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, sys.executable, "-c", code],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    with simulated_cluster(tmp_path_factory, "sim", hosts=2, nics=2) as cluster:
        yield cluster


@pytest.mark.root
@pytest.mark.slow
def test_agents_run_inside_their_host_namespace_and_reach_the_api_over_its_loopback(
    cluster: SimCluster,
) -> None:
    layout = cluster.layout
    for host in range(layout.hosts):
        pid = cluster.pids[f"agent-host-{host}"]
        assert alive(pid)
        # The agent's network namespace is its host's, not the root namespace.
        assert netns_inode(f"/proc/{pid}/ns/net") == netns_inode(
            f"/var/run/netns/{layout.host_netns(host)}"
        )
        assert cluster.agent_socket(host).is_socket()
        kubeconfig = yaml.safe_load(cluster.host_kubeconfig(host).read_text())
        server = kubeconfig["clusters"][0]["cluster"]["server"]
        assert server.startswith("http://127.0.0.1:")
        answer = python_in_netns(
            layout.host_netns(host),
            "import json, sys, urllib.request;"
            f"print(json.load(urllib.request.urlopen('{server}/api/v1/nodes'))['items'][{host}]"
            "['metadata']['name'])",
        )
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.strip() == layout.host_name(host)
    # The operator runs in the root namespace and has created the default Config.
    assert netns_inode(f"/proc/{cluster.pids['operator']}/ns/net") == netns_inode(
        "/proc/self/ns/net"
    )
    assert cluster.shim.exists()
    assert os.access(cluster.shim, os.X_OK)


@pytest.mark.root
@pytest.mark.slow
def test_a_pod_for_a_network_without_nad_is_refused_and_leaves_nothing(cluster: SimCluster) -> None:
    out = sim(
        "pod", "add", "lonely", "--host", "host-0", "--network", "nosuchnet",
        "--state-dir", str(cluster.state_dir), check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "no NetworkAttachmentDefinition default/nosuchnet" in out.stderr
    assert f"{cluster.layout.prefix}-pod-lonely" not in leftovers(cluster.layout.prefix)
    listing = sim("pod", "list", "--json", "--state-dir", str(cluster.state_dir))
    assert json.loads(listing.stdout) == []


@pytest.mark.root
@pytest.mark.slow
def test_a_pod_on_an_unknown_host_is_refused(cluster: SimCluster) -> None:
    out = sim(
        "pod", "add", "p", "--host", "host-9", "--network", "x",
        "--state-dir", str(cluster.state_dir), check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert "no host 'host-9'" in out.stderr
    assert "host-0, host-1" in out.stderr


@pytest.mark.root
@pytest.mark.slow
def test_up_refuses_a_second_cluster_in_the_same_state_dir(cluster: SimCluster) -> None:
    out = sim("up", "--state-dir", str(cluster.state_dir), "--prefix", "other", check=False)
    assert out.returncode == 1
    assert "already recorded" in out.stderr
    assert leftovers("other") == []
    assert SimCluster.load(cluster.state_dir).pids == cluster.pids


@pytest.mark.root
@pytest.mark.slow
def test_down_after_kill_9_of_everything_still_cleans_up(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    prefix = f"k{secrets.token_hex(3)}"
    try:
        sim("up", "--hosts", "2", "--nics", "1", "--prefix", prefix, "--state-dir", str(state_dir))
        daemons = processes_of(state_dir)
        assert len(daemons) == 5  # API server, operator, kubelet, two agents
        # kill -9 the API server and the operator; the record of pids is lost too,
        # so the agents (still running) must be found by scanning /proc.
        recorded = SimCluster.load(state_dir).pids
        for name in ("apiserver", "operator"):
            os.kill(recorded[name], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(alive(recorded[name]) for name in ("apiserver", "operator")):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        (state_dir / "cluster.json").unlink()
        out = sim("down", "--state-dir", str(state_dir), "--prefix", prefix)
        # The kubelet, the two agents, and any helper process forked at that moment.
        stopped = re.search(r"stopped (\d+) processes", out.stdout)
        assert stopped is not None, out.stdout
        assert int(stopped.group(1)) >= 3
        assert f"removed {2 + 1} namespaces" in out.stdout
        assert_nothing_left(state_dir, prefix)
        assert all(not alive(pid) for pid in daemons)
        again = sim("down", "--state-dir", str(state_dir), "--prefix", prefix)
        assert "stopped 0 processes, removed 0 namespaces" in again.stdout
    finally:
        sim("down", "--state-dir", str(state_dir), "--prefix", prefix, check=False)


@pytest.mark.root
@pytest.mark.slow
def test_up_refuses_a_prefix_another_cluster_uses_and_leaves_it_alone(
    cluster: SimCluster, tmp_path: Path
) -> None:
    before = leftovers(cluster.layout.prefix)
    out = sim(
        "up", "--prefix", cluster.layout.prefix, "--state-dir", str(tmp_path / "other"),
        check=False,
    )  # fmt: skip
    assert out.returncode == 1
    assert f"another simulated cluster uses prefix {cluster.layout.prefix!r}" in out.stderr
    assert leftovers(cluster.layout.prefix) == before
    assert all(alive(pid) for pid in cluster.pids.values())
    assert not (tmp_path / "other").exists()


def test_the_api_server_names_a_host_namespace_it_cannot_listen_in() -> None:
    out = subprocess.run(
        [*CLI, "apiserver", "--netns", "no-such-netns-here"],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert out.returncode == 1
    assert "in network namespace no-such-netns-here: No such file or directory" in out.stderr
    assert out.stdout == ""  # no kubeconfig announced for a server that is not serving


# -- the simulated kubelet ----------------------------------------------------------


def core_api(cluster: SimCluster) -> Any:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def wait_until(check: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.1)


def gone(core: Any, name: str) -> bool:
    try:
        core.read_namespaced_pod(name, "default")
    except client.ApiException as e:
        return e.status == 404
    return False


def pod_body(name: str, node: str, networks: str | None = None) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if networks is not None:
        metadata["annotations"] = {"k8s.v1.cni.cncf.io/networks": networks}
    return {
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }


def run_pod(core: Any, name: str, node: str) -> Any:
    """Create a pod without secondary networks on ``node``; the pod once Running."""
    core.create_namespaced_pod("default", pod_body(name, node))

    def running() -> Any:
        pod = core.read_namespaced_pod(name, "default")
        return pod if pod.status.phase == "Running" else None

    return wait_until(running, f"pod {name} Running")


@pytest.mark.root
@pytest.mark.slow
def test_kubelet_runs_a_bound_pod_serves_exec_and_removes_it_on_delete(
    cluster: SimCluster,
) -> None:
    core = core_api(cluster)
    pod = run_pod(core, "plain", "host-1")
    netns = pod.metadata.annotations["sim.multinic.dev/netns"]
    assert netns in leftovers(cluster.layout.prefix)
    assert json.loads(pod.metadata.annotations["k8s.v1.cni.cncf.io/network-status"]) == []
    assert pod.status.host_ip == cluster.layout.nic_address(1, 0)
    # pods/exec through the API server runs in the pod's network namespace.
    from kubernetes.stream import stream

    links = stream(
        core.connect_get_namespaced_pod_exec, "plain", "default",
        command=["ip", "-o", "link", "show"], stdout=True, stderr=True, stdin=False, tty=False,
    )  # fmt: skip
    assert [line.split(":")[1].strip() for line in links.splitlines()] == ["lo"]
    core.delete_namespaced_pod("plain", "default")
    wait_until(lambda: gone(core, "plain"), "pod plain deleted by its kubelet")
    assert netns not in leftovers(cluster.layout.prefix)


@pytest.mark.root
@pytest.mark.slow
def test_a_pod_whose_network_has_no_nad_stays_pending_with_an_event_naming_it(
    cluster: SimCluster,
) -> None:
    core = core_api(cluster)
    core.create_namespaced_pod("default", pod_body("orphan", "host-0", "nosuch"))
    event = wait_until(
        lambda: (
            core.list_namespaced_event(
                "default", field_selector="involvedObject.name=orphan,reason=FailedCreatePodSandBox"
            ).items
        ),
        "a FailedCreatePodSandBox event",
    )[0]
    assert event.type == "Warning"
    assert "cannot find a network-attachment-definition (nosuch) in namespace (default)" in (
        event.message
    )
    assert core.read_namespaced_pod("orphan", "default").status.phase == "Pending"
    assert f"{cluster.layout.prefix}-pod-default-orphan" not in leftovers(cluster.layout.prefix)
    # A pod that never ran goes as soon as it is deleted.
    core.delete_namespaced_pod("orphan", "default")
    wait_until(lambda: gone(core, "orphan"), "pod orphan deleted")


@pytest.mark.root
@pytest.mark.slow
def test_a_pod_deleted_while_the_kubelet_is_down_is_detached_when_it_is_back(
    cluster: SimCluster,
) -> None:
    core = core_api(cluster)
    pod = run_pod(core, "survivor", "host-0")
    netns = pod.metadata.annotations["sim.multinic.dev/netns"]
    os.kill(cluster.pids["kubelet"], signal.SIGKILL)
    wait_until(lambda: not alive(cluster.pids["kubelet"]), "kubelet dead")
    # A pod added meanwhile is refused at once, naming the dead kubelet and its log.
    refused = sim(
        "pod", "add", "late", "--host", "host-1", "--network", "any",
        "--state-dir", str(cluster.state_dir), check=False,
    )  # fmt: skip
    assert refused.returncode == 1
    assert f"kubelet (pid {cluster.pids['kubelet']}) exited" in refused.stderr
    assert "Traceback" not in refused.stderr
    core.delete_namespaced_pod("survivor", "default")
    time.sleep(1.0)
    # Nobody detached it: the pod waits, terminating, and its namespace is still there.
    terminating = core.read_namespaced_pod("survivor", "default")
    assert terminating.metadata.deletion_timestamp is not None
    assert netns in leftovers(cluster.layout.prefix)
    pid = start_daemon(
        [program("multinic-sim"), "kubelet", "--state-dir", str(cluster.state_dir)],
        cluster.logs_dir / "kubelet.log",
    )
    cluster.pids["kubelet"] = pid
    cluster.save()
    wait_until(lambda: gone(core, "survivor"), "pod survivor deleted by the restarted kubelet")
    assert netns not in leftovers(cluster.layout.prefix)


@pytest.mark.root
@pytest.mark.slow
def test_every_agent_serves_its_health_port_in_its_host_namespace(cluster: SimCluster) -> None:
    """The same port (:11000) on every host: each agent has its own host's namespace."""
    layout = cluster.layout
    for host in range(layout.hosts):
        code = (
            "import time, urllib.request\n"
            "for _ in range(300):\n"
            "    try:\n"
            "        print(urllib.request.urlopen('http://127.0.0.1:11000/readyz').read().decode())\n"
            "        break\n"
            "    except OSError:\n"
            "        time.sleep(0.1)\n"
            "print(b'multinic_cni_request_duration_seconds_count' in "
            "urllib.request.urlopen('http://127.0.0.1:11000/metrics').read())\n"
        )
        answer = python_in_netns(layout.host_netns(host), code)
        assert answer.returncode == 0, answer.stderr
        assert answer.stdout.split() == ["ok", "True"]
    # The operator's port is a free one on the root namespace's loopback, named in its log.
    found = re.search(
        r"/metrics on 127\.0\.0\.1:0 \(port (\d+)\)",
        (cluster.logs_dir / "operator.log").read_text(),
    )
    assert found is not None
    with urllib.request.urlopen(f"http://127.0.0.1:{found.group(1)}/healthz") as reply:
        assert reply.read() == b"ok\n"
