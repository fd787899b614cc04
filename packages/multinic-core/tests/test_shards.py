"""A plan split into CIDR shards and merged again (``multinic_core.shards``).

What users rely on: the shards together are exactly the plan (whatever its
shape), one host joining or leaving rewrites one shard, a plan that fits in
one object is that one object (as the predecessor writes it), and shards
that disagree are never merged into a plan.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from multinic_core.models import CIDRSpec
from multinic_core.shards import (
    SHARD_ENTRIES,
    ShardMismatch,
    hosts_per_shard,
    merge_plan,
    plan_generation,
    restore_lost,
    same_models,
    shard_labels,
    shard_name,
    shard_of,
    shard_owner,
    split_plan,
)

BOUNDED = settings(max_examples=100, deadline=None)


def plan(hosts_per_entry: list[list[int]]) -> CIDRSpec:
    """A plan whose entry ``i`` has hosts of the given host indexes (sorted)."""
    entries: list[dict[str, Any]] = []
    for position, indexes in enumerate(hosts_per_entry):
        entries.append(
            {
                "netAddress": f"10.0.{position}.0/24",
                "interfaceIndex": position,
                "vlanCIDR": f"192.168.{position * 16}.0/20",
                "hosts": [
                    {
                        "hostIndex": index,
                        "hostName": f"node-{index}",
                        "interfaceName": f"eth{position + 1}",
                        "hostIP": f"10.0.{position}.{index % 250 + 1}",
                        "podCIDR": f"192.168.{position * 16 + index // 16}.{index % 16 * 16}/28",
                        "ippool": f"demo-{index}-{position}",
                    }
                    for index in sorted(set(indexes))
                ],
            }
        )
    return CIDRSpec.model_validate(
        {
            "config": {
                "name": "demo",
                "type": "ipvlan",
                "subnet": "192.168.0.0/16",
                "hostBlock": 8,
                "interfaceBlock": 2,
                "vlanMode": "l3",
            },
            "cidr": entries,
        }
    )


def as_json(spec: CIDRSpec) -> str:
    return spec.model_dump_json(exclude_none=True)


indexes = st.lists(st.integers(min_value=0, max_value=255), max_size=40)


@BOUNDED
@given(
    st.lists(indexes, min_size=1, max_size=4),
    st.integers(min_value=1, max_value=64),
    st.integers(min_value=1, max_value=6),
)
def test_the_shards_together_are_the_plan(
    hosts: list[list[int]], budget: int, at_least: int
) -> None:
    whole = plan(hosts)
    parts = split_plan(whole, budget, at_least=at_least)
    size = hosts_per_shard(len(whole.cidr), budget)
    assert len(parts) >= at_least
    assert sum(len(e.hosts) for p in parts for e in p.cidr) == sum(len(e.hosts) for e in whole.cidr)
    for number, part in enumerate(parts):
        assert part.config == whole.config
        assert [e.vlan_cidr for e in part.cidr] == [e.vlan_cidr for e in whole.cidr]
        assert all(h.host_index // size == number for e in part.cidr for h in e.hosts)
        # No shard outgrows its budget of host blocks.
        assert sum(len(e.hosts) for e in part.cidr) <= max(budget, len(whole.cidr))
    assert as_json(merge_plan("demo", parts)) == as_json(whole)


@BOUNDED
@given(st.lists(indexes, min_size=1, max_size=4), st.integers(min_value=0, max_value=255))
def test_a_host_joining_changes_one_shard(hosts: list[list[int]], joining: int) -> None:
    before = split_plan(plan(hosts), 16)
    after = split_plan(plan([sorted({*h, joining}) for h in hosts]), 16, at_least=len(before))
    home = joining // hosts_per_shard(len(hosts), 16)
    changed = [
        i for i in range(len(after)) if i >= len(before) or as_json(after[i]) != as_json(before[i])
    ]
    assert set(changed) <= {home} | set(range(len(before), len(after)))
    # Shards it creates on the way to its own are empty.
    for i in changed:
        if i != home:
            assert all(not e.hosts for e in after[i].cidr)


def test_a_plan_that_fits_is_the_one_cidr_unchanged() -> None:
    whole = plan([list(range(100)), list(range(100))])
    assert split_plan(whole) == [whole]
    assert merge_plan("demo", [whole]) is whole


def test_shards_are_sized_by_host_blocks() -> None:
    # 8 rails: 512 hosts per shard, 10,000 hosts in 20 shards of ~0.6 MB.
    assert hosts_per_shard(8) == 512
    assert hosts_per_shard(1) == SHARD_ENTRIES
    assert hosts_per_shard(3) == 1024
    assert hosts_per_shard(5000) == 1


def test_an_emptied_shard_is_kept() -> None:
    parts = split_plan(plan([[1, 9, 17]]), 8, at_least=3)
    assert [sum(len(e.hosts) for e in p.cidr) for p in parts] == [1, 1, 1]
    shrunk = split_plan(plan([[1]]), 8, at_least=len(parts))
    assert [sum(len(e.hosts) for e in p.cidr) for p in shrunk] == [1, 0, 0]
    assert [e.vlan_cidr for e in shrunk[2].cidr] == ["192.168.0.0/20"]


def test_shards_that_disagree_are_not_merged() -> None:
    parts = split_plan(plan([[1, 9], [1, 9]]), 8)
    other = parts[1].model_copy(
        update={"config": parts[1].config.model_copy(update={"host_block": 7})}
    )
    with pytest.raises(ShardMismatch, match="demo: CIDR shard 1 has another config"):
        merge_plan("demo", [parts[0], other])
    fewer = parts[1].model_copy(update={"cidr": parts[1].cidr[:1]})
    with pytest.raises(ShardMismatch, match="other interface entries"):
        merge_plan("demo", [parts[0], fewer])


def test_shard_names_and_labels() -> None:
    assert shard_name("demo", 0) == "demo"
    assert shard_name("demo", 3) == "demo.shard-3"
    assert shard_of({"name": "demo"}) == ("demo", 0)
    meta = {"name": "demo.shard-3", "labels": shard_labels("demo", 3)}
    assert shard_of(meta) == ("demo", 3)
    # A label that does not match the name, or is no number, makes no shard.
    assert shard_of({"name": "other", "labels": shard_labels("demo", 3)}) == ("other", 0)
    bad = {"name": "demo.shard-x", "labels": {"netname": "demo", "multinic.fms.io/shard": "x"}}
    assert shard_of(bad) == ("demo.shard-x", 0)
    assert shard_labels("demo", 0) == {"netname": "demo"}


def test_plan_generation_adds_up_the_shards() -> None:
    assert plan_generation([3]) == 3
    assert plan_generation([3, 1, 2]) == 6
    assert plan_generation([3, None]) is None


def test_a_plan_with_a_shard_missing_is_not_merged() -> None:
    parts = split_plan(plan([[1, 9, 17]]), 8)
    with pytest.raises(ShardMismatch, match=r"CIDR demo\.shard-1 is missing"):
        merge_plan("demo", [parts[0], parts[2]], [0, 2])
    with pytest.raises(ShardMismatch, match="no CIDR demo"):
        merge_plan("demo", parts[1:], [1, 2])
    assert as_json(merge_plan("demo", parts, [0, 1, 2])) == as_json(plan([[1, 9, 17]]))


def test_unchanged_shards_are_told_by_their_models() -> None:
    """What lets the operator skip encoding the shards a join did not touch."""
    before = split_plan(plan([[1, 9, 17]]), 8)
    whole = plan([[1, 9, 17]])
    grown = whole.model_copy(
        update={
            "cidr": [
                whole.cidr[0].model_copy(
                    update={"hosts": [*before[0].cidr[0].hosts, *whole.cidr[0].hosts[1:]]}
                )
            ]
        }
    )
    after = split_plan(grown, 8, at_least=3)
    assert same_models(before[0], after[0])
    # Equal content made of other objects is not claimed to be the same.
    assert as_json(before[1]) == as_json(after[1])
    assert not same_models(before[1], after[1])
    joined = split_plan(plan([[1, 2, 9, 17]]), 8)
    assert not same_models(before[0], joined[0])


def test_shard_names_are_known_as_such() -> None:
    assert shard_owner(shard_name("demo", 3)) == ("demo", 3)
    assert shard_owner("a.b.shard-12") == ("a.b", 12)
    # Names a shard never has: shard 0 is the network's own name, no leading zeros.
    for name in (
        "demo",
        "demo.shard-0",
        "demo.shard-01",
        "demo.shard-",
        ".shard-1",
        "demo-shard-1",
    ):
        assert shard_owner(name) is None, name


def _blocks(spec: CIDRSpec) -> list[tuple[str, str, str, str, str]]:
    """What the IPPools of ``spec`` hold: (name, vlanCIDR, podCIDR, host, interface)."""
    return [
        (h.ippool, e.vlan_cidr, h.pod_cidr, h.host_name, h.interface_name)
        for e in spec.cidr
        for h in e.hosts
    ]


def _ips(spec: CIDRSpec) -> Any:
    ips = {(h.host_name, h.interface_name): h.host_ip for e in spec.cidr for h in e.hosts}
    return lambda host, interface: ips.get((host, interface))


@BOUNDED
@given(st.lists(indexes, min_size=1, max_size=3), st.data())
def test_a_lost_shard_is_rebuilt_from_the_pools_exactly(
    entries: list[list[int]], data: st.DataObject
) -> None:
    whole = plan(entries)
    parts = split_plan(whole, budget=16)
    lost = data.draw(st.integers(min_value=0, max_value=len(parts) - 1))
    kept = [k for k in range(len(parts)) if k != lost]
    if not kept:
        return
    merged = merge_plan("demo", [parts[k] for k in kept])  # what the other shards hold
    rebuilt, count = restore_lost(merged, kept, _blocks(whole), _ips(whole), budget=16)
    assert as_json(rebuilt) == as_json(whole)
    assert count == sum(len(e.hosts) for e in parts[lost].cidr)


def test_only_blocks_of_missing_shards_that_fit_go_back() -> None:
    whole = plan([[0, 1, 2, 5], [0, 3]])  # 16 entries / 2: 8 hosts per shard
    stale = [
        ("p-a", "192.168.0.0/20", "192.168.0.48/28", "node-3", "eth1"),  # index 3: shard 0 found
        ("p-b", "192.168.0.0/20", "192.168.0.136/28", "node-40", "eth1"),  # not a block start
        ("p-c", "10.9.0.0/20", "10.9.0.144/28", "node-41", "eth1"),  # no such vlanCIDR
        ("p-d", "192.168.0.0/20", "192.168.0.144/28", "node-42", "eth1"),  # gone host
        ("p-e", "192.168.0.0/20", "192.168.0.160/28", "node-43", "eth1"),  # index 10: shard 1
    ]
    ips = {("node-43", "eth1"): "10.0.0.99", ("node-3", "eth1"): "10.0.0.4"}
    rebuilt, count = restore_lost(
        whole, [0], stale, lambda h, i: ips.get((h, i)) or None, budget=16
    )
    assert count == 1
    added = [h for h in rebuilt.cidr[0].hosts if h.host_name == "node-43"]
    assert [(h.host_index, h.pod_cidr, h.host_ip, h.ippool) for h in added] == [
        (10, "192.168.0.160/28", "10.0.0.99", "p-e")
    ]
    assert as_json(restore_lost(whole, [0, 1], stale, lambda h, i: "1.1.1.1", budget=16)[0]) == (
        as_json(whole)
    )
