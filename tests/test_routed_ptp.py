"""Packets across the L3 host routes: three hosts, routed (ptp) pods, ping and ping6.

The predecessor's headline mode end to end on this kernel, everything real
but the Kubernetes API:

* a fabric namespace with one bridge per NIC rail; three host namespaces,
  each with NICs ``eth1``/``eth2`` (veths into the rails' bridges);
* NIC discovery in each host (``discover_nics``), the planner's CIDR plan and
  IPPools for an l3 network with ``plugin.type: ptp``, the NAD config the
  operator renders through the ptp driver;
* per host the agent's route reconciler (``CidrRouteReconciler``, the one
  route_sync runs; the CIDR arrives as a watch event) programming the
  network's table and rule, and the real ``multinic-agent`` serving the CNI
  socket, which runs the reference ``ptp`` delegate with multi-nic-ipam
  addresses;
* a pod per host attached through the shim; then ping from every pod to the
  pod of every other host on both rails.  Removing one host route makes that
  ping fail, and the reconciler's next pass brings it back.

The same for IPv6 (ping6).  Nothing in the test enables forwarding: ptp does.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netaddr
import pytest

pytestmark = [
    pytest.mark.root,
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path("/usr/lib/cni/ptp").exists(),
        reason="needs containernetworking-plugins (/usr/lib/cni/ptp, static)",
    ),
]

VENV_BIN = Path(sys.executable).parent
AGENT = str(VENV_BIN / "multinic-agent")
CNI_PATH = "/usr/lib/cni"
HOSTS = ("host-a", "host-b", "host-c")


@dataclass(frozen=True)
class Family:
    """One address family's network and the blocks the planner must give it."""

    version: int
    subnet: str
    host_block: int
    interface_block: int
    rails: tuple[tuple[str, str, str], ...]
    """(NIC, host network, host address pattern with ``{}`` = 11, 12, 13)."""
    pod_blocks: tuple[tuple[str, ...], ...]
    """Per rail, per host (a, b, c): the planned podCIDR."""
    vlan_cidrs: tuple[str, ...]
    forwarding: str

    def host_ip(self, rail: int, host: int) -> str:
        return self.rails[rail][2].format(11 + host)

    def pod_address(self, rail: int, host: int) -> str:
        """The first address of the host's block, with the vlanCIDR's prefix (SPEC 4)."""
        block = self.pod_blocks[rail][host].split("/")[0]
        prefix = self.vlan_cidrs[rail].split("/")[1]
        first = f"{block}1" if block.endswith(":") else re.sub(r"\.0$", ".1", block)
        return f"{first}/{prefix}"


IPV4 = Family(
    version=4,
    subnet="192.168.0.0/16",
    host_block=6,
    interface_block=2,
    rails=(("eth1", "10.0.1.0/24", "10.0.1.{}"), ("eth2", "10.0.2.0/24", "10.0.2.{}")),
    pod_blocks=(
        ("192.168.0.0/24", "192.168.1.0/24", "192.168.2.0/24"),
        ("192.168.64.0/24", "192.168.65.0/24", "192.168.66.0/24"),
    ),
    vlan_cidrs=("192.168.0.0/18", "192.168.64.0/18"),
    forwarding="net/ipv4/ip_forward",
)
IPV6 = Family(
    version=6,
    subnet="fd00:10::/48",
    host_block=8,
    interface_block=8,
    rails=(("eth1", "fd00:1::/64", "fd00:1::{}"), ("eth2", "fd00:2::/64", "fd00:2::{}")),
    pod_blocks=(
        ("fd00:10::/64", "fd00:10:0:1::/64", "fd00:10:0:2::/64"),
        ("fd00:10:0:100::/64", "fd00:10:0:101::/64", "fd00:10:0:102::/64"),
    ),
    vlan_cidrs=("fd00:10::/56", "fd00:10:0:100::/56"),
    forwarding="net/ipv6/conf/all/forwarding",
)


# --------------------------------------------------------------------------- helpers


