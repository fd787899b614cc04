"""The generated delegate config, executed by the real ptp CNI plugin in a host namespace.

What ptp does with a static address and the gateway the driver adds: the
pod's address with the vlanCIDR prefix, an on-link route to the gateway and
the vlanCIDR via it; on the host the gateway on the host-side veth, the pod's
/32 (/128) in the main table and forwarding on.  DEL takes it all away.
(Traffic between hosts: tests/test_routed_ptp.py.)
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netaddr
import pytest

from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_config
from multinic_core.plugins import PluginRegistry

CNI_BIN = Path("/usr/lib/cni")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (CNI_BIN / "ptp").exists(),
        reason="needs containernetworking-plugins (/usr/lib/cni/ptp)",
    ),
]

FAMILIES = {
    4: {
        "subnet": "192.168.0.0/16",
        "blocks": (6, 2),
        "master": "10.0.1.0/24",
        "host": "10.0.1.11/24",
        "pod": "192.168.0.7/18",
        "forwarding": "net/ipv4/ip_forward",
    },
    6: {
        "subnet": "fd00:10::/48",
        "blocks": (8, 8),
        "master": "fd00:1::/64",
        "host": "fd00:1::11/64",
        "pod": "fd00:10::7/56",
        "forwarding": "net/ipv6/conf/all/forwarding",
    },
}


def ip(netns: str, *args: str) -> Any:
    done = subprocess.run(
        ["ip", "-n", netns, "-j", *args], check=True, capture_output=True, text=True
    )
    return json.loads(done.stdout or "[]")


def sysctl(netns: str, key: str) -> str:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "cat", f"/proc/sys/{key}"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


@pytest.fixture
def host_and_pod() -> Iterator[tuple[str, str]]:
    """A host namespace (no NIC yet) and a pod namespace, removed afterwards."""
    suffix = secrets.token_hex(3)
    host, pod = f"mnptph-{suffix}", f"mnptpp-{suffix}"
    try:
        for ns in (host, pod):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        yield host, pod
    finally:
        for ns in (pod, host):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def cni(command: str, config: dict[str, Any], host: str, pod: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_IFNAME": "net1-0",
        "CNI_PATH": str(CNI_BIN),
    }
    run = subprocess.run(
        ["ip", "netns", "exec", host, str(CNI_BIN / config["type"])],
        input=json.dumps(config),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout) if run.stdout.strip() else {}


@pytest.mark.parametrize("family", [4, 6])
def test_ptp_delegate_makes_the_routed_pod_interface_and_removes_it(
    host_and_pod: tuple[str, str], family: int
) -> None:
    host, pod = host_and_pod
    case = FAMILIES[family]
    host_block, interface_block = case["blocks"]
    subprocess.run(
        ["ip", "-n", host, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1p"],
        check=True,
    )
    nodad = ["nodad"] if family == 6 else []
    subprocess.run(
        ["ip", "-n", host, "addr", "add", case["host"], "dev", "eth1", *nodad], check=True
    )
    subprocess.run(["ip", "-n", host, "link", "set", "eth1", "up"], check=True)
    network = MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "routed"},
            "spec": {
                "subnet": case["subnet"],
                "ipam": json.dumps(
                    {
                        "type": "multi-nic-ipam",
                        "hostBlock": host_block,
                        "interfaceBlock": interface_block,
                        "vlanMode": "l3",
                    }
                ),
                "multiNICIPAM": True,
                "masterNets": [case["master"]],
                "plugin": {"type": "ptp", "args": {"mtu": "1400"}},
            },
        }
    )
    ptp = PluginRegistry().main_plugin("ptp")
    netconf = nad_config(network, ptp.network_attachment(network, StaticCluster()))
    gateway = case["host"].split("/")[0]
    nic = SelectedNic(name="eth1", net_address=case["master"], host_ip=gateway)
    section = {"type": "static", "addresses": [{"address": case["pod"]}], "routes": []}
    config = ptp.delegate_config(netconf, nic, section)
    config["cniVersion"] = "1.0.0"  # what the agent negotiates with ptp 1.1
    assert sysctl(host, case["forwarding"]) == "0"

    result = cni("ADD", config, host, pod)
    assert [i["address"] for i in result["ips"]] == [case["pod"]]
    assert result["ips"][0]["gateway"] == gateway
    pod_ip = case["pod"].split("/")[0]
    link = ip(pod, "-d", "addr", "show", "net1-0")[0]
    assert (link["mtu"], link["linkinfo"]["info_kind"]) == (1400, "veth")
    assert [a["local"] for a in link["addr_info"] if a["scope"] == "global"] == [pod_ip]
    flag = "-4" if family == 4 else "-6"
    routes = {r["dst"]: r for r in ip(pod, flag, "route", "show", "dev", "net1-0") if "dst" in r}
    vlan_cidr = str(netaddr.IPNetwork(case["pod"]).cidr)
    assert "gateway" not in routes[gateway]  # on-link
    assert routes[vlan_cidr]["gateway"] == gateway
    # the host side: the gateway on the veth, the pod's host route, forwarding on
    host_veth = next(i["name"] for i in result["interfaces"] if not i.get("sandbox"))
    host_link = ip(host, "addr", "show", host_veth)[0]
    assert gateway in [a["local"] for a in host_link["addr_info"]]
    host_routes = ip(host, flag, "route", "show", "dev", host_veth)
    assert pod_ip in [r["dst"] for r in host_routes]
    assert sysctl(host, case["forwarding"]) == "1"

    cni("DEL", config, host, pod)
    assert [link["ifname"] for link in ip(pod, "link", "show")] == ["lo"]
    assert host_veth not in [link["ifname"] for link in ip(host, "link", "show")]
