"""The CIDR planner against SPEC section 2, starting with its worked example."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

from multinic_core.errors import PlanError
from multinic_core.models import (
    CIDR,
    CIDRSpec,
    HostInterface,
    MultiNicNetwork,
    load_resource,
)
from multinic_core.planner import (
    ExcludeSet,
    IndexSpace,
    PlanResult,
    cidr_object,
    cidr_processed,
    compute_results,
    plan_cidrs,
    planned_ippools,
    pool_excludes,
)
from multinic_core.routes import host_routes

WORKED = Path(__file__).resolve().parents[3] / "examples" / "worked"
WORKED_EXCLUDES = ["192.168.64.0/18", "192.168.1.0/24", "192.168.0.128/25"]
WORKED_MASTERS = ["10.0.1.0/24", "10.0.2.0/24"]


def make_network(
    *,
    name: str = "demo",
    subnet: str = "192.168.0.0/16",
    host_block: int = 6,
    interface_block: int = 2,
    excludes: Sequence[str] = (),
    master_nets: Sequence[str] = (),
    vlan_mode: str = "l3",
) -> MultiNicNetwork:
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": host_block,
        "interfaceBlock": interface_block,
        "vlanMode": vlan_mode,
        "excludeCIDRs": list(excludes),
    }
    return load_resource(
        MultiNicNetwork,
        {
            "apiVersion": "multinic.fms.io/v1",
            "kind": "MultiNicNetwork",
            "metadata": {"name": name},
            "spec": {
                "subnet": subnet,
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": list(master_nets),
                "plugin": {"type": "ipvlan", "args": {"mode": vlan_mode}},
            },
        },
    )


def make_host(name: str, *nics: tuple[str, str, str]) -> HostInterface:
    """A HostInterface; each NIC is (interfaceName, netAddress, hostIP)."""
    return load_resource(
        HostInterface,
        {
            "apiVersion": "multinic.fms.io/v1",
            "kind": "HostInterface",
            "metadata": {"name": name},
            "spec": {
                "hostName": name,
                "interfaces": [
                    {"interfaceName": ifname, "netAddress": net, "hostIP": ip}
                    for ifname, net, ip in nics
                ],
            },
        },
    )


def worked_network(
    *,
    subnet: str = "192.168.0.0/16",
    host_block: int = 6,
    interface_block: int = 2,
    excludes: Sequence[str] = tuple(WORKED_EXCLUDES),
    master_nets: Sequence[str] = tuple(WORKED_MASTERS),
) -> MultiNicNetwork:
    """The worked example's network, with some of its settings changed."""
    return make_network(
        subnet=subnet,
        host_block=host_block,
        interface_block=interface_block,
        excludes=excludes,
        master_nets=master_nets,
    )


def worked_host(name: str, last_octet: int) -> HostInterface:
    return make_host(
        name,
        ("eth1", "10.0.1.0/24", f"10.0.1.{last_octet}"),
        ("eth2", "10.0.2.0/24", f"10.0.2.{last_octet}"),
    )


def worked_hosts() -> list[HostInterface]:
    return [worked_host("A", 11), worked_host("B", 12), worked_host("C", 13)]


def blocks(result: PlanResult | CIDRSpec) -> dict[str, dict[str, tuple[int, str]]]:
    """netAddress -> hostName -> (hostIndex, podCIDR)."""
    spec = result.spec if isinstance(result, PlanResult) else result
    return {
        entry.net_address: {h.host_name: (h.host_index, h.pod_cidr) for h in entry.hosts}
        for entry in spec.cidr
    }


def interface_entries(result: PlanResult) -> list[tuple[str, int, str]]:
    return [(e.net_address, e.interface_index, e.vlan_cidr) for e in result.spec.cidr]


def problem_kinds(result: PlanResult) -> list[tuple[str, str, str]]:
    return [(p.kind, p.net_address, p.host_name) for p in result.problems]


# --------------------------------------------------------------------------- worked example


def test_worked_example_interface_indexes_skip_the_excluded_one() -> None:
    result = plan_cidrs(worked_network(), worked_hosts())
    assert interface_entries(result) == [
        ("10.0.1.0/24", 0, "192.168.0.0/18"),
        ("10.0.2.0/24", 2, "192.168.128.0/18"),
    ]
    assert result.problems == []


