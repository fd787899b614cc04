"""The sriov driver: NAD annotation, SR-IOV operator objects, VF delegate configs."""

from __future__ import annotations

from typing import Any

import pytest

from multinic_core.errors import ConfigError
from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import HostInterface, MultiNicNetwork
from multinic_core.nad import nad_config
from multinic_core.plugins import MainPlugin, PluginRegistry
from multinic_sriov.driver import sriov_resource_name

MULTI_NIC_IPAM = '{"type":"multi-nic-ipam","hostBlock":8,"interfaceBlock":2,"vlanMode":"l2"}'


def sriov_net(name: str = "multinic-sriov", **args: str) -> MultiNicNetwork:
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "subnet": "172.34.0.0/16",
                "ipam": MULTI_NIC_IPAM,
                "multiNICIPAM": True,
                "masterNets": ["10.10.1.0/24", "10.10.2.0/24"],
                "plugin": {"cniVersion": "0.3.0", "type": "sriov", "args": args},
            },
        }
    )


def host(name: str, *nics: tuple[str, str, str]) -> HostInterface:
    return HostInterface.model_validate(
        {
            "metadata": {"name": name},
            "spec": {
                "hostName": name,
                "interfaces": [
                    {"interfaceName": n, "netAddress": net, "pciAddress": pci, "vendor": "15b3"}
                    for n, net, pci in nics
                ],
            },
        }
    )


HOSTS = [
    host(
        "node-b",
        ("ens1f0", "10.10.1.0/24", "0000:3B:00.0"),
        ("ens1f1", "10.10.2.0/24", "0000:3b:00.1"),
        ("eno1", "10.0.0.0/24", "0000:01:00.0"),  # not in masterNets
    ),
    host(
        "node-a",
        ("ens1f0", "10.10.1.0/24", "0000:3b:00.0"),  # same PCI layout as node-b
        ("ens2f0", "10.10.2.0/24", "0000:af:00.0"),
        ("ens3", "10.10.1.0/24", ""),  # no PCI address known
    ),
]


@pytest.fixture(scope="module")
def sriov() -> MainPlugin:
    return PluginRegistry().main_plugin("sriov")


def bodies(sriov: MainPlugin, network: MultiNicNetwork, hosts: list[HostInterface]) -> list[Any]:
    return [o.body for o in sriov.dependent_objects(network, hosts, StaticCluster())]


def test_installed_and_discoverable() -> None:
    registry = PluginRegistry()
    for name in ("sriov", "host-device", "mellanox"):
        plugin = registry.main_plugin(name)
        assert plugin.info.distribution == "multinic-sriov"
    assert registry.main_plugin("sriov").implements("multinic_dependent_objects")
    assert type(registry.main_plugin("mellanox").plugin) is type(
        registry.main_plugin("host-device").plugin
    )


def test_sample_network_gets_a_resource_annotation_and_typed_plugin_block(
    sriov: MainPlugin,
) -> None:
    attachment = sriov.network_attachment(sriov_net(numVfs="2", isRdma="true"), StaticCluster())
    assert attachment.annotations == {
        "k8s.v1.cni.cncf.io/resourceName": "openshift.io/multinic_sriov"
    }
    assert attachment.plugin == {
        "cniVersion": "0.3.0",
        "isRdma": True,
        "numVfs": 2,
        "type": "sriov",
    }


def test_policy_and_sriov_network_for_the_network_nics_on_every_host(sriov: MainPlugin) -> None:
    network = sriov_net(numVfs="2", isRdma="true", priority="10", mtu="9000", vlan="100")
    assert bodies(sriov, network, HOSTS) == [
        {
            "apiVersion": "sriovnetwork.openshift.io/v1",
            "kind": "SriovNetworkNodePolicy",
            "metadata": {"name": "multinic-sriov", "namespace": "openshift-sriov-network-operator"},
            "spec": {
                "resourceName": "multinic_sriov",
                "nodeSelector": {"feature.node.kubernetes.io/network-sriov.capable": "true"},
                "numVfs": 2,
                "priority": 10,
                "mtu": 9000,
                "isRdma": True,
                "nicSelector": {"rootDevices": ["0000:3b:00.0", "0000:3b:00.1", "0000:af:00.0"]},
            },
        },
        {
            "apiVersion": "sriovnetwork.openshift.io/v1",
            "kind": "SriovNetwork",
            "metadata": {
                "name": "multinic-sriov-net",
                "namespace": "openshift-sriov-network-operator",
            },
            "spec": {"resourceName": "multinic_sriov", "vlan": 100},
        },
    ]


