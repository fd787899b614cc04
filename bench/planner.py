"""Benchmark of the CIDR planner: 10,000 hosts x 8 NICs, from scratch and incremental.

Run: ``.venv/bin/python bench/planner.py`` (``--quick`` for 500 hosts and one
round; ``--hosts N --nics K`` for other sizes).  The network is picked from the
sizes: subnet 10.0.0.0/8, interfaceBlock = bits for K NICs, hostBlock = bits
for 1.25 N + 1 hosts (room for the newcomer and the excluded blocks), the rest
pod bits.

Two baselines, each measured in the same run on the same inputs:

* From scratch: a naive reference planner that produces the same CIDR spec
  shape by iterating ``netaddr.IPNetwork.subnet()`` (the n-th /P+I block per
  network, then the pod blocks in sorted host-name order) with no excludes,
  no stability and no problem reporting.  With no excludes and no previous
  plan, both must give identical output (checked), so the ratio is the price
  of the real planner's exclude checks and index bookkeeping over bare block
  carving.  Target: under 1 s at 10,000 x 8.
* One join / one leave: the from-scratch re-plan with the previous plan
  (``plan_cidrs(network, hosts, previous)``, what the operator did on every
  join before the incremental planner), against ``IncrementalPlanner``'s
  ``add_host`` / ``remove_host`` plus ``result()`` (the whole new plan), and
  ``sync`` (what the operator calls: diff of the full host list by
  resourceVersion, then the change).  Both must give the same plan (checked).
  Target: under 5 ms for one join at 10,000 x 8.

Results are printed and written to ``bench/results/planner.json``.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import netaddr

from multinic_core.incremental import IncrementalPlanner
from multinic_core.models import (
    CIDREntry,
    CIDRSpec,
    HostInterface,
    HostInterfaceInfo,
    InterfaceInfo,
    MultiNicNetwork,
    ippool_name,
    load_resource,
)
from multinic_core.planner import PlanResult, plan_cidrs, plugin_config

RESULTS = Path(__file__).parent / "results" / "planner.json"
SUBNET = "10.0.0.0/8"
MIN_POD_BITS = 2  # a pod block needs addresses besides its network and last address
INCREMENTAL_ROUNDS = 50

T = TypeVar("T")


def blocks_for(hosts: int, interfaces: int) -> tuple[int, int]:
    """(interfaceBlock, hostBlock) for the sizes, checked to fit SUBNET."""
    interface_block = max(1, (interfaces - 1).bit_length())
    # Room for the newcomer and the excluded blocks of the excludes run (a quarter more).
    host_block = (hosts + hosts // 4 + 1).bit_length()
    pod_bits = 32 - netaddr.IPNetwork(SUBNET).prefixlen - interface_block - host_block
    if pod_bits < MIN_POD_BITS:
        raise SystemExit(
            f"{hosts} hosts x {interfaces} NICs do not fit {SUBNET} "
            f"(interfaceBlock {interface_block} + hostBlock {host_block} leave {pod_bits} pod bits)"
        )
    return interface_block, host_block


def make_network(
    excludes: Sequence[str], interfaces: int, interface_block: int, host_block: int
) -> MultiNicNetwork:
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": host_block,
        "interfaceBlock": interface_block,
        "vlanMode": "l3",
        "excludeCIDRs": list(excludes),
    }
    return load_resource(
        MultiNicNetwork,
        {
            "metadata": {"name": "bench"},
            "spec": {
                "subnet": SUBNET,
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": [f"172.{16 + k}.0.0/16" for k in range(interfaces)],
                "plugin": {"type": "ipvlan", "args": {"mode": "l3"}},
            },
        },
    )


def make_host(index: int, interfaces: int) -> HostInterface:
    name = f"node-{index:05d}"
    return load_resource(
        HostInterface,
        {
            # As read from the API: the incremental sync skips hosts by resourceVersion.
            "metadata": {"name": name, "resourceVersion": str(index + 1)},
            "spec": {
                "hostName": name,
                "interfaces": [
                    {
                        "interfaceName": f"eth{k + 1}",
                        "netAddress": f"172.{16 + k}.0.0/16",
                        "hostIP": f"172.{16 + k}.{index // 250}.{index % 250 + 1}",
                    }
                    for k in range(interfaces)
                ],
            },
        },
    )


def naive_plan(network: MultiNicNetwork, hosts: Sequence[HostInterface]) -> CIDRSpec:
    """The baseline: subnet() iteration, no excludes, no stability, no problems."""
    config = plugin_config(network)
    subnet = netaddr.IPNetwork(config.subnet)
    vlan_prefix = subnet.prefixlen + config.interface_block
    pod_prefix = vlan_prefix + config.host_block
    # One pass over the hosts, so the baseline is not handicapped by rescans.
    by_network: dict[str, list[tuple[str, InterfaceInfo]]] = {m: [] for m in config.master_nets}
    for host in hosts:
        for nic in host.spec.interfaces:
            if nic.net_address in by_network:
                by_network[nic.net_address].append((host.spec.host_name, nic))
    entries = []
    for interface_index, master in enumerate(config.master_nets):
        vlan = next(itertools.islice(subnet.subnet(vlan_prefix), interface_index, None))
        members = sorted(by_network[master], key=lambda member: member[0])
        infos = []
        for host_index, ((name, nic), pod) in enumerate(
            zip(members, vlan.subnet(pod_prefix), strict=False)
        ):
            pod_cidr = str(pod)
            infos.append(
                HostInterfaceInfo(
                    host_index=host_index,
                    host_name=name,
                    interface_name=nic.interface_name,
                    host_ip=nic.host_ip,
                    pod_cidr=pod_cidr,
                    ippool=ippool_name(config.name, pod_cidr),
                )
            )
        entries.append(
            CIDREntry(
                net_address=master,
                interface_index=interface_index,
                vlan_cidr=str(vlan),
                hosts=infos,
            )
        )
    return CIDRSpec(config=config, cidr=entries)


def timed(rounds: int, run: Callable[[], T]) -> tuple[list[float], T]:
    """Times of ``rounds`` runs, each from a collected heap (so that one run's
    garbage is not the next one's collection), and the last result."""
    times = []
    result: T | None = None
    for _ in range(rounds):
        result = None
        gc.collect()
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    assert result is not None
    return times, result


def summary(times: list[float]) -> dict[str, float]:
    result = {
        "min_s": round(min(times), 6),
        "median_s": round(statistics.median(times), 6),
        "rounds": len(times),
    }
    if len(times) >= 20:
        result["p95_s"] = round(statistics.quantiles(times, n=20)[18], 6)
    return result


def same_plan(got: PlanResult, want: PlanResult) -> bool:
    return got.spec == want.spec and got.problems == want.problems


def pods(result: PlanResult) -> dict[tuple[str, str], str]:
    return {(e.net_address, h.host_name): h.pod_cidr for e in result.spec.cidr for h in e.hosts}


def step_times(rounds: int, steps: Sequence[Callable[[], object]]) -> list[list[float]]:
    """Run ``steps`` in turn ``rounds`` times; the times of each step."""
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(rounds):
        for step, bucket in zip(steps, times, strict=True):
            started = time.perf_counter()
            step()
            bucket.append(time.perf_counter() - started)
    return times


def bench_excludes(interfaces: int, interface_block: int, host_block: int) -> list[str]:
    """Realistic excludes: the first 16 host blocks of every interface block
    (gateways, reserved) and 1/64 of the first interface block."""
    subnet = netaddr.IPNetwork(SUBNET)
    vlan_prefix = subnet.prefixlen + interface_block
    vlan_size = 1 << (32 - vlan_prefix)
    return [
        f"{netaddr.IPAddress(subnet.first + k * vlan_size)}/{vlan_prefix + host_block - 4}"
        for k in range(interfaces)
    ] + [f"{netaddr.IPAddress(subnet.first + vlan_size // 2)}/{vlan_prefix + 6}"]


Timings = dict[str, tuple[list[float], str]]


def measure_from_scratch(
    rounds: int,
    plain: MultiNicNetwork,
    with_excludes: MultiNicNetwork,
    hosts: list[HostInterface],
    *,
    timings: Timings,
    checks: dict[str, object],
) -> PlanResult:
    """Full plans against the naive baseline; returns the plain plan."""
    baseline_times, baseline = timed(rounds, lambda: naive_plan(plain, hosts))
    timings["baseline_from_scratch"] = (baseline_times, "naive")
    full_times, full = timed(rounds, lambda: plan_cidrs(plain, hosts))
    timings["plan_from_scratch"] = (full_times, "naive")
    checks["from_scratch_equals_baseline"] = full.spec == baseline and not full.problems
    excludes_times, excluded = timed(rounds, lambda: plan_cidrs(with_excludes, hosts))
    timings["plan_from_scratch_with_excludes"] = (excludes_times, "naive")
    checks["with_excludes_problems"] = len(excluded.problems)
    return full


def measure_join_and_leave(
    rounds: int,
    plain: MultiNicNetwork,
    hosts: list[HostInterface],
    newcomer: HostInterface,
    full: PlanResult,
    *,
    timings: Timings,
    checks: dict[str, object],
) -> None:
    """One join and one leave: the from-scratch re-plan (the old path, the
    baseline) against the incremental planner, which must give the same plans."""
    with_newcomer = [*hosts, newcomer]
    replan_join_times, replanned_join = timed(
        rounds, lambda: plan_cidrs(plain, with_newcomer, full.spec)
    )
    replan_leave_times, replanned_leave = timed(
        rounds, lambda: plan_cidrs(plain, hosts, replanned_join.spec)
    )
    timings["baseline_replan_one_join"] = (replan_join_times, "replan")
    timings["baseline_replan_one_leave"] = (replan_leave_times, "replan")
    before, after = pods(full), pods(replanned_join)
    checks["join_moves_nobody"] = all(after[key] == pod for key, pod in before.items())
    checks["join_adds_the_newcomer_everywhere"] = len(after) - len(before) == len(
        newcomer.spec.interfaces
    )

    build_times, planner = timed(1, lambda: IncrementalPlanner(plugin_config(plain), hosts))
    timings["incremental_planner_build"] = (build_times, "naive")
    planner.add_host(newcomer)
    checks["incremental_join_equals_from_scratch"] = same_plan(planner.result(), replanned_join)
    planner.remove_host(newcomer.name)
    checks["incremental_leave_equals_from_scratch"] = same_plan(planner.result(), replanned_leave)
    planner.sync(with_newcomer)
    checks["incremental_sync_equals_from_scratch"] = same_plan(planner.result(), replanned_join)
    planner.sync(hosts)

    def join() -> None:
        planner.add_host(newcomer)
        planner.result()

    def leave() -> None:
        planner.remove_host(newcomer.name)
        planner.result()

    def sync_join() -> None:
        planner.sync(with_newcomer)
        planner.result()

    def sync_leave() -> None:
        planner.sync(hosts)
        planner.result()

    gc.collect()
    join_times, leave_times = step_times(INCREMENTAL_ROUNDS, [join, leave])
    sync_join_times, sync_leave_times = step_times(INCREMENTAL_ROUNDS, [sync_join, sync_leave])
    timings["incremental_one_join"] = (join_times, "replan")
    timings["incremental_one_leave"] = (leave_times, "replan")
    timings["incremental_sync_one_join"] = (sync_join_times, "replan")
    timings["incremental_sync_one_leave"] = (sync_leave_times, "replan")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 hosts, one round")
    parser.add_argument("--hosts", type=int, default=None, help="default 10,000 (500 --quick)")
    parser.add_argument("--nics", "--interfaces", dest="nics", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None, help="rounds of each full plan")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n_hosts = args.hosts or (500 if args.quick else 10_000)
    rounds = args.rounds or (1 if args.quick else 3)
    interfaces = args.nics
    if n_hosts < 1 or interfaces < 1:
        parser.error("--hosts and --nics must be at least 1")
    interface_block, host_block = blocks_for(n_hosts, interfaces)

    started = time.perf_counter()
    hosts = [make_host(i, interfaces) for i in range(n_hosts)]
    newcomer = make_host(n_hosts, interfaces)
    build_s = time.perf_counter() - started
    plain = make_network([], interfaces, interface_block, host_block)
    with_excludes = make_network(
        bench_excludes(interfaces, interface_block, host_block),
        interfaces,
        interface_block,
        host_block,
    )
    print(
        f"inputs: {n_hosts} hosts x {interfaces} NICs, subnet {SUBNET}, interfaceBlock "
        f"{interface_block}, hostBlock {host_block} (built in {build_s:.2f}s)"
    )

    timings: Timings = {}
    checks: dict[str, object] = {}
    full = measure_from_scratch(rounds, plain, with_excludes, hosts, timings=timings, checks=checks)
    measure_join_and_leave(rounds, plain, hosts, newcomer, full, timings=timings, checks=checks)

    bases = {
        "naive": min(timings["baseline_from_scratch"][0]),
        "replan": min(timings["baseline_replan_one_join"][0]),
    }
    ratios = {name: round(min(times) / bases[base], 4) for name, (times, base) in timings.items()}
    targets = {
        "from_scratch_under_1s": statistics.median(timings["plan_from_scratch"][0]) < 1.0,
        "one_join_under_5ms": statistics.median(timings["incremental_one_join"][0]) < 0.005,
    }
    results = {
        "benchmark": "planner",
        "hosts": n_hosts,
        "nics": interfaces,
        "network": {"subnet": SUBNET, "interfaceBlock": interface_block, "hostBlock": host_block},
        "quick": args.quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "baselines": {
            "naive": "naive subnet() iteration, same output shape, no excludes/stability",
            "replan": "plan_cidrs(network, hosts + newcomer, previous): the from-scratch re-plan",
        },
        "timings": {name: summary(times) for name, (times, _) in timings.items()},
        "ratios_vs_baseline": ratios,
        "checks": checks,
        "targets": targets,
    }
    order = [
        "baseline_from_scratch",
        "plan_from_scratch",
        "plan_from_scratch_with_excludes",
        "incremental_planner_build",
        "baseline_replan_one_join",
        "baseline_replan_one_leave",
        "incremental_one_join",
        "incremental_one_leave",
        "incremental_sync_one_join",
        "incremental_sync_one_leave",
    ]
    for name in order:
        times, base = timings[name]
        print(
            f"{name:32s} min {min(times) * 1000:9.3f} ms  median "
            f"{statistics.median(times) * 1000:9.3f} ms  ({ratios[name]}x {base} baseline)"
        )
    print(f"checks: {checks}")
    print(f"targets: {targets}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.output}")
    correct = all(value is True for key, value in checks.items() if key != "with_excludes_problems")
    return 0 if correct else 1


if __name__ == "__main__":
    sys.exit(main())
