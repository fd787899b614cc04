"""Bad input to the CNI server: every answer is a CNI error with the spec's code, never a crash.

These run the agent's request handling in-process (no namespaces needed):
the errors are all found before any delegate would run.
"""

from __future__ import annotations

import asyncio
import copy
import json
from pathlib import Path
from typing import Any

import pytest

from multinic_agent.cni_server import CniServer

from .conftest import CNI_ENV as ENV
from .conftest import NICS, SERVER_NETCONF, cni_server

NETCONF: dict[str, Any] = {**SERVER_NETCONF, "cniVersion": "1.1.0"}
NODE = {"nics": NICS, "ippools": []}


@pytest.fixture
def server(tmp_path: Path) -> CniServer:
    return cni_server(tmp_path, NODE)


def config_with(**changes: Any) -> str:
    config = copy.deepcopy(NETCONF)
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return json.dumps(config)


BAD_INPUT = [
    # (what, env changes, stdin, code, words in msg)
    ("no command", {"CNI_COMMAND": ""}, config_with(), 4, "CNI_COMMAND"),
    ("unknown command", {"CNI_COMMAND": "FROB"}, config_with(), 4, "'FROB'"),
    ("no container id", {"CNI_CONTAINERID": ""}, config_with(), 4, "CNI_CONTAINERID"),
    ("path in container id", {"CNI_CONTAINERID": "../../etc"}, config_with(), 4, "CNI_CONTAINERID"),
    ("no netns on ADD", {"CNI_NETNS": ""}, config_with(), 4, "CNI_NETNS"),
    ("not an ifname", {"CNI_IFNAME": "net 1/x"}, config_with(), 4, "CNI_IFNAME"),
    ("ifname too long for -i", {"CNI_IFNAME": "abcdefghijklmn"}, config_with(), 4, "15 characters"),
    ("malformed CNI_ARGS", {"CNI_ARGS": "K8S_POD_NAME"}, config_with(), 4, "CNI_ARGS"),
    ("not JSON", {}, "{not json", 6, "not valid JSON"),
    ("JSON but a list", {}, "[1, 2]", 6, "JSON object"),
    ("oversize garbage", {}, "x" * 100_000, 6, "not valid JSON"),
    ("unknown version", {}, config_with(cniVersion="9.9.9"), 1, "'9.9.9'"),
    ("GC before 1.1.0", {"CNI_COMMAND": "GC"}, config_with(cniVersion="1.0.0"), 1, "GC needs"),
    (
        "CHECK before 0.4.0",
        {"CNI_COMMAND": "CHECK"},
        config_with(cniVersion="0.3.1"),
        1,
        "CHECK needs",
    ),
    ("no name", {}, config_with(name=None), 7, "'name'"),
    ("plugin not an object", {}, config_with(plugin="macvlan"), 7, "'plugin'"),
    ("no ipam", {}, config_with(ipam=None), 7, "'ipam'"),
    (
        "bad ipam block size",
        {},
        config_with(ipam={**NETCONF["ipam"], "hostBlock": "six"}),
        7,
        "hostBlock",
    ),
    ("invalid subnet", {}, config_with(subnet="192.168.0.0/33"), 7, "subnet"),
    ("unknown ipam plugin", {}, config_with(ipam={"type": "nosuch"}), 7, "no IPAM plugin 'nosuch'"),
    (
        "unknown main plugin",
        {},
        config_with(plugin={"type": "nosuch"}),
        7,
        "no main plugin 'nosuch'",
    ),
    ("bad nics arg", {}, config_with(args={"cni": {"nics": -1}}), 7, "nics"),
    ("unknown master", {}, config_with(args={"cni": {"masters": ["eth9"]}}), 999, "eth9"),
    ("no pool yet", {}, config_with(), 11, "no IPPool of network 'demo'"),
    ("STATUS without pools", {"CNI_COMMAND": "STATUS"}, config_with(), 50, "no IPPool"),
]