def test_worked_example_host_blocks() -> None:
    result = plan_cidrs(worked_network(), worked_hosts())
    assert blocks(result) == {
        "10.0.1.0/24": {
            "A": (0, "192.168.0.0/24"),
            "B": (2, "192.168.2.0/24"),
            "C": (3, "192.168.3.0/24"),
        },
        "10.0.2.0/24": {
            "A": (0, "192.168.128.0/24"),
            "B": (1, "192.168.129.0/24"),
            "C": (2, "192.168.130.0/24"),
        },
    }
    entry = result.spec.cidr[0]
    assert [h.host_name for h in entry.hosts] == ["A", "B", "C"]
    assert [(h.interface_name, h.host_ip) for h in entry.hosts] == [
        ("eth1", "10.0.1.11"),
        ("eth1", "10.0.1.12"),
        ("eth1", "10.0.1.13"),
    ]


def test_worked_example_is_the_expected_cidr_object() -> None:
    network = load_resource(MultiNicNetwork, yaml.safe_load((WORKED / "network.yaml").read_text()))
    hosts = [
        load_resource(HostInterface, doc)
        for doc in yaml.safe_load_all((WORKED / "hosts.yaml").read_text())
    ]
    expected = load_resource(CIDR, yaml.safe_load((WORKED / "cidr.yaml").read_text()))
    assert len(hosts) == 3
    produced = cidr_object(network, plan_cidrs(network, hosts))
    assert produced.to_dict() == expected.to_dict()


def test_worked_example_ippool_gets_the_narrow_exclude() -> None:
    result = plan_cidrs(worked_network(), worked_hosts())
    pools = {h.ippool: h.pod_cidr for e in result.spec.cidr for h in e.hosts}
    assert pools["demo-192.168.0.0-24"] == "192.168.0.0/24"
    excludes = pool_excludes(result.spec)
    assert excludes["192.168.0.0/24"] == ["192.168.0.128/25"]
    # The wider excludes removed whole blocks; no other pool carries anything.
    assert {cidr: ex for cidr, ex in excludes.items() if ex} == {
        "192.168.0.0/24": ["192.168.0.128/25"]
    }
    assert len(excludes) == 6


def test_worked_example_ippool_objects() -> None:
    result = plan_cidrs(worked_network(), worked_hosts())
    pools = {pool.name: pool.to_dict() for pool in planned_ippools(result.spec)}
    assert len(pools) == 6
    assert pools["demo-192.168.0.0-24"] == {
        "apiVersion": "multinic.fms.io/v1",
        "kind": "IPPool",
        "metadata": {"name": "demo-192.168.0.0-24", "labels": {"hostname": "A", "netname": "demo"}},
        "spec": {
            "podCIDR": "192.168.0.0/24",
            "vlanCIDR": "192.168.0.0/18",
            "netAttachDef": "demo",
            "hostName": "A",
            "interfaceName": "eth1",
            "excludes": ["192.168.0.128/25"],
            "allocations": [],
        },
    }
    assert pools["demo-192.168.129.0-24"]["spec"]["excludes"] == []
    assert pools["demo-192.168.129.0-24"]["metadata"]["labels"]["hostname"] == "B"


def test_worked_example_routes_on_a() -> None:
    result = plan_cidrs(worked_network(), worked_hosts())
    assert [str(r) for r in host_routes(result.spec, "A")] == [
        "192.168.2.0/24 via 10.0.1.12 dev eth1",
        "192.168.3.0/24 via 10.0.1.13 dev eth1",
        "192.168.129.0/24 via 10.0.2.12 dev eth2",
        "192.168.130.0/24 via 10.0.2.13 dev eth2",
    ]


def test_worked_example_status() -> None:
    result = plan_cidrs(worked_network(), worked_hosts())
    assert [r.to_dict() for r in compute_results(result.spec)] == [
        {"netAddress": "10.0.1.0/24", "numOfHosts": 3},
        {"netAddress": "10.0.2.0/24", "numOfHosts": 3},
    ]
    assert cidr_processed(result.spec) == 3


