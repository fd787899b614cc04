"""A plan too large for one object, kept in CIDR shards (``multinic_core.shards``).

A real kube-apiserver + etcd refuse an object over ~1.5 MiB: one CIDR holds
at most ~1,300 hosts x 8 NICs.  The operator splits a larger plan by host
index; these tests make the shards small (``shard_entries``) so that a few
hosts show what 10,000 would.
"""

from __future__ import annotations

from typing import Any

from multinic_core.models import CIDR, HostInterface, MultiNicNetwork, load_resource
from multinic_core.planner import plan_cidrs
from multinic_core.shards import merge_plan, shard_of

from .conftest import API, network_body

ENTRIES = 4
"""2 NICs per host: 2 hosts per shard."""


def _versions(cluster: Any) -> dict[str, str]:
    return {n: c["metadata"]["resourceVersion"] for n, c in cluster.cidr_shards().items()}


def _hosts_of(cidr: dict[str, Any]) -> set[str]:
    return {h["hostName"] for e in cidr["spec"]["cidr"] for h in e.get("hosts") or []}


def _shards_of(cluster: Any, host: str) -> set[str]:
    """The shards that hold ``host``'s blocks: by its index on each NIC (2 per shard)."""
    return {
        name
        for name, cidr in cluster.cidr_shards().items()
        for e in cidr["spec"]["cidr"]
        for h in e.get("hosts") or []
        if h["hostName"] == host
    }


def _merged(cluster: Any) -> str:
    shards = sorted(
        (shard_of(c["metadata"])[1], load_resource(CIDR, c).spec)
        for c in cluster.cidr_shards().values()
    )
    return merge_plan("demo", [spec for _, spec in shards]).model_dump_json(exclude_none=True)


def _from_scratch(cluster: Any) -> str:
    network = load_resource(MultiNicNetwork, cluster.network())
    hosts = [load_resource(HostInterface, h) for h in cluster.api.list(API, "HostInterface")]
    hosts = [h for h in hosts if h.name in cluster.nodes]
    return plan_cidrs(network, hosts, None).spec.model_dump_json(exclude_none=True)


def test_a_network_that_fits_is_one_cidr_as_the_predecessor_writes_it(
    cluster: Any, operator_runner: Any
) -> None:
    for host in ("node1", "node2", "node3"):
        cluster.add_host(host)
    with operator_runner():
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 6, "converged")
    assert list(cluster.cidr_shards()) == ["demo"]
    assert [c["metadata"]["name"] for c in cluster.api.list(API, "CIDR")] == ["demo"]
    assert cluster.cidr()["metadata"]["labels"] == {"netname": "demo"}


