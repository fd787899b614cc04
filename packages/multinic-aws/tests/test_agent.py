"""aws-ipvlan through the node agent's CNI server: ADD and DEL as the runtime sends
them, the no-subnet IPPools of the planner, the driver's hooks, and a stand-in
``ipvlan`` delegate (this machine's kernel may have no ipvlan; the real one is
exercised by test_attach_root.py).  The EC2 side is moto's, through the
fault-injecting proxy.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multinic_agent.records import RecordStore

from .conftest import CLEAN_ENIS, Cloud, Fault, FaultProxy, Node, settings_args

CLEAN = CLEAN_ENIS
CODE_TRY_AGAIN = 11
CODE_OTHER = 999


@pytest.fixture
def node(tmp_path: Path, proxy: FaultProxy, cloud: Cloud) -> Node:
    return Node(tmp_path, settings_args(proxy.url, max_attempts="3"))


def test_cni_add_assigns_on_ec2_and_del_unassigns(node: Node, cloud: Cloud) -> None:
    status, result = node.cni("ADD")
    assert status == 0, result
    assert [ip["address"] for ip in result["ips"]] == ["10.0.1.4/24", "10.0.2.4/24"]
    assert [i["name"] for i in result["interfaces"]] == ["net1-0", "net1-1"]
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"], "a-eth2": ["10.0.2.4"]}
    # The delegates the agent exec'd: ipvlan on each NIC, static address of the host subnet.
    adds = sorted(
        (c for c in node.delegate_calls() if c["command"] == "ADD"), key=lambda c: c["ifname"]
    )
    assert [
        (c["ifname"], c["config"]["type"], c["config"]["master"], c["config"]["mode"],
         c["config"]["ipam"]["addresses"])
        for c in adds
    ] == [
        ("net1-0", "ipvlan", "eth1", "l2", [{"address": "10.0.1.4/24"}]),
        ("net1-1", "ipvlan", "eth2", "l2", [{"address": "10.0.2.4/24"}]),
    ]  # fmt: skip
    record = node.records.get("c1", "net1")
    assert record is not None
    assert record.main_plugin == "aws-ipvlan"
    assert [d.plugin_state for d in record.delegates] == [
        {"eni": cloud.enis["a-eth1"], "addresses": ["10.0.1.4"]},
        {"eni": cloud.enis["a-eth2"], "addresses": ["10.0.2.4"]},
    ]

    status, reply = node.cni("DEL")
    assert status == 0, reply
    assert cloud.all_secondary() == CLEAN
    assert node.records.get("c1", "net1") is None
    assert node.held() == []
    status, reply = node.cni("DEL")  # repeated DEL
    assert status == 0, reply


def test_cni_add_failing_on_the_second_nic_leaves_nothing(
    node: Node, cloud: Cloud, proxy: FaultProxy
) -> None:
    proxy.faults.append(
        Fault(
            "AssignPrivateIpAddresses",
            eni=cloud.enis["a-eth2"],
            status=400,
            code="PrivateIpAddressLimitExceeded",
            message="Number of private addresses will exceed limit.",
        )
    )
    status, error = node.cni("ADD")
    assert status == 1
    assert error["code"] == CODE_OTHER
    assert error["msg"].startswith(f"aws-ipvlan: NIC eth2 (net1-1, ENI {cloud.enis['a-eth2']}): ")
    assert (
        "PrivateIpAddressLimitExceeded: Number of private addresses will exceed limit."
        in error["msg"]
    )
    assert "unassigned again: 10.0.1.4 from NIC eth1" in error["msg"]
    assert cloud.all_secondary() == CLEAN
    # The agent's own rollback: both delegates DELeted, addresses released, nothing recorded.
    assert sorted(c["ifname"] for c in node.delegate_calls() if c["command"] == "DEL") == [
        "net1-0",
        "net1-1",
    ]
    assert node.held() == []
    assert node.records.get("c1", "net1") is None


def test_cni_add_throttled_beyond_the_bounds_is_try_again(
    node: Node, cloud: Cloud, proxy: FaultProxy
) -> None:
    proxy.faults.append(Fault("AssignPrivateIpAddresses", times=10))
    status, error = node.cni("ADD")
    assert status == 1
    assert error["code"] == CODE_TRY_AGAIN
    assert error["msg"].startswith("aws-ipvlan: NIC eth1 (net1-0, ENI ")
    assert (
        "RequestLimitExceeded: Request limit exceeded. (after 3 attempt(s)); nothing was assigned"
        in error["msg"]
    )
    assert cloud.all_secondary() == CLEAN
    assert node.held() == []
    # Throttling over, the runtime's retry succeeds.
    proxy.faults.clear()
    status, result = node.cni("ADD")
    assert status == 0, result
    eth1, eth2 = (ip["address"].split("/")[0] for ip in result["ips"])
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": [eth1], "a-eth2": [eth2]}


def test_cni_del_while_ec2_throttles_keeps_the_attachment_until_a_del_succeeds(
    node: Node, cloud: Cloud, proxy: FaultProxy
) -> None:
    status, _ = node.cni("ADD")
    assert status == 0
    proxy.faults.append(Fault("UnassignPrivateIpAddresses", eni=cloud.enis["a-eth2"], times=10))
    status, error = node.cni("DEL")
    assert status == 1
    assert error["code"] == CODE_TRY_AGAIN
    assert error["msg"].startswith(
        "aws-ipvlan: NIC eth2 (net1-1): EC2 UnassignPrivateIpAddresses: RequestLimitExceeded"
    )
    # Not released while EC2 still has it on the ENI: no other pod can get it.
    assert node.held() == ["10.0.1.4", "10.0.2.4"]
    assert node.records.get("c1", "net1") is not None
    assert cloud.all_secondary() == {**CLEAN, "a-eth2": ["10.0.2.4"]}
    proxy.faults.clear()
    status, error = node.cni("DEL")
    assert status == 0, error
    assert cloud.all_secondary() == CLEAN
    assert node.held() == []


def test_cni_gc_of_a_stale_attachment_unassigns(node: Node, cloud: Cloud) -> None:
    status, _ = node.cni("ADD")
    assert status == 0
    node.netconf = {**node.netconf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}
    status, error = node.cni("GC")
    assert status == 0, error
    assert cloud.all_secondary() == CLEAN
    assert node.records.get("c1", "net1") is None


def test_records_of_older_agents_without_the_new_fields_still_load(tmp_path: Path) -> None:
    """An attachment record written before ``main_plugin``/``plugin_state`` existed."""
    store = tmp_path / "attachments"
    store.mkdir()
    (store / "c0_net1.json").write_text(
        json.dumps(
            {
                "container_id": "c0",
                "ifname": "net1",
                "netns": "",
                "network": "demo",
                "cni_version": "1.0.0",
                "ipam_type": "multi-nic-ipam",
                "ipam": {},
                "delegates": [{"ifname": "net1-0", "nic": "eth1", "binary": "/x", "config": {}}],
                "addresses": [],
            }
        )
    )
    record = RecordStore(tmp_path).get("c0", "net1")
    assert record is not None
    assert record.main_plugin == ""
    assert record.delegates[0].plugin_state == {}
