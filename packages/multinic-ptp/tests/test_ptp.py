"""The ptp driver, loaded by name from its entry point as multinic loads it."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from multinic_core.errors import ConfigError
from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_config
from multinic_core.plugins import MainPlugin, PluginRegistry

IPAM = {"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "vlanMode": "l3"}


def ptp_network(
    args: dict[str, str] | None = None,
    ipam: dict[str, Any] | None = None,
    **spec: Any,
) -> MultiNicNetwork:
    body: dict[str, Any] = {
        "subnet": "192.168.0.0/16",
        "ipam": json.dumps(IPAM if ipam is None else ipam),
        "multiNICIPAM": True,
        "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
        "plugin": {"cniVersion": "1.0.0", "type": "ptp", "args": args or {}},
    }
    body.update(spec)
    return MultiNicNetwork.model_validate({"metadata": {"name": "routed"}, "spec": body})


@pytest.fixture(scope="module")
def ptp() -> MainPlugin:
    return PluginRegistry().main_plugin("ptp")


def netconf_of(ptp: MainPlugin, network: MultiNicNetwork) -> dict[str, Any]:
    return nad_config(network, ptp.network_attachment(network, StaticCluster()))


def test_installed_and_discoverable(ptp: MainPlugin) -> None:
    assert ptp.info.distribution == "multinic-ptp"
    assert ptp.info.name == "ptp"
    assert ptp.info.hooks == ("multinic_delegate_config", "multinic_network_attachment")
    assert ptp.dependent_objects(ptp_network(), [], StaticCluster()) == []


def test_nad_and_one_delegate_per_nic_with_the_host_address_as_gateway(ptp: MainPlugin) -> None:
    netconf = netconf_of(ptp, ptp_network())
    assert netconf["plugin"] == {"cniVersion": "1.0.0", "ipMasq": False, "type": "ptp"}
    assert netconf["ipam"]["vlanMode"] == "l3"
    assert netconf["multiNICIPAM"] is True
    sections = [
        {"type": "static", "addresses": [{"address": "192.168.0.1/18"}], "routes": []},
        {"type": "static", "addresses": [{"address": "192.168.64.1/18"}], "routes": []},
    ]
    nics = [
        SelectedNic(name="eth1", net_address="10.0.1.0/24", host_ip="10.0.1.11"),
        SelectedNic(name="eth2", net_address="10.0.2.0/24", host_ip="10.0.2.11"),
    ]
    delegates = [ptp.delegate_config(netconf, n, s) for n, s in zip(nics, sections, strict=True)]
    assert delegates == [
        {
            "cniVersion": "1.0.0",
            "name": "routed",
            "type": "ptp",
            "ipMasq": False,
            "ipam": {
                "type": "static",
                "addresses": [{"address": address, "gateway": gateway}],
                "routes": [],
            },
        }
        for address, gateway in (("192.168.0.1/18", "10.0.1.11"), ("192.168.64.1/18", "10.0.2.11"))
    ]
    # the IPAM plugin's sections are not changed in place (they are recorded)
    assert sections[0]["addresses"] == [{"address": "192.168.0.1/18"}]


def test_ipv6_network_gets_the_nics_ipv6_address_as_gateway(ptp: MainPlugin) -> None:
    network = ptp_network(
        ipam={**IPAM, "hostBlock": 8, "interfaceBlock": 8},
        subnet="fd00:10::/48",
        masterNets=["fd00:1::/64"],
    )
    netconf = netconf_of(ptp, network)
    section = {"type": "static", "addresses": [{"address": "fd00:10::1/56"}], "routes": []}
    nic = SelectedNic(name="eth1", net_address="fd00:1::/64", host_ip="fd00:1::11")
    delegate = ptp.delegate_config(netconf, nic, section)
    assert delegate["ipam"]["addresses"] == [{"address": "fd00:10::1/56", "gateway": "fd00:1::11"}]
    assert "master" not in delegate


def test_user_args_are_kept_and_typed(ptp: MainPlugin) -> None:
    network = ptp_network({"mtu": "9000", "ipMasq": "true", "x": "y"})
    netconf = netconf_of(ptp, network)
    assert netconf["plugin"] == {
        "cniVersion": "1.0.0",
        "ipMasq": True,
        "mtu": 9000,
        "type": "ptp",
        "x": "y",
    }
    nic = SelectedNic(name="eth1", host_ip="10.0.1.11")
    section = {"type": "static", "addresses": [{"address": "192.168.0.1/18"}]}
    delegate = ptp.delegate_config(netconf, nic, section)
    assert (delegate["mtu"], delegate["ipMasq"], delegate["x"]) == (9000, True, "y")


@pytest.mark.parametrize(
    ("network", "message"),
    [
        (
            lambda: ptp_network(ipam={**IPAM, "vlanMode": "l2"}),
            r"vlanMode must be l3 or l3s \(host routes\), not 'l2'",
        ),
        (
            lambda: ptp_network(ipam={k: v for k, v in IPAM.items() if k != "vlanMode"}),
            r"vlanMode must be l3 or l3s",
        ),
        (lambda: ptp_network(multiNICIPAM=False), r"spec\.multiNICIPAM must be true"),
        (
            lambda: ptp_network(ipam={"type": "host-local", "subnet": "10.9.0.0/16"}),
            r"spec\.ipam must be multi-nic-ipam \(type 'host-local' has no CIDR plan",
        ),
        (lambda: ptp_network(subnet=""), r"spec\.subnet is required"),
        (
            lambda: ptp_network(ipam={**IPAM, "routes": [{"dst": "172.30.0.0/16"}]}),
            r"spec\.ipam routes are not supported",
        ),
        (
            lambda: ptp_network(masterNets=["10.0.1.0/24", "fd00:2::/64"]),
            r"masterNets entry fd00:2::/64 is IPv6 but spec\.subnet 192\.168\.0\.0/16 is IPv4",
        ),
        (lambda: ptp_network({"master": "eth1"}), r"spec\.plugin\.args\.master 'eth1' is not a"),
        (lambda: ptp_network({"ipMasq": "yes"}), r"spec\.plugin\.args\.ipMasq 'yes' must be"),
        (lambda: ptp_network({"mtu": "20"}), r"spec\.plugin\.args\.mtu 20 must be 0"),
        (lambda: ptp_network({"name": "x"}), r"spec\.plugin\.args\.name 'x' is set by multinic"),
    ],
)
def test_networks_ptp_cannot_route_are_config_errors_saying_why(
    ptp: MainPlugin, network: Any, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        ptp.network_attachment(network(), StaticCluster())


@pytest.mark.parametrize(
    ("nic", "section", "message"),
    [
        (SelectedNic(name="eth1"), None, r"host NIC eth1 has no address"),
        (
            SelectedNic(name="eth1", host_ip="10.0.1.11"),
            {"type": "static", "addresses": [{"address": "fd00:10::1/56"}]},
            r"pod address fd00:10::1/56 is IPv6 but host NIC eth1's address 10\.0\.1\.11 is IPv4",
        ),
        (
            SelectedNic(name="eth1", host_ip="10.0.1.11"),
            {"type": "host-local", "ranges": []},
            r"must be static addresses from multi-nic-ipam, not 'host-local'",
        ),
        (
            SelectedNic(name="eth1", host_ip="10.0.1.11"),
            {
                "type": "static",
                "addresses": [{"address": "192.168.0.1/18"}],
                "routes": [{"dst": "172.30.0.0/16", "gw": "192.168.63.254"}],
            },
            r"ipam routes .* are not supported",
        ),
    ],
)
def test_nics_ptp_cannot_route_fail_the_add_with_a_config_error(
    ptp: MainPlugin, nic: SelectedNic, section: dict[str, Any] | None, message: str
) -> None:
    netconf = netconf_of(ptp, ptp_network())
    section = section or {"type": "static", "addresses": [{"address": "192.168.0.1/18"}]}
    with pytest.raises(ConfigError, match=message):
        ptp.delegate_config(netconf, nic, section)


@pytest.mark.parametrize(
    "subnet",
    ["192.168.0.0/16,fd00:10::/48", "192.168.0.0/16 fd00:10::/48", ["10.9.0.0/16", "fd00::/48"]],
)
def test_dual_stack_is_refused_by_the_model_with_the_advice(subnet: Any) -> None:
    with pytest.raises(ValidationError, match=r"dual-stack .* is not supported: create one"):
        ptp_network(subnet=subnet)