def test_a_large_plan_is_kept_in_shards_and_a_join_rewrites_one(
    cluster: Any, operator_runner: Any
) -> None:
    for number in range(1, 6):
        cluster.add_host(f"node{number}")
    with operator_runner(shard_entries=ENTRIES):
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 10, "5 hosts x 2 NICs of IPPools")
        shards = cluster.cidr_shards()
        assert sorted(shards) == ["demo", "demo.shard-1", "demo.shard-2"]
        # Shard k holds host indexes 2k and 2k+1 of every NIC; each is labelled
        # with its network and owned by it.
        uid = cluster.network()["metadata"]["uid"]
        for name, cidr in shards.items():
            index = shard_of(cidr["metadata"])[1]
            for entry in cidr["spec"]["cidr"]:
                assert {h["hostIndex"] // 2 for h in entry.get("hosts") or []} <= {index}
            assert [o["uid"] for o in cidr["metadata"]["ownerReferences"]] == [uid]
            if name != "demo":
                assert cidr["metadata"]["labels"]["netname"] == "demo"
        # Together they are the plan an unsharded operator would write.
        assert _merged(cluster) == _from_scratch(cluster)
        # The status is written after the pools.
        cluster.wait(
            lambda: (cluster.status().get("discovery") or {}).get("cidrProcessed") == 5,
            "5 hosts planned in the status",
        )
        status = cluster.status()
        assert [r["numOfHosts"] for r in status["computeResults"]] == [5, 5]

        before = _versions(cluster)
        cluster.add_host("node6")
        cluster.wait(lambda: len(cluster.pools()) == 12, "node6 joined")
        after = _versions(cluster)
        changed = {n for n in after if after[n] != before.get(n)}
        # Only the shards of node6's indexes are rewritten (one per NIC at most).
        assert changed == _shards_of(cluster, "node6")
        assert len(changed) <= 2
        assert len(changed) < len(after)
        assert _merged(cluster) == _from_scratch(cluster)
        names = sorted(after)

        # node1 and node2 leave: shard 0 empties but stays (its generation keeps counting).
        cluster.delete_node("node1")
        cluster.delete_node("node2")
        cluster.wait(lambda: len(cluster.pools()) == 8, "node1 and node2 left")
        shards = cluster.cidr_shards()
        assert sorted(shards) == names
        assert _hosts_of(shards["demo"]) == set()
        cluster.wait(lambda: cluster.status()["discovery"]["cidrProcessed"] == 4, "4 planned")
    versions = _versions(cluster)

    # A restarted operator reads the plan back from its shards and rewrites nothing.
    with operator_runner(shard_entries=ENTRIES) as op:
        cluster.wait(lambda: op.services.batcher.batches >= 1, "startup batch done")
        cluster.wait(lambda: not op.services.batcher.pending, "nothing pending")
        assert [w for w in op.proxy.writes() if "/cidrs/" in w[1]] == []
        # It plans on from them: node7 takes freed indexes, hosts keep theirs.
        kept = cluster.pod_cidrs()
        cluster.add_host("node7")
        cluster.wait(lambda: len(cluster.pools()) == 10, "node7 joined")
        after = _versions(cluster)
        assert {n for n in after if after[n] != versions[n]} == _shards_of(cluster, "node7")
        assert cluster.pod_cidrs().items() >= kept.items()

        cluster.api.delete(API, "MultiNicNetwork", "demo")
        cluster.wait(lambda: cluster.network() is None, "network deleted after cleanup")
    assert cluster.api.list(API, "CIDR") == []


def test_a_network_named_like_a_shard_is_refused(cluster: Any, operator_runner: Any) -> None:
    """``demo.shard-1`` is the name of shard 1 of demo's plan: no network may take it."""
    cluster.add_host("node1")
    with operator_runner():
        cluster.create(network_body("demo.shard-1"))
        cluster.wait(
            lambda: cluster.status("demo.shard-1").get("configStatus") == "Failed",
            "the network refused",
        )
        status = cluster.status("demo.shard-1")
        assert [c["reason"] for c in status["conditions"]] == ["ReservedName"]
        assert "CIDR shard 1 of network demo's plan" in status["message"]
        # Nothing is planned for it: no CIDR, no IPPools.
        assert cluster.api.list(API, "CIDR") == []
        assert cluster.pools("demo.shard-1") == {}


def test_a_shard_name_held_by_another_object_fails_clearly_and_stays_untouched(
    cluster: Any, operator_runner: Any
) -> None:
    cluster.add_host("node1")
    with operator_runner(shard_entries=ENTRIES):
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 2, "node1 planned in one shard")
        assert list(cluster.cidr_shards()) == ["demo"]
        # Someone else's CIDR (no shard labels) holds the name of shard 1.
        plan = cluster.cidr()
        assert plan is not None
        cluster.create(
            {
                "apiVersion": API,
                "kind": "CIDR",
                "metadata": {"name": "demo.shard-1"},
                "spec": plan["spec"],
            }
        )
        foreign = cluster.api.get(API, "CIDR", "demo.shard-1")
        assert foreign is not None

        for host in ("node2", "node3"):  # blocks beyond the 2 of shard 0 on each NIC
            cluster.add_host(host)
        cluster.wait(
            lambda: cluster.status().get("configStatus") == "Failed", "the network failed clearly"
        )
        status = cluster.status()
        assert [c["reason"] for c in status["conditions"]] == ["CIDRNameTaken"]
        assert (
            "CIDR demo.shard-1 exists and is not shard 1 of network demo's plan"
            in (status["message"])
        )
        after = cluster.api.get(API, "CIDR", "demo.shard-1")
        assert after is not None
        assert after["metadata"]["resourceVersion"] == foreign["metadata"]["resourceVersion"]
        assert len(cluster.pools()) == 2  # nothing allocated from a half-written plan

        # Once the name is free, the shard is made and the hosts planned.
        cluster.api.delete(API, "CIDR", "demo.shard-1")
        cluster.add_host("node4")  # a change for the operator to act on
        cluster.wait(lambda: len(cluster.pools()) == 8, "node2, node3 and node4 planned")
        cluster.wait(lambda: cluster.status()["configStatus"] == "Success", "Success")
        shard = cluster.cidr_shards()["demo.shard-1"]
        assert shard_of(shard["metadata"]) == ("demo", 1)
        assert _merged(cluster) == _from_scratch(cluster)


def _join_out_of_order(cluster: Any) -> None:
    """The network and 5 hosts joining one at a time, in an order other than their
    names': indexes follow the joins, so a replan without a shard would move hosts."""
    cluster.create(network_body())
    for count, host in enumerate(("node9", "node5", "node7", "node1", "node3"), 1):
        cluster.add_host(host)
        cluster.wait(lambda n=count: len(cluster.pools()) == 2 * n, f"{host} planned")
    assert "demo.shard-1" in cluster.cidr_shards()


def test_a_deleted_shard_is_written_again_and_no_host_moves(
    cluster: Any, operator_runner: Any
) -> None:
    with operator_runner(shard_entries=ENTRIES):
        _join_out_of_order(cluster)
        blocks = cluster.pod_cidrs()
        pools = {n: p["spec"]["podCIDR"] for n, p in cluster.pools().items()}

        cluster.api.delete(API, "CIDR", "demo.shard-1")
        cluster.wait(lambda: "demo.shard-1" in cluster.cidr_shards(), "shard 1 written again")
        cluster.wait(lambda: cluster.pod_cidrs() == blocks, "every host keeps its blocks")
        assert {n: p["spec"]["podCIDR"] for n, p in cluster.pools().items()} == pools
        cluster.wait(lambda: cluster.status()["configStatus"] == "Success", "Success")


def test_a_shard_deleted_while_no_operator_runs_is_rebuilt_from_the_pools(
    cluster: Any, operator_runner: Any
) -> None:
    with operator_runner(shard_entries=ENTRIES):
        _join_out_of_order(cluster)
        blocks = cluster.pod_cidrs()
        pools = {n: p["metadata"]["resourceVersion"] for n, p in cluster.pools().items()}
    lost = cluster.cidr_shards()["demo.shard-1"]
    assert _hosts_of(lost)
    cluster.api.delete(API, "CIDR", "demo.shard-1")

    with operator_runner(shard_entries=ENTRIES):
        cluster.wait(lambda: "demo.shard-1" in cluster.cidr_shards(), "shard 1 written again")
        rebuilt = cluster.cidr_shards()["demo.shard-1"]
        assert rebuilt["spec"]["cidr"] == lost["spec"]["cidr"]
        cluster.wait(lambda: cluster.status()["configStatus"] == "Success", "Success")
        assert cluster.pod_cidrs() == blocks
        # No pool was touched: no block moved, nothing retired.
        assert {n: p["metadata"]["resourceVersion"] for n, p in cluster.pools().items()} == pools
