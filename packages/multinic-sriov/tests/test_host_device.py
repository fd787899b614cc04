"""The host-device driver: resources from the NVIDIA NicClusterPolicy, device delegates."""

from __future__ import annotations

import json
from typing import Any

import pytest

from multinic_core.errors import ConfigError
from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_config
from multinic_core.plugins import MainPlugin, PluginRegistry

RESOURCE_LIST = [
    # Intel VFs, listed first: must not be chosen for Mellanox NICs.
    {"resourceName": "intel_sriov", "selectors": {"vendors": ["8086"], "devices": ["154c"]}},
    {
        "resourcePrefix": "nvidia.com",
        "resourceName": "hostdev",
        "selectors": {"vendors": ["15b3"], "isRdma": True},
    },
    {
        "resourcePrefix": "example.org",
        "resourceName": "rail1",
        "selectors": [{"pfNames": ["ens9f0#0-3"]}, {"rootDevices": ["0000:d8:00.0"]}],
    },
]


def nic_cluster_policy(config: Any) -> dict[str, Any]:
    return {
        "apiVersion": "mellanox.com/v1alpha1",
        "kind": "NicClusterPolicy",
        "metadata": {"name": "nic-cluster-policy"},
        "spec": {
            "sriovDevicePlugin": {
                "image": "sriov-network-device-plugin",
                "repository": "ghcr.io/k8snetworkplumbingwg",
                "config": config if isinstance(config, str) else json.dumps(config),
            }
        },
    }


def host_interface(name: str, nics: list[dict[str, str]]) -> dict[str, Any]:
    return {
        "apiVersion": "multinic.fms.io/v1",
        "kind": "HostInterface",
        "metadata": {"name": name},
        "spec": {"hostName": name, "interfaces": nics},
    }


MELLANOX_NODE = host_interface(
    "gpu-1",
    [
        {
            "interfaceName": "ens1f0",
            "netAddress": "10.20.1.0/24",
            "vendor": "15b3",
            "product": "101d",
            "pciAddress": "0000:3b:00.0",
        },
        {
            "interfaceName": "ens9f0",
            "netAddress": "10.30.1.0/24",
            "vendor": "15b3",
            "product": "101d",
            "pciAddress": "0000:d8:00.0",
        },
    ],
)


def cluster(*objects: dict[str, Any]) -> StaticCluster:
    return StaticCluster([nic_cluster_policy({"resourceList": RESOURCE_LIST}), *objects])


def hostdev_net(master_nets: list[str] | None = None, **args: str) -> MultiNicNetwork:
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "multinic-mellanox-hostdevice"},
            "spec": {
                "ipam": '{"type": "host-device-ipam"}',
                "masterNets": ["10.20.1.0/24"] if master_nets is None else master_nets,
                "plugin": {"cniVersion": "0.3.1", "type": "host-device", "args": args},
            },
        }
    )


@pytest.fixture(scope="module")
def hostdev() -> MainPlugin:
    return PluginRegistry().main_plugin("host-device")


def resource_of(hostdev: MainPlugin, network: MultiNicNetwork, reader: StaticCluster) -> str:
    return hostdev.network_attachment(network, reader).annotations[
        "k8s.v1.cni.cncf.io/resourceName"
    ]


def test_installed_and_discoverable_without_dependent_objects(hostdev: MainPlugin) -> None:
    assert hostdev.info.distribution == "multinic-sriov"
    assert not hostdev.implements("multinic_dependent_objects")
    assert hostdev.dependent_objects(hostdev_net(), [], cluster()) == []


def test_picks_the_resource_whose_selectors_match_the_network_nics(hostdev: MainPlugin) -> None:
    attachment = hostdev.network_attachment(hostdev_net(), cluster(MELLANOX_NODE))
    assert attachment.annotations == {"k8s.v1.cni.cncf.io/resourceName": "nvidia.com/hostdev"}
    assert attachment.plugin == {"cniVersion": "0.3.1", "type": "host-device"}


def test_ties_go_to_the_first_listed_resource_unless_one_is_named(
    hostdev: MainPlugin,
) -> None:
    # ens9f0 matches both hostdev (vendor) and rail1 (pfNames "ens9f0#0-3"
    # and rootDevices): the tie goes to the first listed, hostdev ...
    assert resource_of(hostdev, hostdev_net(["10.30.1.0/24"]), cluster(MELLANOX_NODE)) == (
        "nvidia.com/hostdev"
    )
    # ... unless it is named.
    named = hostdev_net(["10.30.1.0/24"], resourceName="rail1")
    assert resource_of(hostdev, named, cluster(MELLANOX_NODE)) == "example.org/rail1"
    # An Intel NIC only matches the Intel resource, whose prefix defaults to nvidia.com.
    intel = host_interface(
        "cpu-1",
        [
            {
                "interfaceName": "eth1",
                "netAddress": "10.20.1.0/24",
                "vendor": "0x8086",
                "product": "154C",
            }
        ],
    )
    assert resource_of(hostdev, hostdev_net(), cluster(intel)) == "nvidia.com/intel_sriov"


