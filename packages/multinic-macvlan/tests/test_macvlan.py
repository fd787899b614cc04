"""The macvlan driver, loaded by name from its entry point as multinic loads it."""

from __future__ import annotations

import json
from typing import Any

import pytest

from multinic_core.errors import ConfigError
from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_object
from multinic_core.plugins import MainPlugin, PluginRegistry

WHEREABOUTS = '{"type": "whereabouts", "range": "172.20.0.0/16"}'


def macvlan_network(**args: str) -> MultiNicNetwork:
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "fabric"},
            "spec": {
                "ipam": WHEREABOUTS,
                "masterNets": ["10.10.1.0/24"],
                "plugin": {"type": "macvlan", "args": args},
            },
        }
    )


@pytest.fixture(scope="module")
def macvlan() -> MainPlugin:
    return PluginRegistry().main_plugin("macvlan")


def rendered_netconf(macvlan: MainPlugin, network: MultiNicNetwork) -> dict[str, Any]:
    attachment = macvlan.network_attachment(network, StaticCluster())
    config: dict[str, Any] = json.loads(nad_object(network, attachment, "ns1")["spec"]["config"])
    return config


def test_installed_and_discoverable(macvlan: MainPlugin) -> None:
    assert macvlan.info.distribution == "multinic-macvlan"
    assert macvlan.info.name == "macvlan"
    assert macvlan.implements("multinic_delegate_config")


def test_default_network_is_bridge_mode_at_cni_1_0_0_with_pass_through_ipam(
    macvlan: MainPlugin,
) -> None:
    netconf = rendered_netconf(macvlan, macvlan_network())
    assert netconf["plugin"] == {"cniVersion": "1.0.0", "mode": "bridge", "type": "macvlan"}
    assert netconf["cniVersion"] == "1.0.0"
    assert netconf["ipam"] == {"range": "172.20.0.0/16", "type": "whereabouts"}
    # The pass-through IPAM is what the IPAM plugin hands each delegate.
    delegate = macvlan.delegate_config(netconf, SelectedNic(name="ens2f1"), netconf["ipam"])
    assert delegate == {
        "cniVersion": "1.0.0",
        "name": "fabric",
        "type": "macvlan",
        "master": "ens2f1",
        "mode": "bridge",
        "ipam": {"range": "172.20.0.0/16", "type": "whereabouts"},
    }


@pytest.mark.parametrize("mode", ["bridge", "private", "vepa", "passthru"])
def test_every_macvlan_mode_reaches_the_delegate(macvlan: MainPlugin, mode: str) -> None:
    netconf = rendered_netconf(macvlan, macvlan_network(mode=mode, mtu="1400"))
    delegate = macvlan.delegate_config(netconf, SelectedNic(name="eth1"), {"type": "static"})
    assert (delegate["mode"], delegate["mtu"]) == (mode, 1400)


def test_unknown_keys_survive_from_args_to_delegate(macvlan: MainPlugin) -> None:
    netconf = rendered_netconf(
        macvlan, macvlan_network(mac="0a:58:0a:0a:01:05", linkInContainer="true")
    )
    delegate = macvlan.delegate_config(netconf, SelectedNic(name="eth1"), {"type": "static"})
    assert delegate["mac"] == "0a:58:0a:0a:01:05"
    assert delegate["linkInContainer"] is True


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"mode": "l2"}, r"spec\.plugin\.args\.mode 'l2' must be one of bridge, private, vepa"),
        ({"mtu": "-5"}, r"spec\.plugin\.args\.mtu -5 must be at least 0"),
        ({"name": "other"}, r"spec\.plugin\.args\.name 'other' is set by multinic"),
        ({"master": "eth0"}, r"spec\.plugin\.args\.master 'eth0' is set by multinic"),
    ],
)
def test_bad_args_are_config_errors_naming_the_field(
    macvlan: MainPlugin, args: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        macvlan.network_attachment(macvlan_network(**args), StaticCluster())