def test_worked_example_d_joins_then_b_leaves() -> None:
    network = worked_network()
    first = plan_cidrs(network, worked_hosts())
    d = worked_host("D", 14)
    joined = plan_cidrs(network, [*worked_hosts(), d], first.spec)
    assert joined.problems == []
    assert blocks(joined)["10.0.1.0/24"]["D"] == (4, "192.168.4.0/24")
    assert blocks(joined)["10.0.2.0/24"]["D"] == (3, "192.168.131.0/24")
    # Nobody else moved.
    for net, hosts in blocks(first).items():
        for name, block in hosts.items():
            assert blocks(joined)[net][name] == block

    a, _, c = worked_hosts()
    left = plan_cidrs(network, [a, c, d], joined.spec)
    assert left.problems == []
    assert blocks(left) == {
        "10.0.1.0/24": {
            "A": (0, "192.168.0.0/24"),
            "C": (3, "192.168.3.0/24"),
            "D": (4, "192.168.4.0/24"),
        },
        "10.0.2.0/24": {
            "A": (0, "192.168.128.0/24"),
            "C": (2, "192.168.130.0/24"),
            "D": (3, "192.168.131.0/24"),
        },
    }
    assert [r.to_dict() for r in compute_results(left.spec)] == [
        {"netAddress": "10.0.1.0/24", "numOfHosts": 3},
        {"netAddress": "10.0.2.0/24", "numOfHosts": 3},
    ]
    assert cidr_processed(left.spec) == 3
    # A's routes no longer lead to B.
    assert [str(r) for r in host_routes(left.spec, "A")] == [
        "192.168.3.0/24 via 10.0.1.13 dev eth1",
        "192.168.4.0/24 via 10.0.1.14 dev eth1",
        "192.168.130.0/24 via 10.0.2.13 dev eth2",
        "192.168.131.0/24 via 10.0.2.14 dev eth2",
    ]


def test_worked_example_b_indexes_not_reused_until_63() -> None:
    network = worked_network()
    a, _, c = worked_hosts()
    present = [a, c, worked_host("D", 14)]
    with_b = plan_cidrs(network, [*worked_hosts(), present[2]])
    spec = plan_cidrs(network, present, with_b.spec).spec
    # Hosts join one at a time; each gets the next index above the highest.
    joined = 0
    while max(h.host_index for h in spec.cidr[0].hosts) < 63:
        name = f"E{joined:02d}"
        present.append(make_host(name, ("eth1", "10.0.1.0/24", f"10.0.1.{100 + joined}")))
        result = plan_cidrs(network, present, spec)
        index, _ = blocks(result)["10.0.1.0/24"][name]
        assert index == 5 + joined, f"{name} got {index}; B's index 2 must wait for 63"
        spec = result.spec
        joined += 1
    assert joined == 59
    # Now the top is reached: the lowest gap is B's old index (1 is excluded).
    present.append(make_host("F", ("eth1", "10.0.1.0/24", "10.0.1.250")))
    result = plan_cidrs(network, present, spec)
    assert blocks(result)["10.0.1.0/24"]["F"] == (2, "192.168.2.0/24")
    # And then the entry is full: the next host is reported, never looped on.
    present.append(make_host("G", ("eth1", "10.0.1.0/24", "10.0.1.251")))
    full = plan_cidrs(network, present, result.spec)
    assert "G" not in blocks(full)["10.0.1.0/24"]
    assert ("host-unplaced", "10.0.1.0/24", "G") in problem_kinds(full)
    assert blocks(full)["10.0.1.0/24"] == blocks(result)["10.0.1.0/24"]


def test_worked_example_host_block_8() -> None:
    network = make_network(host_block=8, master_nets=["10.0.1.0/24"])
    result = plan_cidrs(network, [worked_host("A", 11), worked_host("B", 12)])
    assert blocks(result)["10.0.1.0/24"]["B"] == (1, "192.168.0.64/26")
    space = IndexSpace(0xC0A80000, 18, 8, 4, ExcludeSet([], 4))
    assert space.block_cidr(1) == "192.168.0.64/26"


def test_index_beyond_its_bits_is_an_error() -> None:
    space = IndexSpace(0xC0A80000, 16, 2, 4, ExcludeSet([], 4))
    assert space.block_cidr(3) == "192.168.192.0/18"
    with pytest.raises(PlanError, match="index 4 does not fit in 2 bits"):
        space.block(4)


# --------------------------------------------------------------------------- inputs


def test_empty_master_nets_means_all_found_sorted_by_address() -> None:
    hosts = [
        make_host("h2", ("eth2", "10.0.10.0/24", "10.0.10.2"), ("eth1", "10.0.9.0/24", "10.0.9.2")),
        make_host("h1", ("eth1", "10.0.9.0/24", "10.0.9.1"), ("eth3", "10.0.2.0/24", "10.0.2.1")),
    ]
    result = plan_cidrs(make_network(), hosts)
    assert interface_entries(result) == [
        ("10.0.2.0/24", 0, "192.168.0.0/18"),
        ("10.0.9.0/24", 1, "192.168.64.0/18"),
        ("10.0.10.0/24", 2, "192.168.128.0/18"),
    ]
    assert blocks(result)["10.0.9.0/24"] == {
        "h1": (0, "192.168.64.0/24"),
        "h2": (1, "192.168.65.0/24"),
    }
    # h1 has no NIC on 10.0.10.0/24 and h2 none on 10.0.2.0/24.
    assert sorted(problem_kinds(result)) == [
        ("nic-missing", "10.0.10.0/24", "h1"),
        ("nic-missing", "10.0.2.0/24", "h2"),
    ]


