"""The agent's health port: ``/healthz``, ``/readyz`` and ``/metrics``, scraped from a
real agent process in a host namespace while the shim makes real ADDs and DELs
(the Debian macvlan delegate), and while the local API server fails on purpose.

The port is the only TCP listener the agent has; the CNI stays on its unix socket.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from multinic_agent.metrics import api_verb, cni_error_code
from multinic_agent.pod_netns import in_netns
from multinic_ipam.journal import AllocationJournal, PoolBlock, PoolExhaustedError
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.testing import KubeTestApi, wait_for

from .conftest import AGENT, SERVER_NETCONF, SYSTEM_CNI, Agent, Runtime, netconf
from .test_kube_sync import (
    CRD_DIR,
    GROUP,
    VERSION,
    ClusterObjects,
    NetnsPortForward,
    cidr_body,
    ip,
    pool_body,
    shim_call,
    unique,
)

HEALTH_PORT = 11000
"""The agent's default health address is :11000 (the Config's daemon.port default)."""


# --------------------------------------------------------------------------- scraping


def http_get(netns: str, path: str, method: str = "GET") -> tuple[int, str]:
    """``method path`` on the agent's health port, from inside host namespace ``netns``."""
    sock = in_netns(
        f"/var/run/netns/{netns}",
        lambda: socket.create_connection(("127.0.0.1", HEALTH_PORT), timeout=10),
    )
    connection = http.client.HTTPConnection("127.0.0.1", HEALTH_PORT, timeout=10)
    connection.sock = sock
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


class Scrape:
    """One ``/metrics`` answer: sample values by name and labels."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        self.help: dict[str, str] = {}
        for family in text_string_to_metric_families(text):
            self.help[family.name] = family.documentation
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 for a series that does not exist (yet)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def requests(self, command: str, result: str) -> float:
        return self.value(
            "multinic_cni_request_duration_seconds_count", command=command, result=result
        )


def scrape(netns: str) -> Scrape:
    status, body = http_get(netns, "/metrics")
    assert status == 200, body
    return Scrape(body)


def tcp_listening_ports(pid: int) -> set[int]:
    """Ports of the TCP sockets in state LISTEN that process ``pid`` holds (its /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[len("socket:[") : -1])
    ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