def run(*argv: str, check: bool = True, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, check=check, **kwargs)


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(run("ip", "-n", netns, "-j", *args).stdout or "[]")


def sysctl(netns: str, key: str, value: str | None = None) -> str:
    path = f"/proc/sys/{key}"
    if value is not None:
        run("ip", "netns", "exec", netns, "sh", "-c", f"echo {value} > {path}")
    return run("ip", "netns", "exec", netns, "cat", path).stdout.strip()


def wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Ping:
    transmitted: int
    received: int
    avg_ms: float | None
    status: int
    output: str

    def __str__(self) -> str:
        rtt = f", avg {self.avg_ms:.3f} ms" if self.avg_ms is not None else ""
        return f"{self.received}/{self.transmitted} replies{rtt}"


def ping(pod_netns: str, address: str, count: int = 3) -> Ping:
    flag = "-6" if ":" in address else "-4"
    done = run(
        "ip", "netns", "exec", pod_netns, "ping", flag, "-n", "-q",
        "-c", str(count), "-i", "0.2", "-W", "1", address,
        check=False, timeout=30,
    )  # fmt: skip
    counts = re.search(r"(\d+) packets transmitted, (\d+) received", done.stdout)
    rtt = re.search(r"= [\d.]+/([\d.]+)/", done.stdout)
    return Ping(
        transmitted=int(counts.group(1)) if counts else 0,
        received=int(counts.group(2)) if counts else 0,
        avg_ms=float(rtt.group(1)) if rtt else None,
        status=done.returncode,
        output=done.stdout + done.stderr,
    )


@dataclass
class RoutedHost:
    name: str
    netns: str
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    reconciler: Any = None
    pod_netns: str = ""
    result: dict[str, Any] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return f"/var/run/netns/{self.netns}"

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def log(self) -> str:
        path = self.workdir / "agent.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


