"""The host-device delegate config, executed by the real host-device CNI plugin.

This is the device hand-off path without SR-IOV hardware: the "device" is a
veth end in a host network namespace, named by the NIC (no PCI device was
allocated), and the real plugin moves it into a pod namespace and back.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_config
from multinic_core.plugins import PluginRegistry

HOST_DEVICE_BIN = "/usr/lib/cni/host-device"

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not os.path.exists(HOST_DEVICE_BIN),
        reason=f"needs containernetworking-plugins ({HOST_DEVICE_BIN})",
    ),
]


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], check=True, capture_output=True, text=True).stdout
    return json.loads(out) if out.strip() else []


@pytest.fixture
def namespaces() -> Iterator[dict[str, str]]:
    """A host namespace whose NIC ``ens9f0`` is a veth, and an empty pod namespace."""
    names = {"host": f"hdh-{secrets.token_hex(3)}", "pod": f"hdp-{secrets.token_hex(3)}"}
    try:
        for ns in names.values():
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            ["ip", "-n", names["host"], "link", "add", "ens9f0", "type", "veth", "peer", "fab9"],
            check=True,
        )
        yield names
    finally:
        for ns in names.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def run_delegate(command: str, config: dict[str, Any], names: dict[str, str]) -> str:
    """Run the delegate inside the host namespace the way the agent does."""
    completed = subprocess.run(
        ["ip", "netns", "exec", names["host"], HOST_DEVICE_BIN],
        input=json.dumps(config),
        capture_output=True,
        text=True,
        check=False,
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "hd-1",
            "CNI_NETNS": f"/run/netns/{names['pod']}",
            "CNI_IFNAME": "net1-0",
            "CNI_PATH": "/usr/lib/cni",
        },
    )
    assert completed.returncode == 0, f"{command}: {completed.stdout}{completed.stderr}"
    return completed.stdout


def test_host_device_moves_the_named_nic_into_the_pod_and_back(namespaces: dict[str, str]) -> None:
    single_resource = json.dumps({"resourceList": [{"resourceName": "hostdev"}]})
    reader = StaticCluster(
        [
            {
                "apiVersion": "mellanox.com/v1alpha1",
                "kind": "NicClusterPolicy",
                "metadata": {"name": "nic-cluster-policy"},
                "spec": {"sriovDevicePlugin": {"config": single_resource}},
            }
        ]
    )
    network = MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "rails"},
            "spec": {"ipam": '{"type":"host-device-ipam"}', "plugin": {"type": "host-device"}},
        }
    )
    hostdev = PluginRegistry().main_plugin("host-device")
    netconf = nad_config(network, hostdev.network_attachment(network, reader))
    static = {"type": "static", "addresses": [{"address": "10.30.1.21/24"}]}
    config = hostdev.delegate_config(netconf, SelectedNic(name="ens9f0"), static)

    result = json.loads(run_delegate("ADD", config, namespaces))
    assert result["ips"][0]["address"] == "10.30.1.21/24"
    in_pod = ip_json("-n", namespaces["pod"], "addr", "show", "net1-0")
    assert [a["local"] for a in in_pod[0]["addr_info"]] == ["10.30.1.21"]
    assert not [
        link for link in ip_json("-n", namespaces["host"], "link") if link["ifname"] == "ens9f0"
    ]

    run_delegate("DEL", config, namespaces)
    back = [link["ifname"] for link in ip_json("-n", namespaces["host"], "link")]
    assert "ens9f0" in back
    assert not ip_json("-n", namespaces["pod"], "link", "show", "type", "veth")
