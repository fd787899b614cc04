"""Attachment records: the per-NIC usage count, and durable writes shared by concurrent ADDs."""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from multinic_agent.records import AttachmentRecord, DelegateRecord, RecordStore


def record(container: str, nics: list[str]) -> AttachmentRecord:
    return AttachmentRecord(
        container_id=container,
        ifname="net1",
        netns=f"/var/run/netns/{container}",
        network="demo",
        cni_version="1.0.0",
        ipam_type="multi-nic-ipam",
        ipam={"type": "multi-nic-ipam"},
        delegates=[
            DelegateRecord(ifname=f"net1-{i}", nic=nic, binary="/usr/lib/cni/macvlan", config={})
            for i, nic in enumerate(nics)
        ],
        addresses=[f"192.168.{i}.5/18" for i in range(len(nics))],
    )


def rebuilt(store: RecordStore) -> Counter[str]:
    """Usage the slow way: every delegate of every record."""
    return +Counter(d.nic for r in store.all() for d in r.delegates)


def test_usage_follows_every_put_replace_and_delete(tmp_path: Path) -> None:
    store = RecordStore(tmp_path)
    store.put(record("a", ["eth1", "eth2"]))
    store.put(record("b", ["eth1"]))
    assert store.usage() == Counter({"eth1": 2, "eth2": 1}) == rebuilt(store)
    store.put(record("a", ["eth2", "eth3"]))  # the same key again: replaced, not added
    assert store.usage() == Counter({"eth1": 1, "eth2": 1, "eth3": 1}) == rebuilt(store)
    store.delete("b", "net1")
    store.delete("b", "net1")  # a second DEL changes nothing
    assert store.usage() == Counter({"eth2": 1, "eth3": 1}) == rebuilt(store)
    store.usage()["eth2"] += 5  # a copy: the caller cannot skew the count
    assert store.usage()["eth2"] == 1
    reloaded = RecordStore(tmp_path)
    assert reloaded.usage() == store.usage()


def test_concurrent_writes_share_the_directory_fsync_and_are_on_disk_at_return(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RecordStore(tmp_path)
    real_fsync = os.fsync
    guard = threading.Lock()
    directory_syncs: list[set[str]] = []  # the record files each ended directory fsync covers

    def slow_fsync(fd: int) -> None:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            real_fsync(fd)
            return
        present = {p.name for p in store.directory.glob("*.json")}
        time.sleep(0.02)  # a slow disk: the other writers queue behind it
        real_fsync(fd)
        with guard:
            directory_syncs.append(present)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    writers = 16
    start = threading.Barrier(writers)
    durable_at_return: dict[str, bool] = {}

    def write(container: str) -> None:
        start.wait()
        store.write(record(container, ["eth1"]))
        name = f"{container}_net1.json"
        with guard:
            durable_at_return[container] = any(name in synced for synced in directory_syncs)

    threads = [threading.Thread(target=write, args=(f"c{i}",)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert durable_at_return == {f"c{i}": True for i in range(writers)}
    assert len(directory_syncs) < writers / 2, directory_syncs
    monkeypatch.undo()
    reloaded = RecordStore(tmp_path)
    assert sorted(r.container_id for r in reloaded.all()) == sorted(durable_at_return)
    assert not list(store.directory.glob("*.tmp"))