class RoutedCluster:
    """Fabric, hosts, agents, route reconcilers and pods of one family; all removed."""

    def __init__(self, family: Family, tmp_path: Path) -> None:
        self.family = family
        self.tmp_path = tmp_path
        self.prefix = f"mnptp{secrets.token_hex(2)}{family.version}"
        self.fabric = f"{self.prefix}-fab"
        self.hosts = [
            RoutedHost(name, f"{self.prefix}-h{i}", tmp_path / name) for i, name in enumerate(HOSTS)
        ]
        self.network_name = f"routed{family.version}"
        self.namespaces: list[str] = []
        self.shim = tmp_path / "cni-bin" / "multi-nic"
        self.netconf: dict[str, Any] = {}
        self.cidr: dict[str, Any] = {}

    # ------------------------------------------------------------------ build

    def netns(self, name: str) -> str:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def build_fabric(self) -> None:
        self.netns(self.fabric)
        for rail in range(len(self.family.rails)):
            bridge = f"br{rail + 1}"
            run("ip", "-n", self.fabric, "link", "add", bridge, "type", "bridge",
                "mcast_snooping", "0")  # fmt: skip
            run("ip", "-n", self.fabric, "link", "set", bridge, "up")
        for index, host in enumerate(self.hosts):
            self.netns(host.netns)
            # Fresh namespaces may inherit forwarding from the root: start with it off.
            sysctl(host.netns, self.family.forwarding, "0")
            for rail, (nic, network, _) in enumerate(self.family.rails):
                port = f"h{index}r{rail + 1}"
                run("ip", "-n", self.fabric, "link", "add", port, "type", "veth",
                    "peer", "name", nic, "netns", host.netns)  # fmt: skip
                run("ip", "-n", self.fabric, "link", "set", port, "master", f"br{rail + 1}", "up")
                length = network.split("/")[1]
                address = f"{self.family.host_ip(rail, index)}/{length}"
                nodad = ["nodad"] if self.family.version == 6 else []
                run("ip", "-n", host.netns, "addr", "add", address, "dev", nic, *nodad)
                run("ip", "-n", host.netns, "link", "set", nic, "up")

    def plan(self) -> None:
        """Discovery, the CIDR plan, IPPools and the NAD config, as operator and agent make them."""
        from multinic_agent.discovery import discover_nics, host_interface
        from multinic_core.hooktypes import StaticCluster
        from multinic_core.models import MultiNicNetwork
        from multinic_core.nad import nad_config
        from multinic_core.planner import cidr_object, plan_cidrs, planned_ippools
        from multinic_core.plugins import PluginRegistry

        network = MultiNicNetwork.model_validate(
            {
                "metadata": {"name": self.network_name},
                "spec": {
                    "subnet": self.family.subnet,
                    "ipam": json.dumps(
                        {
                            "type": "multi-nic-ipam",
                            "hostBlock": self.family.host_block,
                            "interfaceBlock": self.family.interface_block,
                            "vlanMode": "l3",
                        }
                    ),
                    "multiNICIPAM": True,
                    "masterNets": [network for _, network, _ in self.family.rails],
                    "plugin": {"cniVersion": "1.0.0", "type": "ptp"},
                },
            }
        )
        assert network.spec.manages_routes
        discovered = {host.name: discover_nics(netns=host.path) for host in self.hosts}
        interfaces = [host_interface(name, nics, None) for name, nics in discovered.items()]
        result = plan_cidrs(network, [i for i in interfaces if i is not None])
        assert result.problems == []
        self.cidr = cidr_object(network, result).to_dict()
        for rail, entry in enumerate(result.spec.cidr):
            assert entry.vlan_cidr == self.family.vlan_cidrs[rail]
            assert [h.pod_cidr for h in entry.hosts] == list(self.family.pod_blocks[rail])
        pools = planned_ippools(result.spec)
        for host in self.hosts:
            host.state_dir.mkdir(parents=True)
            state = {
                "nics": [n.to_dict() for n in discovered[host.name]],
                "ippools": [p.spec.to_dict() for p in pools if p.spec.host_name == host.name],
                "networks": [network.to_dict()],
            }
            (host.state_dir / "node-state.json").write_text(json.dumps(state))
        ptp = PluginRegistry().main_plugin("ptp")
        self.netconf = nad_config(network, ptp.network_attachment(network, StaticCluster()))

    def start_agents(self) -> None:
        run(AGENT, "install-cni", "--bin-dir", str(self.shim.parent), "--shim", "python")
        for host in self.hosts:
            log = (host.workdir / "agent.log").open("ab")
            host.process = subprocess.Popen(
                ["ip", "netns", "exec", host.netns, AGENT, "--node", host.name,
                 "--socket", str(host.socket), "--state-dir", str(host.state_dir),
                 "--cni-path", CNI_PATH, "--log-level", "DEBUG", "run"],
                stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
            log.close()
        for host in self.hosts:

            def ready(host: RoutedHost = host) -> bool:
                assert host.process is not None
                if host.process.poll() is not None:
                    raise AssertionError(f"agent of {host.name} exited: {host.log()}")
                return host.socket.exists()

            wait_for(ready, 30, f"the agent of {host.name}")

    def sync_routes(self) -> dict[str, Any]:
        """One pass of each host's route reconciler over the CIDR; the status per host."""
        from kubernetes import client

        from multinic_agent.route_sync import CidrRouteReconciler

        statuses = {}
        for host in self.hosts:
            if host.reconciler is None:
                host.reconciler = CidrRouteReconciler(
                    client.ApiClient(), host.name, host.state_dir, netns=host.path
                )
                # What the CIDR watch does with an ADDED event.
                host.reconciler.cidrs._apply("ADDED", self.cidr)
            statuses[host.name] = host.reconciler.reconcile_once()[self.network_name]
        return statuses

    def table(self, host: RoutedHost) -> int:
        return int(host.reconciler.tables.registry.tables[self.network_name])

    def table_routes(self, host: RoutedHost) -> dict[str, tuple[str, str]]:
        flag = f"-{self.family.version}"
        found = ip_json(host.netns, flag, "route", "show", "table", str(self.table(host)))
        return {r["dst"]: (r.get("gateway", ""), r.get("dev", "")) for r in found}

    def rules(self, host: RoutedHost) -> list[str]:
        flag = f"-{self.family.version}"
        return [
            f"from {r['src']}/{r['srclen']} lookup {r['table']}"
            for r in ip_json(host.netns, flag, "rule", "show")
            if r.get("table") == str(self.table(host))
        ]

    # ------------------------------------------------------------------ CNI

    def cni(self, host: RoutedHost, command: str) -> subprocess.CompletedProcess[str]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": f"c-{host.name}",
            "CNI_NETNS": f"/var/run/netns/{host.pod_netns}",
            "CNI_IFNAME": "net1",
            "CNI_PATH": CNI_PATH,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-{host.name}",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MULTINIC_AGENT_SOCKET": str(host.socket),
        }
        return run(str(self.shim), input=json.dumps(self.netconf), env=env, check=False, timeout=60)

    def add_pods(self) -> None:
        for host in self.hosts:
            host.pod_netns = self.netns(f"{self.prefix}-p{HOSTS.index(host.name)}")
            done = self.cni(host, "ADD")
            assert done.returncode == 0, f"{done.stdout}\n{host.log()}"
            host.result = json.loads(done.stdout)
        if self.family.version == 6:
            # The gateway on each host-side veth is tentative until its DAD is done.
            for host in self.hosts:
                wait_for(
                    lambda host=host: not ip_json(host.netns, "-6", "addr", "show", "tentative"),
                    10,
                    f"IPv6 DAD on {host.name}",
                )

    # ------------------------------------------------------------------ teardown

    def cleanup(self) -> None:
        for host in self.hosts:
            if host.process is not None and host.process.poll() is None:
                host.process.send_signal(signal.SIGTERM)
                try:
                    host.process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    host.process.kill()
                    host.process.wait()
        for name in reversed(self.namespaces):
            run("ip", "netns", "del", name, check=False)