@pytest.mark.parametrize("name", ["hostdev", "nvidia.com/hostdev"])
def test_a_named_resource_is_used_plain_or_qualified(hostdev: MainPlugin, name: str) -> None:
    network = hostdev_net(resourceName=name)
    assert resource_of(hostdev, network, cluster()) == "nvidia.com/hostdev"
    # The user's key stays in the plugin block like any other arg.
    assert hostdev.network_attachment(network, cluster()).plugin["resourceName"] == name


def test_a_single_resource_serves_before_any_host_reports_nics(hostdev: MainPlugin) -> None:
    only = [{"resourceName": "hostdev", "selectors": {"vendors": ["15b3"]}}]
    reader = StaticCluster([nic_cluster_policy({"resourceList": only})])
    assert resource_of(hostdev, hostdev_net(), reader) == "nvidia.com/hostdev"


def test_delegate_takes_the_allocated_device_else_the_nic_by_name(hostdev: MainPlugin) -> None:
    network = hostdev_net()
    netconf = nad_config(network, hostdev.network_attachment(network, cluster(MELLANOX_NODE)))
    ipam = {"type": "host-device-ipam"}
    common = {
        "cniVersion": "0.3.1",
        "name": "multinic-mellanox-hostdevice",
        "type": "host-device",
        "ipam": ipam,
    }
    allocated = SelectedNic(name="ens1f0", device_id="0000:3b:00.0")
    assert hostdev.delegate_config(netconf, allocated, ipam) == {
        **common,
        "deviceID": "0000:3b:00.0",
        "pciBusID": "0000:3b:00.0",
    }
    by_name = hostdev.delegate_config(netconf, SelectedNic(name="veth-h1"), ipam)
    assert by_name == {**common, "device": "veth-h1"}


def test_the_predecessor_type_mellanox_renders_the_same() -> None:
    registry = PluginRegistry()
    network, reader = hostdev_net(), cluster(MELLANOX_NODE)
    assert registry.main_plugin("mellanox").network_attachment(network, reader) == (
        registry.main_plugin("host-device").network_attachment(network, reader)
    )


@pytest.mark.parametrize(
    ("objects", "message"),
    [
        (
            [],
            r"host-device needs NicClusterPolicy nic-cluster-policy .*create it with "
            r"spec\.sriovDevicePlugin\.config",
        ),
        ([nic_cluster_policy("")], r"has no spec\.sriovDevicePlugin\.config: set it"),
        ([nic_cluster_policy("{not json")], r"spec\.sriovDevicePlugin\.config is not valid JSON"),
        ([nic_cluster_policy({"resourceList": []})], r"has no resourceList: add the host devices"),
        (
            [nic_cluster_policy({"resourceList": [{"selectors": {}}]})],
            r"resourceList\[0\] has no resourceName",
        ),
    ],
)
def test_a_missing_or_broken_nic_cluster_policy_says_what_to_create(
    hostdev: MainPlugin, objects: list[dict[str, Any]], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        hostdev.network_attachment(hostdev_net(), StaticCluster(objects))


def test_no_matching_resource_names_the_nics_and_the_way_out(hostdev: MainPlugin) -> None:
    broadcom = host_interface(
        "n1", [{"interfaceName": "eth1", "netAddress": "10.20.1.0/24", "vendor": "14e4"}]
    )
    with pytest.raises(ConfigError) as error:
        hostdev.network_attachment(hostdev_net(), cluster(broadcom))
    message = str(error.value)
    assert "eth1 (14e4:?" in message
    assert "nvidia.com/intel_sriov, nvidia.com/hostdev, example.org/rail1" in message
    assert "spec.plugin.args.resourceName" in message


def test_several_resources_and_no_reported_nics_ask_for_a_name(hostdev: MainPlugin) -> None:
    with pytest.raises(ConfigError, match="none reported yet"):
        hostdev.network_attachment(hostdev_net(), cluster())


def test_an_unknown_named_resource_lists_the_available_ones(hostdev: MainPlugin) -> None:
    with pytest.raises(
        ConfigError, match=r"spec\.plugin\.args\.resourceName 'rdma' is not in the NicClusterPolicy"
    ):
        hostdev.network_attachment(hostdev_net(resourceName="rdma"), cluster(MELLANOX_NODE))


def test_an_invalid_host_interface_is_skipped_not_fatal(hostdev: MainPlugin) -> None:
    broken = host_interface("bad", [{"interfaceName": "this-name-is-far-too-long"}])
    assert resource_of(hostdev, hostdev_net(), cluster(broken, MELLANOX_NODE)) == (
        "nvidia.com/hostdev"
    )
