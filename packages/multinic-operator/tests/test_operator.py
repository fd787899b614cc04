"""The operator (kopf + services) against the local API server: every flow end to end."""

from __future__ import annotations

import itertools
import json
import threading
import time
from typing import Any

from multinic_core.models import POOL_RETIRED_ACK, POOL_RETIRED_LABEL

from .conftest import API, network_body


def _planned_hosts(cluster: Any) -> set[str]:
    return {host for host, _ in cluster.pod_cidrs()}


def test_network_lifecycle(cluster: Any, operator_runner: Any) -> None:
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(
            lambda: cluster.status().get("discovery", {}).get("cidrProcessed") == 3,
            "3 hosts planned",
        )
        cluster.wait(lambda: len(cluster.pools()) == 6, "6 IPPools")
        assert "default" in cluster.nads()
        network = cluster.network()
        assert "multinic.fms.io/cleanup" in network["metadata"]["finalizers"]
        status = cluster.status()
        assert status["configStatus"] == "Success"
        ready = next(c for c in status["conditions"] if c["type"] == "Ready")
        assert ready["status"] == "True"
        assert ready["observedGeneration"] == network["metadata"]["generation"]

        cluster.api.delete(API, "MultiNicNetwork", "demo")

        cluster.wait(lambda: cluster.network() is None, "network deleted after cleanup")
        assert cluster.pools() == {}
        assert cluster.nads() == {}
        assert cluster.cidr() is None


def test_hosts_join_and_leave(cluster: Any, operator_runner: Any) -> None:
    cluster.add_host("node1")
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(lambda: _planned_hosts(cluster) == {"node1"}, "node1 planned")
        for host in ("node2", "node3", "node4"):
            cluster.add_host(host)
        cluster.wait(
            lambda: _planned_hosts(cluster) == {"node1", "node2", "node3", "node4"},
            "joined hosts planned",
        )
        before = cluster.pod_cidrs()

        cluster.delete_node("node2")
        cluster.wait(lambda: _planned_hosts(cluster) == {"node1", "node3", "node4"}, "node2 left")
        # Nobody else is renumbered.
        after = cluster.pod_cidrs()
        assert after == {k: v for k, v in before.items() if k[0] != "node2"}
        cluster.wait(
            lambda: not any(p["spec"]["hostName"] == "node2" for p in cluster.pools().values()),
            "node2's pools deleted",
        )
        cluster.wait(
            lambda: cluster.api.get(API, "HostInterface", "node2") is None,
            "the deleted Node's HostInterface deleted",
        )
        # A user's unmanaged HostInterface is never deleted, Node or not.
        cluster.api.create(
            {
                "apiVersion": API,
                "kind": "HostInterface",
                "metadata": {"name": "byhand", "labels": {"multi-nic-unmanaged": "true"}},
                "spec": {"hostName": "byhand", "interfaces": []},
            }
        )
        cluster.delete_node("node4")
        cluster.wait(lambda: cluster.api.get(API, "HostInterface", "node4") is None, "node4 gone")
        assert cluster.api.get(API, "HostInterface", "byhand") is not None

        # node3's HostInterface loses 10.0.2.0/24: it leaves that entry only.
        cluster.set_host_nics("node3", [("eth1", "10.0.1.0/24", "10.0.1.14")])
        cluster.wait(lambda: ("node3", "eth2") not in cluster.pod_cidrs(), "node3 left eth2")
        assert cluster.pod_cidrs()[("node3", "eth1")] == before[("node3", "eth1")]
        cluster.wait(
            lambda: (
                cluster.status()["computeResults"]
                == [
                    {"netAddress": "10.0.1.0/24", "numOfHosts": 2},
                    {"netAddress": "10.0.2.0/24", "numOfHosts": 1},
                ]
            ),
            "status counts the hosts of each NIC",
        )