def wait_ready(netns: str, timeout: float = 30.0) -> list[tuple[int, str]]:
    """Poll ``/readyz`` until 200; every answer seen, in order (connection refused skipped)."""
    seen: list[tuple[int, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            answer = http_get(netns, "/readyz")
        except OSError:
            time.sleep(0.02)
            continue
        if not seen or seen[-1] != answer:
            seen.append(answer)
        if answer[0] == 200:
            return seen
        time.sleep(0.02)
    pytest.fail(f"/readyz not 200 within {timeout:.0f} s: {seen[-3:]}")


# --------------------------------------------------------------------------- node-state mode


@pytest.mark.root
def test_metrics_count_real_adds_and_dels(runtime: Runtime, pods: Any, agent: Agent) -> None:
    netns = agent.host.netns
    wait_ready(netns)
    assert http_get(netns, "/healthz") == (200, "ok\n")
    before = scrape(netns)
    labels = [
        {"pool": "demo-192.168.0.0-24", "network": "demo", "interface": "eth1"},
        {"pool": "demo-192.168.128.0-24", "network": "demo", "interface": "eth2"},
    ]
    # Two /24s without network and broadcast address; the first excludes its upper /25.
    assert [before.value("multinic_ippool_addresses", **lab) for lab in labels] == [127, 254]

    first, second = pods.new(), pods.new()
    assert runtime.add("c1", first).status == 0
    assert runtime.add("c2", second).status == 0
    assert runtime.check("c1", first).status == 0
    refused = runtime.run(runtime.env("ADD", "c3", pods.new()), netconf(plugin={"type": "nosuch"}))
    assert refused.status == 1
    assert refused.json["code"] == 7
    during = scrape(netns)
    assert [during.value("multinic_ippool_used_addresses", **lab) for lab in labels] == [2, 2]
    assert runtime.delete("c1", first).status == 0
    assert runtime.delete("c2", second).status == 0
    after = scrape(netns)

    def moved(command: str, result: str) -> float:
        return after.requests(command, result) - before.requests(command, result)

    assert (moved("ADD", "ok"), moved("ADD", "error")) == (2, 1)
    assert (moved("DEL", "ok"), moved("DEL", "error")) == (2, 0)
    assert (moved("CHECK", "ok"), moved("CHECK", "error")) == (1, 0)
    errors = "multinic_cni_errors_total"
    assert (
        after.value(errors, command="ADD", code="7") - before.value(errors, command="ADD", code="7")
        == 1
    )
    # every ADD lands in the histogram's +Inf bucket and took some time
    inf = after.value(
        "multinic_cni_request_duration_seconds_bucket", command="ADD", result="ok", le="+Inf"
    )
    assert inf == after.requests("ADD", "ok")
    assert after.value(
        "multinic_cni_request_duration_seconds_sum", command="ADD", result="ok"
    ) > before.value("multinic_cni_request_duration_seconds_sum", command="ADD", result="ok")
    assert [after.value("multinic_ippool_used_addresses", **lab) for lab in labels] == [0, 0]
    # every metric says what it means
    assert all(after.help[name] for name in after.help if name.startswith("multinic_"))


@pytest.mark.root
def test_the_health_port_is_the_only_tcp_listener_and_serves_nothing_else(
    runtime: Runtime, pods: Any, agent: Agent
) -> None:
    assert agent.process is not None
    wait_ready(agent.host.netns)
    assert tcp_listening_ports(agent.process.pid) == {HEALTH_PORT}
    # The root namespace (where a pod's host-network neighbours live) sees no agent port.
    root = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    assert f"pid={agent.process.pid}," not in root
    before = scrape(agent.host.netns)
    # A CNI request sent to the TCP port is no request: it changes and counts nothing.
    assert http_get(agent.host.netns, "/", "POST")[0] == 405
    assert http_get(agent.host.netns, "/cni")[0] == 404
    with in_netns(
        f"/var/run/netns/{agent.host.netns}",
        lambda: socket.create_connection(("127.0.0.1", HEALTH_PORT), timeout=10),
    ) as raw:
        raw.sendall(b'{"env": {"CNI_COMMAND": "ADD"}, "stdin": "{}"}\n\r\n\r\n')
        assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
    after = scrape(agent.host.netns)
    assert after.requests("ADD", "ok") == before.requests("ADD", "ok")
    assert after.requests("ADD", "error") == before.requests("ADD", "error")
    assert agent.held_addresses() == {}


# --------------------------------------------------------------------------- cluster mode


@pytest.fixture
def objects(kube_api: KubeTestApi) -> Iterator[ClusterObjects]:
    for path in sorted(CRD_DIR.glob("*.yaml")):
        kube_api.apply_crd(yaml.safe_load(path.read_text()))
    tracked = ClusterObjects(kube_api)
    try:
        yield tracked
    finally:
        tracked.cleanup()
        kube_api.faults.clear()


@pytest.fixture
def host_netns() -> Iterator[str]:
    """A host namespace whose eth1/eth2 (10.0.1.11/24, 10.0.2.11/24) are veth NICs."""
    if not Path(SYSTEM_CNI, "macvlan").exists():
        pytest.skip(f"no CNI plugins in {SYSTEM_CNI}: apt-get install containernetworking-plugins")
    name = unique("mnh-host")
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


@pytest.mark.root
@pytest.mark.slow
def test_readiness_waits_for_the_api_and_the_metrics_follow_it(
    kube_api: KubeTestApi,
    objects: ClusterObjects,
    host_netns: str,
    installed_shim: Path,
    tmp_path: Path,
) -> None:
    sim = kube_api.require_sim()
    node, network, l3 = unique("node"), unique("net"), unique("l3net")
    objects.track("hostinterfaces", node)
    names = [f"{network}-192.168.0.0-24", f"{network}-192.168.128.0-24"]
    objects.create("ippools", pool_body(network, node, "eth1", "192.168.0.0/24", "192.168.0.0/18"))
    objects.create(
        "ippools", pool_body(network, node, "eth2", "192.168.128.0/24", "192.168.128.0/18")
    )
    # An l3 plan with two other hosts: two routes for this node's table.
    plan = [
        (node, "10.0.1.11", "192.168.0.0/24"),
        ("host-b", "10.0.1.12", "192.168.2.0/24"),
        ("host-c", "10.0.1.13", "192.168.3.0/24"),
    ]
    objects.create("cidrs", cidr_body(l3, plan))
    # The CIDR list fails three times: the agent is not ready until it got one.
    sim.faults.add(verb="list", resource="cidrs", status=500, count=3)
    host, port = sim.url.removeprefix("http://").rsplit(":", 1)
    forward = NetnsPortForward(f"/var/run/netns/{host_netns}", (host, int(port)))
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", f"http://127.0.0.1:{forward.port}")
    socket_path = tmp_path / "run" / "agent.sock"
    log_path = tmp_path / "agent.log"
    pod = unique("mnh-pod")
    ip("netns", "add", pod)
    config = {**SERVER_NETCONF, "name": network}
    with log_path.open("wb") as log:
        agent = subprocess.Popen(
            [
                "ip", "netns", "exec", host_netns, AGENT,
                "--node", node,
                "--kubeconfig", str(kubeconfig),
                "--socket", str(socket_path),
                "--state-dir", str(tmp_path / "state"),
                "--cni-path", SYSTEM_CNI,
                "--resync-interval", "3600",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        seen = wait_ready(host_netns, timeout=60)
        not_ready = [body for status, body in seen if status == 503]
        assert any("the CIDR plans not listed" in body for body in not_ready), seen
        assert seen[-1] == (200, "ok\n")
        wait_for(
            lambda: scrape(host_netns).value(
                "multinic_route_changes_total", network=l3, change="added"
            ) == 2,
            15,
            "two routes counted as added",
        )  # fmt: skip
        ready = scrape(host_netns)
        assert ready.value("multinic_api_errors_total", verb="list", code="500") == 3
        assert ready.value("multinic_api_requests_total", verb="watch") >= 4
        assert ready.value("multinic_route_sync_failures_total", network=l3) == 0

        labels = [
            {"pool": names[0], "network": network, "interface": "eth1"},
            {"pool": names[1], "network": network, "interface": "eth2"},
        ]
        assert [ready.value("multinic_ippool_addresses", **lab) for lab in labels] == [254, 254]
        assert [ready.value("multinic_ippool_used_addresses", **lab) for lab in labels] == [0, 0]
        added = shim_call(installed_shim, socket_path, "ADD", f"/var/run/netns/{pod}", config)
        assert added.returncode == 0, (added.stdout, log_path.read_text()[-3000:])
        during = scrape(host_netns)
        assert [during.value("multinic_ippool_used_addresses", **lab) for lab in labels] == [1, 1]
        assert during.requests("ADD", "ok") - ready.requests("ADD", "ok") == 1

        # The operator's count of a retired pool's stranded allocations, as the agent sees it.
        kube_api.custom_objects.patch_cluster_custom_object_status(
            GROUP, VERSION, "ippools", names[0], {"status": {"strandedAllocations": 1}}
        )
        wait_for(
            lambda: (
                scrape(host_netns).value("multinic_ippool_stranded_addresses", **labels[0]) == 1
            ),
            15,
            "the stranded count of the pool's status",
        )
        deleted = shim_call(installed_shim, socket_path, "DEL", f"/var/run/netns/{pod}", config)
        assert deleted.returncode == 0, deleted.stdout
        after = scrape(host_netns)
        assert after.requests("DEL", "ok") - ready.requests("DEL", "ok") == 1
        assert [after.value("multinic_ippool_used_addresses", **lab) for lab in labels] == [0, 0]
        assert tcp_listening_ports(agent.pid) == {HEALTH_PORT}
    finally:
        agent.terminate()
        try:
            agent.wait(timeout=15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        forward.close()
        ip("netns", "del", pod, check=False)


# --------------------------------------------------------------------------- label values


@pytest.mark.parametrize(
    ("method", "url", "verb"),
    [
        ("GET", "https://api:6443/api/v1/namespaces/default/pods/web", "get"),
        ("GET", "https://api:6443/api/v1/namespaces/default/pods", "list"),
        ("GET", "https://api:6443/api/v1/namespaces", "list"),
        ("GET", "https://api:6443/api/v1/namespaces/default", "get"),
        ("GET", "https://api:6443/apis/multinic.fms.io/v1/ippools?labelSelector=a%3Db", "list"),
        ("GET", "https://api:6443/apis/multinic.fms.io/v1/cidrs?watch=true&timeoutSeconds=60",
         "watch"),
        ("PATCH", "https://api:6443/apis/multinic.fms.io/v1/hostinterfaces/n/status", "patch"),
        ("POST", "https://api:6443/apis/multinic.fms.io/v1/hostinterfaces", "create"),
        ("PUT", "https://api:6443/api/v1/nodes/n", "update"),
        ("DELETE", "https://api:6443/api/v1/namespaces/d/events/e", "delete"),
        ("DELETE", "https://api:6443/api/v1/namespaces/d/events", "deletecollection"),
        # behind a path prefix (a proxy in front of the API server)
        ("GET", "https://rancher/k8s/clusters/c-1/api/v1/nodes", "list"),
    ],
)  # fmt: skip
def test_api_verbs_as_the_api_server_names_them(method: str, url: str, verb: str) -> None:
    assert api_verb(method, url) == verb


def test_cni_error_codes_are_bounded_labels() -> None:
    assert cni_error_code('{"code": 7, "msg": "x"}') == "7"
    assert cni_error_code('{"code": 123456, "msg": "x"}') == "other"
    assert cni_error_code("not json") == "other"
    assert cni_error_code('{"code": "7"}') == "other"


@pytest.mark.parametrize(
    ("pod_cidr", "excludes", "capacity"),
    [
        ("192.168.0.0/24", (), 254),
        ("192.168.0.0/24", ("192.168.0.128/25",), 127),
        # nested and overlapping excludes count once; the network address is none anyway
        ("192.168.0.0/24", ("192.168.0.0/26", "192.168.0.32/27", "192.168.0.60/30"), 191),
        ("192.168.0.0/24", ("192.168.0.10/31", "192.168.0.8/30", "192.168.0.200/29"), 242),
        ("192.168.0.0/30", (), 2),
        ("192.168.0.0/31", (), 0),
        ("10.0.0.0/24", ("192.168.0.0/16", "fd00::/64"), 254),
    ],
)
def test_pool_capacity_is_what_the_journal_hands_out(
    pod_cidr: str, excludes: tuple[str, ...], capacity: int, tmp_path: Path
) -> None:
    block = PoolBlock("p", pod_cidr, pod_cidr, "eth1", excludes)
    assert block.capacity() == capacity
    journal = AllocationJournal(tmp_path)
    handed_out = 0
    while handed_out <= 256:
        try:
            journal.allocate("n", f"c{handed_out}", "net1", [block])
        except PoolExhaustedError:
            break
        handed_out += 1
    journal.close()
    assert handed_out == capacity
