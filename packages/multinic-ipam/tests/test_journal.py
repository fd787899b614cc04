"""The durable allocator: address choice rules (SPEC 5), idempotency, and recovery."""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path

import pytest

from multinic_core.errors import ConfigError
from multinic_ipam.journal import JOURNAL_FILE, AllocationJournal, PoolBlock, PoolExhaustedError

ETH1 = PoolBlock(
    name="demo-192.168.0.0-24",
    pod_cidr="192.168.0.0/24",
    vlan_cidr="192.168.0.0/18",
    interface_name="eth1",
    excludes=("192.168.0.128/25",),
)
ETH2 = PoolBlock(
    name="demo-192.168.128.0-24",
    pod_cidr="192.168.128.0/24",
    vlan_cidr="192.168.128.0/18",
    interface_name="eth2",
)
TINY = PoolBlock(
    name="demo-10.9.0.0-29", pod_cidr="10.9.0.0/29", vlan_cidr="10.9.0.0/24", interface_name="eth1"
)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def addresses(journal: AllocationJournal, container: str, blocks: list[PoolBlock]) -> list[str]:
    return [e.address for e in journal.allocate("demo", container, "net1", blocks)]


def test_first_addresses_skip_the_network_address(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    assert addresses(journal, "c1", [ETH1, ETH2]) == ["192.168.0.1", "192.168.128.1"]
    assert addresses(journal, "c2", [ETH1, ETH2]) == ["192.168.0.2", "192.168.128.2"]


def test_repeated_add_returns_the_same_addresses(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    first = addresses(journal, "c1", [ETH1, ETH2])
    assert addresses(journal, "c1", [ETH1, ETH2]) == first
    assert addresses(journal, "c2", [ETH1, ETH2]) != first


def test_same_attachment_in_other_pools_is_refused(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    addresses(journal, "c1", [ETH1])
    with pytest.raises(ConfigError, match=r"already holds addresses in demo-192\.168\.0\.0-24"):
        journal.allocate("demo", "c1", "net1", [ETH2])


def test_excludes_and_last_address_are_never_handed_out(tmp_path: Path) -> None:
    # 192.168.0.128/25 is excluded: only .1 .. .127 are usable.
    journal = AllocationJournal(tmp_path)
    handed = [addresses(journal, f"c{i}", [ETH1])[0] for i in range(127)]
    assert handed[-1] == "192.168.0.127"
    assert len(set(handed)) == 127
    with pytest.raises(PoolExhaustedError, match=r"demo-192.168.0.0-24 .* no free address"):
        journal.allocate("demo", "full", "net1", [ETH1])
    tiny = AllocationJournal(tmp_path / "tiny")
    assert [addresses(tiny, f"c{i}", [TINY])[0] for i in range(6)] == [
        f"10.9.0.{i}" for i in range(1, 7)
    ]
    with pytest.raises(PoolExhaustedError):
        tiny.allocate("demo", "c7", "net1", [TINY])


def test_a_failed_multi_nic_allocation_takes_nothing(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    for i in range(6):
        journal.allocate("demo", f"c{i}", "net1", [TINY])
    with pytest.raises(PoolExhaustedError):
        journal.allocate("demo", "both", "net1", [ETH2, TINY])
    assert journal.pool_allocations(ETH2.name) == []


def test_next_after_highest_then_lowest_free_and_no_quick_reuse(tmp_path: Path) -> None:
    clock = Clock()
    journal = AllocationJournal(tmp_path, clock=clock)
    for i in range(4):  # .1 .2 .3 .4
        journal.allocate("demo", f"c{i}", "net1", [TINY])
    journal.release("demo", "c1", "net1")  # frees .2
    # next after the highest used (.4), not the freed gap
    assert addresses(journal, "c4", [TINY]) == ["10.9.0.5"]
    assert addresses(journal, "c5", [TINY]) == ["10.9.0.6"]
    # top reached: the lowest free index, but .2 was released < 60 s ago and
    # is the only free one, so it is handed out only because nothing else is
    assert addresses(journal, "c6", [TINY]) == ["10.9.0.2"]
    journal.release("demo", "c6", "net1")
    journal.release("demo", "c3", "net1")  # frees .4 (highest used is now .6)
    clock.now += 10
    journal.release("demo", "c0", "net1")  # frees .1, later
    # wrap-around: .2 and .4 and .1 are free; all released recently -> the
    # one released longest ago first
    assert addresses(journal, "c7", [TINY]) == ["10.9.0.2"]
    clock.now += 61
    assert addresses(journal, "c8", [TINY]) == ["10.9.0.1"]


def test_release_of_unknown_attachment_is_harmless(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    assert journal.release("demo", "nobody", "net1") == []


def test_allocations_survive_a_restart_and_map_onto_ippool_entries(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    journal.allocate("demo", "c1", "net1", [ETH1, ETH2], pod="p1", namespace="ns")
    journal.allocate("demo", "c2", "net1", [ETH1, ETH2])
    journal.release("demo", "c2", "net1")
    journal.close()  # no compaction or flush on close: what is written is all there is
    again = AllocationJournal(tmp_path)
    assert again.attachments("demo") == [("demo", "c1", "net1")]
    assert [e.ippool_allocation() for e in again.pool_allocations(ETH1.name)] == [
        {
            "pod": "p1",
            "namespace": "ns",
            "index": 1,
            "address": "192.168.0.1",
            "containerID": "c1",
            "ifName": "net1",
        }
    ]
    # .2 was released moments ago: the next pod gets .3 even after the restart
    assert addresses(again, "c3", [ETH1]) == ["192.168.0.3"]


def test_torn_last_line_is_ignored(tmp_path: Path) -> None:
    journal = AllocationJournal(tmp_path)
    journal.allocate("demo", "c1", "net1", [ETH1])
    journal.close()
    with (tmp_path / JOURNAL_FILE).open("a") as f:
        f.write('{"op":"add","entries":[{"network":"demo","pool"')  # crash mid-write
    again = AllocationJournal(tmp_path)
    assert again.attachments() == [("demo", "c1", "net1")]
    lines = (tmp_path / JOURNAL_FILE).read_text().splitlines()
    assert all(json.loads(line) for line in lines)  # compacted: the torn line is gone


def test_journal_stays_short_under_churn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("multinic_ipam.journal.COMPACT_MIN_LINES", 50)
    journal = AllocationJournal(tmp_path)
    journal.allocate("demo", "keep", "net1", [ETH1, ETH2])
    for i in range(300):
        journal.allocate("demo", f"c{i}", "net1", [ETH1])
        journal.release("demo", f"c{i}", "net1")
    lines = (tmp_path / JOURNAL_FILE).read_text().splitlines()
    assert len(lines) < 200  # 601 changes were made
    journal.close()
    again = AllocationJournal(tmp_path)
    assert again.attachments() == [("demo", "keep", "net1")]
    assert [e.address for e in again.entries("demo", "keep", "net1")] == [
        "192.168.0.1",
        "192.168.128.1",
    ]


def test_concurrent_changes_share_fsyncs_and_each_is_on_disk_before_it_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Group commit: fewer fsyncs than changes, and none returns before its line is synced."""
    journal = AllocationJournal(tmp_path)
    real_fsync = os.fsync
    covered = [0]  # bytes of the journal an ended fsync has made durable
    fsyncs = []
    guard = threading.Lock()

    def slow_fsync(fd: int) -> None:
        size = os.fstat(fd).st_size
        time.sleep(0.02)  # a slow disk: the other writers queue behind it
        real_fsync(fd)
        with guard:
            fsyncs.append(size)
            covered[0] = max(covered[0], size)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writers = 16
    start = threading.Barrier(writers)
    durable_at_return: dict[str, int] = {}

    def add(container: str) -> None:
        start.wait()
        journal.allocate("demo", container, "net1", [ETH2])
        with guard:
            durable_at_return[container] = covered[0]

    threads = [threading.Thread(target=add, args=(f"c{i}",)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    text = (tmp_path / JOURNAL_FILE).read_text()
    for container, durable in durable_at_return.items():
        end = text.index(f'"container_id":"{container}"')
        end = text.index("\n", end) + 1
        assert end <= durable, f"{container} returned before its line was on disk"
    assert len(fsyncs) < writers / 2, fsyncs
    monkeypatch.undo()
    journal.close()
    reopened = AllocationJournal(tmp_path)
    held = [e.address for e in reopened.all_entries()]
    assert len(held) == writers == len(set(held))