def test_burst_of_joins_is_batched(cluster: Any, operator_runner: Any) -> None:
    with operator_runner(batch_window=0.5) as op:
        cluster.create(network_body())
        cluster.wait(lambda: cluster.cidr() is not None, "empty plan written")
        cidr_writes_before = _cidr_writes(op)
        seen: list[tuple[int, ...]] = []
        done = threading.Event()

        def watch_counters() -> None:
            while not done.is_set():
                status = cluster.status()
                seen.append(
                    (
                        status.get("discovery", {}).get("cidrProcessed", 0),
                        *(r["numOfHosts"] for r in status.get("computeResults", [])),
                    )
                )
                time.sleep(0.02)

        watcher = threading.Thread(target=watch_counters, daemon=True)
        watcher.start()
        for i in range(40):
            cluster.add_host(f"node{i}")
        cluster.wait(
            lambda: cluster.status().get("discovery", {}).get("cidrProcessed") == 40,
            "40 hosts planned",
            timeout=60,
        )
        done.set()
        watcher.join(5)
        cidr_writes = _cidr_writes(op) - cidr_writes_before
        # 40 joins, a handful of plan writes (one per batch).
        assert 1 <= cidr_writes <= 8, cidr_writes
        # Joins only: no counter ever went down on the way.
        for before, after in itertools.pairwise(seen):
            assert all(b <= a for b, a in zip(before, after, strict=False)), (before, after)


def _cidr_writes(op: Any) -> int:
    return sum(
        1
        for method, path in op.proxy.writes()
        if method == "PATCH" and path == f"/apis/{API}/cidrs/demo"
    )


def test_namespaces_added_and_removed(cluster: Any, operator_runner: Any) -> None:
    cluster.add_namespace("team-a")
    cluster.add_namespace("team-b")
    with operator_runner():
        cluster.create(network_body("everywhere"))
        cluster.create(network_body("listed", namespaces=["team-a", "team-b"]))
        cluster.wait(
            lambda: {"team-a", "team-b"} <= set(cluster.nads("listed")),
            "NADs in the listed namespaces",
        )
        cluster.wait(
            lambda: {"default", "team-a", "team-b"} <= set(cluster.nads("everywhere")),
            "NADs everywhere",
        )

        cluster.add_namespace("team-c")
        cluster.wait(
            lambda: "team-c" in cluster.nads("everywhere"),
            "a new namespace gets the NAD of an all-namespaces network",
        )
        assert "team-c" not in cluster.nads("listed")

        cluster.api.patch(API, "MultiNicNetwork", "listed", {"spec": {"namespaces": ["team-a"]}})
        cluster.wait(
            lambda: set(cluster.nads("listed")) == {"team-a"},
            "team-b lost the NAD when removed from namespaces",
        )


def retired(pool: dict[str, Any] | None) -> str | None:
    return ((pool or {}).get("metadata", {}).get("labels") or {}).get(POOL_RETIRED_LABEL)


def test_spec_edit_reaches_nads_and_plan(cluster: Any, operator_runner: Any) -> None:
    cluster.add_host("node1")
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 2, "pools")
        ipam = json.loads(network_body()["spec"]["ipam"])
        ipam["hostBlock"] = 8
        cluster.api.patch(API, "MultiNicNetwork", "demo", {"spec": {"ipam": json.dumps(ipam)}})

        cluster.wait(
            lambda: cluster.pod_cidrs().get(("node1", "eth1")) == "192.168.0.0/26",
            "plan recomputed with hostBlock 8",
        )
        old = {"demo-192.168.0.0-24", "demo-192.168.128.0-24"}
        # The replaced pools are retired, not deleted, until node1's agent says
        # it allocates nothing more from them; the new pools overlap them, so
        # they wait for that too (no agent runs here: the test acknowledges).
        cluster.wait(lambda: all(retired(cluster.pools().get(n)) for n in old), "pools retired")
        assert set(cluster.pools()) == old
        for name in old:
            cluster.api.patch(
                API,
                "IPPool",
                name,
                {"metadata": {"annotations": {POOL_RETIRED_ACK: retired(cluster.pools()[name])}}},
            )
        cluster.wait(
            lambda: set(cluster.pools()) == {"demo-192.168.0.0-26", "demo-192.168.128.0-26"},
            "pools follow the plan",
        )
        cluster.wait(
            lambda: (
                json.loads(cluster.nads()["default"]["spec"]["config"])["ipam"]["hostBlock"] == 8
            ),
            "NAD updated",
        )


