"""``kill -9`` of the agent in the middle of 200 concurrent ADDs.

After a restart: no address is given twice, the attachments the runtime
considers valid keep theirs, and GC frees what the interrupted ADDs had
allocated (nothing leaks).
"""

from __future__ import annotations

import time
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

PODS = 200
CONCURRENCY = 32
KILL_AFTER = 50
BIG_POOLS = [
    {
        "podCIDR": "192.168.0.0/23",
        "vlanCIDR": "192.168.0.0/18",
        "netAttachDef": "demo",
        "hostName": "host-a",
        "interfaceName": "eth1",
    },
    {
        "podCIDR": "192.168.128.0/23",
        "vlanCIDR": "192.168.128.0/18",
        "netAttachDef": "demo",
        "hostName": "host-a",
        "interfaceName": "eth2",
    },
]


def addresses_in_pod(pods: Any, pod: str) -> list[str]:
    found = pods.addresses(pod)
    return [a.split("/")[0] for nic in ("net1-0", "net1-1") for a in found.get(nic, [])]


def test_kill_9_during_concurrent_adds(runtime: Any, pods: Any, agent: Any, netconf: Any) -> None:
    agent.stop()
    agent.write_node_state(pools=BIG_POOLS)
    agent.start()
    netns = {f"c{i}": pods.new() for i in range(PODS)}

    outcomes: dict[str, Any] = {}
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        futures: dict[Future[Any], str] = {
            pool.submit(runtime.add, cid, path): cid for cid, path in netns.items()
        }
        pending = set(futures)
        killed = False
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                outcomes[futures[future]] = future.result()
            if not killed and len(outcomes) >= KILL_AFTER:
                agent.kill()
                killed = True
    succeeded = {cid for cid, o in outcomes.items() if o.status == 0}
    failed = set(netns) - succeeded
    assert KILL_AFTER <= len(succeeded) < PODS, "the kill did not land in the middle"
    for cid in failed:
        error = outcomes[cid].json
        assert error["code"] == 11, error  # agent unreachable / gone: the runtime retries
        assert "Traceback" not in outcomes[cid].stdout + outcomes[cid].stderr

    time.sleep(0.5)  # let delegates orphaned by the kill finish
    agent.start()
    # The runtime's view: only the ADDs that succeeded exist.
    valid = [{"containerID": cid, "ifname": "net1"} for cid in sorted(succeeded)]
    gc = runtime.run(
        runtime.env("GC", ""), netconf("1.1.0", **{"cni.dev/valid-attachments": valid})
    )
    assert gc.status == 0, gc
    held = agent.held_addresses()
    assert set(held) == {(cid, "net1") for cid in succeeded}
    for cid in succeeded:
        assert addresses_in_pod(pods, netns[cid]) == held[(cid, "net1")]

    # The runtime retries the failed pods in fresh sandboxes.
    for cid in failed:
        pods.remove(netns[cid])
        netns[cid] = pods.new()
    with ThreadPoolExecutor(CONCURRENCY) as pool:
        retried = dict(
            zip(failed, pool.map(lambda c: runtime.add(c, netns[c]), failed), strict=True)
        )
    assert all(o.status == 0 for o in retried.values()), [o for o in retried.values() if o.status]

    held = agent.held_addresses()
    assert len(held) == PODS
    every = [a for addresses in held.values() for a in addresses]
    assert len(every) == 2 * PODS
    assert len(set(every)) == len(every), "an address was handed out twice"
    in_pods = [a for path in netns.values() for a in addresses_in_pod(pods, path)]
    assert sorted(in_pods) == sorted(every)

    with ThreadPoolExecutor(CONCURRENCY) as pool:
        deleted = list(pool.map(lambda c: runtime.delete(c, netns[c]), list(netns)))
    assert all(o.status == 0 for o in deleted)
    assert agent.held_addresses() == {}
    assert agent.records() == []