def test_new_hosts_are_numbered_in_sorted_name_order() -> None:
    network = make_network(master_nets=["10.0.1.0/24"])
    names = ["worker-c", "worker-a", "worker-b"]
    hosts = [make_host(n, ("eth1", "10.0.1.0/24", f"10.0.1.{i}")) for i, n in enumerate(names)]
    result = plan_cidrs(network, hosts)
    assert [(h.host_name, h.host_index) for h in result.spec.cidr[0].hosts] == [
        ("worker-a", 0),
        ("worker-b", 1),
        ("worker-c", 2),
    ]
    reversed_result = plan_cidrs(network, list(reversed(hosts)))
    assert reversed_result.spec == result.spec


def test_unmanaged_host_is_planned_like_others() -> None:
    unmanaged = make_host("manual", ("ens5", "10.0.1.0/24", "10.0.1.99"))
    unmanaged.metadata.labels[HostInterface.UNMANAGED_LABEL] = "true"
    result = plan_cidrs(worked_network(master_nets=["10.0.1.0/24"]), [unmanaged])
    assert blocks(result) == {"10.0.1.0/24": {"manual": (0, "192.168.0.0/24")}}
    assert result.spec.cidr[0].hosts[0].interface_name == "ens5"


def test_host_without_the_network_is_reported_and_not_planned() -> None:
    lonely = make_host("lonely", ("eth1", "10.0.1.0/24", "10.0.1.50"))
    result = plan_cidrs(worked_network(), [*worked_hosts(), lonely])
    assert "lonely" in blocks(result)["10.0.1.0/24"]
    assert "lonely" not in blocks(result)["10.0.2.0/24"]
    assert problem_kinds(result) == [("nic-missing", "10.0.2.0/24", "lonely")]
    assert "host lonely has no NIC on 10.0.2.0/24" in str(result.problems[0])


def test_host_losing_a_network_leaves_only_that_entry() -> None:
    network = worked_network()
    first = plan_cidrs(network, worked_hosts())
    a, _, c = worked_hosts()
    b_without_eth2 = make_host("B", ("eth1", "10.0.1.0/24", "10.0.1.12"))
    result = plan_cidrs(network, [a, b_without_eth2, c], first.spec)
    assert blocks(result)["10.0.1.0/24"] == blocks(first)["10.0.1.0/24"]
    assert blocks(result)["10.0.2.0/24"] == {
        "A": (0, "192.168.128.0/24"),
        "C": (2, "192.168.130.0/24"),
    }


def test_host_ip_change_keeps_the_block_and_updates_the_route() -> None:
    network = worked_network()
    first = plan_cidrs(network, worked_hosts())
    a, _, c = worked_hosts()
    result = plan_cidrs(network, [a, worked_host("B", 42), c], first.spec)
    assert blocks(result) == blocks(first)
    assert "192.168.2.0/24 via 10.0.1.42 dev eth1" in [
        str(r) for r in host_routes(result.spec, "A")
    ]


def test_duplicate_host_name_is_an_error() -> None:
    with pytest.raises(PlanError, match="hostName 'A' is given twice"):
        plan_cidrs(worked_network(), [worked_host("A", 11), worked_host("A", 12)])


def test_network_without_multi_nic_ipam_has_no_plan() -> None:
    network = worked_network()
    network.spec.ipam = json.dumps({"type": "whereabouts", "range": "10.9.0.0/16"})
    with pytest.raises(PlanError, match="ipam type 'whereabouts' has no CIDR plan"):
        plan_cidrs(network, worked_hosts())


# --------------------------------------------------------------------------- IPv6


