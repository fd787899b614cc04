"""NIC discovery on a real namespaced kernel, with sysfs hardware facts."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from multinic_agent.discovery import discover_nics, hardware_facts, host_interface
from multinic_core.models import HostInterface


def ip(netns: str, *args: str) -> None:
    subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)


@pytest.fixture
def node_netns() -> Iterator[str]:
    """eth0 primary (default route), eth1 IPv4, eth2 IPv6 only, eth3 no address, mnx0 ignored."""
    name = f"mnt-disc-{uuid.uuid4().hex[:8]}"
    peer = f"{name}-fab"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "add", peer], check=True)
    try:
        for index, nic in enumerate(("eth0", "eth1", "eth2", "eth3", "mnx0")):
            ip(name, "link", "add", nic, "type", "veth", "peer", "name", f"p{index}", "netns", peer)
            ip(name, "link", "set", nic, "up")
        ip(name, "addr", "add", "172.16.0.5/16", "dev", "eth0")
        ip(name, "route", "add", "default", "via", "172.16.0.1", "dev", "eth0")
        ip(name, "addr", "add", "10.0.1.11/24", "dev", "eth1")
        ip(name, "addr", "add", "fd00:2::11/64", "dev", "eth2", "nodad")
        ip(name, "addr", "add", "10.9.9.9/24", "dev", "mnx0")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "netns", "del", peer], check=False)


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A sysfs tree in the kernel's layout: eth1 is a Mellanox PCI function on NUMA 1."""
    root = tmp_path / "sys"
    device = root / "devices" / "pci0000:3a" / "0000:3b:00.0"
    device.mkdir(parents=True)
    (device / "vendor").write_text("0x15b3\n")
    (device / "device").write_text("0x1019\n")
    (device / "numa_node").write_text("1\n")
    net = root / "class" / "net"
    (net / "eth1").mkdir(parents=True)
    (net / "eth1" / "device").symlink_to(device)
    (net / "eth1" / "speed").write_text("100000\n")
    (net / "eth2").mkdir()
    (net / "eth2" / "speed").write_text("-1\n")  # link without a known speed
    return root


@pytest.mark.root
def test_discovery_reports_secondary_nics_only(node_netns: str, sysfs: Path) -> None:
    nics = discover_nics(netns=node_netns, sysfs=sysfs, ignore=["mnx*"])
    assert [n.to_dict() for n in nics] == [
        {
            "interfaceName": "eth1",
            "netAddress": "10.0.1.0/24",
            "hostIP": "10.0.1.11",
            "vendor": "15b3",
            "product": "1019",
            "pciAddress": "0000:3b:00.0",
            "numaNode": 1,
            "speed": 100000,
        },
        {
            "interfaceName": "eth2",
            "netAddress": "fd00:2::/64",
            "hostIP": "fd00:2::11",
            "vendor": "",
            "product": "",
            "pciAddress": "",
        },
    ]


@pytest.mark.root
def test_without_ignore_patterns_every_addressed_non_primary_nic_is_found(
    node_netns: str, tmp_path: Path
) -> None:
    names = [n.interface_name for n in discover_nics(netns=node_netns, sysfs=tmp_path)]
    assert names == ["eth1", "eth2", "mnx0"]


def test_hardware_facts_of_a_virtual_link_are_empty(tmp_path: Path) -> None:
    assert hardware_facts(tmp_path, "veth0") == {}


def test_host_interface_keeps_labels_and_never_touches_unmanaged_nodes(sysfs: Path) -> None:
    nics = [
        HostInterface.model_validate(
            {
                "metadata": {"name": "n1"},
                "spec": {
                    "hostName": "n1",
                    "interfaces": [{"interfaceName": "eth1", "netAddress": "10.0.1.0/24"}],
                },
            }
        ).spec.interfaces[0]
    ]
    fresh = host_interface("n1", nics, None)
    assert fresh is not None
    assert fresh.to_dict()["spec"]["interfaces"][0]["interfaceName"] == "eth1"
    labelled = HostInterface.model_validate(
        {"metadata": {"name": "n1", "labels": {"team": "a"}}, "spec": {"hostName": "n1"}}
    )
    updated = host_interface("n1", nics, labelled)
    assert updated is not None
    assert updated.metadata.labels == {"team": "a"}
    assert [i.interface_name for i in updated.spec.interfaces] == ["eth1"]
    unmanaged = HostInterface.model_validate(
        {
            "metadata": {"name": "n1", "labels": {"multi-nic-unmanaged": "true"}},
            "spec": {"hostName": "n1"},
        }
    )
    assert host_interface("n1", nics, unmanaged) is None
