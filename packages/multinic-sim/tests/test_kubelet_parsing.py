"""What the simulated kubelet and concheck read from pods: Multus' annotations, exec status."""

from __future__ import annotations

import json
import re

import pytest

from multinic_sim.concheck import _exit_code
from multinic_sim.kubelet import (
    Attachment,
    NetworkSelection,
    Sandbox,
    SandboxError,
    network_status,
    parse_networks,
)
from multinic_sim.pods import interfaces_of
from multinic_sim.remote_command import exit_status


def test_both_forms_of_the_networks_annotation() -> None:
    assert parse_networks("a, other/b@fast0 ,c", "ns") == [
        NetworkSelection("a", "ns", "net1"),
        NetworkSelection("b", "other", "fast0"),
        NetworkSelection("c", "ns", "net3"),
    ]
    selected = parse_networks(
        json.dumps([{"name": "a", "cni-args": {"nics": 2}}, {"name": "b", "namespace": "x",
                                                             "interface": "data"}]),
        "ns",
    )  # fmt: skip
    assert selected == [
        NetworkSelection("a", "ns", "net1", {"nics": 2}),
        NetworkSelection("b", "x", "data"),
    ]
    assert parse_networks("  ", "ns") == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("[{", "is not valid JSON"),
        ('{"name": "a"}', "is not [namespace/]name[@ifname]"),
        ('[{"namespace": "a"}]', "[0] has no string 'name'"),
        ('[{"name": "a", "cni-args": 3}]', "[0].cni-args must be an object"),
        ("UPPER", "'UPPER' is not [namespace/]name[@ifname]"),
        ("a,,b", "'' is not [namespace/]name[@ifname]"),
    ],
)
def test_a_bad_networks_annotation_is_named(value: str, message: str) -> None:
    with pytest.raises(SandboxError, match=re.escape("k8s.v1.cni.cncf.io/networks")) as info:
        parse_networks(value, "ns")
    assert message in str(info.value)


def test_network_status_has_one_entry_per_pod_interface_and_reads_back() -> None:
    result = {
        "interfaces": [
            {"name": "eth1", "mac": "00:00:00:00:00:01"},  # a host-side link: no sandbox
            {"name": "net1-0", "mac": "0a:00:00:00:00:01", "sandbox": "/var/run/netns/p"},
            {"name": "net1-1", "mac": "0a:00:00:00:00:02", "sandbox": "/var/run/netns/p"},
        ],
        "ips": [
            {"address": "192.168.0.1/18", "interface": 1},
            {"address": "fd00::1/64", "interface": 1},
            {"address": "192.168.64.1/18", "interface": 2},
            {"address": "10.9.9.9/24", "interface": 0},
            {"address": "10.9.9.8/24", "interface": 7},
        ],
    }
    sandbox = Sandbox(
        "ns", "p", "uid", "host-0", "x-pod-ns-p", "c" * 64,
        [Attachment("rails", "ns", "net1", {"type": "multi-nic"}, result)],
    )  # fmt: skip
    status = network_status(sandbox)
    assert [(e["name"], e["interface"], e["ips"]) for e in status] == [
        ("ns/rails", "net1-0", ["192.168.0.1", "fd00::1"]),
        ("ns/rails", "net1-1", ["192.168.64.1"]),
    ]
    annotations = {"k8s.v1.cni.cncf.io/network-status": json.dumps(status)}
    assert [(i.name, i.ip, i.network, i.nic_index) for i in interfaces_of(annotations)] == [
        ("net1-0", "192.168.0.1", "rails", 0),
        ("net1-1", "192.168.64.1", "rails", 1),
    ]


def test_interfaces_of_other_plugins_are_counted_in_order_and_the_default_skipped() -> None:
    status = [
        {"name": "cbr0", "interface": "eth0", "ips": ["10.244.0.5"], "default": True},
        {"name": "ns/sriov", "interface": "net1", "ips": ["10.56.0.2"]},
        {"name": "ns/sriov", "interface": "net2", "ips": ["10.57.0.2"]},
        {"name": "ns/none", "interface": "net3", "ips": []},
    ]
    found = interfaces_of({"k8s.v1.cni.cncf.io/network-status": json.dumps(status)})
    assert [(i.name, i.network, i.nic_index) for i in found] == [
        ("net1", "sriov", 0),
        ("net2", "sriov", 1),
    ]
    assert interfaces_of({"k8s.v1.cni.cncf.io/network-status": "not json"}) == []
    assert interfaces_of({}) == []


def test_exec_exit_codes_round_trip_through_the_error_channel() -> None:
    assert _exit_code(exit_status(["true"], 0).decode()) == 0
    assert _exit_code(exit_status(["false"], 3).decode()) == 3
    assert _exit_code(json.dumps({"status": "Failure", "message": "no such container"})) == 1
    assert _exit_code("") is None
