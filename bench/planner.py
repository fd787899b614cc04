"""Benchmark of the CIDR planner: 5,000 hosts x 8 interfaces, from scratch and incremental.

Run: ``.venv/bin/python bench/planner.py`` (``--quick`` for 500 hosts and one round).

Baseline, measured in the same run on the same inputs: a naive reference
planner that produces the same CIDR spec shape by iterating
``netaddr.IPNetwork.subnet()`` (the n-th /P+I block per network, then the
pod blocks in sorted host-name order) with no excludes, no stability and no
problem reporting.  With no excludes and no previous plan, both must give
identical output (checked), so the ratio is the price of the real planner's
exclude checks, index bookkeeping and previous-plan adoption over bare block
carving.  The incremental re-plan (one host joins a 5,000-host plan) is
compared against the same baseline, since the naive planner can only ever
plan from scratch.

Results are printed and written to ``bench/results/planner.json``.
"""

from __future__ import annotations

import argparse
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
from multinic_core.planner import plan_cidrs, plugin_config

RESULTS = Path(__file__).parent / "results" / "planner.json"
SUBNET = "10.0.0.0/8"
INTERFACE_BLOCK = 3  # 8 interfaces
HOST_BLOCK = 13  # 8,192 hosts per interface

T = TypeVar("T")


def make_network(excludes: Sequence[str], interfaces: int) -> MultiNicNetwork:
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": HOST_BLOCK,
        "interfaceBlock": INTERFACE_BLOCK,
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
            "metadata": {"name": name},
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
    times = []
    result: T | None = None
    for _ in range(rounds):
        started = time.perf_counter()
        result = run()
        times.append(time.perf_counter() - started)
    assert result is not None
    return times, result


def summary(times: list[float]) -> dict[str, float]:
    return {
        "min_s": round(min(times), 4),
        "median_s": round(statistics.median(times), 4),
        "rounds": len(times),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="500 hosts, one round")
    parser.add_argument("--hosts", type=int, default=None)
    parser.add_argument("--interfaces", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    n_hosts = args.hosts or (500 if args.quick else 5000)
    rounds = args.rounds or (1 if args.quick else 3)
    interfaces = args.interfaces

    started = time.perf_counter()
    hosts = [make_host(i, interfaces) for i in range(n_hosts)]
    newcomer = make_host(n_hosts, interfaces)
    build_s = time.perf_counter() - started
    plain = make_network([], interfaces)
    # Realistic excludes: the first /24 of every interface block (gateways, reserved).
    with_excludes = make_network(
        [f"10.{32 * k}.0.0/21" for k in range(interfaces)] + ["10.1.0.0/16"], interfaces
    )
    print(f"inputs: {n_hosts} hosts x {interfaces} interfaces (built in {build_s:.2f}s)")

    baseline_times, baseline = timed(rounds, lambda: naive_plan(plain, hosts))
    full_times, full = timed(rounds, lambda: plan_cidrs(plain, hosts))
    identical = full.spec == baseline and not full.problems
    incremental_times, incremental = timed(
        rounds, lambda: plan_cidrs(plain, [*hosts, newcomer], full.spec)
    )
    before = {(e.net_address, h.host_name): h.pod_cidr for e in full.spec.cidr for h in e.hosts}
    after = {
        (e.net_address, h.host_name): h.pod_cidr for e in incremental.spec.cidr for h in e.hosts
    }
    stable = all(after[key] == pod for key, pod in before.items())
    joined = len(after) - len(before) == interfaces
    excludes_times, excluded = timed(rounds, lambda: plan_cidrs(with_excludes, hosts))

    base = min(baseline_times)
    timings = {
        "baseline_from_scratch": baseline_times,
        "plan_from_scratch": full_times,
        "plan_incremental_one_join": incremental_times,
        "plan_from_scratch_with_excludes": excludes_times,
    }
    ratios = {name: round(min(times) / base, 2) for name, times in timings.items()}
    checks = {
        "from_scratch_equals_baseline": identical,
        "incremental_moves_nobody": stable,
        "incremental_adds_the_newcomer_everywhere": joined,
        "with_excludes_problems": len(excluded.problems),
    }
    results = {
        "benchmark": "planner",
        "hosts": n_hosts,
        "interfaces": interfaces,
        "quick": args.quick,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "baseline": "naive subnet() iteration, same output shape, no excludes/stability",
        "timings": {name: summary(times) for name, times in timings.items()},
        "ratios_vs_baseline": ratios,
        "checks": checks,
    }
    for name, times in timings.items():
        print(
            f"{name:34s} min {min(times):.3f}s  median {statistics.median(times):.3f}s"
            f"  ({ratios[name]}x baseline)"
        )
    print(f"checks: {checks}")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.output}")
    return 0 if identical and stable and joined else 1


if __name__ == "__main__":
    sys.exit(main())
