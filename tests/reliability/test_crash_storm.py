"""``kill -9`` of the agents at random moments during a storm of ADD/DEL on 3 hosts.

Each host is a network namespace with its own agent (file node state) and its
own pools; a runtime per host execs the real shim.  Pods come and go
concurrently while a killer thread ``kill -9``s a random agent and restarts
it.  The runtime behaves as the CNI spec asks: a failed ADD is followed by DEL
(retried until it succeeds) and the sandbox is removed; a failed DEL is
retried.  After the storm and a CNI GC with the pods the runtime still has:

* no address is held by two attachments (on any host),
* no allocation without a live attachment and no live attachment without its
  allocation and record,
* every live pod has exactly its links, addresses and routes,
* no stray links or routes in any host namespace, none in pod namespaces,
* and after the last DEL nothing at all is held or recorded.

Size: ``MULTINIC_CHAOS_OPS`` ADD/DEL operations (retries of a DEL not counted) (60 by default, 500 under
``tox -e chaos``).
"""

from __future__ import annotations

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import CHAOS_OPS, FUZZ_SEED, node_fixtures

pytestmark = [pytest.mark.root, pytest.mark.slow]

HOSTS = 3
WORKERS = 6
KEEP_LIVE = 0.3
"""Share of pods still running at the end of the storm (the rest are deleted in it)."""
POD_ROUTES = {"172.30.0.0/16", "172.31.0.0/16", "192.168.0.0/18", "192.168.128.0/18"}


def host_pools(index: int) -> list[dict[str, Any]]:
    return [
        {
            "podCIDR": f"192.168.{index}.0/24",
            "vlanCIDR": "192.168.0.0/18",
            "netAttachDef": "demo",
            "hostName": f"host-{index}",
            "interfaceName": "eth1",
        },
        {
            "podCIDR": f"192.168.{128 + index}.0/24",
            "vlanCIDR": "192.168.128.0/18",
            "netAttachDef": "demo",
            "hostName": f"host-{index}",
            "interfaceName": "eth2",
        },
    ]


def host_network_view(netns: str) -> tuple[list[str], list[str], list[str]]:
    """Links, routes of every table, and rules of a namespace."""
    links = sorted(link["ifname"] for link in node_fixtures.ip_json(netns, "link", "show"))
    # IPv6 link-local and multicast routes come and go with the kernel's own
    # address configuration; they are not the agent's.
    routes = sorted(
        line
        for line in node_fixtures.ip(
            "-n", netns, "route", "show", "table", "all"
        ).stdout.splitlines()
        if not any(word in line for word in ("fe80::", "ff00::", "multicast"))
    )
    rules = sorted(node_fixtures.ip("-n", netns, "rule", "show").stdout.splitlines())
    return links, routes, rules


@dataclass
class SimHost:
    index: int
    host: Any
    agent: Any
    runtime: Any
    before: tuple[list[str], list[str], list[str]] = ([], [], [])
    lock: threading.Lock = field(default_factory=threading.Lock)
    live: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def hosts(installed_shim: Path, tmp_path: Path) -> Iterator[list[SimHost]]:
    if not Path(node_fixtures.SYSTEM_CNI, "macvlan").exists():
        pytest.skip(f"no CNI plugins in {node_fixtures.SYSTEM_CNI}")
    made: list[SimHost] = []
    try:
        for index in range(HOSTS):
            host = node_fixtures.make_host()
            agent = node_fixtures.Agent(host, tmp_path / f"agent-{index}")
            agent.workdir.mkdir()
            agent.write_node_state(pools=host_pools(index))
            sim = SimHost(index, host, agent, node_fixtures.Runtime(installed_shim, agent))
            made.append(sim)
            agent.start()
            sim.before = host_network_view(host.netns)
        yield made
    finally:
        for sim in made:
            sim.agent.stop()
            node_fixtures.ip("netns", "del", sim.host.netns, check=False)


