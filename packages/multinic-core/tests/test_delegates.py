"""The shared driver logic: typed args, the NAD plugin block, the delegate config."""

from __future__ import annotations

import json
from typing import Any

import pytest

from multinic_core.delegates import (
    MasterNicDelegate,
    PluginArgs,
    canonical_json,
    delegate_config,
    ipam_vlan_mode,
    plugin_block,
)
from multinic_core.errors import ConfigError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import NetworkAttachment, SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.plugins import MAIN_PLUGINS, MainPlugin, validate_plugin

IPAM = '{"type":"multi-nic-ipam","hostBlock":6,"interfaceBlock":2,"vlanMode":"l3"}'
STATIC_IPAM = {"type": "static", "addresses": [{"address": "192.168.0.1/18"}]}


def network(args: dict[str, Any] | None = None, **plugin: Any) -> MultiNicNetwork:
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {
                "subnet": "192.168.0.0/16",
                "ipam": plugin.pop("ipam", IPAM),
                "plugin": {"cniVersion": "0.3.1", "type": "macvlan", "args": args or {}, **plugin},
            },
        }
    )


# --------------------------------------------------------------------------- PluginArgs


def test_args_are_typed_from_their_json_text() -> None:
    args = PluginArgs.of(
        network({"mtu": "9000", "isRdma": "true", "sel": '{"a": "b"}', "mode": "bridge"})
    )
    assert args.values == {"mtu": 9000, "isRdma": True, "sel": {"a": "b"}, "mode": "bridge"}
    assert args.integer("mtu", 0, 65535) == 9000
    assert args.boolean("isRdma") is True
    assert args.string_map("sel") == {"a": "b"}
    assert args.text("mode") == "bridge"
    # A name is read as written, even one that looks like a number.
    assert PluginArgs.of(network({"resourceName": "1234"})).text("resourceName") == "1234"


def test_absent_args_give_defaults_or_none() -> None:
    args = PluginArgs.of(network())
    assert args.integer("numVfs") is None
    assert args.boolean("isRdma") is None
    assert args.string_map("nodeSelector") is None
    assert args.choice("mode", ("a", "b"), default="a") == "a"
    assert args.text("resourceName", "x") == "x"
    assert args.mtu() is None


@pytest.mark.parametrize(
    ("args", "read", "message"),
    [
        ({"mtu": "jumbo"}, lambda a: a.mtu(), "spec.plugin.args.mtu 'jumbo' must be an integer"),
        ({"mtu": "40"}, lambda a: a.mtu(), "spec.plugin.args.mtu 40 must be 0 (inherit)"),
        ({"mtu": "70000"}, lambda a: a.mtu(), "spec.plugin.args.mtu 70000 must be at most 65535"),
        ({"n": "true"}, lambda a: a.integer("n"), "spec.plugin.args.n True must be an integer"),
        ({"n": "-1"}, lambda a: a.integer("n", 0), "spec.plugin.args.n -1 must be at least 0"),
        ({"b": "yes"}, lambda a: a.boolean("b"), "spec.plugin.args.b 'yes' must be \"true\""),
        ({"m": "x"}, lambda a: a.choice("m", ("l2", "l3")), "spec.plugin.args.m 'x' must be one"),
        ({"s": "[1]"}, lambda a: a.string_map("s"), "spec.plugin.args.s [1] must be a JSON object"),
        ({"t": " "}, lambda a: a.text("t"), "spec.plugin.args.t ' ' must be a non-empty name"),
        ({"t": "{}"}, lambda a: a.text("t"), "spec.plugin.args.t {} must be a non-empty name"),
    ],
)
def test_bad_args_are_config_errors_naming_the_field_and_value(
    args: dict[str, str], read: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match="MultiNicNetwork demo: ") as error:
        read(PluginArgs.of(network(args)))
    assert message in str(error.value)


@pytest.mark.parametrize("key", ["cniVersion", "name", "type", "ipam", "master"])
def test_args_multinic_sets_itself_are_refused_not_silently_overwritten(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"spec\.plugin\.args\.{key} 'x' is set by multinic"):
        PluginArgs.of(network({key: "x"}), nic_keys=("master",))


def test_ipam_vlan_mode_is_read_only_when_written() -> None:
    assert ipam_vlan_mode(network()) == "l3"
    assert (
        ipam_vlan_mode(network(ipam='{"type":"multi-nic-ipam","hostBlock":6,"interfaceBlock":2}'))
        == ""
    )
    assert ipam_vlan_mode(network(ipam='{"type":"whereabouts","range":"10.0.0.0/8"}')) == ""
    with pytest.raises(ConfigError, match=r"spec\.ipam vlanMode 'l4'"):
        ipam_vlan_mode(network(ipam='{"type":"whereabouts","vlanMode":"l4"}'))


# --------------------------------------------------------------------------- plugin block