@pytest.mark.parametrize(
    ("env_changes", "stdin", "code", "words"),
    [case[1:] for case in BAD_INPUT],
    ids=[case[0] for case in BAD_INPUT],
)
def test_bad_input_is_a_cni_error(
    server: CniServer, env_changes: dict[str, str], stdin: str, code: int, words: str
) -> None:
    status, stdout, _ = asyncio.run(server.handle({**ENV, **env_changes}, stdin))
    error = json.loads(stdout)
    assert status == 1
    assert error["code"] == code, error
    assert words in error["msg"]
    assert set(error) == {"cniVersion", "code", "msg", "details"}
    # nothing was allocated or recorded on the way to the error
    assert server.journal.attachments() == []
    assert server.records.all() == []


def test_errors_use_the_config_version(server: CniServer) -> None:
    stdin = config_with(cniVersion="0.3.1", ipam={"type": "nosuch"})
    _, stdout, _ = asyncio.run(server.handle(ENV, stdin))
    assert json.loads(stdout)["cniVersion"] == "0.3.1"


def test_del_of_unknown_container_succeeds(server: CniServer) -> None:
    env = {**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    assert asyncio.run(server.handle(env, config_with())) == (0, "", "")


def test_unknown_strategy_falls_back_to_none(server: CniServer, tmp_path: Path) -> None:
    # The strategy comes from the network object; an unknown one is not fatal.
    network = {
        "apiVersion": "multinic.fms.io/v1",
        "kind": "MultiNicNetwork",
        "metadata": {"name": "demo"},
        "spec": {
            "ipam": json.dumps(NETCONF["ipam"]),
            "plugin": {"type": "macvlan"},
            "attachPolicy": {"strategy": "nosuchPolicy"},
        },
    }
    (tmp_path / "node-state.json").write_text(json.dumps({**NODE, "networks": [network]}))
    _, stdout, _ = asyncio.run(server.handle(ENV, config_with()))
    # selection went through 'none' and reached IPAM (which lacks pools here)
    assert json.loads(stdout)["code"] == 11


def device_node(tmp_path: Path) -> None:
    nics = [dict(NODE["nics"][0], pciAddress="0000:3b:00.0"), dict(NODE["nics"][1])]
    pools = [
        {"podCIDR": "192.168.0.0/24", "vlanCIDR": "192.168.0.0/18", "netAttachDef": "demo",
         "hostName": "host-a", "interfaceName": "eth1"},
    ]  # fmt: skip
    (tmp_path / "node-state.json").write_text(json.dumps({"nics": nics, "ippools": pools}))


def test_unknown_allocated_device_is_refused(server: CniServer, tmp_path: Path) -> None:
    device_node(tmp_path)
    stdin = config_with(runtimeConfig={"deviceID": "0000:99:00.1"})
    _, stdout, _ = asyncio.run(server.handle(ENV, stdin))
    error = json.loads(stdout)
    assert error["code"] == 999
    assert "'0000:99:00.1' is neither a NIC of this node nor a VF" in error["msg"]
    assert "eth1=0000:3b:00.0" in error["msg"]


@pytest.mark.root
def test_allocated_device_is_the_selection(server: CniServer, tmp_path: Path) -> None:
    """runtimeConfig.deviceID picks eth1 (by PCI address) over the masterNets order.

    The real host-device delegate then fails (there is no such PCI device
    here), which shows which NIC and device it was given, and that the
    address allocated for it was rolled back.
    """
    device_node(tmp_path)
    stdin = config_with(
        plugin={"cniVersion": "1.0.0", "type": "host-device"},
        runtimeConfig={"deviceID": "3b:00.0"},
    )
    _, stdout, _ = asyncio.run(server.handle(ENV, stdin))
    error = json.loads(stdout)
    assert "delegate host-device ADD for net1-0 (NIC eth1)" in error["msg"]
    assert "/sys/bus/pci/devices/0000:3b:00.0" in error["msg"]  # normalised PCI address
    assert "net1-1" not in error["msg"]
    assert server.journal.attachments() == []
    assert server.records.all() == []
