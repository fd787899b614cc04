"""One address, one live holder: random ADD/DEL, plan edits, watch lag and agent restarts.

A hypothesis state machine drives three hosts that share one NIC link
(eth1, one vlanCIDR), each with its own real :class:`AllocationJournal` on
disk and the CNI server's real adoption, through the operator's real plan
edit logic (planner, ``desired_pools``, ``retire_pools``) and the agent
mirror's real projection (``mirrored_allocations``, ``retire_and_settle``).
The API is a dict of IPPool bodies; each agent sees it through its own copy
that a rule refreshes (a watch that lags), and mirrors into it in another
rule, so every interleaving of plan edit, watch delivery, mirror pass and
ADD is explored.  Predecessor pods hold rows without a containerID from the
start.  After every step: no (NIC, address) has two live holders.
"""

from __future__ import annotations

import copy
import json
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from multinic_agent.cni_server import CniServer
from multinic_agent.pool_mirror import mirrored_allocations, retire_and_settle
from multinic_agent.records import RecordStore
from multinic_core.errors import MultinicError, TryAgainError
from multinic_core.models import (
    POOL_RETIRED_ACK,
    POOL_RETIRED_LABEL,
    CIDRSpec,
    HostInterface,
    IPPool,
    IPPoolSpec,
    MultiNicNetwork,
    load_resource,
)
from multinic_core.planner import plan_cidrs, pool_excludes, stranded_allocations
from multinic_ipam.journal import AllocationJournal, PoolBlock
from multinic_operator.desired import desired_pools, pool_patch, retire_pools

from .conftest import FUZZ_EXAMPLES, FUZZ_SEED

HOSTS = ("host-0", "host-1", "host-2")
NETWORK = "net"
LEGACY = (1, 66, 67, 68, 130, 131)
"""Predecessor pods on host-0: rows (by index) of its first /24 pool, no containerID.
Spread so that a shrink puts some inside the other hosts' new blocks."""
EXCLUDES = ("192.168.0.0/30", "192.168.0.64/28", "192.168.1.0/24", "192.168.0.5/32")
TOTALS: Counter[str] = Counter()


def network(host_block: int, excludes: tuple[str, ...]) -> MultiNicNetwork:
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": host_block,
        "interfaceBlock": 2,
        "vlanMode": "l2",
        "excludeCIDRs": list(excludes),
    }
    return load_resource(
        MultiNicNetwork,
        {
            "metadata": {"name": NETWORK, "generation": 1},
            "spec": {
                "subnet": "192.168.0.0/16",
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": ["10.0.1.0/24"],
                "plugin": {"type": "macvlan"},
            },
        },
    )


def host(index: int) -> HostInterface:
    name = HOSTS[index]
    return load_resource(
        HostInterface,
        {
            "metadata": {"name": name},
            "spec": {
                "hostName": name,
                "interfaces": [
                    {
                        "interfaceName": "eth1",
                        "netAddress": "10.0.1.0/24",
                        "hostIP": f"10.0.1.{index + 1}",
                    }
                ],
            },
        },
    )