def test_ipv6_uses_the_same_arithmetic() -> None:
    network = make_network(
        name="v6",
        subnet="fd00:10::/48",
        interface_block=4,
        host_block=8,
        excludes=["fd00:10:0:1000::/52", "fd00:10:0:10::/60", "fd00:10:0:8::/68"],
        master_nets=["2001:db8:1::/64", "2001:db8:2::/64"],
    )
    hosts = [
        make_host(
            name,
            ("net1", "2001:db8:1::/64", f"2001:db8:1::{i}"),
            ("net2", "2001:db8:2::/64", f"2001:db8:2::{i}"),
        )
        for i, name in enumerate(["a", "b", "c"], start=1)
    ]
    result = plan_cidrs(network, hosts)
    assert result.problems == []
    assert interface_entries(result) == [
        ("2001:db8:1::/64", 0, "fd00:10::/52"),
        ("2001:db8:2::/64", 2, "fd00:10:0:2000::/52"),
    ]
    assert blocks(result) == {
        "2001:db8:1::/64": {
            "a": (0, "fd00:10::/60"),
            "b": (2, "fd00:10:0:20::/60"),
            "c": (3, "fd00:10:0:30::/60"),
        },
        "2001:db8:2::/64": {
            "a": (0, "fd00:10:0:2000::/60"),
            "b": (1, "fd00:10:0:2010::/60"),
            "c": (2, "fd00:10:0:2020::/60"),
        },
    }
    assert pool_excludes(result.spec)["fd00:10::/60"] == ["fd00:10:0:8::/68"]
    assert result.spec.cidr[0].hosts[1].ippool == "v6-fd00-10-0-20---60"
    assert [str(r) for r in host_routes(result.spec, "a")] == [
        "fd00:10:0:20::/60 via 2001:db8:1::2 dev net1",
        "fd00:10:0:30::/60 via 2001:db8:1::3 dev net1",
        "fd00:10:0:2010::/60 via 2001:db8:2::2 dev net2",
        "fd00:10:0:2020::/60 via 2001:db8:2::3 dev net2",
    ]


def test_ipv6_wide_bits_with_everything_excluded_ends_quickly() -> None:
    network = make_network(
        subnet="fd00::/16",
        interface_block=32,
        host_block=8,
        excludes=["fd00::/16"],
        master_nets=["10.0.1.0/24"],
    )
    started = time.perf_counter()
    result = plan_cidrs(network, [worked_host("A", 11)])
    assert time.perf_counter() - started < 1.0
    assert result.spec.cidr == []
    assert problem_kinds(result) == [("network-unplaced", "10.0.1.0/24", "")]


# --------------------------------------------------------------------------- no-subnet mode


def test_no_subnet_mode_carves_pod_blocks_from_the_host_network() -> None:
    network = make_network(
        name="aws",
        subnet="",
        host_block=2,
        excludes=["10.0.2.0/26"],
        master_nets=["10.0.1.0/24", "10.0.2.0/24"],
        vlan_mode="l2",
    )
    hosts = [
        make_host(
            name, ("eth1", "10.0.1.0/24", f"10.0.1.{ip}"), ("eth2", "10.0.2.0/24", f"10.0.2.{ip}")
        )
        for name, ip in [("a", 10), ("b", 70), ("c", 20)]
    ]
    result = plan_cidrs(network, hosts)
    assert result.problems == []
    assert interface_entries(result) == [
        ("10.0.1.0/24", 0, "10.0.1.0/24"),
        ("10.0.2.0/24", 1, "10.0.2.0/24"),
    ]
    assert blocks(result) == {
        "10.0.1.0/24": {
            "a": (0, "10.0.1.0/26"),
            "b": (1, "10.0.1.64/26"),
            "c": (2, "10.0.1.128/26"),
        },
        "10.0.2.0/24": {
            "a": (1, "10.0.2.64/26"),
            "b": (2, "10.0.2.128/26"),
            "c": (3, "10.0.2.192/26"),
        },
    }
    # Every host address inside a pool is excluded from it, whoever owns the pool.
    assert pool_excludes(result.spec) == {
        "10.0.1.0/26": ["10.0.1.10/32", "10.0.1.20/32"],
        "10.0.1.64/26": ["10.0.1.70/32"],
        "10.0.1.128/26": [],
        "10.0.2.64/26": ["10.0.2.70/32"],
        "10.0.2.128/26": [],
        "10.0.2.192/26": [],
    }


def test_no_subnet_mode_host_network_too_small_is_reported() -> None:
    network = make_network(subnet="", host_block=6, master_nets=["10.0.1.0/24", "10.0.9.0/28"])
    hosts = [
        make_host("a", ("eth1", "10.0.1.0/24", "10.0.1.5"), ("eth9", "10.0.9.0/28", "10.0.9.2"))
    ]
    result = plan_cidrs(network, hosts)
    assert interface_entries(result) == [("10.0.1.0/24", 0, "10.0.1.0/24")]
    assert blocks(result)["10.0.1.0/24"] == {"a": (0, "10.0.1.0/30")}
    assert problem_kinds(result) == [("network-unplaced", "10.0.9.0/28", "")]
    assert "hostBlock 6" in str(result.problems[0])


