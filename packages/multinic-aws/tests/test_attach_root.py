"""End to end on this machine (root): the agent attaches a pod with the real
``ipvlan`` plugin to a host NIC whose MAC is an ENI's in moto, and the pod's
address is that ENI's secondary private IP until DEL.

Needs root (a network namespace, a veth NIC) and a kernel with ipvlan; skips
saying which is missing.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from multinic_aws import host

from .conftest import CLEAN_ENIS, Cloud, Node, settings_args

SYSTEM_CNI = "/usr/lib/cni"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@pytest.fixture
def master(cloud: Cloud, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A NIC in this namespace (a veth) with the MAC of host-a's eth1 ENI, whose MAC
    the driver reads where the agent does."""
    monkeypatch.setattr(host, "SYSFS_NET", Path("/sys/class/net"))
    name = f"mnaws{os.getpid() % 100000}"
    ip("link", "add", name, "type", "veth", "peer", "name", f"{name}v")
    try:
        ip("link", "set", name, "address", cloud.macs["a-eth1"])
        ip("link", "set", name, "up")
        probe = ip(
            "link", "add", f"{name}p", "link", name, "type", "ipvlan", "mode", "l2", check=False
        )
        if probe.returncode != 0:
            pytest.skip(
                f"kernel has no ipvlan: `ip link add ... type ipvlan` failed: {probe.stderr.strip()}"
            )
        ip("link", "del", f"{name}p")
        yield name
    finally:
        ip("link", "del", name, check=False)


@pytest.fixture
def pod_netns() -> Iterator[str]:
    name = f"mnaws-pod-{os.getpid() % 100000}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        ip("netns", "del", name, check=False)


@pytest.mark.root
def test_real_ipvlan_attach_with_the_address_on_the_eni(
    tmp_path: Path, cloud: Cloud, master: str, pod_netns: str
) -> None:
    if not os.access(f"{SYSTEM_CNI}/ipvlan", os.X_OK):
        pytest.skip(f"no reference ipvlan plugin in {SYSTEM_CNI}")
    node = Node(
        tmp_path,
        settings_args(cloud.url),
        nics={"eth1": master},
        cni_path=SYSTEM_CNI,
        netns=f"/var/run/netns/{pod_netns}",
    )
    status, result = node.cni("ADD")
    assert status == 0, result
    (address,) = [i["address"] for i in result["ips"]]
    assert address == "10.0.1.4/24"
    links = json.loads(ip("-n", pod_netns, "-j", "addr", "show", "net1-0").stdout)
    assert [
        f"{a['local']}/{a['prefixlen']}" for a in links[0]["addr_info"] if a["family"] == "inet"
    ] == [address]
    assert cloud.all_secondary() == {**CLEAN_ENIS, "a-eth1": ["10.0.1.4"]}

    status, reply = node.cni("DEL")
    assert status == 0, reply
    assert ip("-n", pod_netns, "link", "show", "net1-0", check=False).returncode != 0
    assert cloud.all_secondary() == CLEAN_ENIS