class PoolView:
    """An agent's watch cache of its node's pools (the NodeState the CNI server reads)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.objects: dict[str, dict[str, Any]] = {}

    def specs(self, *, retired: bool) -> list[IPPoolSpec]:
        return [
            IPPoolSpec.model_validate(o["spec"])
            for o in self.objects.values()
            if retired or POOL_RETIRED_LABEL not in o["metadata"].get("labels", {})
        ]

    def all_pools(self) -> list[IPPoolSpec]:
        return self.specs(retired=True)

    def pools_for(self, name: str) -> list[IPPoolSpec]:
        return [p for p in self.specs(retired=False) if p.net_attach_def == name]


class Agent:
    def __init__(self, node: str, state_dir: Path) -> None:
        self.node, self.state_dir = node, state_dir
        self.view = PoolView(node)
        self.start()

    def start(self) -> None:
        self.journal = AllocationJournal(self.state_dir, reuse_delay=0)
        self.server = CniServer(
            node=self.node,
            node_state=self.view,  # type: ignore[arg-type]
            journal=self.journal,
            records=RecordStore(self.state_dir),
        )


class Uniqueness(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="uniq-", dir=ROOT))
        self.agents = {h: Agent(h, self.root / h) for h in HOSTS}
        self.api: dict[str, dict[str, Any]] = {}
        self.previous: CIDRSpec | None = None
        self.host_block, self.excludes, self.generation = 6, (), 1
        self.live: dict[str, tuple[str, list[str]]] = {}
        """pod -> (node, addresses) of every running pod, the predecessor's included."""
        self.pods = 0
        self.pending: list[tuple[str, str, PoolBlock]] = []
        self.reconcile()
        self._legacy_pods()

    def _legacy_pods(self) -> None:
        pool = next(p for p in self.api.values() if p["spec"]["hostName"] == "host-0")
        pool["spec"]["allocations"] = [
            {"pod": f"legacy-{i}", "namespace": "old", "index": i, "address": f"192.168.0.{i}"}
            for i in LEGACY
        ]
        for i in LEGACY:
            self.live[f"legacy-{i}"] = ("host-0", [f"192.168.0.{i}"])

    # ------------------------------------------------------------------ the operator

    @rule()
    def reconcile(self) -> None:
        """One reconcile of the network, as NetworkReconciler._apply_pools does it."""
        hosts = [host(i) for i in range(len(HOSTS))]
        plan = plan_cidrs(network(self.host_block, self.excludes), hosts, self.previous)
        if self.previous is not None and plan.spec != self.previous:
            self.generation += 1
        self.previous = plan.spec
        desired = desired_pools(NETWORK, plan.spec, pool_excludes(plan.spec))
        retired = retire_pools(self.api, desired, self.generation, HOSTS, HOSTS)
        stranded = stranded_allocations(
            plan.spec, [load_resource(IPPool, p) for p in self.api.values()]
        )
        TOTALS["stranded reported"] += len(stranded)
        for name, extra in retired.excludes.items():
            desired[name]["spec"]["excludes"] += extra
        for name, body in desired.items():
            if name in self.api:
                patch = pool_patch(self.api[name], body)
                if patch:
                    self._merge(self.api[name], patch)
            elif name not in retired.deferred:
                self.api[name] = {
                    **copy.deepcopy(body),
                    "metadata": {**body["metadata"], "annotations": {}},
                }
        for name, value in retired.retire.items():
            self.api[name]["metadata"]["labels"][POOL_RETIRED_LABEL] = value
        for name in retired.delete:
            del self.api[name]
        TOTALS["reconciles"] += 1
        TOTALS["deferred pools"] += len(retired.deferred)

    @staticmethod
    def _merge(body: dict[str, Any], patch: dict[str, Any]) -> None:
        body["spec"].update(patch.get("spec", {}))
        for part in ("labels", "annotations"):
            for key, value in patch["metadata"].get(part, {}).items():
                target = body["metadata"].setdefault(part, {})
                if value is None:
                    target.pop(key, None)
                else:
                    target[key] = value

    @rule(block=st.sampled_from([6, 7, 8]))
    def edit_host_block(self, block: int) -> None:
        self.host_block = block
        TOTALS["plan edits"] += 1

    @rule(exclude=st.sampled_from(EXCLUDES))
    def toggle_exclude(self, exclude: str) -> None:
        chosen = set(self.excludes) ^ {exclude}
        self.excludes = tuple(sorted(chosen))
        TOTALS["plan edits"] += 1

    # ------------------------------------------------------------------ the agents

    @rule(node=st.sampled_from(HOSTS))
    def watch_delivers(self, node: str) -> None:
        self.agents[node].view.objects = {
            n: copy.deepcopy(p) for n, p in self.api.items() if p["spec"]["hostName"] == node
        }

    @rule(node=st.sampled_from(HOSTS))
    def mirror(self, node: str) -> None:
        agent = self.agents[node]
        agent.server.adopt_foreign()
        pools = list(agent.view.objects.values())
        retire_and_settle(pools, agent.journal)
        for seen in pools:
            stored = self.api.get(seen["metadata"]["name"])
            if stored is None:
                continue
            stored["spec"]["allocations"] = mirrored_allocations(stored, agent.journal)
            label = seen["metadata"].get("labels", {}).get(POOL_RETIRED_LABEL)
            if label is not None:
                stored["metadata"].setdefault("annotations", {})[POOL_RETIRED_ACK] = label

    @initialize()
    def every_watch_lists(self) -> None:
        for node in HOSTS:
            self.watch_delivers(node)

    @rule(node=st.sampled_from(HOSTS))
    def add_reads_pools(self, node: str) -> None:
        """An ADD reads its pools; its allocation (the next rule) may come much later."""
        agent = self.agents[node]
        agent.server.adopt_foreign()
        pools = agent.view.pools_for(NETWORK)
        if not pools:
            TOTALS["ADD: no pool yet"] += 1
            return
        self.pods += 1
        self.pending.append((node, f"pod-{self.pods}", PoolBlock.from_spec(pools[0])))

    @rule(node=st.sampled_from(HOSTS))
    def add_pod(self, node: str) -> None:
        self.add_reads_pools(node)
        self.add_allocates()

    @precondition(lambda self: self.pending)
    @rule()
    def add_allocates(self) -> None:
        if not self.pending:
            return
        node, pod, block = self.pending.pop(0)
        agent = self.agents[node]
        try:
            entries = agent.journal.allocate(NETWORK, pod, "net1", [block], pod=pod, namespace="ns")
        except TryAgainError:
            TOTALS["ADD: try again"] += 1
            return
        except MultinicError:
            TOTALS["ADD: pool full"] += 1
            return
        self.live[pod] = (node, [e.address for e in entries])
        TOTALS["ADDs"] += 1

    @rule(data=st.data())
    def delete_pod(self, data: st.DataObject) -> None:
        if not self.live:
            return
        pod = data.draw(st.sampled_from(sorted(self.live)))
        node, _ = self.live.pop(pod)
        journal = self.agents[node].journal
        if pod.startswith("legacy-"):
            journal.release_adopted(NETWORK, "old", pod)
        else:
            journal.release(NETWORK, pod, "net1")
        TOTALS["DELs"] += 1

    @rule()
    def time_passes(self) -> None:
        """Every watch delivers, every agent mirrors, the operator reconciles, twice:
        the converged states in which a later ADD meets what the edit left behind."""
        for _ in range(2):
            for node in HOSTS:
                self.watch_delivers(node)
                self.mirror(node)
            self.reconcile()
        for node in HOSTS:
            self.watch_delivers(node)

    @rule(node=st.sampled_from(HOSTS))
    def restart_agent(self, node: str) -> None:
        agent = self.agents[node]
        agent.journal.close()
        # ADDs in flight die with the agent (the runtime retries them later).
        self.pending = [p for p in self.pending if p[0] != node]
        agent.start()
        TOTALS["agent restarts"] += 1

    # ------------------------------------------------------------------ the property

    @invariant()
    def one_live_holder_per_address(self) -> None:
        seen: dict[str, str] = {}
        for pod, (_, addresses) in self.live.items():
            for address in addresses:
                assert address not in seen, f"{address} is held by {seen[address]} and {pod}"
                seen[address] = pod
        TOTALS["holders checked"] += len(seen)
        TOTALS["checks"] += 1

    def teardown(self) -> None:
        for agent in self.agents.values():
            agent.journal.close()
        TOTALS["sequences"] += 1