def test_no_subnet_mode_ipv6_host_addresses_excluded_as_128() -> None:
    network = make_network(subnet="", host_block=4, master_nets=["2001:db8:5::/64"])
    hosts = [make_host("a", ("eth1", "2001:db8:5::/64", "2001:db8:5::a"))]
    result = plan_cidrs(network, hosts)
    assert blocks(result) == {"2001:db8:5::/64": {"a": (0, "2001:db8:5::/68")}}
    assert pool_excludes(result.spec) == {"2001:db8:5::/68": ["2001:db8:5::a/128"]}


# --------------------------------------------------------------------------- spec edits


def test_new_exclude_over_one_host_moves_only_that_host() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    network = worked_network(excludes=[*WORKED_EXCLUDES, "192.168.2.0/24"])
    result = plan_cidrs(network, worked_hosts(), first.spec)
    expected = blocks(first)
    expected["10.0.1.0/24"]["B"] = (4, "192.168.4.0/24")
    assert blocks(result) == expected
    assert problem_kinds(result) == [("host-renumbered", "10.0.1.0/24", "B")]
    message = str(result.problems[0])
    assert "192.168.2.0/24" in message
    assert "192.168.4.0/24" in message
    assert "excluded by 192.168.2.0/24" in message


def test_removed_exclude_moves_nobody() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    network = worked_network(excludes=["192.168.64.0/18"])
    result = plan_cidrs(network, worked_hosts(), first.spec)
    assert blocks(result) == blocks(first)
    assert result.problems == []
    assert pool_excludes(result.spec)["192.168.0.0/24"] == []


def test_changed_host_block_recomputes_blocks_keeping_valid_indexes() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    result = plan_cidrs(worked_network(host_block=8), worked_hosts(), first.spec)
    assert blocks(result) == {
        # B (index 2) and C (index 3) now fall into 192.168.0.128/25 and move
        # above the highest index kept (A's 0): B to 1, C past 2-3 (the /25)
        # and 4-7 (192.168.1.0/24) to 8.
        "10.0.1.0/24": {
            "A": (0, "192.168.0.0/26"),
            "B": (1, "192.168.0.64/26"),
            "C": (8, "192.168.2.0/26"),
        },
        "10.0.2.0/24": {
            "A": (0, "192.168.128.0/26"),
            "B": (1, "192.168.128.64/26"),
            "C": (2, "192.168.128.128/26"),
        },
    }
    kinds = problem_kinds(result)
    assert ("host-renumbered", "10.0.1.0/24", "B") in kinds
    assert ("host-renumbered", "10.0.1.0/24", "C") in kinds
    assert ("network-renumbered", "10.0.2.0/24", "") in kinds
    assert result.spec.config.host_block == 8
    # Planned again with the same inputs, it stays put.
    again = plan_cidrs(worked_network(host_block=8), worked_hosts(), result.spec)
    assert again.spec == result.spec
    assert again.problems == []


def test_changed_interface_block_recomputes_vlan_cidrs() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    # With I=3 the /19 at index 2 is 192.168.64.0/19, inside the /18 exclude.
    result = plan_cidrs(worked_network(interface_block=3, host_block=5), worked_hosts(), first.spec)
    assert interface_entries(result) == [
        ("10.0.1.0/24", 0, "192.168.0.0/19"),
        ("10.0.2.0/24", 1, "192.168.32.0/19"),
    ]
    assert ("network-renumbered", "10.0.2.0/24", "") in problem_kinds(result)
    assert "is now excluded by 192.168.64.0/18" in str(result.problems[0])


def test_changed_subnet_keeps_indexes() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    network = worked_network(subnet="172.20.0.0/16", excludes=[])
    result = plan_cidrs(network, worked_hosts(), first.spec)
    assert interface_entries(result) == [
        ("10.0.1.0/24", 0, "172.20.0.0/18"),
        ("10.0.2.0/24", 2, "172.20.128.0/18"),
    ]
    assert blocks(result)["10.0.1.0/24"]["B"] == (2, "172.20.2.0/24")
    assert {p.kind for p in result.problems} == {"network-renumbered"}


