"""API fault injection: the operator converges to what a fault-free run produces,
and deletes nothing because of a transient error.

One scenario runs twice on the local API server, first without faults (the
reference), then with 409 storms on every write, 500/503s on reads, requests
that hang until they time out, watch streams dropped every few hundred
milliseconds, and the operator restarted in the middle of reconciling.  The
scenario: hosts and namespaces exist; two networks are created; the operator
restarts; a host joins; the agent of one host writes an allocation into its
IPPool; a spec edit makes the operator rewrite the pools.  Compared at the
end: the CIDR specs, the IPPool specs (allocations included), the NADs, the
HostInterfaces and the networks' status counters and conditions.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import yaml

from multinic_sim.faults import FaultRule

from .conftest import CHAOS_FAULTS, CHAOS_HOSTS, operator_fixtures

pytestmark = pytest.mark.slow

API = operator_fixtures.API
L3_IPAM = operator_fixtures.L3_IPAM
network_body = operator_fixtures.network_body
WATCHED = ("multinicnetworks", "hostinterfaces", "nodes", "namespaces", "cidrs", "ippools")
ALLOCATION = {
    "pod": "web-0",
    "namespace": "team-a",
    "index": 5,
    "address": "192.168.0.5",
    "containerID": "c0ffee",
    "ifName": "net1",
}
NEW_EXCLUDE = "192.168.2.16/28"


def retrying(call: Any, *args: Any, **kwargs: Any) -> Any:
    """The test's own API calls meet the faults too; like any client, it retries."""
    for _ in range(50):
        try:
            return call(*args, **kwargs)
        except Exception:
            time.sleep(0.1)
    return call(*args, **kwargs)


def tolerant(predicate: Any) -> Any:
    """A wait predicate that counts an injected API error as "not yet"."""

    def check() -> bool:
        try:
            return bool(predicate())
        except Exception:
            return False

    return check


def fault_rules() -> list[FaultRule]:
    """Every kind of transient failure, on the calls the operator makes
    (``MULTINIC_CHAOS_FAULTS`` multiplies the counts)."""
    n = CHAOS_FAULTS
    rules = [
        FaultRule(status=409, verb=verb, resource=resource, probability=0.5, count=3 * n)
        for verb in ("patch", "create")
        for resource in ("ippools", "cidrs", "network-attachment-definitions")
    ]
    rules += [
        FaultRule(status=409, verb="patch", resource="multinicnetworks/status", count=3 * n),
        FaultRule(status=500, verb="list", resource="nodes", count=2 * n),
        FaultRule(status=503, verb="list", resource="hostinterfaces", count=2 * n),
        FaultRule(status=500, verb="get", probability=0.2, count=5 * n),
        FaultRule(status=500, verb="list", resource="ippools", count=2 * n),
        FaultRule(status=500, verb="delete", count=2 * n),
        FaultRule(action="timeout", delay=3.0, verb="patch", resource="ippools", count=1),
        FaultRule(action="timeout", delay=3.0, verb="list", resource="nodes", count=1),
    ]
    return rules


def reset(cluster: Any) -> None:
    """A fresh API server with the CRDs (as the ``cluster`` fixture does)."""
    cluster.kube_api.reset()
    for path in operator_fixtures.CRD_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                cluster.kube_api.apply_crd(doc)


def snapshot(cluster: Any, hosts: list[str]) -> dict[str, Any]:
    """What the operator produced, without the fields that differ between runs."""
    state: dict[str, Any] = {}
    for name in ("demo", "listed"):
        cidr = cluster.cidr(name) or {}
        state[f"cidr {name}"] = cidr.get("spec")
        state[f"pools {name}"] = {
            pool_name: (pool["spec"], pool["metadata"].get("labels"))
            for pool_name, pool in cluster.pools(name).items()
        }
        state[f"nads {name}"] = {
            namespace: (
                json.loads(nad["spec"]["config"]),
                nad["metadata"].get("labels"),
                nad["metadata"].get("annotations"),
            )
            for namespace, nad in cluster.nads(name).items()
        }
        status = cluster.status(name)
        state[f"status {name}"] = {
            "computeResults": status.get("computeResults"),
            "discovery": status.get("discovery"),
            "configStatus": status.get("configStatus"),
            "routeStatus": status.get("routeStatus"),
            "message": status.get("message"),
            "conditions": sorted(
                (c["type"], c["status"], c.get("reason")) for c in status.get("conditions") or []
            ),
        }
        state[f"finalizers {name}"] = (
            (cluster.network(name) or {}).get("metadata", {}).get("finalizers")
        )
    state["hostinterfaces"] = {
        host: (cluster.api.get(API, "HostInterface", host) or {}).get("spec") for host in hosts
    }
    return state


class WatchDropper:
    """Drops every open watch stream every 0.3-0.6 s while running."""

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self.dropped = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="watch-dropper", daemon=True)

    def _run(self) -> None:
        interval = 0.3
        while not self._stop.wait(interval):
            self.dropped += self.cluster.kube_api.drop_watches()
            interval = 0.9 - interval  # 0.3, 0.6, 0.3, ...

    def __enter__(self) -> WatchDropper:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)


