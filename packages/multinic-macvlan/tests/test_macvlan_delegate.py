"""The generated delegate config, executed by the real macvlan CNI plugin.

A "host" network namespace holds one end of a veth pair as its secondary NIC;
the macvlan binary from containernetworking-plugins runs in it with the config
the driver built and attaches a "pod" namespace, exactly as the agent will.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multinic_core.hooktypes import SelectedNic, StaticCluster
from multinic_core.models import MultiNicNetwork
from multinic_core.nad import nad_config
from multinic_core.plugins import PluginRegistry

CNI_BIN = Path("/usr/lib/cni")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (CNI_BIN / "macvlan").exists(),
        reason="needs containernetworking-plugins (/usr/lib/cni/macvlan)",
    ),
]


@pytest.fixture
def host_and_pod() -> Iterator[tuple[str, str]]:
    """Two fresh namespaces; the host one has NIC ``eth1`` (a veth) up."""
    suffix = secrets.token_hex(3)
    host, pod = f"mnh-{suffix}", f"mnp-{suffix}"
    try:
        for ns in (host, pod):
            subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(
            ["ip", "-n", host, "link", "add", "eth1", "type", "veth", "peer", "name", "fabric1"],
            check=True,
        )
        for link in ("eth1", "fabric1"):
            subprocess.run(["ip", "-n", host, "link", "set", link, "up"], check=True)
        yield host, pod
    finally:
        for ns in (pod, host):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def cni(command: str, config: dict[str, Any], host: str, pod: str) -> dict[str, Any]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": f"/run/netns/{pod}",
        "CNI_IFNAME": "net1-0",
        "CNI_PATH": str(CNI_BIN),
    }
    run = subprocess.run(
        ["ip", "netns", "exec", host, str(CNI_BIN / config["type"])],
        input=json.dumps(config),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    return json.loads(run.stdout) if run.stdout.strip() else {}


def test_macvlan_delegate_attaches_and_detaches_a_pod(host_and_pod: tuple[str, str]) -> None:
    host, pod = host_and_pod
    network = MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "fabric"},
            "spec": {
                "ipam": '{"type": "whereabouts", "range": "192.168.0.0/18"}',
                "plugin": {"type": "macvlan", "args": {"mode": "private", "mtu": "1400"}},
            },
        }
    )
    macvlan = PluginRegistry().main_plugin("macvlan")
    netconf = nad_config(network, macvlan.network_attachment(network, StaticCluster()))
    ipam = {"type": "static", "addresses": [{"address": "192.168.0.7/18"}]}
    config = macvlan.delegate_config(netconf, SelectedNic(name="eth1"), ipam)

    result = cni("ADD", config, host, pod)
    assert [ip["address"] for ip in result["ips"]] == ["192.168.0.7/18"]
    link = json.loads(
        subprocess.run(
            ["ip", "-n", pod, "-d", "-j", "addr", "show", "net1-0"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )[0]
    assert link["mtu"] == 1400
    assert link["linkinfo"]["info_kind"] == "macvlan"
    assert link["linkinfo"]["info_data"]["mode"] == "private"
    assert [a["local"] for a in link["addr_info"] if a["family"] == "inet"] == ["192.168.0.7"]

    cni("DEL", config, host, pod)
    gone = subprocess.run(
        ["ip", "-n", pod, "link", "show", "net1-0"], check=False, capture_output=True
    )
    assert gone.returncode != 0
