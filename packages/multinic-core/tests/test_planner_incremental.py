"""The incremental planner against the from-scratch one (the reference).

The contract: after any change, ``IncrementalPlanner.result()`` equals
``plan_from_config(config, hosts now, previous=result before the change)``,
problems included, and the change's ``PlanDelta`` is exactly the difference.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import netaddr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multinic_core.errors import PlanError
from multinic_core.incremental import IncrementalPlanner, PlanDelta
from multinic_core.models import (
    HostInterface,
    HostInterfaceInfo,
    MultiNicNetwork,
    PluginConfig,
    load_resource,
)
from multinic_core.planner import PlanResult, plan_cidrs, plan_from_config, plugin_config

# Index 3 is a NIC without a network (skipped by the planner).
HOST_NETS = ["172.16.1.0/24", "172.16.2.0/24", "172.16.3.0/24", ""]
NAMES = [f"node-{i:02d}" for i in range(10)]
BOUNDED = settings(
    max_examples=80,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# A host's NICs: (network index, interface name, host address offset), in order.
Nics = tuple[tuple[int, str, int], ...]


def config_of(
    subnet: str,
    interface_block: int,
    host_block: int,
    excludes: Sequence[str] = (),
    master_nets: Sequence[str] = (),
) -> PluginConfig:
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": host_block,
        "interfaceBlock": interface_block,
        "vlanMode": "l3",
        "excludeCIDRs": list(excludes),
    }
    network = load_resource(
        MultiNicNetwork,
        {
            "metadata": {"name": "inc"},
            "spec": {
                "subnet": subnet,
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": list(master_nets),
                "plugin": {"type": "ipvlan"},
            },
        },
    )
    return plugin_config(network)


def host(name: str, nics: Nics, version: str | None = None) -> HostInterface:
    metadata: dict[str, str] = {"name": name}
    if version is not None:
        metadata["resourceVersion"] = version
    return load_resource(
        HostInterface,
        {
            "metadata": metadata,
            "spec": {
                "hostName": name,
                "interfaces": [
                    {
                        "interfaceName": ifname,
                        "netAddress": HOST_NETS[net],
                        "hostIP": str(netaddr.IPNetwork(HOST_NETS[net])[10 + offset])
                        if HOST_NETS[net]
                        else "",
                    }
                    for net, ifname, offset in nics
                ],
            },
        },
    )


@st.composite
def configs(draw: st.DrawFn) -> PluginConfig:
    subnet = draw(st.sampled_from(["10.128.0.0/16", "fd00:1::/112", ""]))
    # 1-3 host bits make full entries common with 10 hosts; 7 bits in no-subnet
    # mode leave no pod addresses in a /24, so that network is not planned.
    host_block = draw(st.sampled_from([1, 2, 3, 7]))
    interface_block = draw(st.integers(1, 3))
    space = netaddr.IPNetwork(subnet or draw(st.sampled_from(HOST_NETS[:3])))
    width = 32 if space.version == 4 else 128
    excludes = set()
    for _ in range(draw(st.integers(0, 4))):
        offset = draw(st.integers(0, space.size - 1))
        prefix = draw(st.integers(space.prefixlen, width - 1))
        excludes.add(str(netaddr.IPNetwork(f"{space[offset]}/{prefix}").cidr))
    master_nets = draw(
        st.one_of(
            st.just([]),
            st.permutations(HOST_NETS[:3]).flatmap(
                lambda p: st.integers(1, 3).map(lambda k: list(p[:k]))
            ),
        )
    )
    return config_of(subnet, interface_block, host_block, sorted(excludes), master_nets)


nic_lists = st.lists(
    st.tuples(st.integers(0, 3), st.sampled_from(["eth1", "eth2", "eth3"]), st.integers(0, 2)),
    max_size=4,
).map(tuple)
host_maps = st.dictionaries(st.sampled_from(NAMES), nic_lists, max_size=len(NAMES))
operations = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.sampled_from(NAMES), nic_lists),
        st.tuples(st.just("remove"), st.sampled_from(NAMES), st.just(())),
        st.tuples(st.just("update"), st.sampled_from(NAMES), nic_lists),
        st.tuples(st.just("sync"), host_maps, st.just(())),
        st.tuples(st.just("batch"), host_maps, st.just(())),
    ),
    max_size=10,
)


def blocks_of(result: PlanResult) -> dict[tuple[str, str], HostInterfaceInfo]:
    return {
        (entry.net_address, info.host_name): info
        for entry in result.spec.cidr
        for info in entry.hosts
    }


def assert_same(got: PlanResult, want: PlanResult) -> None:
    assert got.spec == want.spec
    assert got.spec.to_dict() == want.spec.to_dict()
    assert got.problems == want.problems


def assert_delta_is_the_difference(before: PlanResult, delta: PlanDelta, after: PlanResult) -> None:
    state = blocks_of(before)
    for net, info in delta.released:
        assert state.pop((net, info.host_name)) == info
    for net, info in delta.updated:
        assert (net, info.host_name) in state
        state[(net, info.host_name)] = info
    for net, info in delta.placed:
        assert (net, info.host_name) not in state
        state[(net, info.host_name)] = info
    assert state == blocks_of(after)
    nets_before = [e.net_address for e in before.spec.cidr]
    nets_after = [e.net_address for e in after.spec.cidr]
    assert sorted(delta.entries_added) == sorted(set(nets_after) - set(nets_before))
    assert sorted(delta.entries_removed) == sorted(set(nets_before) - set(nets_after))


@dataclass
class World:
    """The hosts as the test knows them, with a resourceVersion per content change."""

    versions: bool
    nics: dict[str, Nics]
    version: dict[str, str]
    counter: int = 0

    def set(self, name: str, nics: Nics) -> HostInterface:
        if self.nics.get(name) != nics or name not in self.version:
            self.counter += 1
            self.version[name] = str(self.counter)
        self.nics[name] = nics
        return self.host(name)

    def host(self, name: str) -> HostInterface:
        return host(name, self.nics[name], self.version[name] if self.versions else None)

    def hosts(self) -> list[HostInterface]:
        return [self.host(name) for name in self.nics]


def run_operation(
    planner: IncrementalPlanner, world: World, op: tuple[str, object, object]
) -> PlanDelta:
    kind, what, nics = op
    if kind in ("add", "update", "remove"):
        assert isinstance(what, str)
        assert isinstance(nics, tuple)
        if kind == "remove" and what in world.nics:
            del world.nics[what]
            return planner.remove_host(what)
        if kind == "remove":
            kind = "add"
        if what in world.nics:
            return planner.update_host(world.set(what, nics))
        return planner.add_host(world.set(what, nics))
    assert isinstance(what, dict)
    left = [name for name in world.nics if name not in what]
    joined = [name for name in what if name not in world.nics]
    for name in left:
        del world.nics[name]
    changed = [world.set(name, nics) for name, nics in what.items()]
    if kind == "sync":
        return planner.sync(changed)
    updated = [h for h in changed if h.spec.host_name not in joined]
    return planner.apply(
        joined=[h for h in changed if h.spec.host_name in joined], left=left, updated=updated
    )


@BOUNDED
@given(configs(), host_maps, operations, st.booleans())
def test_incremental_changes_equal_planning_from_scratch(
    config: PluginConfig,
    initial: dict[str, Nics],
    ops: list[tuple[str, object, object]],
    versions: bool,
) -> None:
    world = World(versions, {}, {})
    for name, nics in initial.items():
        world.set(name, nics)
    planner = IncrementalPlanner(config, world.hosts())
    assert_same(planner.result(), plan_from_config(config, world.hosts()))
    for op in ops:
        before = planner.result()
        delta = run_operation(planner, world, op)
        after = planner.result()
        assert_same(after, plan_from_config(config, world.hosts(), before.spec))
        assert_delta_is_the_difference(before, delta, after)


@BOUNDED
@given(configs(), configs(), host_maps, operations)
def test_incremental_continues_a_plan_made_with_other_settings(
    old: PluginConfig, config: PluginConfig, initial: dict[str, Nics], ops: list
) -> None:
    """Built from a foreign previous plan (renumbering, moved hosts), then changed."""
    world = World(False, {}, {})
    for name, nics in initial.items():
        world.set(name, nics)
    previous = plan_from_config(old, world.hosts()).spec
    planner = IncrementalPlanner(config, world.hosts(), previous)
    assert_same(planner.result(), plan_from_config(config, world.hosts(), previous))
    for op in ops:
        before = planner.result()
        run_operation(planner, world, op)
        assert_same(planner.result(), plan_from_config(config, world.hosts(), before.spec))


# --------------------------------------------------------------------------- worked example

WORKED = config_of(
    "192.168.0.0/16",
    2,
    6,
    ["192.168.64.0/18", "192.168.1.0/24", "192.168.0.128/25"],
    ["10.0.1.0/24", "10.0.2.0/24"],
)


def worked_host(name: str, last_octet: int, eth2: bool = True) -> HostInterface:
    nics = [
        {"interfaceName": "eth1", "netAddress": "10.0.1.0/24", "hostIP": f"10.0.1.{last_octet}"}
    ]
    if eth2:
        nics.append(
            {"interfaceName": "eth2", "netAddress": "10.0.2.0/24", "hostIP": f"10.0.2.{last_octet}"}
        )
    return load_resource(
        HostInterface, {"metadata": {"name": name}, "spec": {"hostName": name, "interfaces": nics}}
    )


def pods(result: PlanResult) -> dict[str, dict[str, tuple[int, str]]]:
    return {
        entry.net_address: {h.host_name: (h.host_index, h.pod_cidr) for h in entry.hosts}
        for entry in result.spec.cidr
    }


def test_worked_example_incrementally() -> None:
    hosts = [worked_host("A", 11), worked_host("B", 12), worked_host("C", 13)]
    planner = IncrementalPlanner(WORKED, hosts)
    assert pods(planner.result()) == {
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
    assert [(e.interface_index, e.vlan_cidr) for e in planner.result().spec.cidr] == [
        (0, "192.168.0.0/18"),
        (2, "192.168.128.0/18"),
    ]
    delta = planner.add_host(worked_host("D", 14))
    assert [(net, h.host_name, h.pod_cidr) for net, h in delta.placed] == [
        ("10.0.1.0/24", "D", "192.168.4.0/24"),
        ("10.0.2.0/24", "D", "192.168.131.0/24"),
    ]
    assert delta.released == []
    delta = planner.remove_host("B")
    assert sorted((net, h.pod_cidr) for net, h in delta.released) == [
        ("10.0.1.0/24", "192.168.2.0/24"),
        ("10.0.2.0/24", "192.168.129.0/24"),
    ]
    assert pods(planner.result())["10.0.1.0/24"] == {
        "A": (0, "192.168.0.0/24"),
        "C": (3, "192.168.3.0/24"),
        "D": (4, "192.168.4.0/24"),
    }
    assert planner.result().problems == []
    # B's index 2 is not reused until the indexes reach 63.
    for k in range(59):
        delta = planner.add_host(worked_host(f"E{k:02d}", 100 + k, eth2=False))
        assert [h.host_index for _, h in delta.placed] == [5 + k]
    delta = planner.add_host(worked_host("F", 250, eth2=False))
    assert [(h.host_index, h.pod_cidr) for _, h in delta.placed] == [(2, "192.168.2.0/24")]
    # Full: G waits and is reported; the first to leave makes room for it.
    delta = planner.add_host(worked_host("G", 251, eth2=False))
    assert delta.empty
    assert ("host-unplaced", "G") in [(p.kind, p.host_name) for p in planner.result().problems]
    delta = planner.remove_host("E30")
    assert [(h.host_name, h.host_index) for _, h in delta.placed] == [("G", 35)]
    assert not any(p.kind == "host-unplaced" for p in planner.result().problems)


def test_a_full_entry_gives_a_freed_block_to_the_first_waiting_host_by_name() -> None:
    config = config_of("10.0.0.0/16", 1, 1, master_nets=["172.16.1.0/24"])
    one = ((0, "eth1", 0),)
    planner = IncrementalPlanner(config, [host(n, one) for n in ("a", "b", "d", "c")])
    assert [p.host_name for p in planner.result().problems] == ["c", "d"]
    delta = planner.remove_host("a")
    assert [(h.host_name, h.host_index) for _, h in delta.placed] == [("c", 0)]
    assert [p.host_name for p in planner.result().problems] == ["d"]
    # A newcomer that sorts first does not jump the queue of a full entry...
    planner.add_host(host("aa", one))
    assert [p.host_name for p in planner.result().problems] == ["aa", "d"]
    # ...but takes the next block freed, since waiting hosts go in name order.
    delta = planner.remove_host("b")
    assert [(h.host_name, h.host_index) for _, h in delta.placed] == [("aa", 1)]


def test_a_nic_change_updates_the_block_in_place() -> None:
    planner = IncrementalPlanner(WORKED, [worked_host("A", 11), worked_host("B", 12)])
    delta = planner.update_host(worked_host("B", 42))
    assert [(net, h.host_ip, h.pod_cidr) for net, h in delta.updated] == [
        ("10.0.1.0/24", "10.0.1.42", "192.168.2.0/24"),
        ("10.0.2.0/24", "10.0.2.42", "192.168.129.0/24"),
    ]
    assert delta.placed == []
    assert delta.released == []
    delta = planner.update_host(worked_host("B", 42, eth2=False))
    assert [(net, h.host_name) for net, h in delta.released] == [("10.0.2.0/24", "B")]
    assert [(p.kind, p.host_name) for p in planner.result().problems] == [("nic-missing", "B")]


def test_sync_with_unchanged_hosts_changes_nothing() -> None:
    hosts = [worked_host("A", 11), worked_host("B", 12)]
    planner = IncrementalPlanner(WORKED, hosts)
    first = planner.result()
    assert planner.sync(hosts).empty
    assert_same(planner.result(), first)


def test_bad_changes_are_refused_and_change_nothing() -> None:
    planner = IncrementalPlanner(WORKED, [worked_host("A", 11)])
    before = planner.result()
    with pytest.raises(PlanError, match="'A' is given twice"):
        planner.add_host(worked_host("A", 12))
    with pytest.raises(PlanError, match="'Z' is not in the plan"):
        planner.apply(joined=[worked_host("B", 12)], left=["Z"])
    with pytest.raises(PlanError, match="'B' is given twice in one change"):
        planner.apply(joined=[worked_host("B", 12)], updated=[worked_host("B", 13)])
    with pytest.raises(PlanError, match="given twice"):
        planner.sync([worked_host("B", 12), worked_host("B", 13)])
    with pytest.raises(PlanError, match="not in the plan"):
        planner.update_host(worked_host("C", 13))
    assert planner.host_names == ["A"]
    assert_same(planner.result(), before)
    assert_same(planner.result(), plan_from_config(WORKED, [worked_host("A", 11)]))


def test_for_network_plans_like_plan_cidrs() -> None:
    network = load_resource(
        MultiNicNetwork,
        {
            "metadata": {"name": "inc"},
            "spec": {
                "subnet": "10.0.0.0/16",
                "ipam": json.dumps({"type": "multi-nic-ipam", "hostBlock": 4, "interfaceBlock": 2}),
                "multiNICIPAM": True,
                "plugin": {"type": "ipvlan"},
            },
        },
    )
    hosts = [worked_host("A", 11), worked_host("B", 12, eth2=False)]
    assert_same(IncrementalPlanner.for_network(network, hosts).result(), plan_cidrs(network, hosts))