def test_defaults_one_vf_and_the_operator_arg_overrides(sriov: MainPlugin) -> None:
    network = sriov_net(
        sriovOperatorNamespace="sriov-network-operator",
        nodeSelector='{"node-role.kubernetes.io/worker": ""}',
        networkNamespace="team-a",
        deviceType="vfio-pci",
        needVhostNet="true",
        spoofChk="off",
        trust="on",
        linkState="enable",
        minTxRate="100",
        maxTxRate="1000",
        vlanQoS="3",
    )
    policy, sriov_network = bodies(sriov, network, HOSTS)
    assert policy["metadata"]["namespace"] == "sriov-network-operator"
    assert policy["spec"]["numVfs"] == 1
    assert policy["spec"]["nodeSelector"] == {"node-role.kubernetes.io/worker": ""}
    assert (policy["spec"]["deviceType"], policy["spec"]["needVhostNet"]) == ("vfio-pci", True)
    assert sriov_network["metadata"]["namespace"] == "sriov-network-operator"
    assert sriov_network["spec"] == {
        "resourceName": "multinic_sriov",
        "networkNamespace": "team-a",
        "vlanQoS": 3,
        "spoofChk": "off",
        "trust": "on",
        "linkState": "enable",
        "minTxRate": 100,
        "maxTxRate": 1000,
    }


def test_sriov_network_spellings_also_reach_the_sriov_cni_under_its_own_keys(
    sriov: MainPlugin,
) -> None:
    network = sriov_net(spoofChk="off", minTxRate="100", max_tx_rate="1000", trust="on")
    plugin = sriov.network_attachment(network, StaticCluster()).plugin
    # The user's keys stay as written; the CNI's spellings are added beside them.
    assert plugin == {
        "cniVersion": "0.3.0",
        "max_tx_rate": 1000,
        "minTxRate": 100,
        "min_tx_rate": 100,
        "spoofChk": "off",
        "spoofchk": "off",
        "trust": "on",
        "type": "sriov",
    }


def test_no_policy_until_a_host_reports_a_pf_of_the_network(sriov: MainPlugin) -> None:
    objects = bodies(sriov, sriov_net(), [host("node-c", ("eno1", "10.0.0.0/24", "0000:01:00.0"))])
    assert [o["kind"] for o in objects] == ["SriovNetwork"]
    assert [o["kind"] for o in bodies(sriov, sriov_net(), [])] == ["SriovNetwork"]


def test_empty_master_nets_means_every_reported_nic(sriov: MainPlugin) -> None:
    network = sriov_net()
    network.spec.master_nets = []
    policy = bodies(sriov, network, HOSTS)[0]
    assert policy["spec"]["nicSelector"]["rootDevices"] == [
        "0000:01:00.0",
        "0000:3b:00.0",
        "0000:3b:00.1",
        "0000:af:00.0",
    ]


@pytest.mark.parametrize(
    ("args", "annotation"),
    [
        ({"resourceName": "mlxnic_a"}, "openshift.io/mlxnic_a"),
        ({"resourceName": "mlxnic_a", "resourcePrefix": "nvidia.com"}, "nvidia.com/mlxnic_a"),
        ({"resourceName": "intel.com/sriov_dpdk"}, "intel.com/sriov_dpdk"),
    ],
)
def test_an_existing_resource_creates_nothing_and_names_the_annotation(
    sriov: MainPlugin, args: dict[str, str], annotation: str
) -> None:
    network = sriov_net(**args)
    attachment = sriov.network_attachment(network, StaticCluster())
    assert attachment.annotations == {"k8s.v1.cni.cncf.io/resourceName": annotation}
    assert bodies(sriov, network, HOSTS) == []