def run_scenario(
    cluster: Any, operator_runner: Any, expected: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The scenario, with faults when ``expected`` (the fault-free result) is given;
    returns the final snapshot and what was injected and deleted."""
    faulty = expected is not None
    faults = cluster.kube_api.faults if faulty else None
    rules = fault_rules() if faulty else []
    for rule in rules:
        assert faults is not None
        faults.add(rule)
    hosts = [f"node{i}" for i in range(1, CHAOS_HOSTS + 1)]
    cluster.add_namespace("team-a")
    cluster.add_namespace("team-b")
    for host in hosts:
        cluster.add_host(host)
    runs: list[Any] = []

    @contextmanager
    def operator() -> Iterator[Any]:
        with operator_runner() as op:
            op.services.api.timeout = 2.0
            runs.append(op)
            yield op

    dropper = WatchDropper(cluster) if faulty else None
    if dropper is not None:
        dropper.__enter__()
    try:
        with operator():
            cluster.create(network_body())
            cluster.create(network_body("listed", namespaces=["team-a"], subnet="10.64.0.0/16"))
            # Restarted in the middle of reconciling (faulty run) / once done (reference).
            if faulty:
                time.sleep(1.0)
            else:
                cluster.wait(
                    tolerant(lambda: len(cluster.pools()) == 2 * len(hosts)), "planned", 60
                )
        with operator():
            cluster.wait(
                tolerant(
                    lambda: cluster.status().get("discovery", {}).get("cidrProcessed") == len(hosts)
                ),
                "the first hosts planned",
                120,
            )
            joined = f"node{len(hosts) + 1}"
            cluster.add_host(joined)
            hosts.append(joined)
            cluster.wait(
                tolerant(lambda: len(cluster.pools()) == 2 * len(hosts)), "the join planned", 120
            )
            # The agent of node1 records an allocation in its pool.
            retrying(
                cluster.api.patch,
                API,
                "IPPool",
                "demo-192.168.0.0-24",
                {"spec": {"allocations": [ALLOCATION]}},
            )
            ipam = dict(L3_IPAM, excludeCIDRs=[*L3_IPAM["excludeCIDRs"], NEW_EXCLUDE])
            retrying(
                cluster.api.patch,
                API,
                "MultiNicNetwork",
                "demo",
                {"spec": {"ipam": json.dumps(ipam)}},
            )
            cluster.wait(
                tolerant(
                    lambda: (
                        cluster.pools()["demo-192.168.2.0-24"]["spec"].get("excludes")
                        == [NEW_EXCLUDE]
                    )
                ),
                "the spec edit reached the pools",
                120,
            )
            if faulty:
                assert faults is not None
                faults.clear()
            if dropper is not None:
                dropper.__exit__()
            cluster.wait(
                lambda: (
                    cluster.status("demo").get("discovery", {}).get("cidrProcessed") == len(hosts)
                    and cluster.status("listed").get("discovery", {}).get("cidrProcessed")
                    == len(hosts)
                    and "team-a" in cluster.nads("listed")
                    and {"default", "team-a", "team-b"} <= set(cluster.nads("demo"))
                ),
                "converged",
                120,
            )
            if expected is not None:
                # Converged means: exactly the fault-free state (retries and
                # backoffs may take a while after the last fault).
                cluster.wait(
                    tolerant(lambda: snapshot(cluster, hosts) == expected),
                    "the fault-free state",
                    90,
                )
            else:
                time.sleep(1.0)  # a last batch window
            final = snapshot(cluster, hosts)
    finally:
        if dropper is not None:
            dropper.__exit__()
    deletes = [
        (method, path)
        for op in runs
        for method, path, _ in op.proxy.calls()
        if method == "DELETE"
        and any(
            kind in path
            for kind in ("/cidrs", "/ippools", "/network-attachment-definitions", "/hostinterfaces")
        )
    ]
    return {
        "snapshot": final,
        "faults": sum(r.hits for r in rules),
        "by rule": {f"{r.status} {r.action} {r.verb} {r.resource}": r.hits for r in rules},
        "watches dropped": dropper.dropped if dropper else 0,
        "restarts": len(runs) - 1,
        "deletes": deletes,
        "api calls": sum(len(op.proxy.calls()) for op in runs),
    }


def test_faults_change_nothing_in_the_end(
    cluster: Any, operator_runner: Any, figures: dict[str, Any]
) -> None:
    cluster.kube_api.require_sim()
    reference = run_scenario(cluster, operator_runner)
    reset(cluster)
    started = time.monotonic()
    faulty = run_scenario(cluster, operator_runner, reference["snapshot"])
    seconds = time.monotonic() - started

    assert reference["deletes"] == []
    assert faulty["deletes"] == []
    for key, value in reference["snapshot"].items():
        assert faulty["snapshot"][key] == value, key
    pool = faulty["snapshot"]["pools demo"]["demo-192.168.0.0-24"][0]
    assert pool["allocations"] == [ALLOCATION], "the agent's allocation was lost"
    assert faulty["faults"] >= 15, faulty
    assert faulty["watches dropped"] >= 5, faulty
    figures.update(
        hosts=CHAOS_HOSTS + 1,
        faults_injected=faulty["faults"],
        faults_by_rule={k: v for k, v in faulty["by rule"].items() if v},
        watches_dropped=faulty["watches dropped"],
        operator_restarts=faulty["restarts"],
        api_calls=faulty["api calls"],
        api_calls_without_faults=reference["api calls"],
        seconds=round(seconds, 1),
        deleted=0,
        differences=0,
    )