def test_added_master_net_gets_the_lowest_free_usable_index() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    masters = ["10.0.3.0/24", *WORKED_MASTERS]
    hosts = [
        make_host(
            h.name,
            *[(n.interface_name, n.net_address, n.host_ip) for n in h.spec.interfaces],
            ("eth3", "10.0.3.0/24", f"10.0.3.{i}"),
        )
        for i, h in enumerate(worked_hosts(), start=11)
    ]
    result = plan_cidrs(worked_network(master_nets=masters), hosts, first.spec)
    # Entry order follows masterNets; existing entries keep 0 and 2; 1 is excluded.
    assert interface_entries(result) == [
        ("10.0.3.0/24", 3, "192.168.192.0/18"),
        ("10.0.1.0/24", 0, "192.168.0.0/18"),
        ("10.0.2.0/24", 2, "192.168.128.0/18"),
    ]
    assert blocks(result)["10.0.1.0/24"] == blocks(first)["10.0.1.0/24"]
    assert blocks(result)["10.0.2.0/24"] == blocks(first)["10.0.2.0/24"]
    assert result.problems == []


def test_removed_master_net_frees_its_index() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    only_second = plan_cidrs(
        worked_network(master_nets=["10.0.2.0/24"]), worked_hosts(), first.spec
    )
    assert interface_entries(only_second) == [("10.0.2.0/24", 2, "192.168.128.0/18")]
    masters = ["10.0.2.0/24", "10.0.5.0/24"]
    result = plan_cidrs(worked_network(master_nets=masters), worked_hosts(), only_second.spec)
    assert interface_entries(result) == [
        ("10.0.2.0/24", 2, "192.168.128.0/18"),
        ("10.0.5.0/24", 0, "192.168.0.0/18"),
    ]


# --------------------------------------------------------------------------- limits


def test_more_networks_than_interface_indexes_are_reported() -> None:
    masters = [f"10.0.{i}.0/24" for i in range(1, 6)]
    network = make_network(interface_block=2, excludes=["192.168.64.0/18"], master_nets=masters)
    hosts = [
        make_host("a", *[(f"eth{i}", m, m.replace(".0/24", ".9")) for i, m in enumerate(masters)])
    ]
    started = time.perf_counter()
    result = plan_cidrs(network, hosts)
    assert time.perf_counter() - started < 1.0
    assert [(net, index) for net, index, _ in interface_entries(result)] == [
        ("10.0.1.0/24", 0),
        ("10.0.2.0/24", 2),
        ("10.0.3.0/24", 3),
    ]
    assert problem_kinds(result) == [
        ("network-unplaced", "10.0.4.0/24", ""),
        ("network-unplaced", "10.0.5.0/24", ""),
    ]
    assert "interfaceBlock 2" in str(result.problems[0])


def test_more_hosts_than_host_indexes_are_reported() -> None:
    network = make_network(host_block=2, master_nets=["10.0.1.0/24"])
    hosts = [make_host(f"h{i}", ("eth1", "10.0.1.0/24", f"10.0.1.{i}")) for i in range(6)]
    started = time.perf_counter()
    result = plan_cidrs(network, hosts)
    assert time.perf_counter() - started < 1.0
    assert sorted(blocks(result)["10.0.1.0/24"]) == ["h0", "h1", "h2", "h3"]
    assert problem_kinds(result) == [
        ("host-unplaced", "10.0.1.0/24", "h4"),
        ("host-unplaced", "10.0.1.0/24", "h5"),
    ]
    assert "is full" in str(result.problems[0])
    assert cidr_object(network, result).status is not None


def test_big_host_block_with_a_wide_exclude_is_skipped_in_one_step() -> None:
    # 2^22 host indexes, the first half excluded: a walk block by block would take long.
    network = make_network(
        subnet="10.0.0.0/8", interface_block=0, host_block=22, excludes=["10.0.0.0/9"]
    )
    started = time.perf_counter()
    result = plan_cidrs(network, [make_host("a", ("eth1", "172.16.0.0/16", "172.16.0.1"))])
    assert time.perf_counter() - started < 1.0
    assert blocks(result) == {"172.16.0.0/16": {"a": (1 << 21, "10.128.0.0/30")}}


def test_blocks_that_do_not_fit_the_subnet_are_an_error() -> None:
    network = make_network()
    cfg = json.loads(network.spec.ipam)
    cfg["hostBlock"] = 20
    # Bypass the model's own check to reach the planner's.
    network.spec.ipam = json.dumps(cfg)
    with pytest.raises(PlanError, match="hostBlock 20 \\+ interfaceBlock 2 do not fit subnet"):
        plan_cidrs(network, worked_hosts())


# --------------------------------------------------------------------------- predecessor