ROOT = ""
"""Where each sequence's hosts keep their state (a pytest temporary directory)."""


@pytest.fixture(autouse=True)
def state_root(tmp_path: Path) -> None:
    global ROOT  # noqa: PLW0603 - hypothesis builds the state machine without arguments
    ROOT = str(tmp_path)


@pytest.fixture
def machine() -> Iterator[Uniqueness]:
    """One state machine driven step by step (the regression sequences)."""
    built = Uniqueness()
    built.every_watch_lists()
    yield built
    built.teardown()


def test_no_address_ever_has_two_live_holders(figures: dict[str, Any]) -> None:
    TOTALS.clear()
    examples = max(20, FUZZ_EXAMPLES // 20)
    run_state_machine_as_test(
        Uniqueness,
        settings=settings(
            max_examples=examples,
            stateful_step_count=100,
            deadline=None,
            database=None,
            derandomize=FUZZ_SEED == 0,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )
    figures.update(TOTALS, duplicates=0)
    # The search reached the states that matter, not only empty ones.
    assert TOTALS["plan edits"] > examples, TOTALS
    assert TOTALS["ADDs"] > examples * 3, TOTALS
    assert TOTALS["stranded reported"] > 0, TOTALS
    assert TOTALS["deferred pools"] > 0, TOTALS
    # Whether the random search also meets an ADD refused by a retired pool
    # varies with hash seeds (0 to 78 seen); the step-by-step test below always does.


def test_the_shrink_of_a_predecessor_pool_hands_none_of_its_addresses_to_another_host(
    machine: Uniqueness,
) -> None:
    """The issue's scenario across hosts, step by step: host-0's /24 (with predecessor
    pods at .66-.68) shrinks to /26s, and host-1's new block .64/26 lies inside it."""
    machine.edit_host_block(8)
    machine.reconcile()
    assert machine.agents["host-1"].view.pools_for(NETWORK)[0].pod_cidr == "192.168.1.0/24"
    machine.watch_delivers("host-1")
    assert machine.agents["host-1"].view.pools_for(NETWORK) == [], "deferred until acknowledged"
    machine.watch_delivers("host-0")
    machine.mirror("host-0")
    machine.reconcile()
    machine.watch_delivers("host-1")
    for _ in range(5):
        machine.add_pod("host-1")
        machine.one_live_holder_per_address()
    got = {a for node, addresses in machine.live.values() if node == "host-1" for a in addresses}
    assert got == {f"192.168.0.{i}" for i in (65, 69, 70, 71, 72)}


def test_an_add_that_read_a_pool_before_it_was_retired_and_deleted_tries_again(
    machine: Uniqueness,
) -> None:
    """Found by the state machine at 500 sequences: host-1 read its /24, the edit
    retired it, host-1 acknowledged, the operator deleted it and gave host-2 a /25
    inside it; the stalled ADD then allocated 192.168.1.1 from the vanished pool
    while host-2 got it too. A pool once retired stays refused after its deletion."""
    machine.edit_host_block(7)
    machine.reconcile()
    machine.add_reads_pools("host-1")
    machine.time_passes()
    machine.add_allocates()
    machine.add_pod("host-2")
    machine.one_live_holder_per_address()
    assert not any(node == "host-1" for node, _ in machine.live.values()), "host-1 tries again"
    assert TOTALS["ADD: try again"] >= 1
