"""The crash storm again, with the agents on the Kubernetes API: IPPools agree with journals.

The same storm as ``test_crash_storm.py`` (real shim, real macvlan delegates,
``kill -9`` of random agents), but every agent runs against the local API
server and finds its pools only there: the test creates one ``IPPool`` per
host and NIC, as the operator would.  After the storm, a CNI GC and the
mirror's next passes:

* every IPPool's ``spec.allocations`` that carry a ``containerID`` are exactly
  its agent's journal for that pool (nothing lost, nothing stale, nothing
  freed by a crash);
* no address is held twice in the whole cluster, in the journals or in the API;
* after the last DEL every pool is empty again.

Size: ``MULTINIC_CHAOS_OPS`` (as the file-state storm).
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from multinic_sim.testing import wait_for

from .conftest import CHAOS_OPS, FUZZ_SEED, REPO, load_test_module, node_fixtures
from .test_crash_storm import (
    SimHost,
    Storm,
    delete_live_pods,
    host_network_view,
    host_pools,
    run_storm,
    storm_figures,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

kube_sync = load_test_module(
    "multinic_reliability_kube_sync",
    REPO / "packages" / "multinic-agent" / "tests" / "test_kube_sync.py",
)

HOSTS = 3
NETWORK = "stormnet"
GROUP, VERSION = "multinic.fms.io", "v1"
MIRROR_SETTLE_S = 20.0
"""How long the mirrors get to catch up (a pass every second, retried on conflicts)."""


@dataclass
class ApiAgent(node_fixtures.Agent):  # type: ignore[misc]
    """An agent of node ``host-<i>`` whose node state is the Kubernetes API."""

    node: str = ""
    kubeconfig: Path = Path()
    extra_args: list[str] = field(default_factory=list)
    """More options of ``multinic-agent`` (intervals)."""

    def command(self) -> list[str]:
        return [
            "ip", "netns", "exec", self.host.netns, node_fixtures.AGENT,
            "--node", self.node,
            "--kubeconfig", str(self.kubeconfig),
            "--socket", str(self.socket),
            "--state-dir", str(self.state_dir),
            "--cni-path", node_fixtures.SYSTEM_CNI,
            "--log-level", "DEBUG",
            *self.extra_args,
            "run",
        ]  # fmt: skip

    def journal_pools(self) -> dict[str, list[dict[str, Any]]]:
        """Pool name -> the IPPool allocations the journal implies (read from a copy)."""
        journal = self.journal_copy()
        try:
            return {
                pool_name(pool): [
                    e.ippool_allocation() for e in journal.pool_allocations(pool_name(pool))
                ]
                for pool in host_pools(int(self.node.rsplit("-", 1)[1]))
            }
        finally:
            journal.close()


@dataclass
class ApiRuntime(node_fixtures.Runtime):  # type: ignore[misc]
    """The runtime of the storm, for network ``NETWORK``."""

    config: dict[str, Any] = field(default_factory=lambda: node_fixtures.netconf(name=NETWORK))

    def add(self, container_id: str, netns: str, config: Any = None, ifname: str = "net1") -> Any:
        return super().add(container_id, netns, config or self.config, ifname)

    def delete(
        self, container_id: str, netns: str, config: Any = None, ifname: str = "net1"
    ) -> Any:
        return super().delete(container_id, netns, config or self.config, ifname)

    def check(self, container_id: str, netns: str, config: Any = None, ifname: str = "net1") -> Any:
        return super().check(container_id, netns, config or self.config, ifname)


def pool_name(pool: dict[str, Any]) -> str:
    return f"{NETWORK}-{pool['podCIDR'].replace('/', '-')}"


def pool_object(pool: dict[str, Any]) -> dict[str, Any]:
    """The IPPool the operator would create for one host's NIC."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "IPPool",
        "metadata": {
            "name": pool_name(pool),
            "labels": {"hostname": pool["hostName"], "netname": NETWORK},
        },
        "spec": {**pool, "netAttachDef": NETWORK, "excludes": [], "allocations": []},
    }


def api_allocations(kube_api: Any, name: str) -> list[dict[str, Any]]:
    pool = kube_api.custom_objects.get_cluster_custom_object(GROUP, VERSION, "ippools", name)
    return list((pool.get("spec") or {}).get("allocations") or [])