def test_delegate_gets_the_allocated_vf_and_every_plugin_key(sriov: MainPlugin) -> None:
    network = sriov_net(vlan="100", spoofchk="on", numVfs="4")
    netconf = nad_config(network, sriov.network_attachment(network, StaticCluster()))
    ipam = {"type": "static", "addresses": [{"address": "172.34.0.5/18"}]}
    nic = SelectedNic(name="ens1f0", device_id="0000:3b:02.1", net_address="10.10.1.0/24")
    assert sriov.delegate_config(netconf, nic, ipam) == {
        "cniVersion": "0.3.0",
        "name": "multinic-sriov",
        "type": "sriov",
        "deviceID": "0000:3b:02.1",
        "numVfs": 4,
        "spoofchk": "on",
        "vlan": 100,
        "ipam": ipam,
    }


def test_a_nic_without_an_allocated_vf_is_a_named_error(sriov: MainPlugin) -> None:
    network = sriov_net()
    netconf = nad_config(network, sriov.network_attachment(network, StaticCluster()))
    with pytest.raises(ConfigError, match=r"no SR-IOV VF allocated for NIC 'ens1f0'"):
        sriov.delegate_config(netconf, SelectedNic(name="ens1f0"), {"type": "static"})


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ({"vlan": "4095"}, r"spec\.plugin\.args\.vlan 4095 must be at most 4094"),
        ({"vlanQoS": "8"}, r"spec\.plugin\.args\.vlanQoS 8 must be at most 7"),
        ({"spoofchk": "yes"}, r"spec\.plugin\.args\.spoofchk 'yes' must be one of on, off"),
        ({"linkState": "up"}, r"spec\.plugin\.args\.linkState 'up' must be one of auto"),
        ({"min_tx_rate": "-1"}, r"spec\.plugin\.args\.min_tx_rate -1 must be at least 0"),
        (
            {"minTxRate": "500", "max_tx_rate": "100"},
            r"spec\.plugin\.args\.minTxRate 500 is above the maximum tx rate 100",
        ),
        (
            {"spoofchk": "on", "spoofChk": "off"},
            r"spec\.plugin\.args\.spoofChk 'off' disagrees with spec\.plugin\.args\.spoofchk 'on'",
        ),
        ({"numVfs": "0"}, r"spec\.plugin\.args\.numVfs 0 must be at least 1"),
        ({"priority": "100"}, r"spec\.plugin\.args\.priority 100 must be at most 99"),
        ({"isRdma": "yes"}, r"spec\.plugin\.args\.isRdma 'yes' must be \"true\" or \"false\""),
        ({"deviceType": "dpdk"}, r"spec\.plugin\.args\.deviceType 'dpdk' must be one of"),
        ({"nodeSelector": "worker"}, r"spec\.plugin\.args\.nodeSelector 'worker' must be a JSON"),
        (
            {"resourceName": "my-res"},
            r"spec\.plugin\.args\.resourceName 'my-res' is not a resource",
        ),
        ({"deviceID": "0000:3b:02.1"}, r"spec\.plugin\.args\.deviceID '0000:3b:02.1' is set by"),
    ],
)
def test_bad_args_are_config_errors_naming_the_field(
    sriov: MainPlugin, args: dict[str, str], message: str
) -> None:
    network = sriov_net(**args)
    with pytest.raises(ConfigError, match=message):
        sriov.network_attachment(network, StaticCluster())
    with pytest.raises(ConfigError, match=message):
        sriov.dependent_objects(network, HOSTS, StaticCluster())


def test_resource_names_are_valid_deterministic_and_bounded() -> None:
    assert sriov_resource_name("multinic-sriov") == "multinic_sriov"
    assert sriov_resource_name("net.v2-a") == "net_v2_a"
    long_a, long_b = "a" * 70 + "-x", "a" * 70 + "-y"
    assert len(sriov_resource_name(long_a)) == 63
    assert sriov_resource_name(long_a) != sriov_resource_name(long_b)
    assert sriov_resource_name(long_a) == sriov_resource_name(long_a)


def test_an_explicit_empty_node_selector_is_kept_not_defaulted(sriov: MainPlugin) -> None:
    policy = bodies(sriov, sriov_net(nodeSelector="{}"), HOSTS)[0]
    assert policy["spec"]["nodeSelector"] == {}