class Storm:
    """Pods coming and going on the hosts, as a container runtime drives them."""

    def __init__(self, hosts: list[SimHost], pods: Any, budget: int, rng: random.Random) -> None:
        self.hosts = hosts
        self.pods = pods
        self.budget = budget
        self.rng = rng
        self.rng_lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.calls_lock = threading.Lock()
        self.next_pod = 0
        self.kills = 0
        self.min_kills = max(3, budget // 25)

    def choice(self) -> tuple[SimHost, str, bool]:
        with self.rng_lock:
            self.next_pod += 1
            return (
                self.rng.choice(self.hosts),
                f"storm{self.next_pod}",
                self.rng.random() < KEEP_LIVE,
            )

    def call(self, what: str, run: Any) -> Any:
        outcome = run()
        with self.calls_lock:
            self.calls[what] += 1
            self.calls[f"{what} {'ok' if outcome.status == 0 else outcome.json['code']}"] += 1
        assert "Traceback" not in outcome.stdout + outcome.stderr, outcome
        if outcome.status:
            assert {"cniVersion", "code", "msg"} <= set(outcome.json), outcome
        return outcome

    def spent(self) -> int:
        with self.calls_lock:
            return self.calls["ADD"] + self.calls["DEL"]

    def delete_until_done(self, sim: SimHost, cid: str, netns: str) -> None:
        deadline = time.monotonic() + 120
        what = "DEL"
        while self.call(what, lambda: sim.runtime.delete(cid, netns)).status != 0:
            assert time.monotonic() < deadline, f"DEL of {cid} never succeeded"
            what = "DEL retry"
            time.sleep(0.25)

    def pod_lifecycle(self) -> None:
        sim, cid, keep = self.choice()
        netns = self.pods.new()
        added = self.call("ADD", lambda: sim.runtime.add(cid, netns))
        if added.status == 0 and keep:
            with sim.lock:
                sim.live[cid] = netns
            return
        # A failed ADD is cleaned up with DEL; a finished pod is deleted.
        self.delete_until_done(sim, cid, netns)
        self.pods.remove(netns)
        self.pods.names.remove(node_fixtures.netns_name(netns))

    def worker(self) -> None:
        # The storm lasts for its budget of CNI calls, and at least until the
        # agents have been killed a few times (short runs are fast).
        while self.spent() < self.budget or self.kills < self.min_kills:
            self.pod_lifecycle()


def kill_agents(storm: Storm, stop: threading.Event, rng: random.Random) -> int:
    """``kill -9`` a random agent every 0.1-0.6 s and restart it; returns the kills."""
    while not stop.wait(rng.uniform(0.1, 0.6)):
        sim = rng.choice(storm.hosts)
        sim.agent.kill()
        storm.kills += 1
        time.sleep(rng.uniform(0.0, 0.3))
        sim.agent.start()
    return storm.kills


def pod_addresses(pods: Any, netns: str) -> list[str]:
    found = pods.addresses(netns)
    return [a.split("/")[0] for nic in ("net1-0", "net1-1") for a in found.get(nic, [])]


def run_storm(storm: Storm, rng: random.Random) -> tuple[int, float]:
    """Run the storm's workers while agents are killed at random; (kills, seconds)."""
    stop = threading.Event()
    started = time.monotonic()
    with ThreadPoolExecutor(1) as killer_pool:
        killer = killer_pool.submit(kill_agents, storm, stop, random.Random(rng.random()))
        try:
            with ThreadPoolExecutor(WORKERS) as workers:
                for done in [workers.submit(storm.worker) for _ in range(WORKERS)]:
                    done.result()
        finally:
            stop.set()
        kills = killer.result()
    return kills, time.monotonic() - started


def storm_figures(storm: Storm, kills: int, live: int, seconds: float) -> dict[str, Any]:
    """The figures every storm reports."""
    return {
        "operations": storm.calls["ADD"] + storm.calls["DEL"],
        "del_retries": storm.calls["DEL retry"],
        "outcomes": {k: v for k, v in storm.calls.items() if " " in k},
        "kills": kills,
        "live_at_end": live,
        "seconds": round(seconds, 1),
    }


def delete_live_pods(sim: SimHost) -> None:
    """DEL of every pod still live on ``sim``: each succeeds, and the agent holds nothing."""
    for cid, netns in sim.live.items():
        assert sim.runtime.delete(cid, netns).status == 0
    assert sim.agent.held_addresses() == {}


def test_kill_9_storm_loses_and_leaks_nothing(
    hosts: list[SimHost], pods: Any, figures: dict[str, Any]
) -> None:
    rng = random.Random(FUZZ_SEED or 7)
    storm = Storm(hosts, pods, CHAOS_OPS, rng)
    kills, storm_seconds = run_storm(storm, rng)
    assert kills >= storm.min_kills
    assert storm.calls["ADD ok"] > 0, storm.calls
    assert storm.calls["ADD 11"] > 0, storm.calls
    time.sleep(0.5)  # delegates orphaned by the last kill finish

    netconf = node_fixtures.netconf
    every_address: list[str] = []
    for sim in hosts:
        valid = [{"containerID": cid, "ifname": "net1"} for cid in sorted(sim.live)]
        gc = sim.runtime.run(
            sim.runtime.env("GC", ""), netconf("1.1.0", **{"cni.dev/valid-attachments": valid})
        )
        assert gc.status == 0, gc
        held = sim.agent.held_addresses()
        # No allocation without a live attachment, none missing for a live one.
        assert set(held) == {(cid, "net1") for cid in sim.live}, sim.index
        assert sim.agent.records() == sorted(f"{cid}_net1.json" for cid in sim.live)
        for cid, netns in sim.live.items():
            # Every live attachment has its links, its addresses and its routes.
            assert sorted(pods.links(netns)) == ["lo", "net1-0", "net1-1"], cid
            assert pod_addresses(pods, netns) == held[(cid, "net1")], cid
            dsts = {r["dst"] for r in pods.routes(netns)}
            assert dsts == POD_ROUTES, (cid, dsts)
            check = sim.runtime.check(cid, netns)
            assert check.status == 0, check
        every_address += [a for addresses in held.values() for a in addresses]
        # Nothing stray in the host namespace: links, routes and rules as before.
        assert host_network_view(sim.host.netns) == sim.before, sim.index
        # And after all the restarts, no TCP listener but the health port (:11000).
        assert sim.agent.process is not None
        tcp = subprocess.run(
            ["ip", "netns", "exec", sim.host.netns, "ss", "-ltnpH"],
            capture_output=True,
            text=True,
            check=True,
        )
        marker = f"pid={sim.agent.process.pid},"
        ports = {line.split()[3].rsplit(":", 1)[1] for line in tcp.stdout.splitlines()
                 if marker in line}  # fmt: skip
        assert ports == {"11000"}, tcp.stdout
    assert len(every_address) == len(set(every_address)), "an address is held twice"
    live = sum(len(sim.live) for sim in hosts)
    assert len(every_address) == 2 * live
    # Only the live pods' sandboxes are left (failed and deleted ones are gone).
    assert len(pods.names) == live

    for sim in hosts:
        delete_live_pods(sim)
        assert sim.agent.records() == []
        assert host_network_view(sim.host.netns) == sim.before
    figures.update(
        storm_figures(storm, kills, live, storm_seconds),
        hosts=HOSTS,
        duplicates=0,
        leaked=0,
        lost=0,
    )