def by_address(allocations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(allocations, key=lambda a: (a["address"], a.get("containerID", "")))


@dataclass
class ApiCluster:
    hosts: list[SimHost]
    kube_api: Any
    forwards: list[Any] = field(default_factory=list)

    def mirrored(self, sim: SimHost) -> bool:
        """Whether every IPPool of the host holds exactly its journal's allocations."""
        return journal_mirrored(self.kube_api, sim)


def journal_mirrored(kube_api: Any, sim: SimHost) -> bool:
    """Whether every IPPool of the host holds exactly its journal's allocations."""
    for name, expected in sim.agent.journal_pools().items():
        got = [a for a in api_allocations(kube_api, name) if a.get("containerID")]
        if by_address(got) != by_address(expected):
            return False
    return True


def create_ippools(kube_api: Any, index: int) -> None:
    """The IPPools of node ``host-<index>``, as the operator would create them."""
    for pool in host_pools(index):
        kube_api.custom_objects.create_cluster_custom_object(
            GROUP, VERSION, "ippools", pool_object(pool)
        )


def api_agent(
    host: Any,
    index: int,
    api: tuple[str, str],
    tmp_path: Path,
    forwards: list[Any],
    **options: Any,
) -> ApiAgent:
    """The (not yet started) agent of node ``host-<index>`` on ``host``, reaching the API
    server at ``api`` (address, port) through a port forward appended to ``forwards``."""
    from multinic_sim.kubeconfig import write_kubeconfig

    address, port = api
    forward = kube_sync.NetnsPortForward(kube_sync.netns_path(host.netns), (address, int(port)))
    forwards.append(forward)
    workdir = tmp_path / f"agent-{index}"
    workdir.mkdir()
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", f"http://127.0.0.1:{forward.port}")
    return ApiAgent(host, workdir, node=f"host-{index}", kubeconfig=kubeconfig, **options)


@pytest.fixture
def api_hosts(cluster: Any, installed_shim: Path, tmp_path: Path) -> Iterator[ApiCluster]:
    if not Path(node_fixtures.SYSTEM_CNI, "macvlan").exists():
        pytest.skip(f"no CNI plugins in {node_fixtures.SYSTEM_CNI}")
    kube_api = cluster.kube_api
    sim_server = kube_api.require_sim()
    address, port = sim_server.url.removeprefix("http://").rsplit(":", 1)
    made = ApiCluster([], kube_api)
    try:
        for index in range(HOSTS):
            create_ippools(kube_api, index)
            host = node_fixtures.make_host()
            agent = api_agent(host, index, (address, port), tmp_path, made.forwards)
            sim = SimHost(index, host, agent, ApiRuntime(installed_shim, agent))
            made.hosts.append(sim)
            agent.start()
            sim.before = host_network_view(host.netns)
        yield made
    finally:
        for sim in made.hosts:
            sim.agent.stop()
            node_fixtures.ip("netns", "del", sim.host.netns, check=False)
        for forward in made.forwards:
            forward.close()


def test_kill_9_storm_keeps_the_ippools_equal_to_the_journals(
    api_hosts: ApiCluster, pods: Any, figures: dict[str, Any]
) -> None:
    hosts = api_hosts.hosts
    kube_api = api_hosts.kube_api
    rng = random.Random(FUZZ_SEED or 11)
    storm = Storm(hosts, pods, CHAOS_OPS, rng)
    kills, storm_seconds = run_storm(storm, rng)
    assert kills >= storm.min_kills
    assert storm.calls["ADD ok"] > 0, storm.calls
    # A restarting agent is "not ready" (11), never failed for good (999): it
    # has not yet learned its NICs and pools from discovery and the API.
    codes = {k.rsplit(" ", 1)[1] for k in storm.calls if k.rsplit(" ", 1)[-1].isdigit()}
    assert codes <= {"11"}, storm.calls
    time.sleep(0.5)  # delegates orphaned by the last kill finish

    for sim in hosts:
        valid = [{"containerID": cid, "ifname": "net1"} for cid in sorted(sim.live)]
        gc = sim.runtime.run(
            sim.runtime.env("GC", ""),
            node_fixtures.netconf("1.1.0", name=NETWORK, **{"cni.dev/valid-attachments": valid}),
        )
        assert gc.status == 0, gc
        held = sim.agent.held_addresses()
        assert set(held) == {(cid, "net1") for cid in sim.live}, sim.index

    settle_started = time.monotonic()
    for sim in hosts:
        wait_for(
            lambda sim=sim: api_hosts.mirrored(sim),
            MIRROR_SETTLE_S,
            f"IPPools of host-{sim.index} equal to its journal",
        )
    settle_seconds = time.monotonic() - settle_started
    # Equal, and it stays so (no late write of a stale view from a killed agent).
    time.sleep(1.5)
    every_address: list[str] = []
    pools = 0
    for sim in hosts:
        assert api_hosts.mirrored(sim), sim.index
        for name, expected in sim.agent.journal_pools().items():
            pools += 1
            in_api = api_allocations(kube_api, name)
            # The journal's live attachments, and nothing else.
            assert {a["containerID"] for a in in_api} <= set(sim.live), name
            assert len(in_api) == len(expected) == len(sim.live), name
            every_address += [a["address"] for a in in_api]
    assert len(every_address) == len(set(every_address)), "an address is held twice"
    live = sum(len(sim.live) for sim in hosts)
    assert len(every_address) == 2 * live

    for sim in hosts:
        delete_live_pods(sim)
        assert host_network_view(sim.host.netns) == sim.before
    for name in [pool_name(pool) for sim in hosts for pool in host_pools(sim.index)]:
        wait_for(
            lambda name=name: api_allocations(kube_api, name) == [],
            MIRROR_SETTLE_S,
            f"IPPool {name} empty after the last DEL",
        )
    figures.update(
        storm_figures(storm, kills, live, storm_seconds),
        hosts=HOSTS,
        ippools=pools,
        mirror_settle_seconds=round(settle_seconds, 1),
        duplicates=0,
        differences=0,
    )
