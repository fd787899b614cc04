"""What Multus passes at runtime: ``runtimeConfig.ips``, ``runtimeConfig.mac`` and ``deviceID``.

The NAD declares ``capabilities: {"ips": true, "mac": true}``, so Multus
(libcni) passes a pod's ``ips`` and ``mac`` from its network annotation as
``runtimeConfig``; when the NAD names a device-plugin resource, Multus writes
the pod's device as the top-level ``deviceID``.  Through the installed shim,
the agent in a host namespace (veth NICs eth1 on pool 192.168.0.0/24,
excludes .128/25, and eth2 on 192.168.128.0/24) and the real macvlan, ptp
and host-device delegates, the pod gets exactly what it asked for, is told
why it cannot, and nothing of a refused ADD is left.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from multinic_agent.cni_server import CniRequest, network_of, parse_request
from multinic_core.plugins import PluginRegistry

from .conftest import CNI_ENV, NICS, SERVER_NETCONF, cni_server, ip_json, netns_name

pytestmark = pytest.mark.root


def with_runtime(config: dict[str, Any], **runtime: Any) -> dict[str, Any]:
    changed = copy.deepcopy(config)
    changed["runtimeConfig"] = runtime
    return changed


def link_macs(netns: str) -> dict[str, str]:
    return {link["ifname"]: link["address"] for link in ip_json(netns_name(netns), "link", "show")}


def nothing_left(agent: Any, pods: Any, netns: str, container: str) -> None:
    assert pods.links(netns) == ["lo"]
    assert (container, "net1") not in agent.held_addresses()
    assert f"{container}_net1.json" not in agent.records()


# --------------------------------------------------------------------------- ips


def test_requested_ips_are_given_each_on_the_nic_whose_pool_holds_it(
    runtime: Any, pods: Any, agent: Any, netconf: Any
) -> None:
    pod = pods.new()
    # Listed eth2's first: the pools decide the NIC, not the order.
    config = with_runtime(netconf(), ips=["192.168.128.77/24", "192.168.0.42"])
    outcome = runtime.add("c1", pod, config)
    assert outcome.status == 0, outcome
    assert [ip["address"] for ip in outcome.json["ips"]] == ["192.168.0.42/18", "192.168.128.77/18"]
    # In the pod: with the NIC's vlanCIDR prefix, whatever prefix was written.
    assert pods.addresses(pod) == {"net1-0": ["192.168.0.42/18"], "net1-1": ["192.168.128.77/18"]}
    assert agent.held_addresses() == {("c1", "net1"): ["192.168.0.42", "192.168.128.77"]}


def test_a_nic_without_a_requested_ip_gets_the_next_free_one(
    runtime: Any, pods: Any, netconf: Any
) -> None:
    pod = pods.new()
    outcome = runtime.add("c1", pod, with_runtime(netconf(), ips=["192.168.128.200"]))
    assert outcome.status == 0, outcome
    assert pods.addresses(pod) == {"net1-0": ["192.168.0.1/18"], "net1-1": ["192.168.128.200/18"]}


def test_a_requested_ip_another_pod_holds_is_refused_and_nothing_is_left(
    runtime: Any, pods: Any, agent: Any, netconf: Any
) -> None:
    first = runtime.add("c1", pods.new(), with_runtime(netconf(), ips=["192.168.0.42"]))
    assert first.status == 0, first
    second_pod = pods.new()
    second = runtime.add("c2", second_pod, with_runtime(netconf(), ips=["192.168.0.42/18"]))
    assert second.status == 1
    error = second.json
    assert error["code"] == 11  # try again: it is free once the holder is deleted
    assert "requested address 192.168.0.42" in error["msg"]
    assert "held by default/pod (container c1 ifname net1)" in error["msg"]
    nothing_left(agent, pods, second_pod, "c2")
    assert agent.held_addresses() == {("c1", "net1"): ["192.168.0.42", "192.168.128.1"]}

    # Once the holder is deleted, the address is given (the reuse delay does not apply
    # to an address asked for by name).
    assert runtime.delete("c1", "", netconf()).status == 0
    third_pod = pods.new()
    third = runtime.add("c3", third_pod, with_runtime(netconf(), ips=["192.168.0.42"]))
    assert third.status == 0, third
    assert pods.addresses(third_pod)["net1-0"] == ["192.168.0.42/18"]


@pytest.mark.parametrize(
    ("ips", "words"),
    [
        (["192.168.5.5"], "in none of this node's IPPools of network demo"),
        (["192.168.0.200"], "192.168.0.200 is excluded from IPPool demo-192.168.0.0-24"),
        (["192.168.0.0/24"], "192.168.0.0 is the network address"),
        (["192.168.128.255"], "192.168.128.255 is the last address"),
        (["192.168.0.5", "192.168.0.6"], "one address per NIC"),
        (["not-an-ip"], "'not-an-ip' is not an IP address"),
        ("192.168.0.5", "runtimeConfig.ips must be a list of addresses"),
        ([5], "runtimeConfig.ips must be a list of addresses"),
    ],
)
def test_requested_ips_the_node_cannot_give_are_refused_with_the_reason(
    runtime: Any, pods: Any, agent: Any, netconf: Any, *, ips: Any, words: str
) -> None:
    pod = pods.new()
    outcome = runtime.add("c1", pod, with_runtime(netconf(), ips=ips))
    assert outcome.status == 1, outcome
    assert outcome.json["code"] == 7
    assert words in outcome.json["msg"]
    nothing_left(agent, pods, pod, "c1")


def test_requested_ips_with_an_ipam_that_cannot_honour_them_are_refused(
    runtime: Any, pods: Any, agent: Any, netconf: Any
) -> None:
    pod = pods.new()
    config = netconf(ipam={"type": "host-local", "subnet": "10.77.0.0/24"})
    outcome = runtime.add("c1", pod, with_runtime(config, ips=["10.77.0.9/24"]))
    assert outcome.status == 1
    assert outcome.json["code"] == 7
    assert "cannot be honoured with ipam type 'host-local'" in outcome.json["msg"]
    nothing_left(agent, pods, pod, "c1")


def test_multi_config_takes_requested_ips_in_nic_order(
    runtime: Any, pods: Any, netconf: Any
) -> None:
    pod = pods.new()
    config = netconf(
        ipam={
            "type": "multi-config",
            "ipam_type": "host-local",
            "args": {
                "eth1": {"subnet": "10.77.1.0/24"},
                "eth2": {"subnet": "10.77.2.0/24"},
            },
        }
    )
    outcome = runtime.add("c1", pod, with_runtime(config, ips=["10.77.1.50/24", "10.77.2.60/24"]))
    assert outcome.status == 0, outcome
    assert pods.addresses(pod) == {"net1-0": ["10.77.1.50/24"], "net1-1": ["10.77.2.60/24"]}


# --------------------------------------------------------------------------- mac


def test_requested_mac_is_the_first_interfaces_mac(runtime: Any, pods: Any, netconf: Any) -> None:
    pod = pods.new()
    outcome = runtime.add("c1", pod, with_runtime(netconf(), mac="02:AA:bb:00:00:01"))
    assert outcome.status == 0, outcome
    macs = link_macs(pod)
    assert macs["net1-0"] == "02:aa:bb:00:00:01"
    assert macs["net1-1"] != "02:aa:bb:00:00:01"
    interfaces = {i["name"]: i["mac"] for i in outcome.json["interfaces"] if i.get("sandbox")}
    assert interfaces["net1-0"] == "02:aa:bb:00:00:01"


def test_a_mac_in_cni_args_goes_to_the_first_interface_only(
    runtime: Any, pods: Any, netconf: Any
) -> None:
    """Multus passes ``MAC=`` in CNI_ARGS besides runtimeConfig.mac; macvlan would give
    every NIC that MAC if the agent forwarded it."""
    pod = pods.new()
    env = runtime.env("ADD", "c1", pod)
    env["CNI_ARGS"] += ";MAC=02:aa:bb:00:00:02"
    outcome = runtime.run(env, netconf())
    assert outcome.status == 0, outcome
    macs = link_macs(pod)
    assert macs["net1-0"] == "02:aa:bb:00:00:02"
    assert macs["net1-1"] != "02:aa:bb:00:00:02"


@pytest.mark.parametrize(
    ("mac", "words"),
    [
        ("02:aa:bb:00:00", "is not a MAC address"),
        ("zz:aa:bb:00:00:01", "is not a MAC address"),
        ("03:aa:bb:00:00:01", "is a multicast address"),
        (17, "is not a MAC address"),
    ],
)
def test_a_malformed_mac_is_refused(
    runtime: Any, pods: Any, agent: Any, netconf: Any, *, mac: Any, words: str
) -> None:
    pod = pods.new()
    outcome = runtime.add("c1", pod, with_runtime(netconf(), mac=mac))
    assert outcome.status == 1
    assert outcome.json["code"] == 7
    assert words in outcome.json["msg"]
    nothing_left(agent, pods, pod, "c1")


def test_a_delegate_that_cannot_set_the_mac_is_refused_and_rolled_back(
    runtime: Any, pods: Any, agent: Any, netconf: Any
) -> None:
    """ptp makes a veth pair of its own and takes no MAC: the pod is not started with another."""
    pod = pods.new()
    config = netconf(plugin={"cniVersion": "1.0.0", "type": "ptp"})
    config["ipam"]["vlanMode"] = "l3"
    del config["ipam"]["routes"]  # a routed pod's only gateway is its host
    plain = runtime.add("c0", pods.new(), config)
    assert plain.status == 0, plain  # the network itself works
    outcome = runtime.add("c1", pod, with_runtime(config, mac="02:aa:bb:00:00:01"))
    assert outcome.status == 1, outcome
    assert "the ptp plugin does not set a requested MAC" in outcome.json["msg"]
    nothing_left(agent, pods, pod, "c1")
    # The host side of the rolled-back veth pairs went too.
    assert len([link for link in agent.host.links() if link.startswith("veth")]) == 2


# --------------------------------------------------------------------------- deviceID


def device_server(tmp_path: Path) -> Any:
    """An in-process agent whose eth1 is the PCI device 0000:3b:00.0."""
    nics = [dict(NICS[0], pciAddress="0000:3b:00.0"), dict(NICS[1], pciAddress="0000:5e:00.0")]
    pools = [
        {"podCIDR": "192.168.0.0/24", "vlanCIDR": "192.168.0.0/18", "netAttachDef": "demo",
         "hostName": "host-a", "interfaceName": "eth1"},
        {"podCIDR": "192.168.128.0/24", "vlanCIDR": "192.168.128.0/18", "netAttachDef": "demo",
         "hostName": "host-a", "interfaceName": "eth2"},
    ]  # fmt: skip
    return cni_server(tmp_path, {"nics": nics, "ippools": pools})


def add_error(server: Any, config: dict[str, Any]) -> dict[str, Any]:
    status, stdout, _ = asyncio.run(server.handle(CNI_ENV, json.dumps(config)))
    assert status == 1, stdout
    error: dict[str, Any] = json.loads(stdout)
    return error


def test_multus_top_level_device_id_reaches_the_host_device_delegate(tmp_path: Path) -> None:
    """Multus writes the pod's device as ``deviceID`` (and ``pciBusID``): it is the selection.

    The real host-device delegate then fails (there is no PCI device here),
    which shows the device it was given: eth2's, not the masterNets order's
    eth1; and the address allocated for it was rolled back.
    """
    server = device_server(tmp_path)
    config = {
        **SERVER_NETCONF,
        "plugin": {"cniVersion": "1.0.0", "type": "host-device"},
        "deviceID": "5e:00.0",
        "pciBusID": "5e:00.0",
    }
    error = add_error(server, config)
    assert "delegate host-device ADD for net1-0 (NIC eth2)" in error["msg"]
    assert "/sys/bus/pci/devices/0000:5e:00.0" in error["msg"]
    assert "net1-1" not in error["msg"]
    assert server.journal.attachments() == []


def test_multus_top_level_device_id_is_the_sriov_vf_of_the_delegate(tmp_path: Path) -> None:
    server = device_server(tmp_path)
    sriov = {**SERVER_NETCONF, "plugin": {"cniVersion": "1.0.0", "type": "sriov"}}
    # Without a device the sriov driver has no VF to give the delegate.
    assert "no SR-IOV VF allocated for NIC 'eth1'" in add_error(server, sriov)["msg"]
    # With Multus' deviceID it builds the delegate config; Debian has no sriov binary.
    with_device = {**sriov, "deviceID": "0000:5e:00.0"}
    assert "delegate plugin 'sriov' not found" in add_error(server, with_device)["msg"]
    assert server.journal.attachments() == []
    # The config the sriov delegate would have been given names that VF.
    request: CniRequest = parse_request(
        {**CNI_ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web"},
        json.dumps(with_device),
    )
    [nic] = server._select(request, network_of(request.config, None))
    delegate = PluginRegistry().main_plugin("sriov").delegate_config(with_device, nic, {})
    assert (nic.name, delegate["deviceID"]) == ("eth2", "0000:5e:00.0")


def test_runtime_config_device_id_wins_over_the_top_level_one(tmp_path: Path) -> None:
    server = device_server(tmp_path)
    request = parse_request(
        CNI_ENV,
        json.dumps(
            {**SERVER_NETCONF, "deviceID": "0000:5e:00.0", "runtimeConfig": {"deviceID": "3b:00.0"}}
        ),
    )
    network = network_of(request.config, None)
    assert [(n.name, n.device_id) for n in server._select(request, network)] == [
        ("eth1", "0000:3b:00.0")
    ]


def test_a_malformed_top_level_device_id_is_refused(tmp_path: Path) -> None:
    error = add_error(device_server(tmp_path), {**SERVER_NETCONF, "deviceID": ["5e:00.0", 7]})
    assert error["code"] == 7
    assert "deviceID must be a PCI address" in error["msg"]