@pytest.fixture(params=[IPV4, IPV6], ids=["ipv4", "ipv6"])
def cluster(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RoutedCluster]:
    built = RoutedCluster(request.param, tmp_path)
    try:
        built.build_fabric()
        built.plan()
        built.start_agents()
        yield built
    finally:
        built.cleanup()


# --------------------------------------------------------------------------- the test


def test_pods_on_different_hosts_ping_each_other_over_the_host_routes(
    cluster: RoutedCluster, caplog: pytest.LogCaptureFixture
) -> None:
    family = cluster.family
    hosts = cluster.hosts

    # 1. The host routes, programmed by the agent's reconciler from the plan.
    statuses = cluster.sync_routes()
    for index, host in enumerate(hosts):
        status = statuses[host.name]
        assert (status.status, status.message) == (
            "Success",
            f"4 routes in table {cluster.table(host)}",
        ), host.name
        assert cluster.table_routes(host) == {
            family.pod_blocks[rail][other]: (family.host_ip(rail, other), nic)
            for rail, (nic, _, _) in enumerate(family.rails)
            for other in range(len(hosts))
            if other != index
        }, host.name
        assert cluster.rules(host) == [f"from {family.subnet} lookup {cluster.table(host)}"]
        assert sysctl(host.netns, family.forwarding) == "0"

    # 2. A pod per host through the shim, the agent and the ptp delegate.
    cluster.add_pods()
    for index, host in enumerate(hosts):
        expected = [family.pod_address(rail, index) for rail in range(len(family.rails))]
        gateways = [family.host_ip(rail, index) for rail in range(len(family.rails))]
        assert [(i["address"], i.get("gateway")) for i in host.result["ips"]] == list(
            zip(expected, gateways, strict=True)
        )
        for rail, address in enumerate(expected):
            pod_if = f"net1-{rail}"
            flag = f"-{family.version}"
            pod_addresses = ip_json(host.pod_netns, flag, "addr", "show", "dev", pod_if)
            assert [
                f"{a['local']}/{a['prefixlen']}"
                for a in pod_addresses[0]["addr_info"]
                if a["scope"] == "global"
            ] == [address]
            routes = {
                r["dst"]: r.get("gateway")
                for r in ip_json(host.pod_netns, flag, "route", "show", "dev", pod_if)
                if r["dst"] != "fe80::/64"
            }
            # The gateway on-link, the rail's vlanCIDR through it: the pod's way to the network.
            assert routes == {gateways[rail]: None, family.vlan_cidrs[rail]: gateways[rail]}
            # ptp's route to the pod in the host's main table, through the host-side veth
            on_veths = {
                r["dst"]: r["dev"]
                for r in ip_json(host.netns, flag, "route", "show")
                if r.get("dev", "").startswith("veth")
            }
            assert address.split("/")[0] in on_veths, (host.name, on_veths)
        # ptp turned forwarding on in the host's namespace; the test never did.
        assert sysctl(host.netns, family.forwarding) == "1"
    check = cluster.cni(hosts[0], "CHECK")
    assert (check.returncode, check.stdout) == (0, ""), check.stdout

    # 3. Every pod pings the pod of every other host, on both rails.
    figures: list[str] = []
    for src in hosts:
        for dst_index, dst in enumerate(hosts):
            if src is dst:
                continue
            for rail in range(len(family.rails)):
                target = family.pod_address(rail, dst_index).split("/")[0]
                result = ping(src.pod_netns, target)
                figures.append(f"{src.name} -> {dst.name} {target}: {result}")
                assert (result.status, result.received) == (0, 3), result.output
    print(f"\nIPv{family.version} ping, pod to pod across hosts:\n  " + "\n  ".join(figures))

    # 4. Without host-a's route to host-b's block on eth1, that path is gone...
    a, b, _ = hosts
    b_block = family.pod_blocks[0][1]
    run("ip", "-n", a.netns, f"-{family.version}", "route", "del", b_block,
        "table", str(cluster.table(a)))  # fmt: skip
    b_pod = family.pod_address(0, 1).split("/")[0]
    broken = ping(a.pod_netns, b_pod)
    assert broken.status != 0
    assert broken.received == 0, broken.output
    back = ping(b.pod_netns, family.pod_address(0, 0).split("/")[0])
    assert back.received == 0, back.output  # host-a cannot answer host-b either
    # ...while host-a's other routes still carry their traffic.
    assert ping(a.pod_netns, family.pod_address(0, 2).split("/")[0]).received == 3
    assert ping(a.pod_netns, family.pod_address(1, 1).split("/")[0]).received == 3
    print(f"  without {b_block} via {family.host_ip(0, 1)} on host-a: {broken}, back {back}")

    # 5. The reconciler's next pass puts the route back (a diff: only that one).
    caplog.set_level(logging.INFO, logger="multinic_agent.host_routes")
    assert cluster.sync_routes()["host-a"].status == "Success"
    assert "1 added, 0 replaced, 0 removed, 3 kept" in caplog.text
    assert cluster.table_routes(a)[b_block] == (family.host_ip(0, 1), "eth1")
    restored = ping(a.pod_netns, b_pod)
    assert (restored.status, restored.received) == (0, 3), restored.output
    print(f"  after the reconciler's pass: {restored}")

    # 6. DEL removes the pods' veths and their /32 routes; the network's table stays.
    for host in hosts:
        done = cluster.cni(host, "DEL")
        assert (done.returncode, done.stdout) == (0, ""), done.stdout
        assert [link["ifname"] for link in ip_json(host.pod_netns, "link", "show")] == ["lo"]
        links = sorted(link["ifname"] for link in ip_json(host.netns, "link", "show"))
        assert links == ["eth1", "eth2", "lo"]
        flag = f"-{family.version}"
        main = [r["dst"] for r in ip_json(host.netns, flag, "route", "show")]
        subnet = netaddr.IPNetwork(family.subnet)
        assert [d for d in main if d != "default" and netaddr.IPNetwork(d) in subnet] == []
        assert len(cluster.table_routes(host)) == 4
