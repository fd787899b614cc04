"""Adopted predecessor allocations on a real node: 100 ADDs never get one.

The node's IPPools carry allocations the Go predecessor wrote (no
containerID: pod, namespace, index, address).  A real in-process
:class:`CniServer` (``FileNodeState``, the real journal and records) serves
ADD, DEL and GC with the real macvlan + static delegates, run in the host's
namespace, each pod in its own network namespace.  The adopted addresses are
held like the agent's own, released only by a DEL naming their pod, never by
GC, and survive an agent restart (which does not adopt a released row again
while the node state still lists it).
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

import pytest

from multinic_agent.cni_server import CniServer
from multinic_agent.node_state import FileNodeState
from multinic_agent.records import RecordStore
from multinic_ipam.journal import AllocationJournal

from .conftest import NICS, POOLS, SERVER_NETCONF, SYSTEM_CNI, Host, Pods, cni_server

pytestmark = [pytest.mark.root, pytest.mark.slow]

NETWORK = "demo"
LEGACY_NAMESPACE = "legacy"
PREDECESSORS = 20
"""Predecessor pods, each holding one address per NIC (20 per pool, 40 in all)."""
ADDS = 100
CONCURRENCY = 16
ETH1_INDEXES = [3 + 6 * i for i in range(PREDECESSORS)]
"""3, 9, ... 117: spread through eth1's usable indexes 1..127 (its pool excludes .128/25)."""
ETH2_INDEXES = [7 + 12 * i for i in range(PREDECESSORS)]
"""7, 19, ... 235: spread through eth2's /24."""
RELEASED_POD = "pred-4"


def predecessor_pools() -> list[dict[str, Any]]:
    """The node's two pools, with the predecessor's rows (no containerID, no ifName)."""
    pools = copy.deepcopy(POOLS)
    for pool, indexes in zip(pools, (ETH1_INDEXES, ETH2_INDEXES), strict=True):
        base = pool["podCIDR"].rsplit(".", 1)[0]
        pool["allocations"] = [
            {
                "pod": f"pred-{i}",
                "namespace": LEGACY_NAMESPACE,
                "index": index,
                "address": f"{base}.{index}",
            }
            for i, index in enumerate(indexes)
        ]
    return pools


def adopted_addresses(pod: str | None = None) -> set[tuple[str, str]]:
    """(host NIC, address) of the predecessor's rows, of one pod or of all."""
    return {
        (pool["interfaceName"], row["address"])
        for pool in predecessor_pools()
        for row in pool["allocations"]
        if pod is None or row["pod"] == pod
    }


def delegates_in(host: Host, directory: Path) -> str:
    """A CNI_PATH whose ``macvlan`` is the real one run in the host's namespace.

    The in-process server runs in the test's namespace, where eth1/eth2 do
    not exist; a real agent runs in the host's.  ``static`` (exec'd by
    macvlan) is the real one from ``SYSTEM_CNI``, after the wrapper.
    """
    directory.mkdir()
    wrapper = directory / "macvlan"
    wrapper.write_text(
        f"#!/bin/sh\nexec nsenter --net=/var/run/netns/{host.netns} {SYSTEM_CNI}/macvlan\n"
    )
    wrapper.chmod(0o755)
    return f"{directory}{os.pathsep}{SYSTEM_CNI}"


def env(
    command: str,
    cni_path: str,
    container_id: str = "",
    netns: str = "",
    *,
    pod: str = "",
    namespace: str = "default",
) -> dict[str, str]:
    found = {"CNI_COMMAND": command, "CNI_PATH": cni_path}
    if container_id:
        found |= {"CNI_CONTAINERID": container_id, "CNI_IFNAME": "net1", "CNI_NETNS": netns}
        found["CNI_ARGS"] = f"K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"
    return found


def config(version: str = "1.0.0", **extra: Any) -> str:
    return json.dumps({**copy.deepcopy(SERVER_NETCONF), "cniVersion": version, **extra})


def addresses_of(result: dict[str, Any]) -> list[tuple[str, str]]:
    """(host NIC, address) of an ADD result: interface 0 is on eth1, 1 on eth2."""
    nics = [nic["interfaceName"] for nic in NICS]
    return [(nics[ip["interface"]], ip["address"].split("/")[0]) for ip in result["ips"]]


async def add_all(server: CniServer, cni_path: str, pods: list[tuple[str, str]]) -> list[Any]:
    """One ADD per (container ID, netns), at most CONCURRENCY at a time."""
    limit = asyncio.Semaphore(CONCURRENCY)

    async def one(container_id: str, netns: str) -> Any:
        async with limit:
            request = env("ADD", cni_path, container_id, netns, pod=f"pod-{container_id}")
            status, out, _ = await server.handle(request, config())
            assert status == 0, out
            return json.loads(out)

    return list(await asyncio.gather(*(one(cid, netns) for cid, netns in pods)))


