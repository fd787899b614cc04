"""The IPAM plugins as the agent calls them: through the registry, by entry-point name."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from multinic_core.errors import ConfigError, TryAgainError
from multinic_core.hooktypes import IpamRequest, SelectedNic
from multinic_core.models import IPPoolSpec, MultiNicNetwork
from multinic_core.plugins import PluginRegistry
from multinic_ipam.journal import AllocationJournal

IPAM = {
    "type": "multi-nic-ipam",
    "hostBlock": 6,
    "interfaceBlock": 2,
    "vlanMode": "l2",
    "routes": [
        {"dst": "172.30.0.0/16", "gw": "192.168.63.254"},
        {"dst": "172.30.0.0/16", "gw": "192.168.191.254"},
        {"dst": "10.99.0.0/16"},
        {"dst": "172.31.0.0/16", "gw": "10.200.0.1"},
    ],
    "dns": {"nameservers": ["192.168.0.53"]},
}
POOLS = {
    "eth1": IPPoolSpec.model_validate(
        {
            "podCIDR": "192.168.0.0/24",
            "vlanCIDR": "192.168.0.0/18",
            "netAttachDef": "demo",
            "hostName": "a",
            "interfaceName": "eth1",
        }
    ),
    "eth2": IPPoolSpec.model_validate(
        {
            "podCIDR": "192.168.128.0/24",
            "vlanCIDR": "192.168.128.0/18",
            "netAttachDef": "demo",
            "hostName": "a",
            "interfaceName": "eth2",
        }
    ),
}
NICS = (
    SelectedNic(name="eth1", net_address="10.0.1.0/24", host_ip="10.0.1.11"),
    SelectedNic(name="eth2", net_address="10.0.2.0/24", host_ip="10.0.2.11"),
)


def network(ipam: dict[str, Any]) -> MultiNicNetwork:
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {"ipam": json.dumps(ipam), "plugin": {"type": "macvlan"}},
        }
    )


def request(
    ipam: dict[str, Any], journal: AllocationJournal | None = None, **changes: Any
) -> IpamRequest:
    fields: dict[str, Any] = {
        "network": network(ipam),
        "ipam": ipam,
        "nics": NICS,
        "container_id": "c1",
        "if_name": "net1",
        "context": {"allocations": journal, "pools": POOLS},
    }
    fields.update(changes)
    return IpamRequest(**fields)


@pytest.mark.parametrize(
    "name",
    [
        "multi-nic-ipam",
        "multi-config",
        "host-device-ipam",
        "host-local",
        "static",
        "whereabouts",
        "dhcp",
    ],
)
def test_installed_and_discoverable(name: str) -> None:
    plugin = PluginRegistry().ipam(name)
    assert plugin.info.distribution == "multinic-ipam"
    assert plugin.implements("multinic_ipam_add")


def test_multi_nic_ipam_gives_vlan_prefix_and_routes_per_link(tmp_path: Path) -> None:
    plugin = PluginRegistry().ipam("multi-nic-ipam")
    sections = plugin.add(request(IPAM, AllocationJournal(tmp_path)))
    assert sections == [
        {
            "type": "static",
            # /18: the vlanCIDR's prefix, not the /24 pod block
            "addresses": [{"address": "192.168.0.1/18"}],
            "routes": [{"dst": "172.30.0.0/16", "gw": "192.168.63.254"}, {"dst": "10.99.0.0/16"}],
            "dns": {"nameservers": ["192.168.0.53"]},
        },
        {
            "type": "static",
            "addresses": [{"address": "192.168.128.1/18"}],
            "routes": [{"dst": "172.30.0.0/16", "gw": "192.168.191.254"}],
            "dns": {"nameservers": ["192.168.0.53"]},
        },
    ]


def test_multi_nic_ipam_release_frees_the_addresses(tmp_path: Path) -> None:
    plugin = PluginRegistry().ipam("multi-nic-ipam")
    journal = AllocationJournal(tmp_path)
    plugin.add(request(IPAM, journal))
    plugin.delete(request(IPAM, journal))
    assert journal.attachments() == []
    plugin.delete(request(IPAM, journal))  # twice: still fine


def test_multi_nic_ipam_without_a_pool_asks_to_try_again(tmp_path: Path) -> None:
    plugin = PluginRegistry().ipam("multi-nic-ipam")
    journal = AllocationJournal(tmp_path)
    req = request(IPAM, journal, context={"allocations": journal, "pools": {"eth1": POOLS["eth1"]}})
    with pytest.raises(TryAgainError, match="no IPPool of network 'demo' for interface 'eth2'"):
        plugin.add(req)
    assert journal.attachments() == []


def test_multi_config_per_nic_and_static_ips() -> None:
    ipam = {
        "type": "multi-config",
        "ipam_type": "whereabouts",
        "args": {"eth1": {"range": "10.1.0.0/24"}, "eth2": {"range": "10.2.0.0/24"}},
    }
    plugin = PluginRegistry().ipam("multi-config")
    assert plugin.add(request(ipam)) == [
        {"range": "10.1.0.0/24", "type": "whereabouts", "network_name": "eth1"},
        {"range": "10.2.0.0/24", "type": "whereabouts", "network_name": "eth2"},
    ]
    assert plugin.add(request(ipam, static_ips=("10.7.0.5/24",)))[0] == {
        "type": "static",
        "addresses": [{"address": "10.7.0.5/24"}],
    }
    with pytest.raises(ConfigError, match="no IPAM config for interface 'eth2'"):
        plugin.add(request({**ipam, "args": {"eth1": {}}}))


def test_multi_config_takes_a_different_ipam_and_static_address_per_nic() -> None:
    ipam = {
        "type": "multi-config",
        "args": {
            "eth1": {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]},
            "eth2": {"type": "static", "addresses": [{"address": "10.2.0.7/24"}]},
        },
    }
    plugin = PluginRegistry().ipam("multi-config")
    assert plugin.add(request(ipam)) == [
        {"type": "host-local", "ranges": [[{"subnet": "10.1.0.0/24"}]]},
        {"type": "static", "addresses": [{"address": "10.2.0.7/24"}]},
    ]
    # A NIC config without a type needs ipam_type.
    untyped = {"type": "multi-config", "args": {"eth1": {}, "eth2": {"type": "dhcp"}}}
    with pytest.raises(ConfigError, match=r"ipam.args\['eth1'\] names no IPAM type"):
        plugin.add(request(untyped))
    assert plugin.add(request({**untyped, "ipam_type": "whereabouts"}))[0] == {
        "type": "whereabouts",
        "network_name": "eth1",
    }


def test_static_gives_each_nic_its_own_address() -> None:
    plugin = PluginRegistry().ipam("static")
    ipam = {
        "type": "static",
        "addresses": [{"address": "10.7.1.5/24"}, {"address": "10.7.2.5/24"}],
        "routes": [{"dst": "10.9.0.0/16"}],
    }
    assert [s["addresses"] for s in plugin.add(request(ipam))] == [
        [{"address": "10.7.1.5/24"}],
        [{"address": "10.7.2.5/24"}],
    ]
    with pytest.raises(ConfigError, match=r"needs one address per NIC in ipam\.addresses, not 1"):
        plugin.add(request({**ipam, "addresses": ipam["addresses"][:1]}))


def test_host_device_ipam_uses_the_host_address() -> None:
    plugin = PluginRegistry().ipam("host-device-ipam")
    sections = plugin.add(request({"type": "host-device-ipam"}))
    assert [s["addresses"] for s in sections] == [
        [{"address": "10.0.1.11/24"}],
        [{"address": "10.0.2.11/24"}],
    ]


def test_pass_through_gives_every_nic_the_same_config() -> None:
    ipam = {"type": "host-local", "ranges": [[{"subnet": "10.5.0.0/16"}]]}
    sections = PluginRegistry().ipam("host-local").add(request(ipam))
    assert sections == [ipam, ipam]
    assert sections[0] is not sections[1]
