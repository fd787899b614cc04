"""The CRD models: exact field names, clear validation errors, lossless round trips."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from multinic_core.errors import ConfigError
from multinic_core.models import (
    CIDR,
    Config,
    DeviceClass,
    HostInterface,
    IPPool,
    MultiNicIpamConfig,
    MultiNicNetwork,
    ippool_name,
    load_resource,
)

IPAM = {
    "type": "multi-nic-ipam",
    "hostBlock": 6,
    "interfaceBlock": 2,
    "vlanMode": "l3",
    "excludeCIDRs": ["192.168.64.0/18"],
}
NETWORK: dict[str, Any] = {
    "apiVersion": "multinic.fms.io/v1",
    "kind": "MultiNicNetwork",
    "metadata": {"name": "demo"},
    "spec": {
        "subnet": "192.168.0.0/16",
        "ipam": json.dumps(IPAM),
        "multiNICIPAM": True,
        "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
        "plugin": {"cniVersion": "0.3.0", "type": "ipvlan", "args": {"mode": "l3"}},
        "attachPolicy": {"strategy": "none"},
        "namespaces": ["default"],
    },
}


def assert_preserved(original: Any, dumped: Any, path: str = "") -> None:
    """Everything in ``original`` is in ``dumped`` unchanged (defaults may be added)."""
    if isinstance(original, dict):
        assert isinstance(dumped, dict), path
        for key, value in original.items():
            assert key in dumped, f"{path}.{key} was dropped"
            assert_preserved(value, dumped[key], f"{path}.{key}")
    else:
        assert original == dumped, path


def network_with(**spec: Any) -> dict[str, Any]:
    data = copy.deepcopy(NETWORK)
    data["spec"].update(spec)
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        load_resource(MultiNicNetwork, data)
    return str(info.value)


def test_network_reads_the_predecessor_field_names() -> None:
    net = load_resource(MultiNicNetwork, NETWORK)
    assert net.spec.master_nets == ["10.0.1.0/24", "10.0.2.0/24"]
    assert net.spec.multi_nic_ipam is True
    ipam = net.spec.ipam_config
    assert isinstance(ipam, MultiNicIpamConfig)
    assert (ipam.host_block, ipam.interface_block, ipam.vlan_mode) == (6, 2, "l3")
    assert net.spec.manages_routes


def test_round_trip_keeps_every_field_including_unknown_ones() -> None:
    data = network_with(futureField={"nested": [1, 2]})
    data["spec"]["plugin"]["vendorKey"] = "kept"
    data["status"] = {"configStatus": "Success", "routeStatus": "Success", "custom": 1}
    net = load_resource(MultiNicNetwork, data)
    again = load_resource(MultiNicNetwork, net.to_dict())
    dumped = again.to_dict()
    assert dumped["spec"]["futureField"] == {"nested": [1, 2]}
    assert dumped["spec"]["plugin"]["vendorKey"] == "kept"
    assert dumped["status"]["custom"] == 1
    assert_preserved(data, dumped)


def test_routes_are_managed_only_for_multi_nic_ipam_in_l3_modes() -> None:
    l2 = load_resource(MultiNicNetwork, network_with(ipam=json.dumps({**IPAM, "vlanMode": "l2"})))
    assert not l2.spec.manages_routes
    no_flag = load_resource(MultiNicNetwork, network_with(multiNICIPAM=False))
    assert not no_flag.spec.manages_routes


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"subnet": "192.168.0.0/33"}, "spec.subnet: '192.168.0.0/33' is not a valid CIDR"),
        ({"subnet": "192.168.1.0/16"}, "spec.subnet: '192.168.1.0/16' has host bits set"),
        ({"masterNets": ["10.0.1.0/24", "eth1"]}, "spec.masterNets[1]: 'eth1' is not a CIDR"),
        ({"masterNets": ["10.0.1.0/24", "10.0.1.0/24"]}, "masterNets lists a network twice"),
        ({"ipam": "{not json"}, "spec.ipam: ipam is not valid JSON"),
        ({"ipam": "[1]"}, "spec.ipam: ipam must be a JSON object"),
        ({"ipam": json.dumps({**IPAM, "vlanMode": "l4"})}, "vlanMode 'l4' is not one of l2"),
        ({"ipam": json.dumps({**IPAM, "hostBlock": "six"})}, "ipam hostBlock: Input should be"),
        (
            {"ipam": json.dumps({k: v for k, v in IPAM.items() if k != "hostBlock"})},
            "ipam hostBlock: Field required",
        ),
        (
            {"ipam": json.dumps({**IPAM, "excludeCIDRs": ["10.0.0.300/24"]})},
            "ipam excludeCIDRs[0]: '10.0.0.300/24' is not a valid CIDR",
        ),
        (
            {"subnet": "192.168.0.0/24"},
            "hostBlock 6 + interfaceBlock 2 do not fit subnet 192.168.0.0/24",
        ),
        (
            {"ipam": json.dumps({**IPAM, "excludeCIDRs": ["fd00::/64"]})},
            "excludeCIDRs entry fd00::/64 is not IPv4",
        ),
        (
            {"plugin": {"type": "ipvlan", "cniVersion": "0.2.0"}},
            "spec.plugin.cniVersion: cniVersion '0.2.0' is not one of 0.3.0",
        ),
        ({"plugin": {"cniVersion": "1.0.0"}}, "spec.plugin.type: Field required"),
        (
            {"subnet": "192.168.0.0/16,fd00:10::/48"},
            "spec.subnet: '192.168.0.0/16,fd00:10::/48': subnet is one CIDR; dual-stack (an "
            "IPv4 and an IPv6 subnet on one network) is not supported: create one "
            "MultiNicNetwork per address family",
        ),
        ({"subnet": ["192.168.0.0/16", "fd00:10::/48"]}, "spec.subnet: ['192.168.0.0/16', 'fd00:"),
    ],
)
def test_invalid_networks_are_rejected_naming_the_field(
    spec: dict[str, Any], expected: str
) -> None:
    message = error_of(network_with(**spec))
    assert message.startswith("MultiNicNetwork demo: ")
    assert expected in message


def test_wrong_kind_and_api_version_are_named() -> None:
    assert "kind: Input should be 'MultiNicNetwork'" in error_of({**NETWORK, "kind": "CIDR"})
    assert "apiVersion must be 'multinic.fms.io/v1'" in error_of({**NETWORK, "apiVersion": "v1"})


def test_ipv6_networks_validate() -> None:
    ipam = {**IPAM, "excludeCIDRs": ["fd00:0:0:1::/64"]}
    net = load_resource(
        MultiNicNetwork, network_with(subnet="fd00::/48", ipam=json.dumps(ipam), masterNets=[])
    )
    assert net.spec.subnet == "fd00::/48"


def test_yaml_typed_plugin_args_become_strings_and_come_back_typed() -> None:
    data = network_with(plugin={"type": "macvlan", "args": {"mtu": 9000, "mode": "bridge"}})
    net = load_resource(MultiNicNetwork, data)
    assert net.spec.plugin.args == {"mtu": "9000", "mode": "bridge"}
    assert net.spec.plugin.typed_args() == {"mtu": 9000, "mode": "bridge"}
    assert net.spec.plugin.cni_version == "1.0.0"  # default for new networks


PREDECESSOR_CONFIG = {
    "apiVersion": "multinic.fms.io/v1",
    "kind": "Config",
    "metadata": {"name": "multi-nicd"},
    "spec": {
        "cniType": "multi-nic",
        "ipamType": "multi-nic-ipam",
        "joinPath": "/join",
        "getInterfacePath": "/interface",
        "addRoutePath": "/addl3",
        "deleteRoutePath": "/deletel3",
        "urgentReconcileSeconds": 5,
        "normalReconcileMinutes": 1,
        "logLevel": 4,
        "daemon": {
            "image": "ghcr.io/example/multi-nic-cni-daemon:v1.2.0",
            "port": 11000,
            "mounts": [{"name": "cni-bin", "podpath": "/host/opt/cni/bin", "hostpath": "/opt"}],
            "securityContext": {"privileged": True},
            "env": [{"name": "X", "value": "1"}],
        },
    },
}


def test_predecessor_config_validates_and_round_trips() -> None:
    config = load_resource(Config, PREDECESSOR_CONFIG)
    assert config.spec.daemon.mounts[0].podpath == "/host/opt/cni/bin"
    assert_preserved(PREDECESSOR_CONFIG, config.to_dict())


def test_ippool_and_name_rule() -> None:
    assert ippool_name("demo", "192.168.2.0/24") == "demo-192.168.2.0-24"
    pool = load_resource(
        IPPool,
        {
            "metadata": {"name": "demo-192.168.2.0-24"},
            "spec": {
                "podCIDR": "192.168.2.0/24",
                "vlanCIDR": "192.168.0.0/18",
                "netAttachDef": "demo",
                "hostName": "b",
                "interfaceName": "eth1",
                "excludes": None,
                "allocations": [
                    {"pod": "p", "namespace": "default", "index": 1, "address": "192.168.2.1"}
                ],
            },
        },
    )
    assert pool.spec.excludes == []
    assert pool.spec.allocations[0].container_id == ""


def test_host_interface_names_bad_interface_names() -> None:
    data = {
        "metadata": {"name": "a", "labels": {"multi-nic-unmanaged": "true"}},
        "spec": {"hostName": "a", "interfaces": [{"interfaceName": "eth1; rm -rf /"}]},
    }
    with pytest.raises(
        ConfigError, match=r"spec.interfaces\[0\].interfaceName: .* not an interface"
    ):
        load_resource(HostInterface, data)
    data["spec"]["interfaces"] = [{"interfaceName": "eth1", "hostIP": "10.0.0.1"}]
    assert load_resource(HostInterface, data).unmanaged


def test_device_class_ids_are_lowercase_hex() -> None:
    ok = load_resource(
        DeviceClass,
        {"metadata": {"name": "fast"}, "spec": {"ids": [{"vendor": "15b3", "products": ["1019"]}]}},
    )
    assert ok.spec.matches("0x15B3", "1019")
    assert not ok.spec.matches("15b3", "1017")
    with pytest.raises(ConfigError, match="vendor '15B3' is not a 4-digit lowercase hex"):
        load_resource(
            DeviceClass, {"metadata": {"name": "x"}, "spec": {"ids": [{"vendor": "15B3"}]}}
        )


def test_cidr_accepts_the_predecessor_shape_with_nulls() -> None:
    cidr = load_resource(
        CIDR,
        {
            "metadata": {"name": "demo"},
            "spec": {
                "config": {
                    "name": "demo",
                    "type": "ipvlan",
                    "subnet": "192.168.0.0/16",
                    "masterNets": ["10.0.1.0/24"],
                    "hostBlock": 6,
                    "interfaceBlock": 2,
                    "excludeCIDRs": None,
                    "vlanMode": "l3",
                },
                "cidr": [
                    {
                        "netAddress": "10.0.1.0/24",
                        "interfaceIndex": 0,
                        "vlanCIDR": "192.168.0.0/18",
                        "hosts": None,
                    }
                ],
            },
        },
    )
    assert cidr.spec.cidr[0].hosts == []
    assert cidr.spec.config.exclude_cidrs == []