def held_adopted(journal: AllocationJournal) -> set[tuple[str, str]]:
    """(host NIC, address) of every adopted entry, checked through ``holders``."""
    held = set()
    for nic, address in adopted_addresses():
        holders = journal.holders(nic, address)
        assert len(holders) <= 1, holders
        if holders:
            (entry,) = holders
            assert entry.adopted, entry
            assert entry.namespace == LEGACY_NAMESPACE, entry
            held.add((nic, address))
    return held


def test_adopted_predecessor_addresses_are_never_handed_out(
    host: Host, pods: Pods, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    cni_path = delegates_in(host, tmp_path / "delegates")
    state = {"nics": NICS, "ippools": predecessor_pools()}
    # Exec'd delegates: the wrapper moves them into the host's namespace.
    server = cni_server(state_dir, state, cni_path=(SYSTEM_CNI,), exec_delegates=True)
    everything = adopted_addresses()
    assert len(everything) == 2 * PREDECESSORS
    try:
        # The agent's start: every predecessor row is held before the first ADD.
        server.reserve_known_addresses()
        assert held_adopted(server.journal) == everything

        # 100 real ADDs (2 delegates each, one netns per pod).
        started = time.monotonic()
        netns = [(f"c{i}", pods.new()) for i in range(ADDS)]
        made = time.monotonic()
        results = asyncio.run(add_all(server, cni_path, netns))
        took = time.monotonic() - started
        print(
            f"\n{ADDS} ADDs: {took:.2f}s ({made - started:.2f}s creating the pods' namespaces, "
            f"{took - (made - started):.2f}s of ADDs, {CONCURRENCY} at a time)"
        )
        given = [a for result in results for a in addresses_of(result)]
        assert len(given) == 2 * ADDS
        assert len(set(given)) == 2 * ADDS, "an address was handed out twice"
        assert not set(given) & everything, sorted(set(given) & everything)
        # The delegates really configured them, in each pod's namespace.
        for (container_id, path), result in zip(netns, results, strict=True):
            found = Pods.addresses(path)
            assert found == {
                "net1-0": [result["ips"][0]["address"]],
                "net1-1": [result["ips"][1]["address"]],
            }, container_id
        assert held_adopted(server.journal) == everything
        assert len(server.records.all()) == ADDS

        # A DEL naming a predecessor pod frees exactly that pod's adopted addresses.
        mine = adopted_addresses(RELEASED_POD)
        assert len(mine) == 2
        deleted = asyncio.run(
            server.handle(
                env("DEL", cni_path, "legacy-cid", pod=RELEASED_POD, namespace=LEGACY_NAMESPACE),
                config(),
            )
        )
        assert deleted == (0, "", ""), deleted
        for nic, address in mine:
            assert server.journal.holders(nic, address) == []
        assert held_adopted(server.journal) == everything - mine
        assert len(server.records.all()) == ADDS
        assert any(
            f"adopted from the predecessor for pod {LEGACY_NAMESPACE}/{RELEASED_POD}" in m
            for m in caplog.messages
        ), caplog.messages
        # Not handed out again within the reuse delay while other addresses are free
        # (eth1 has 127 - 20 - 100 = 7 never-used ones).
        (again,) = asyncio.run(add_all(server, cni_path, [("c-after-del", pods.new())]))
        assert not set(addresses_of(again)) & everything, again
        assert not set(addresses_of(again)) & set(given), again

        # GC with an empty valid list: every agent attachment goes, no adopted row does.
        started = time.monotonic()
        gc = asyncio.run(
            server.handle(env("GC", cni_path), config("1.1.0", **{"cni.dev/valid-attachments": []}))
        )
        print(f"GC of {ADDS + 1} attachments: {time.monotonic() - started:.2f}s")
        assert gc == (0, "", ""), gc
        assert server.records.all() == []
        assert Pods.links(netns[0][1]) == ["lo"]
        assert held_adopted(server.journal) == everything - mine
        assert {e.key for e in server.journal.all_entries()} == {
            (NETWORK, "", f"{LEGACY_NAMESPACE}/pred-{i}")
            for i in range(PREDECESSORS)
            if f"pred-{i}" != RELEASED_POD
        }
    finally:
        server.journal.close()

    # The agent restarts: a new journal and server on the same state directory.
    restarted = CniServer(
        node="host-a",
        node_state=FileNodeState(state_dir / "node-state.json"),
        journal=AllocationJournal(state_dir),
        records=RecordStore(state_dir),
        cni_path=(SYSTEM_CNI,),
        exec_delegates=True,
    )
    try:
        assert held_adopted(restarted.journal) == everything - mine
        restarted.reserve_known_addresses()
        assert held_adopted(restarted.journal) == everything - mine
        # The node state still lists the released rows: they are not adopted again,
        # even when the file is re-read (a new snapshot of the same pools).
        node_state = state_dir / "node-state.json"
        node_state.write_text(node_state.read_text() + "\n")
        assert restarted.adopt_foreign() == 0
        assert held_adopted(restarted.journal) == everything - mine
        (after,) = asyncio.run(add_all(restarted, cni_path, [("c-after-restart", pods.new())]))
        assert not set(addresses_of(after)) & everything, after
    finally:
        restarted.journal.close()
