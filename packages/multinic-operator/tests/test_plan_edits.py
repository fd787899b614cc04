"""What a plan edit does to the pools it replaces (retire_pools: pure, no API)."""

from __future__ import annotations

from typing import Any

from multinic_core.models import POOL_RETIRED_ACK, POOL_RETIRED_LABEL
from multinic_operator.desired import pool_patch, retire_pools


def pool(
    cidr: str,
    host: str = "A",
    allocations: list[str] = (),  # type: ignore[assignment]
    retired: str | None = None,
    ack: str | None = None,
) -> dict[str, Any]:
    labels = {"hostname": host, "netname": "demo"}
    if retired is not None:
        labels[POOL_RETIRED_LABEL] = retired
    return {
        "metadata": {
            "name": f"demo-{cidr.replace('/', '-')}",
            "labels": labels,
            "annotations": {POOL_RETIRED_ACK: ack} if ack else {},
            "resourceVersion": "1",
        },
        "spec": {
            "podCIDR": cidr,
            "vlanCIDR": "192.168.0.0/18",
            "netAttachDef": "demo",
            "hostName": host,
            "interfaceName": "eth1",
            "excludes": [],
            "allocations": [
                {"pod": f"p{i}", "namespace": "ns", "index": i, "address": a, "containerID": "c"}
                for i, a in enumerate(allocations)
            ],
        },
    }


def by_name(*pools: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {p["metadata"]["name"]: p for p in pools}


NEW_A, NEW_B = pool("192.168.0.0/26"), pool("192.168.0.64/26", "B")


def test_a_replaced_pool_that_holds_addresses_is_retired_and_its_addresses_excluded() -> None:
    old = pool("192.168.0.0/24", allocations=["192.168.0.1", "192.168.0.70"], retired="3", ack="3")
    outcome = retire_pools(by_name(old, NEW_A), by_name(NEW_A, NEW_B), 4, "AB", "AB")
    assert outcome.retire == {"demo-192.168.0.0-24": "3"}, "the first retirement's value stays"
    assert outcome.delete == []
    assert outcome.deferred == []
    # Held addresses are excluded from whichever new pool contains them: A's and B's.
    assert outcome.excludes == {
        "demo-192.168.0.0-26": ["192.168.0.1/32"],
        "demo-192.168.0.64-26": ["192.168.0.70/32"],
    }


def test_new_pools_overlapping_an_unacknowledged_one_wait_for_its_agent() -> None:
    old = pool("192.168.0.0/24")  # empty in the API, but its agent may not have mirrored yet
    outcome = retire_pools(by_name(old, NEW_A), by_name(NEW_A, NEW_B), 4, "AB", "AB")
    assert outcome.retire == {"demo-192.168.0.0-24": "4"}
    assert outcome.waiting == ["demo-192.168.0.0-24"]
    # B's pool is new: it is not created yet; A's exists already: the overlap is excluded.
    assert outcome.deferred == ["demo-192.168.0.64-26"]
    assert outcome.excludes == {"demo-192.168.0.0-26": ["192.168.0.0/26"]}


def test_empty_acknowledged_pools_and_pools_of_hosts_that_left_are_deleted() -> None:
    acked = pool("192.168.0.0/24", retired="4", ack="4")
    stale_ack = pool("192.168.1.0/24", retired="5", ack="4")
    gone = pool("192.168.2.0/24", "C", allocations=["192.168.2.1"])
    unmanaged = pool("192.168.3.0/24", "D")
    outcome = retire_pools(
        by_name(acked, stale_ack, gone, unmanaged), by_name(NEW_A), 5, "ABD", "AB"
    )
    assert sorted(outcome.delete) == [
        "demo-192.168.0.0-24",
        "demo-192.168.2.0-24",
        "demo-192.168.3.0-24",
    ]
    # An acknowledgement of an earlier retirement does not count for this one.
    assert outcome.retire == {"demo-192.168.1.0-24": "5"}
    assert outcome.waiting == ["demo-192.168.1.0-24"]


def test_a_pool_planned_again_is_no_longer_retired() -> None:
    existing = pool("192.168.0.0/26", retired="4", ack="4")
    patch = pool_patch(existing, NEW_A)
    assert patch is not None
    assert patch["metadata"]["labels"] == {POOL_RETIRED_LABEL: None}
    assert patch["metadata"]["annotations"] == {POOL_RETIRED_ACK: None}