def test_predecessor_plan_is_adopted_without_renumbering() -> None:
    # The Go operator assigned hosts in map order: C got 0, A 2, B 3; the
    # IPPool names were not recorded yet (older version).
    predecessor = CIDRSpec.model_validate(
        {
            "config": {
                "name": "demo",
                "type": "ipvlan",
                "subnet": "192.168.0.0/16",
                "masterNets": WORKED_MASTERS,
                "hostBlock": 6,
                "interfaceBlock": 2,
                "excludeCIDRs": WORKED_EXCLUDES,
                "vlanMode": "l3",
            },
            "cidr": [
                {
                    "netAddress": "10.0.2.0/24",
                    "interfaceIndex": 2,
                    "vlanCIDR": "192.168.128.0/18",
                    "hosts": [
                        {
                            "hostIndex": 1,
                            "hostName": "A",
                            "interfaceName": "eth2",
                            "hostIP": "10.0.2.11",
                            "podCIDR": "192.168.129.0/24",
                        },
                        {
                            "hostIndex": 0,
                            "hostName": "C",
                            "interfaceName": "eth2",
                            "hostIP": "10.0.2.13",
                            "podCIDR": "192.168.128.0/24",
                        },
                        {
                            "hostIndex": 2,
                            "hostName": "B",
                            "interfaceName": "eth2",
                            "hostIP": "10.0.2.12",
                            "podCIDR": "192.168.130.0/24",
                        },
                    ],
                },
                {
                    "netAddress": "10.0.1.0/24",
                    "interfaceIndex": 0,
                    "vlanCIDR": "192.168.0.0/18",
                    "hosts": [
                        {
                            "hostIndex": 0,
                            "hostName": "C",
                            "interfaceName": "eth1",
                            "hostIP": "10.0.1.13",
                            "podCIDR": "192.168.0.0/24",
                            "ippool": "demo-192.168.0.0-24",
                        },
                        {
                            "hostIndex": 2,
                            "hostName": "A",
                            "interfaceName": "eth1",
                            "hostIP": "10.0.1.11",
                            "podCIDR": "192.168.2.0/24",
                        },
                        {
                            "hostIndex": 3,
                            "hostName": "B",
                            "interfaceName": "eth1",
                            "hostIP": "10.0.1.12",
                            "podCIDR": "192.168.3.0/24",
                        },
                    ],
                },
            ],
        }
    )
    result = plan_cidrs(worked_network(), worked_hosts(), predecessor)
    assert result.problems == []
    assert blocks(result) == blocks(predecessor)
    # Normalised: masterNets order, hostIndex order, IPPool names filled in.
    assert [e.net_address for e in result.spec.cidr] == WORKED_MASTERS
    assert [h.host_name for h in result.spec.cidr[0].hosts] == ["C", "A", "B"]
    assert [h.ippool for h in result.spec.cidr[0].hosts] == [
        "demo-192.168.0.0-24",
        "demo-192.168.2.0-24",
        "demo-192.168.3.0-24",
    ]
    # A newcomer continues above the predecessor's highest index.
    d = plan_cidrs(worked_network(), [*worked_hosts(), worked_host("D", 14)], result.spec)
    assert blocks(d)["10.0.1.0/24"]["D"] == (4, "192.168.4.0/24")
    assert blocks(d)["10.0.2.0/24"]["D"] == (3, "192.168.131.0/24")


def test_previous_plan_with_a_duplicate_index_moves_the_second_host() -> None:
    first = plan_cidrs(worked_network(), worked_hosts())
    broken = first.spec.model_copy(deep=True)
    broken.cidr[0].hosts[2].host_index = 2  # C claims B's index too
    result = plan_cidrs(worked_network(), worked_hosts(), broken)
    assert blocks(result)["10.0.1.0/24"] == {
        "A": (0, "192.168.0.0/24"),
        "B": (2, "192.168.2.0/24"),
        "C": (3, "192.168.3.0/24"),
    }
    assert problem_kinds(result) == [("host-renumbered", "10.0.1.0/24", "C")]


def test_cidr_object_is_owned_by_the_network() -> None:
    network = worked_network()
    network.metadata.uid = "1234-abcd"
    obj = cidr_object(network, plan_cidrs(network, worked_hosts())).to_dict()
    assert obj["metadata"]["name"] == "demo"
    assert obj["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "multinic.fms.io/v1",
            "kind": "MultiNicNetwork",
            "name": "demo",
            "uid": "1234-abcd",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert "status" not in obj
