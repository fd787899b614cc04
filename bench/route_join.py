"""What one host joining a converged N-host x K-NIC L3 network costs one other host's agent.

Run (root): ``.venv/bin/python bench/route_join.py`` (10,000 hosts x 8 NICs),
``--quick`` (500 x 2), or sized: ``--hosts N --nics K [--joins J]``.

The plan is the real one: ``bench/operator_scale.py``'s hosts and network
(``host_objects``, ``bench_network``, sized for N + J hosts), planned by
``IncrementalPlanner``, stored as the operator stores it (the ``CIDR`` and
its shards, ``multinic_core.shards``) and sent as watch events' JSON: all
shards at first, then the shards a join changed.  "This" host is ``node-00000``: a fresh network namespace with
K veths eth1..ethK (peers in the same namespace, UP), each with the host's
hostIP in its masterNet, so that routes via the other hosts' hostIPs are
accepted.  No packet is sent.  Inside it the agent's real route code runs
the steps of ``CidrRouteReconciler._reconcile``: the events' JSON parsed,
the shards parsed into models (the unchanged ones come from its cache) and
merged, ``host_routes`` and ``HostRouteTables.reconcile`` (the first pass
verifying: a netlink dump of the table, then the diff; a join's pass diffs
against the last pass, as the agent does on a CIDR change).

1. The initial reconcile of the converged plan: (N - 1) x K routes.
2. J joins, one at a time: the planner adds one host, the agent gets the new
   plan object and reconciles.  The route changes are counted from a dump
   of the table by ``ip route show`` before and after (not from the agent's
   own report; expected: K added, 0 deleted, 0 changed).
3. A resync with no change (what the agent does every ``resync_interval``,
   60 s): the real ``CidrRouteReconciler._reconcile`` on the last plan.

Baseline, in the same run, in the same namespace and table, just before each
join: the floor of O(host) work, the K new routes added directly with
pyroute2 (one ``IPRoute`` socket, K device look-ups, K ``route("add")``
calls); they are then deleted (untimed) so that the agent finds the same
table.  The ratio is the agent's join over that floor.  Where the time goes
inside the agent's reconcile is shown by timing, after each join, the
table dump (``current_routes``) alone.

Reported: the plan's bytes per event, the agent's seconds per join by
phase (median of J), route changes, the baseline and the ratio, and the
process's RSS at each stage and its peak (this process also holds the
planner and the N hosts, which the agent does not).  Results are printed and
written to ``bench/results/route_join.json``.  Everything created (the
namespace and its links, the state dir) is removed on exit, also on error.

Where the time goes (measured at 10,000 x 8 on 2 shared cores): the route
changes are O(host) (8 added, nothing else touched), but the agent's work
per join is O(network): the 12 MB plan is parsed and validated whole
(~0.8 s), all 79,992 routes are rebuilt (~0.1 s), and ``reconcile`` dumps
the whole table (~0.4 s, one raw netlink dump; pyroute2's took ~14 s and
4-5 KB of peak RSS per route) before it adds the 8 new ones: ~1.4 s
against ~18 ms for the 8 adds alone (was ~16 s).  The no-change resync
every 60 s costs about the same (~1.1 s, was 18.5 s).  The rest is the
single CIDR object holding every host: each join sends all of it to every
agent.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client
from operator_scale import bench_network, host_objects
from pyroute2 import IPRoute

from multinic_agent.host_routes import RTPROT_MULTINIC
from multinic_agent.pod_netns import in_netns
from multinic_agent.route_sync import CidrRouteReconciler
from multinic_core.incremental import IncrementalPlanner
from multinic_core.models import (
    CIDR,
    CIDRSpec,
    HostInterface,
    MultiNicNetwork,
    ObjectMeta,
    load_resource,
)
from multinic_core.planner import PlanResult, cidr_object
from multinic_core.routes import HostRoute, host_routes
from multinic_core.shards import merge_plan, shard_labels, shard_name, split_plan

RESULTS = Path(__file__).parent / "results" / "route_join.json"
ME = 0
"""Index of "this" host in the plan (its hostIPs go on the namespace's veths)."""
NETNS = f"mnrj{os.getpid() % 100000}"
NETNS_PATH = f"/var/run/netns/{NETNS}"
SCRATCH_TABLE = 20999
"""Where the initial reconcile's baselines add their routes (the agent's network gets 20000)."""

T = TypeVar("T")


def ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def rss_mb() -> float:
    """The process's resident set now (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def peak_rss_mb() -> float:
    """The process's peak resident set so far (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def timed(run: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


# --------------------------------------------------------------------------- the namespace


def setup_netns(nics: int, me: HostInterface) -> None:
    """``NETNS`` with veths eth1..ethK (peers ethNp), UP, with this host's hostIP/16."""
    ip("netns", "add", NETNS)
    ip("-n", NETNS, "link", "set", "lo", "up")
    for nic in me.spec.interfaces[:nics]:
        name = nic.interface_name
        prefix = nic.net_address.split("/")[1]
        ip("-n", NETNS, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip("-n", NETNS, "addr", "add", f"{nic.host_ip}/{prefix}", "dev", name)
        ip("-n", NETNS, "link", "set", name, "up")
        ip("-n", NETNS, "link", "set", f"{name}p", "up")


def teardown_netns() -> list[str]:
    """Delete the namespace (its veths go with it); what could not be removed."""
    problems = []
    if Path(NETNS_PATH).exists():
        done = subprocess.run(
            ["ip", "netns", "del", NETNS], capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            problems.append(f"ip netns del {NETNS}: {done.stderr.strip()}")
    return problems


def table_dump(table: int) -> set[str]:
    """The routes of ``table`` as ``ip route show`` prints them (iproute2, not the agent's code)."""
    shown = ip("-n", NETNS, "route", "show", "table", str(table))
    return {line.strip() for line in shown.splitlines() if line.strip()}


def route_changes(before: set[str], after: set[str]) -> dict[str, int]:
    """Added / deleted / changed destinations between two dumps."""

    def by_dst(lines: set[str]) -> dict[str, str]:
        return {line.split()[0]: line for line in lines}

    old, new = by_dst(before), by_dst(after)
    return {
        "added": len(new.keys() - old.keys()),
        "deleted": len(old.keys() - new.keys()),
        "changed": sum(1 for dst in old.keys() & new.keys() if old[dst] != new[dst]),
    }


# --------------------------------------------------------------------------- the plan


def hosts_for(count: int, nics: int, start: int = 0) -> list[HostInterface]:
    return [
        load_resource(HostInterface, host_objects(index, nics)[1])
        for index in range(start, start + count)
    ]


class PlanObjects:
    """The plan's CIDR shards as the operator stores them (``multinic_core.shards``),
    and the watch events a new plan sends: one per shard that changed."""

    def __init__(self, network: MultiNicNetwork) -> None:
        self.network = network
        self.objects: list[dict[str, Any]] = []
        self._specs: list[str] = []
        self._version = 1000

    def update(self, plan: PlanResult) -> list[bytes]:
        """The events of ``plan``'s shards that differ from the last plan's."""
        owner = cidr_object(self.network, plan).metadata.owner_references
        parts = split_plan(plan.spec, at_least=len(self.objects))
        events = []
        for index, part in enumerate(parts):
            spec = part.model_dump_json(exclude_none=True)
            if index < len(self._specs) and self._specs[index] == spec:
                continue
            self._version += 1
            generation = 1 if index >= len(self.objects) else self._generation(index) + 1
            body = CIDR(
                metadata=ObjectMeta(
                    name=shard_name(self.network.name, index),
                    labels=shard_labels(self.network.name, index),
                    owner_references=owner,
                ),
                spec=part,
            ).to_dict()
            body["metadata"].update(
                {"resourceVersion": str(self._version), "generation": generation, "uid": "bench"}
            )
            event = {"type": "MODIFIED", "object": body}
            events.append(json.dumps(event, separators=(",", ":")).encode())
            if index < len(self.objects):
                self.objects[index], self._specs[index] = body, spec
            else:
                self.objects.append(body)
                self._specs.append(spec)
        return events

    def _generation(self, index: int) -> int:
        return int(self.objects[index]["metadata"]["generation"])


# --------------------------------------------------------------------------- the agent


@dataclass
class AgentPass:
    """One pass of the agent's steps for one CIDR event, timed by phase."""

    plan_bytes: int
    phases: dict[str, float] = field(default_factory=dict)
    routes: int = 0
    added: int = 0
    replaced: int = 0
    removed: int = 0
    kept: int = 0
    errors: tuple[str, ...] = ()
    table: int = 0
    rss_mb: dict[str, float] = field(default_factory=dict)
    """The process's RSS after each phase."""

    @property
    def total(self) -> float:
        return sum(self.phases.values())


def agent_pass(
    reconciler: CidrRouteReconciler,
    node: str,
    events: list[bytes],
    current: dict[str, dict[str, Any]],
    *,
    verify: bool,
) -> AgentPass:
    """What ``CidrRouteReconciler`` does with the CIDR events of one plan change.

    Its ``_reconcile``: the events' JSON parsed (what its watch does), the
    network's shards parsed into models (only the changed ones: the others
    are cached by resourceVersion) and merged, then ``_reconcile_network``.
    ``current``: the agent's watch cache (CIDRs by name), brought up to date.
    ``verify``: read the table back from the kernel (the agent's first pass
    and periodic resync) or diff against its last pass (a CIDR change).
    """
    result = AgentPass(plan_bytes=sum(len(e) for e in events))
    spent, objs = timed(lambda: [json.loads(e)["object"] for e in events])
    for obj in objs:
        current[obj["metadata"]["name"]] = obj
    result.phases["parse_json"] = spent
    result.rss_mb["parse_json"] = rss_mb()

    def merged() -> tuple[str, CIDRSpec]:
        ((name, parts),) = reconciler._plans(list(current.values())).items()
        return name, merge_plan(name, [reconciler._parsed(o).spec for o in parts.values()])

    spent, (network, spec) = timed(merged)
    result.phases["load_and_merge"] = spent
    result.rss_mb["load_and_merge"] = rss_mb()

    def routes_of() -> list[HostRoute]:
        in_plan = any(h.host_name == node for e in spec.cidr for h in e.hosts)
        assert in_plan, f"{node} is not in the plan"
        return host_routes(spec, node)

    spent, routes = timed(routes_of)
    result.phases["host_routes"] = spent
    result.rss_mb["host_routes"] = rss_mb()
    tables = reconciler.tables
    spent, sync = timed(
        lambda: tables.reconcile(network, spec.config.subnet, routes, verify=verify)
    )
    result.phases["tables_reconcile"] = spent
    result.rss_mb["tables_reconcile"] = rss_mb()
    result.routes = len(routes)
    result.added, result.replaced, result.removed = (
        len(sync.added),
        len(sync.replaced),
        len(sync.removed),
    )
    result.kept, result.errors, result.table = sync.kept, sync.errors, sync.table
    return result


def baseline_add(routes: list[HostRoute], table: int) -> tuple[float, float]:
    """The floor: ``routes`` added straight through pyroute2.

    Seconds in all, and of that the socket's opening and the device look-ups.
    """
    started = time.perf_counter()
    with IPRoute() as ipr:
        indexes = {name: ipr.link_lookup(ifname=name)[0] for name in {r.device for r in routes}}
        opened = time.perf_counter() - started
        for r in routes:
            ipr.route(
                "add",
                dst=r.dst,
                gateway=r.gateway,
                oif=indexes[r.device],
                table=table,
                proto=RTPROT_MULTINIC,
            )
    return time.perf_counter() - started, opened


def batch_add(routes: list[HostRoute], table: int) -> float:
    """``routes`` added by one ``ip -batch`` (iproute2 in C: the kernel's own floor); seconds."""
    lines = "".join(
        f"route add {r.dst} via {r.gateway} dev {r.device} table {table} proto {RTPROT_MULTINIC}\n"
        for r in routes
    ).encode()
    started = time.perf_counter()
    subprocess.run(["ip", "-n", NETNS, "-batch", "-"], input=lines, check=True)
    return time.perf_counter() - started


def initial_baselines(routes: list[HostRoute]) -> dict[str, float]:
    """The initial table's routes added without the agent, into a scratch table (then emptied)."""
    # Warm-up: pyroute2's first socket and request pay for lazy imports and set-up.
    baseline_add(routes[:1], SCRATCH_TABLE)
    ip("-n", NETNS, "route", "flush", "table", str(SCRATCH_TABLE))
    found = {"pyroute2_s": baseline_add(routes, SCRATCH_TABLE)[0]}
    ip("-n", NETNS, "route", "flush", "table", str(SCRATCH_TABLE))
    found["ip_batch_s"] = batch_add(routes, SCRATCH_TABLE)
    ip("-n", NETNS, "route", "flush", "table", str(SCRATCH_TABLE))
    return found


def delete_routes(routes: list[HostRoute], table: int) -> None:
    with IPRoute() as ipr:
        for r in routes:
            ipr.route("del", dst=r.dst, table=table)


# --------------------------------------------------------------------------- the run


@dataclass
class Run:
    hosts: int
    nics: int
    joins: int
    rss: dict[str, float] = field(default_factory=dict)
    checks: dict[str, Any] = field(default_factory=dict)
    initial: AgentPass | None = None
    joined: list[AgentPass] = field(default_factory=list)
    changes: list[dict[str, int]] = field(default_factory=list)
    baseline_s: list[float] = field(default_factory=list)
    baseline_open_s: list[float] = field(default_factory=list)
    initial_baseline_s: dict[str, float] = field(default_factory=dict)
    dump_s: list[float] = field(default_factory=list)
    plan_s: list[float] = field(default_factory=list)
    resync_s: float = 0.0
    shards: int = 0
    shards_changed: list[int] = field(default_factory=list)
    setup_s: dict[str, float] = field(default_factory=dict)


def run_bench(hosts: int, nics: int, joins: int, state_dir: Path) -> Run:
    run = Run(hosts, nics, joins)
    run.rss["after_imports"] = rss_mb()
    started = time.perf_counter()
    members = hosts_for(hosts, nics)
    network = load_resource(MultiNicNetwork, bench_network(hosts + joins, nics))
    planner = IncrementalPlanner.for_network(network, members)
    plan = planner.result()
    assert not plan.problems, plan.problems[:3]
    stored = PlanObjects(network)
    events = stored.update(plan)
    run.setup_s["plan"] = time.perf_counter() - started
    run.rss["after_plan"] = rss_mb()
    me = members[ME]
    node = me.spec.host_name
    started = time.perf_counter()
    setup_netns(nics, me)
    run.setup_s["netns"] = time.perf_counter() - started
    reconciler = CidrRouteReconciler(client.ApiClient(), node, state_dir)
    tables = reconciler.tables
    watched: dict[str, dict[str, Any]] = {}

    def initial() -> AgentPass:
        run.initial_baseline_s = initial_baselines(host_routes(plan.spec, node))
        return agent_pass(reconciler, node, events, watched, verify=True)

    run.initial = in_netns(NETNS_PATH, initial)
    table = run.initial.table
    run.rss["after_initial_reconcile"] = rss_mb()
    run.checks["initial_routes_in_table"] = len(table_dump(table))
    run.checks["initial_routes_expected"] = (hosts - 1) * nics

    for newcomer in hosts_for(joins, nics, start=hosts):
        previous = {r.dst for r in host_routes(plan.spec, node)}
        spent, _ = timed(lambda host=newcomer: planner.add_host(host))  # type: ignore[misc]
        plan = planner.result()
        run.plan_s.append(spent)
        changed = stored.update(plan)
        run.shards_changed.append(len(changed))
        new_routes = [r for r in host_routes(plan.spec, node) if r.dst not in previous]

        def join(new: list[HostRoute] = new_routes, body: list[bytes] = changed) -> AgentPass:
            spent, opened = baseline_add(new, table)
            run.baseline_s.append(spent)
            run.baseline_open_s.append(opened)
            delete_routes(new, table)
            before = table_dump(table)
            result = agent_pass(reconciler, node, body, watched, verify=False)
            run.changes.append(route_changes(before, table_dump(table)))
            run.dump_s.append(timed(lambda: tables.current_routes(table))[0])
            return result

        run.joined.append(in_netns(NETNS_PATH, join))
    run.rss["after_joins"] = rss_mb()

    resync(run, reconciler, stored.objects, table, network.name)
    run.rss["peak"] = peak_rss_mb()
    return run


def resync(
    run: Run,
    reconciler: CidrRouteReconciler,
    objects: list[dict[str, Any]],
    table: int,
    network: str,
) -> None:
    """The agent's periodic pass on an unchanged plan: the real ``_reconcile``."""
    run.shards = len(objects)
    before = in_netns(NETNS_PATH, lambda: table_dump(table))
    run.resync_s, statuses = timed(
        lambda: in_netns(NETNS_PATH, lambda: reconciler._reconcile(list(objects)))
    )
    run.checks["resync_status"] = statuses[network].status
    run.checks["resync_changes"] = route_changes(before, table_dump(table))


def median(values: list[float]) -> float:
    return statistics.median(values) if values else 0.0


def results_of(run: Run, quick: bool) -> dict[str, Any]:
    assert run.initial is not None
    init = run.initial
    # The phases of the median join (so that they add up to its total).
    middle = sorted(run.joined, key=lambda p: p.total)[(len(run.joined) - 1) // 2]
    agent = middle.total
    baseline = median(run.baseline_s)
    initial_base = run.initial_baseline_s
    expected = {"added": run.nics, "deleted": 0, "changed": 0}
    checks = dict(run.checks)
    checks["initial_table_complete"] = (
        checks["initial_routes_in_table"] == checks["initial_routes_expected"]
    )
    checks["each_join_adds_k_routes_only"] = all(c == expected for c in run.changes)
    checks["agent_reports_k_added"] = all(
        (p.added, p.replaced, p.removed, p.errors) == (run.nics, 0, 0, ()) for p in run.joined
    )
    checks["resync_changes_nothing"] = checks["resync_changes"] == {
        "added": 0,
        "deleted": 0,
        "changed": 0,
    }
    return {
        "benchmark": "route_join",
        "hosts": run.hosts,
        "nics": run.nics,
        "joins": run.joins,
        "quick": quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "baselines": {
            "join": "the K new routes added straight through pyroute2 IPRoute "
            "(one socket, K link look-ups, K route adds) in the same table",
            "initial": "the same (N - 1) x K routes added straight through pyroute2 "
            "(pyroute2_s, the ratio's base) and by one `ip -batch` (ip_batch_s), "
            "into an empty scratch table",
        },
        "setup_s": {k: round(v, 3) for k, v in run.setup_s.items()},
        "initial_reconcile": {
            "plan_bytes": init.plan_bytes,
            "routes": init.routes,
            "phases_s": {k: round(v, 4) for k, v in init.phases.items()},
            "total_s": round(init.total, 4),
            "per_route_us": round(1e6 * init.total / max(1, init.routes), 2),
            "rss_mb_after_phase": init.rss_mb,
            "baseline_s": {k: round(v, 4) for k, v in initial_base.items()},
            "ratio_vs_pyroute2": round(init.total / initial_base["pyroute2_s"], 2),
            "ratio_vs_ip_batch": round(init.total / initial_base["ip_batch_s"], 1),
        },
        "join": {
            "plan_bytes": [p.plan_bytes for p in run.joined],
            "shards_changed": run.shards_changed,
            "planner_add_host_s": [round(s, 6) for s in run.plan_s],
            "agent_s": [round(p.total, 6) for p in run.joined],
            "rss_mb_after_each_join": [p.rss_mb["tables_reconcile"] for p in run.joined],
            "agent_median_s": round(agent, 6),
            "agent_phases_of_median_join_s": {k: round(v, 6) for k, v in middle.phases.items()},
            "table_dump_alone_median_s": round(median(run.dump_s), 6),
            "route_changes": run.changes,
            "baseline_s": [round(s, 6) for s in run.baseline_s],
            "baseline_socket_and_lookups_s": [round(s, 6) for s in run.baseline_open_s],
            "baseline_median_s": round(baseline, 6),
            "ratio_vs_baseline": round(agent / baseline, 1) if baseline else None,
        },
        "resync_no_change_s": round(run.resync_s, 4),
        "cidr_shards": run.shards,
        "rss_mb": run.rss,
        "checks": checks,
    }


def report(results: dict[str, Any]) -> None:
    init, join, nics = results["initial_reconcile"], results["join"], results["nics"]
    base = init["baseline_s"]
    print(
        f"initial reconcile: {init['routes']:,d} routes from a {init['plan_bytes']:,d}-byte plan "
        f"in {init['total_s']:.2f} s ({init['per_route_us']} us/route): "
        + ", ".join(f"{k} {v:.3f}s" for k, v in init["phases_s"].items())
    )
    print(
        f"  baseline: pyroute2 adds {base['pyroute2_s']:.2f} s (ratio {init['ratio_vs_pyroute2']}x), "
        f"ip -batch {base['ip_batch_s']:.2f} s (ratio {init['ratio_vs_ip_batch']}x)"
    )
    print(f"one join ({results['joins']} joins, the median one):")
    print(
        f"  plan bytes sent            {join['plan_bytes'][-1]:>12,d} "
        f"({join['shards_changed'][-1]} of {results['cidr_shards']} CIDR shards changed)"
    )
    for name, seconds in join["agent_phases_of_median_join_s"].items():
        print(f"  agent {name:20s} {seconds * 1000:12.3f} ms")
    print(f"  agent total                {join['agent_median_s'] * 1000:12.3f} ms")
    print(f"  (table dump alone, median  {join['table_dump_alone_median_s'] * 1000:12.3f} ms)")
    print(f"  baseline: {nics} route adds    {join['baseline_median_s'] * 1000:12.3f} ms")
    print(f"  ratio agent / baseline     {join['ratio_vs_baseline']:>12}x")
    print(f"  route changes per join     {join['route_changes']}")
    print(f"  planner add_host           {join['planner_add_host_s']} s")
    print(f"  RSS MB after each join     {join['rss_mb_after_each_join']}")
    print(
        f"resync with no change (CidrRouteReconciler._reconcile): {results['resync_no_change_s']:.3f} s"
    )
    print(f"RSS MB: {results['rss_mb']}; after each initial phase: {init['rss_mb_after_phase']}")
    print(f"checks: {results['checks']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 hosts x 2 NICs")
    parser.add_argument("--hosts", type=int, default=None, help="default 10,000 (500 --quick)")
    parser.add_argument("--nics", type=int, default=None, help="default 8 (2 --quick)")
    parser.add_argument("--joins", type=int, default=3, help="joins measured (median); 3")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    hosts = args.hosts or (500 if args.quick else 10_000)
    nics = args.nics or (2 if args.quick else 8)
    if hosts < 2 or nics < 1 or args.joins < 1:
        parser.error("--hosts must be at least 2, --nics and --joins at least 1")
    if nics > 16:
        parser.error("--nics: at most 16 (the bench's masterNets)")
    if os.geteuid() != 0:
        parser.error("needs root (network namespaces)")
    print(f"{hosts} hosts x {nics} NICs, {args.joins} joins; namespace {NETNS}")
    # SIGTERM unwinds like Ctrl-C, through the clean-up below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    failure = ""
    with tempfile.TemporaryDirectory(prefix="route-join-") as state:
        try:
            run = run_bench(hosts, nics, args.joins, Path(state))
        except (RuntimeError, OSError) as e:
            failure = str(e)
        finally:
            leftovers = teardown_netns()
    if leftovers:
        print("cleanup failed: " + "; ".join(leftovers), file=sys.stderr)
    if failure:
        print(f"route_join: {failure}", file=sys.stderr)
    if failure or leftovers:
        return 1
    results = results_of(run, args.quick)
    report(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.output}")
    correct = all(v is True for k, v in results["checks"].items() if isinstance(v, bool))
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
