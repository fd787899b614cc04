"""The ipvlan driver, as the operator and the agent reach it: through the registry."""

from __future__ import annotations

import json

import pytest

from multinic_core.errors import ConfigError
from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_config, nad_object
from multinic_core.plugins import MainPlugin, PluginRegistry

EXCLUDES = ["192.168.64.0/18", "192.168.1.0/24", "192.168.0.128/25"]


def ipvlan_network(args: dict[str, str], vlan_mode: str | None = "l3") -> MultiNicNetwork:
    ipam = {"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "excludeCIDRs": EXCLUDES}
    if vlan_mode:
        ipam["vlanMode"] = vlan_mode
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "demo", "uid": "u-1"},
            "spec": {
                "subnet": "192.168.0.0/16",
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
                "plugin": {"cniVersion": "0.3.0", "type": "ipvlan", "args": args},
            },
        }
    )


@pytest.fixture(scope="module")
def ipvlan() -> MainPlugin:
    return PluginRegistry().main_plugin("ipvlan")


def plugin_of(ipvlan: MainPlugin, network: MultiNicNetwork) -> dict[str, object]:
    return ipvlan.network_attachment(network, StaticCluster()).plugin


def test_installed_and_discoverable(ipvlan: MainPlugin) -> None:
    assert ipvlan.info.distribution == "multinic-ipvlan"
    assert ipvlan.info.hooks == ("multinic_delegate_config", "multinic_network_attachment")
    assert ipvlan.dependent_objects(ipvlan_network({}), [], StaticCluster()) == []


def test_renders_the_spec_example_nad_and_one_delegate_per_nic(ipvlan: MainPlugin) -> None:
    network = ipvlan_network({"mode": "l3"})
    attachment = ipvlan.network_attachment(network, StaticCluster())
    assert attachment.annotations == {}
    nad = nad_object(network, attachment, "default")
    netconf = json.loads(nad["spec"]["config"])
    # SPEC section 3, end to end from the network through the registry.
    assert netconf == {
        "cniVersion": "0.3.0",
        "name": "demo",
        "type": "multi-nic",
        "ipam": {
            "excludeCIDRs": EXCLUDES,
            "hostBlock": 6,
            "interfaceBlock": 2,
            "type": "multi-nic-ipam",
            "vlanMode": "l3",
        },
        "dns": {},
        "plugin": {"cniVersion": "0.3.0", "mode": "l3", "type": "ipvlan"},
        "subnet": "192.168.0.0/16",
        "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
        "multiNICIPAM": True,
        "daemonIP": "",
        "daemonPort": 11000,
        "capabilities": {"ips": True, "mac": True},
    }

    ipams = [
        {"type": "static", "addresses": [{"address": "192.168.0.1/18"}]},
        {"type": "static", "addresses": [{"address": "192.168.128.1/18"}]},
    ]
    nics = [SelectedNic(name="eth1"), SelectedNic(name="eth2")]
    delegates = [
        ipvlan.delegate_config(netconf, nic, ipam) for nic, ipam in zip(nics, ipams, strict=True)
    ]
    assert delegates == [
        {
            "cniVersion": "0.3.0",
            "name": "demo",
            "type": "ipvlan",
            "master": master,
            "mode": "l3",
            "ipam": ipam,
        }
        for master, ipam in (("eth1", ipams[0]), ("eth2", ipams[1]))
    ]


def test_user_keys_are_kept_and_typed_in_the_nad_and_every_delegate(ipvlan: MainPlugin) -> None:
    network = ipvlan_network({"mode": "l3s", "mtu": "9000", "linkInContainer": "false", "x": "y"})
    plugin = plugin_of(ipvlan, network)
    assert plugin == {
        "cniVersion": "0.3.0",
        "linkInContainer": False,
        "mode": "l3s",
        "mtu": 9000,
        "type": "ipvlan",
        "x": "y",
    }
    netconf = nad_config(network, ipvlan.network_attachment(network, StaticCluster()))
    delegate = ipvlan.delegate_config(netconf, SelectedNic(name="eth1"), {"type": "static"})
    assert {k: delegate[k] for k in ("mtu", "linkInContainer", "x", "mode")} == {
        "mtu": 9000,
        "linkInContainer": False,
        "x": "y",
        "mode": "l3s",
    }


@pytest.mark.parametrize(
    ("args", "vlan_mode", "mode"),
    [
        ({}, "l3", "l3"),
        ({}, "l3s", "l3s"),
        ({}, "l2", "l2"),
        ({}, None, "l2"),
        ({"mode": "l3s"}, "l3", "l3s"),
        ({"mode": "l3"}, None, "l3"),
    ],
)
def test_mode_defaults_to_the_ipam_vlan_mode_then_l2(
    ipvlan: MainPlugin, args: dict[str, str], vlan_mode: str | None, mode: str
) -> None:
    assert plugin_of(ipvlan, ipvlan_network(args, vlan_mode))["mode"] == mode


@pytest.mark.parametrize(
    ("args", "vlan_mode", "message"),
    [
        ({"mode": "l4"}, "l3", r"spec\.plugin\.args\.mode 'l4' must be one of l2, l3, l3s"),
        ({"mode": "l2"}, "l3", r"spec\.plugin\.args\.mode 'l2' disagrees with spec\.ipam vlanMode"),
        ({"mode": "l3"}, "l2", r"spec\.plugin\.args\.mode 'l3' disagrees"),
        ({"mtu": "big"}, "l3", r"spec\.plugin\.args\.mtu 'big' must be an integer"),
        ({"master": "eth9"}, "l3", r"spec\.plugin\.args\.master 'eth9' is set by multinic"),
    ],
)
def test_bad_args_are_config_errors_naming_the_field(
    ipvlan: MainPlugin, args: dict[str, str], vlan_mode: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ipvlan.network_attachment(ipvlan_network(args, vlan_mode), StaticCluster())
