"""Events on MultiNicNetworks: what ``kubectl describe multinicnetwork`` shows a user.

A plan edit that leaves a pod's address outside its host's new pool posts a
Warning ``AllocationsStranded`` on the network (in namespace ``default``: a
network is cluster-scoped) that names the pod; every later reconcile that
still finds it stranded raises the same Event's count instead of creating
another one, as kubelet's recorder does.
"""

from __future__ import annotations

import json
from typing import Any

from .conftest import API, network_body

STRANDED = "AllocationsStranded"


def network_events(cluster: Any, reason: str, name: str = "demo") -> list[dict[str, Any]]:
    return cluster.api.list(
        "v1",
        "Event",
        "default",
        field_selector=f"involvedObject.name={name},reason={reason}",
    )


def hold(cluster: Any, pool: str, address: str, index: int, pod: str) -> None:
    """An allocation in ``pool`` as node1's agent writes it (the operator runs no agent)."""
    cluster.api.patch(
        API,
        "IPPool",
        pool,
        {
            "spec": {
                "allocations": [
                    {
                        "pod": pod,
                        "namespace": "team-a",
                        "index": index,
                        "address": address,
                        "containerID": "c-web",
                        "ifName": "net1",
                    }
                ]
            }
        },
    )


def test_stranded_allocations_are_one_warning_on_the_network_with_a_count(
    cluster: Any, operator_runner: Any
) -> None:
    cluster.add_host("node1")
    with operator_runner() as op:

        def reads() -> int:
            path = f"/apis/{API}/multinicnetworks/demo"
            return sum(1 for m, p, _ in op.proxy.calls() if m == "GET" and p == path)

        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 2, "pools")
        # 192.168.0.100 is in node1's /24 of eth1; hostBlock 8 gives node1 a /26 (.0-.63).
        hold(cluster, "demo-192.168.0.0-24", "192.168.0.100", 100, "web")
        assert network_events(cluster, STRANDED) == []
        ipam = json.loads(network_body()["spec"]["ipam"])
        cluster.api.patch(
            API, "MultiNicNetwork", "demo", {"spec": {"ipam": json.dumps({**ipam, "hostBlock": 8})}}
        )
        cluster.wait(lambda: network_events(cluster, STRANDED), "a Warning on the network")
        [event] = network_events(cluster, STRANDED)
        network = cluster.network()
        assert event["type"] == "Warning"
        assert event["involvedObject"] == {
            "apiVersion": API,
            "kind": "MultiNicNetwork",
            "name": "demo",
            "uid": network["metadata"]["uid"],
        }
        assert event["source"]["component"] == "multinic-operator"
        assert "team-a/web 192.168.0.100 (IPPool demo-192.168.0.0-24)" in event["message"]
        # The condition says the same thing.
        condition = next(c for c in cluster.status()["conditions"] if c["type"] == STRANDED)
        assert condition["message"] == event["message"]

        # More reconciles (a host joins; the network is touched): still stranded,
        # still one Event, counted.
        cluster.add_host("node2")
        cluster.api.patch(
            API, "MultiNicNetwork", "demo", {"metadata": {"labels": {"touched": "yes"}}}
        )
        cluster.wait(
            lambda: any((e.get("count") or 0) >= 2 for e in network_events(cluster, STRANDED)),
            "the repeated Warning counted",
        )
        [again] = network_events(cluster, STRANDED)
        assert again["metadata"]["name"] == event["metadata"]["name"]
        assert again["firstTimestamp"] == event["firstTimestamp"]
        assert again["lastTimestamp"] >= event["lastTimestamp"]

        # Once the pod is gone (its agent drops the allocation), no more Warnings.
        cluster.api.patch(API, "IPPool", "demo-192.168.0.0-24", {"spec": {"allocations": []}})
        cluster.wait(
            lambda: (
                next(c for c in cluster.status()["conditions"] if c["type"] == STRANDED)["status"]
                == "False"
            ),
            "nothing stranded any more",
        )
        count, before = network_events(cluster, STRANDED)[0]["count"], reads()
        cluster.api.patch(
            API, "MultiNicNetwork", "demo", {"metadata": {"labels": {"touched": "again"}}}
        )
        cluster.wait(lambda: reads() > before, "reconciled again")
    # The operator stopped (its recorder flushed): nothing was added after the condition cleared.
    assert [e["count"] for e in network_events(cluster, STRANDED)] == [count]