def test_restart_rewrites_nothing(cluster: Any, operator_runner: Any) -> None:
    for host in ("node1", "node2"):
        cluster.add_host(host)
    cluster.add_namespace("team-a")
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 4 and len(cluster.nads()) >= 2, "converged")
        cluster.wait(
            lambda: (
                cluster.api.get("apps/v1", "DaemonSet", "multinic-agent", "default") is not None
            ),
            "agent DaemonSet",
        )
    snapshot = _resource_versions(cluster)

    with operator_runner() as op:

        def reads(path: str) -> int:
            return sum(1 for m, p, _ in op.proxy.calls() if m == "GET" and p == path)

        # The resume handlers (network, Config) and the startup batch all ran.
        cluster.wait(lambda: op.services.batcher.batches >= 1, "startup batch done")
        cluster.wait(
            lambda: reads(f"/apis/{API}/multinicnetworks/demo") >= 2,
            "network resumed and batch-reconciled",
        )
        cluster.wait(
            lambda: reads("/apis/apps/v1/namespaces/default/daemonsets/multinic-agent") >= 1,
            "Config resumed",
        )
        assert not op.services.batcher.pending
        assert op.proxy.writes() == []
    assert _resource_versions(cluster) == snapshot


def _resource_versions(cluster: Any) -> dict[str, str]:
    objects: list[dict[str, Any]] = [
        *cluster.api.list(API, "MultiNicNetwork"),
        *cluster.api.list(API, "CIDR"),
        *cluster.api.list(API, "IPPool"),
        *cluster.api.list(API, "Config"),
        *cluster.api.list("k8s.cni.cncf.io/v1", "NetworkAttachmentDefinition"),
        *cluster.api.list("apps/v1", "DaemonSet"),
    ]
    return {
        f"{o['kind']}/{o['metadata'].get('namespace', '')}/{o['metadata']['name']}": o["metadata"][
            "resourceVersion"
        ]
        for o in objects
    }


def test_route_sync_timestamps_alone_cause_no_replan(cluster: Any, operator_runner: Any) -> None:
    cluster.add_host("node1")
    with operator_runner() as op:
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 2, "converged")

        def report(status: str, when: str) -> None:
            cluster.api.patch(
                API,
                "HostInterface",
                "node1",
                {
                    "status": {
                        "routes": [
                            {
                                "network": "demo",
                                "status": status,
                                "cidrGeneration": 1,
                                "lastSyncTime": when,
                            }
                        ]
                    }
                },
                status=True,
            )

        report("Success", "2026-01-01T00:00:00Z")
        cluster.wait(lambda: cluster.status().get("routeStatus") == "Success", "routes ready")
        window = op.services.batcher.window

        def settled() -> bool:
            # Not just an empty queue: the batch that saw the first report may
            # still be running and count itself only when it is done.
            before = op.services.batcher.batches
            time.sleep(window * 2)
            return not op.services.batcher.pending and op.services.batcher.batches == before

        cluster.wait(settled, "idle")
        batches = op.services.batcher.batches
        for minute in range(1, 6):
            report("Success", f"2026-01-01T00:0{minute}:00Z")
            # Spaced wider than the batch window: each would be a batch of its own.
            time.sleep(window * 2)
        assert op.services.batcher.batches == batches

        report("Failed", "2026-01-01T00:07:00Z")
        cluster.wait(lambda: cluster.status().get("routeStatus") == "Failed", "failure seen")
        cluster.wait(lambda: op.services.batcher.batches == batches + 1, "exactly one batch")
