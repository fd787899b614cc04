"""The built-in attach policies (SPEC section 6), driven through the plugin registry.

Every selection goes through ``PluginRegistry().policy(name)``: the same path
the agent and a third-party policy use, so a broken entry point fails here.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from multinic_core.errors import PluginNotFoundError, SelectionError
from multinic_core.hooktypes import PodArgs, PodRef, SelectedNic, SelectionRequest
from multinic_core.models import DeviceClassSpec, InterfaceInfo, MultiNicNetwork
from multinic_core.plugins import PluginRegistry
from multinic_core.policies import normalise_pci_address, parse_target_bandwidth

BUILT_IN = ("none", "devClass", "topology", "costOpt", "perfOpt")

# The node's NICs.  eth4's network 10.0.10.0/24 sorts after 10.0.3.0/24
# numerically but before it as a string, and eth4 has no numaNode so its NUMA
# node comes from its (short-form) PCI address.
NICS: dict[str, dict[str, Any]] = {
    "eth1": {
        "netAddress": "10.0.1.0/24",
        "hostIP": "10.0.1.11",
        "vendor": "15b3",
        "product": "1017",
        "pciAddress": "0000:3b:00.0",
        "numaNode": 0,
        "speed": 100_000,
    },
    "eth2": {
        "netAddress": "10.0.2.0/24",
        "hostIP": "10.0.2.11",
        "vendor": "8086",
        "product": "1592",
        "pciAddress": "0000:5e:00.0",
        "numaNode": 0,
        "speed": 25_000,
    },
    "eth3": {
        "netAddress": "10.0.3.0/24",
        "hostIP": "10.0.3.11",
        "vendor": "15b3",
        "product": "1017",
        "pciAddress": "0000:af:00.0",
        "numaNode": 1,
        "speed": 100_000,
    },
    "eth4": {
        "netAddress": "10.0.10.0/24",
        "hostIP": "10.0.10.11",
        "vendor": "8086",
        "product": "1592",
        "pciAddress": "D8:00.0",
        "speed": 25_000,
    },
}
ALL = ["eth1", "eth2", "eth3", "eth4"]

# sysfs numa_node by canonical PCI address: GPUs and the one NIC without numaNode.
NUMA = {
    "0000:18:00.0": 0,  # GPU
    "0000:86:00.0": 1,  # GPU
    "0000:87:00.0": 1,  # GPU
    "0000:d8:00.0": 1,  # eth4
    "0000:3b:00.0": 1,  # eth1's sysfs disagrees with its numaNode field, which wins
}

DEVICE_CLASSES = {
    "mellanox": DeviceClassSpec.model_validate({"ids": [{"vendor": "15b3", "products": ["1017"]}]}),
    "intel": DeviceClassSpec.model_validate({"ids": [{"vendor": "8086", "products": ["1592"]}]}),
    "other": DeviceClassSpec.model_validate({"ids": [{"vendor": "14e4", "products": ["16d7"]}]}),
}


@dataclass(frozen=True)
class Case:
    """One selection: inputs that differ from the defaults, and the expected NICs."""

    id: str
    expected: list[str] | str
    """The selected interface names in order, or a regex the SelectionError must match."""
    master_nets: list[str] = field(default_factory=list)
    nics: Sequence[str] = tuple(ALL)
    discovered_order: str = "reversed"
    cni_args: Mapping[str, Any] = field(default_factory=dict)
    target: str = ""
    device_ids: Sequence[str] = ()
    usage: Mapping[str, int] = field(default_factory=dict)
    overrides: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def network(master_nets: list[str], strategy: str, target: str = "") -> MultiNicNetwork:
    return MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {
                "subnet": "192.168.0.0/16",
                "ipam": '{"type":"multi-nic-ipam","hostBlock":6,"interfaceBlock":2}',
                "multiNICIPAM": True,
                "masterNets": master_nets,
                "plugin": {"type": "ipvlan", "args": {"mode": "l3"}},
                "attachPolicy": {"strategy": strategy, "target": target},
            },
        }
    )


def request_for(case: Case, strategy: str) -> SelectionRequest:
    names = list(case.nics)
    if case.discovered_order == "reversed":
        # Discovery order must never leak into the selection.
        names.reverse()
    inventory = [
        InterfaceInfo.model_validate(
            {"interfaceName": n, **NICS.get(n, {}), **case.overrides.get(n, {})}
        )
        for n in names
    ]
    return SelectionRequest(
        network=network(case.master_nets, strategy, case.target),
        nics=inventory,
        pod=PodRef(name="pod-a", namespace="default"),
        args=PodArgs.from_cni_args(case.cni_args),
        device_ids=case.device_ids,
        usage=case.usage,
        device_classes=DEVICE_CLASSES.get,
        numa_node_of=NUMA.get,
    )


def select(strategy: str, case: Case) -> list[SelectedNic]:
    return PluginRegistry().policy(strategy).select_nics(request_for(case, strategy))


def check(strategy: str, case: Case) -> None:
    if isinstance(case.expected, str):
        with pytest.raises(SelectionError, match=case.expected):
            select(strategy, case)
    else:
        assert [nic.name for nic in select(strategy, case)] == case.expected


# --------------------------------------------------------------------------- none

NONE_CASES = [
    Case("no masterNets: all NICs by network address", ALL),
    Case("discovery order does not matter", ALL, discovered_order="as listed"),
    Case(
        "network address order, numeric not by name or string",
        ["eth2", "eth3", "eth4", "eth1"],
        overrides={"eth1": {"netAddress": "10.0.20.0/24"}},
    ),
    Case(
        "masterNets order, other networks left out",
        ["eth3", "eth1"],
        master_nets=["10.0.3.0/24", "10.0.1.0/24"],
    ),
    Case("masters in the pod's order", ["eth4", "eth1"], cni_args={"masters": ["eth4", "eth1"]}),
    Case("masters as a comma list", ["eth2", "eth3"], cni_args={"masters": "eth2,eth3"}),
    Case("nics truncates masterNets order", ["eth1", "eth2"], cni_args={"nics": 2}),
    Case(
        "nics truncates masters",
        ["eth3", "eth1"],
        cni_args={"masters": ["eth3", "eth1", "eth2"], "nics": 2},
    ),
    Case("nics equal to the pool", ALL, cni_args={"nics": 4}),
    Case(
        "NIC without a network address comes last",
        ["eth1", "eth2", "eth4", "eth0"],
        nics=["eth0", "eth1", "eth2", "eth4"],
        overrides={"eth0": {"netAddress": ""}},
    ),
    Case(
        "two NICs on one network ordered by name",
        ["eth1", "eth2", "eth3"],
        master_nets=["10.0.1.0/24", "10.0.3.0/24"],
        overrides={"eth2": {"netAddress": "10.0.1.0/24"}},
    ),
    Case(
        "unknown master is named, with the available NICs",
        r"unknown interface\(s\) eth9; available: eth1, eth2, eth3, eth4",
        cni_args={"masters": ["eth1", "eth9"]},
    ),
    Case(
        "a master outside masterNets is unknown",
        r"eth2; available: eth1$",
        master_nets=["10.0.1.0/24"],
        cni_args={"masters": ["eth2"]},
    ),
    Case("a master named twice", r"twice: eth1", cni_args={"masters": ["eth1", "eth1"]}),
    Case(
        "more nics than available says how many there are",
        r"nics=5 but only 4 NIC\(s\) are available",
        cni_args={"nics": 5},
    ),
    Case(
        "more nics than masters",
        r"nics=3 but only 2 NIC\(s\)",
        cni_args={"masters": ["eth1", "eth2"], "nics": 3},
    ),
    Case("no NICs on the node", r"no NIC of network 'demo' on this node", nics=[]),
    Case(
        "no NIC on any masterNet",
        r"no NIC of network 'demo' on this node in masterNets 10\.9\.0\.0/24",
        master_nets=["10.9.0.0/24"],
    ),
]


@pytest.mark.parametrize("case", NONE_CASES, ids=lambda c: c.id)
def test_none_policy(case: Case) -> None:
    check("none", case)


def test_selected_nics_carry_network_host_ip_and_allocated_device() -> None:
    # eth2 itself was allocated by a device plugin (host-device), in lspci's short form.
    case = Case("", [], cni_args={"masters": ["eth2", "eth4"]}, device_ids=["5E:00.0"])
    assert select("none", case) == [
        SelectedNic(
            name="eth2", net_address="10.0.2.0/24", device_id="0000:5e:00.0", host_ip="10.0.2.11"
        ),
        SelectedNic(name="eth4", net_address="10.0.10.0/24", device_id="", host_ip="10.0.10.11"),
    ]


# --------------------------------------------------------------------------- devClass

DEVCLASS_CASES = [
    Case("class from cni-args", ["eth1", "eth3"], cni_args={"class": "mellanox"}),
    Case("class from attachPolicy.target", ["eth2", "eth4"], target="intel"),
    Case(
        "cni-args class wins over target",
        ["eth1", "eth3"],
        target="intel",
        cni_args={"class": "mellanox"},
    ),
    Case(
        "filter before truncating",
        ["eth2", "eth4"],
        cni_args={"class": "intel", "nics": 2},
    ),
    Case(
        "masterNets order kept",
        ["eth3", "eth1"],
        master_nets=["10.0.3.0/24", "10.0.2.0/24", "10.0.1.0/24"],
        target="mellanox",
    ),
    Case(
        "vendor ids in other spellings match",
        ["eth1", "eth3"],
        target="mellanox",
        overrides={"eth1": {"vendor": "0x15B3", "product": "0x1017"}},
    ),
    Case(
        "masters inside the class",
        ["eth3"],
        cni_args={"class": "mellanox", "masters": ["eth3"]},
    ),
    Case(
        "a master outside the class is unknown, class members listed",
        r"eth2; available: eth1, eth3$",
        cni_args={"class": "mellanox", "masters": ["eth2"]},
    ),
    Case(
        "more nics than class members",
        r"nics=3 but only 2 NIC\(s\) are available: eth2, eth4",
        cni_args={"class": "intel", "nics": 3},
    ),
    Case(
        "missing DeviceClass reported before an empty node",
        r"DeviceClass 'gone' .* does not exist",
        target="gone",
        nics=[],
    ),
    Case(
        "class on a node without NICs",
        r"no NIC of network 'demo' on this node",
        target="intel",
        nics=[],
    ),
    Case("no class name", r"needs a DeviceClass name: set cni-args class or attachPolicy\.target"),
    Case(
        "missing DeviceClass fails closed", r"DeviceClass 'gone' .* does not exist", target="gone"
    ),
    Case(
        "no NIC in the class",
        r"no NIC of network 'demo' is in DeviceClass 'other' .*eth1=15b3:1017",
        target="other",
    ),
]


@pytest.mark.parametrize("case", DEVCLASS_CASES, ids=lambda c: c.id)
def test_devclass_policy(case: Case) -> None:
    check("devClass", case)


# --------------------------------------------------------------------------- topology

TOPOLOGY_CASES = [
    Case(
        "NICs on the GPU's NUMA node first, masterNets order on ties",
        ["eth3", "eth4", "eth1", "eth2"],
        device_ids=["0000:86:00.0"],
    ),
    Case(
        "take nics from the GPU's NUMA node",
        ["eth3", "eth4"],
        device_ids=["86:00.0"],
        cni_args={"nics": 2},
    ),
    Case(
        "upper-case PCI address is normalised",
        ["eth1", "eth2"],
        device_ids=["0000:18:00.0".upper()],
        cni_args={"nics": 2},
    ),
    Case(
        "the NUMA node holding more of the pod's GPUs wins",
        ["eth3", "eth4", "eth1", "eth2"],
        device_ids=["0000:18:00.0", "0000:86:00.0", "0000:87:00.0"],
    ),
    Case(
        "NIC numaNode field wins over sysfs",
        ["eth1", "eth2"],
        device_ids=["18:00.0"],
        cni_args={"nics": 2},
    ),
    Case("no devices: masterNets order", ["eth1", "eth2"], cni_args={"nics": 2}),
    Case(
        "device of unknown NUMA: masterNets order",
        ["eth1", "eth2"],
        device_ids=["0000:99:00.0"],
        cni_args={"nics": 2},
    ),
    Case(
        "masterNets order is the tie-breaker",
        ["eth4", "eth3", "eth2"],
        master_nets=["10.0.10.0/24", "10.0.2.0/24", "10.0.3.0/24"],
        device_ids=["86:00.0"],
    ),
    Case(
        "ranking within the pod's masters",
        ["eth3"],
        device_ids=["86:00.0"],
        cni_args={"masters": ["eth1", "eth3"], "nics": 1},
    ),
    Case(
        "more nics than NICs",
        r"nics=5 but only 4",
        device_ids=["86:00.0"],
        cni_args={"nics": 5},
    ),
]


@pytest.mark.parametrize("case", TOPOLOGY_CASES, ids=lambda c: c.id)
def test_topology_policy(case: Case) -> None:
    check("topology", case)


# --------------------------------------------------------------------------- costOpt / perfOpt

USAGE = {"eth1": 3, "eth2": 1, "eth3": 1}  # eth4 unused

COSTOPT_CASES = [
    Case(
        "least-used first, ties in masterNets order", ["eth4", "eth2", "eth3", "eth1"], usage=USAGE
    ),
    Case("nics of the least used", ["eth4", "eth2"], usage=USAGE, cni_args={"nics": 2}),
    Case("no usage yet: masterNets order", ALL),
    Case(
        "target in Gbps: until the sum of speeds reaches it",
        ["eth4", "eth2", "eth3"],
        usage=USAGE,
        target="100Gbps",
    ),
    Case("bare target is Gbps", ["eth4", "eth2"], usage=USAGE, target="40"),
    Case("target reached exactly", ["eth4", "eth2"], usage=USAGE, target="50"),
    Case("target in Mbps", ["eth4"], usage=USAGE, target="400Mbps"),
    Case("target in Kbps", ["eth4"], usage=USAGE, target="10Kbps"),
    Case("nics caps a target", ["eth4", "eth2"], usage=USAGE, target="1000", cni_args={"nics": 2}),
    Case(
        "unreachable target takes every NIC",
        ["eth4", "eth2", "eth3", "eth1"],
        usage=USAGE,
        target="1000",
    ),
    Case(
        "NIC of unknown speed adds nothing",
        ["eth4", "eth2", "eth3"],
        usage=USAGE,
        target="30",
        overrides={"eth4": {"speed": None}},
    ),
    Case(
        "unparseable target",
        r"attachPolicy\.target 'fast' is not a positive bandwidth",
        target="fast",
    ),
    Case("zero target", r"attachPolicy\.target '0'", target="0"),
    Case("more nics than NICs", r"nics=5 but only 4", usage=USAGE, cni_args={"nics": 5}),
]


@pytest.mark.parametrize("case", COSTOPT_CASES, ids=lambda c: c.id)
def test_costopt_policy(case: Case) -> None:
    check("costOpt", case)


PERF_USAGE = {"eth1": 2, "eth3": 1}

PERFOPT_CASES = [
    Case(
        "fastest first, then least-used, then masterNets order",
        ["eth3", "eth1", "eth2", "eth4"],
        usage=PERF_USAGE,
    ),
    Case("one fast link reaches the target", ["eth3"], usage=PERF_USAGE, target="100Gbps"),
    Case("two fast links reach the target", ["eth3", "eth1"], usage=PERF_USAGE, target="150"),
    Case(
        "all links for a target beyond their sum",
        ["eth3", "eth1", "eth2", "eth4"],
        usage=PERF_USAGE,
        target="1Tbps",
    ),
    Case("nics of the fastest", ["eth3", "eth1"], usage=PERF_USAGE, cni_args={"nics": 2}),
    Case(
        "unknown speed ranks last",
        ["eth1", "eth2", "eth4", "eth3"],
        overrides={"eth3": {"speed": None}},
    ),
    Case(
        "within the pod's masters",
        ["eth1", "eth2"],
        usage=PERF_USAGE,
        cni_args={"masters": ["eth2", "eth1"]},
    ),
    Case("unparseable target", r"attachPolicy\.target '10 Gb'", target="10 Gb"),
]


@pytest.mark.parametrize("case", PERFOPT_CASES, ids=lambda c: c.id)
def test_perfopt_policy(case: Case) -> None:
    check("perfOpt", case)


# --------------------------------------------------------------------------- shared parsing


@pytest.mark.parametrize(
    ("target", "mbps"),
    [
        ("", None),
        ("100", 100_000.0),
        ("100Gbps", 100_000.0),
        ("100gbps", 100_000.0),
        ("2.5Gbps", 2_500.0),
        ("400Mbps", 400.0),
        ("10Kbps", 0.01),
        (" 1Tbps ", 1_000_000.0),
        ("8000bps", 0.008),
    ],
)
def test_target_bandwidth_units(target: str, mbps: float | None) -> None:
    assert parse_target_bandwidth(target) == pytest.approx(mbps)


@pytest.mark.parametrize("target", ["fast", "Gbps", "-5", "0", "0Mbps", "10 Gb", "1e3", "100Gbit"])
def test_target_bandwidth_rejects(target: str) -> None:
    with pytest.raises(SelectionError, match=re.escape(f"attachPolicy.target {target!r}")):
        parse_target_bandwidth(target)


@pytest.mark.parametrize(
    ("address", "canonical"),
    [
        ("0000:3b:00.0", "0000:3b:00.0"),
        ("3b:00.0", "0000:3b:00.0"),
        ("0000:3B:00.0", "0000:3b:00.0"),
        (" 3B:00.1 ", "0000:3b:00.1"),
        ("10000:01:00.0", "10000:01:00.0"),
        ("GPU-1234", "gpu-1234"),
    ],
)
def test_pci_address_forms(address: str, canonical: str) -> None:
    assert normalise_pci_address(address) == canonical


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("none", Case("", ALL)),
        ("devClass", Case("", ["eth1", "eth3"], target="mellanox")),
        ("topology", Case("", ["eth3", "eth4", "eth1", "eth2"], device_ids=["86:00.0"])),
        ("costOpt", Case("", ["eth4", "eth2", "eth3", "eth1"], usage=USAGE)),
        ("perfOpt", Case("", ["eth3", "eth1", "eth2", "eth4"], usage=PERF_USAGE)),
    ],
)
def test_built_in_policy_loads_through_registry(name: str, case: Case) -> None:
    plugin = PluginRegistry().policy(name)
    assert (plugin.info.name, plugin.info.distribution) == (name, "multinic-core")
    assert plugin.info.hooks == ("multinic_select_nics",)
    check(name, case)


def test_every_built_in_policy_is_tested_through_the_registry() -> None:
    installed = {p.name for p in PluginRegistry().discover() if p.group == "multinic.policies"}
    assert set(BUILT_IN) <= installed


def test_selection_error_reaches_caller_unwrapped() -> None:
    # The agent maps SelectionError to a CNI error; it must not become a PluginError.
    with pytest.raises(SelectionError):
        PluginRegistry().policy("none").select_nics(
            request_for(Case("", [], cni_args={"nics": 9}), "none")
        )


def test_unknown_policy_is_a_named_error() -> None:
    with pytest.raises(PluginNotFoundError, match=r"^no attach policy 'roundRobin2' installed: "):
        PluginRegistry().policy("roundRobin2")