def test_plugin_block_keeps_every_user_key_typed_and_sorts_keys() -> None:
    net = network({"mtu": "9000", "zeta": "z", "mode": "vepa", "opts": '{"b":1,"a":2}'})
    block = plugin_block(net, "macvlan", PluginArgs.of(net), mode="bridge")
    assert block == {
        "cniVersion": "0.3.1",
        "mode": "vepa",
        "mtu": 9000,
        "opts": {"a": 2, "b": 1},
        "type": "macvlan",
        "zeta": "z",
    }
    assert list(block) == sorted(block)
    assert list(block["opts"]) == ["a", "b"]


def test_plugin_block_adds_driver_defaults_and_capabilities() -> None:
    net = network(capabilities={"mac": True, "ips": False})
    block = plugin_block(net, "ipvlan", PluginArgs.of(net), mode="l2")
    assert block == {
        "capabilities": {"ips": False, "mac": True},
        "cniVersion": "0.3.1",
        "mode": "l2",
        "type": "ipvlan",
    }


def test_canonical_json_sorts_nested_objects_and_keeps_list_order() -> None:
    value = {"b": [{"y": 1, "x": 2}, 3], "a": {"d": None, "c": True}}
    assert json.dumps(canonical_json(value)) == (
        '{"a": {"c": true, "d": null}, "b": [{"x": 2, "y": 1}, 3]}'
    )


# --------------------------------------------------------------------------- delegate config

NETCONF = {
    "cniVersion": "0.3.0",
    "name": "demo",
    "type": "multi-nic",
    "ipam": {"type": "multi-nic-ipam"},
    "plugin": {
        "cniVersion": "0.3.1",
        "mode": "l3",
        "mtu": 9000,
        "type": "ipvlan",
        "custom": {"nested": [1, 2]},
    },
}


def test_delegate_config_names_the_network_and_nic_and_keeps_every_plugin_key() -> None:
    config = delegate_config(NETCONF, STATIC_IPAM, master="eth1")
    assert config == {
        "cniVersion": "0.3.1",
        "name": "demo",
        "type": "ipvlan",
        "master": "eth1",
        "mode": "l3",
        "mtu": 9000,
        "custom": {"nested": [1, 2]},
        "ipam": STATIC_IPAM,
    }
    assert list(config)[:4] == ["cniVersion", "name", "type", "master"]
    assert list(config)[-1] == "ipam"


def test_delegate_config_leaves_out_nic_keys_without_a_value_and_falls_back_on_cni_version() -> (
    None
):
    netconf = {**NETCONF, "plugin": {"type": "host-device"}}
    config = delegate_config(netconf, {"type": "host-device-ipam"}, deviceID=None, device="eth2")
    assert config == {
        "cniVersion": "0.3.0",
        "name": "demo",
        "type": "host-device",
        "device": "eth2",
        "ipam": {"type": "host-device-ipam"},
    }


def test_changing_a_delegate_config_leaves_the_nad_config_and_ipam_alone() -> None:
    before = json.dumps([NETCONF, STATIC_IPAM], sort_keys=True)
    config = delegate_config(NETCONF, STATIC_IPAM, master="eth1")
    config["custom"]["nested"].append(3)
    config["ipam"]["addresses"].append({"address": "192.168.0.2/18"})
    assert json.dumps([NETCONF, STATIC_IPAM], sort_keys=True) == before


@pytest.mark.parametrize(
    ("netconf", "message"),
    [
        ({"name": "demo", "cniVersion": "1.0.0"}, "NAD config has no 'plugin'"),
        ({"name": "demo", "plugin": {"cniVersion": "1.0.0"}}, "plugin block has no 'type'"),
        ({"plugin": {"type": "ipvlan", "cniVersion": "1.0.0"}}, "NAD config has no 'name'"),
        ({"name": "demo", "plugin": "ipvlan"}, "'plugin' must be an object"),
    ],
)
def test_a_nad_config_without_what_a_delegate_needs_is_a_config_error(
    netconf: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        delegate_config(netconf, STATIC_IPAM, master="eth1")


class BridgeDriver(MasterNicDelegate):
    """A third-party driver for the CNI ``bridge`` type: only its plugin block is its own."""

    @hookimpl
    def multinic_network_attachment(self, network: MultiNicNetwork) -> NetworkAttachment:
        args = PluginArgs.of(network, nic_keys=("master",))
        return NetworkAttachment(plugin=plugin_block(network, "bridge", args))


def test_a_driver_built_on_master_nic_delegate_renders_and_delegates_per_nic() -> None:
    plugin = validate_plugin(MAIN_PLUGINS, "bridge", BridgeDriver(), "third-party", "1")
    assert isinstance(plugin, MainPlugin)
    assert plugin.info.hooks == ("multinic_delegate_config", "multinic_network_attachment")
    net = network({"isGateway": "true"})
    block = plugin.network_attachment(net, StaticCluster()).plugin
    assert block == {"cniVersion": "0.3.1", "isGateway": True, "type": "bridge"}
    netconf = {"cniVersion": "0.3.1", "name": "demo", "plugin": block}
    config = plugin.delegate_config(netconf, SelectedNic(name="ens1f0"), STATIC_IPAM)
    assert config == {
        "cniVersion": "0.3.1",
        "name": "demo",
        "type": "bridge",
        "master": "ens1f0",
        "isGateway": True,
        "ipam": STATIC_IPAM,
    }
