"""Uniqueness by address: across replaced pools, adopted predecessor rows and restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from multinic_core.errors import TryAgainError
from multinic_ipam.journal import AllocationJournal, PoolBlock, PoolExhaustedError

OLD = PoolBlock("demo-192.168.0.0-24", "192.168.0.0/24", "192.168.0.0/18", "eth1")
NEW = PoolBlock("demo-192.168.0.0-26", "192.168.0.0/26", "192.168.0.0/18", "eth1")
OTHER_NIC = PoolBlock("other-192.168.0.0-26", "192.168.0.0/26", "192.168.0.0/18", "eth2")
PREDECESSOR = [
    {"pod": "legacy-a", "namespace": "default", "index": 1, "address": "192.168.0.1"},
    {"pod": "legacy-b", "namespace": "team", "index": 2, "address": "192.168.0.2"},
    {"pod": "web", "namespace": "default", "index": 9, "address": "192.168.0.9",
     "containerID": "c-ours", "ifName": "net1"},
]  # fmt: skip


def allocate(journal: AllocationJournal, container: str, block: PoolBlock) -> str:
    return journal.allocate("demo", container, "net1", [block], pod=container)[0].address


def test_a_replanned_pool_never_hands_out_an_address_a_pod_still_holds(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path, reuse_delay=0)
    running = [allocate(journal, f"old-{i}", OLD) for i in range(3)]
    assert running == ["192.168.0.1", "192.168.0.2", "192.168.0.3"]
    # The same base, a smaller block: the new pool's first indexes are held.
    fresh = [allocate(journal, f"new-{i}", NEW) for i in range(3)]
    assert fresh == ["192.168.0.4", "192.168.0.5", "192.168.0.6"]
    # Another NIC is another link: the same address there is no clash.
    assert allocate(journal, "nic2", OTHER_NIC) == "192.168.0.1"
    # After a restart the rule holds the same way (the journal is replayed).
    journal.close()
    again = AllocationJournal(tmp_path, reuse_delay=0)
    assert allocate(again, "after-restart", NEW) == "192.168.0.7"
    assert [e.holder for e in again.holders("eth1", "192.168.0.1")] == [
        "/old-0 (container old-0 ifname net1)"
    ]


def test_a_full_new_pool_says_that_earlier_plans_hold_addresses(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path, reuse_delay=0)
    tiny_old = PoolBlock("t-old", "10.9.0.0/28", "10.9.0.0/24", "eth1")
    tiny_new = PoolBlock("t-new", "10.9.0.0/29", "10.9.0.0/24", "eth1")
    for i in range(6):
        allocate(journal, f"old-{i}", tiny_old)
    with pytest.raises(PoolExhaustedError, match="held by pods of earlier plans"):
        allocate(journal, "new", tiny_new)


def test_a_retired_pool_is_refused_with_try_again(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    held = allocate(journal, "before", OLD)
    journal.set_retired({OLD.name}, {NEW.name})
    with pytest.raises(TryAgainError, match="replaced by a new plan"):
        allocate(journal, "during", OLD)
    # Deleted (no longer listed at all): still refused; listed as current again: allowed.
    journal.set_retired(set(), {NEW.name})
    with pytest.raises(TryAgainError):
        allocate(journal, "later", OLD)
    journal.set_retired(set(), {OLD.name})
    assert allocate(journal, "undone", OLD) != held
    # What it holds stays held, and its DEL still frees it.
    assert journal.holders("eth1", held)
    assert [e.address for e in journal.release("demo", "before", "net1")] == [held]


def test_predecessor_rows_are_adopted_held_and_freed_only_by_their_pod(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path, reuse_delay=0)
    adopted = journal.adopt("demo", NEW, PREDECESSOR)
    assert [(e.pod, e.address) for e in adopted] == [
        ("legacy-a", "192.168.0.1"),
        ("legacy-b", "192.168.0.2"),
    ]
    assert journal.adopt("demo", NEW, PREDECESSOR) == [], "adoption is idempotent"
    assert allocate(journal, "c1", NEW) == "192.168.0.3"
    # Listed as the predecessor wrote them (no containerID keys are added).
    assert [e.ippool_allocation() for e in journal.pool_allocations(NEW.name)][:2] == (
        PREDECESSOR[:2]
    )
    # A DEL naming another pod frees nothing of theirs; one naming legacy-a frees its row.
    assert journal.release_adopted("demo", "default", "web") == []
    assert [e.address for e in journal.release_adopted("demo", "default", "legacy-a")] == [
        "192.168.0.1"
    ]
    assert not journal.holders("eth1", "192.168.0.1")
    # The IPPool object may still list the released row until the mirror
    # writes: it is not adopted again, also not after a restart.
    assert journal.adopt("demo", NEW, PREDECESSOR) == []
    journal.close()
    restarted = AllocationJournal(tmp_path, reuse_delay=0)
    assert restarted.adopt("demo", NEW, PREDECESSOR) == []
    assert [e.pod for e in restarted.holders("eth1", "192.168.0.2")] == ["legacy-b"]
    # Once the object no longer lists it, a new row of that address is a new allocation.
    restarted.settle_forgotten(NEW.name, set())
    assert restarted.forgotten(NEW.name) == set()
    assert [e.pod for e in restarted.adopt("demo", NEW, PREDECESSOR[:1])] == ["legacy-a"]


def test_a_lost_journal_entry_is_held_again_from_the_attachment_record(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path, reuse_delay=0)
    entry = journal.allocate("demo", "c1", "net1", [NEW])[0]
    journal.release("demo", "c1", "net1")
    assert journal.restore([entry]) == [entry]
    assert journal.restore([entry]) == [], "an attachment the journal knows is not doubled"
    assert allocate(journal, "c2", NEW) != entry.address
