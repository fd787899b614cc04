"""Properties of the CIDR planner over random inputs (hypothesis, bounded examples)."""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass

import netaddr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from multinic_core.models import CIDRSpec, HostInterface, MultiNicNetwork, load_resource
from multinic_core.planner import PlanResult, PoolExcludes, plan_cidrs, pool_excludes

HOST_NETS = ["172.16.1.0/24", "172.16.2.0/24", "172.16.3.0/24"]
NAMES = [f"node-{i:02d}" for i in range(12)]
BOUNDED = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@dataclass(frozen=True)
class Case:
    network: MultiNicNetwork
    hosts: dict[str, frozenset[int]]

    def host_objects(self, without: str = "") -> list[HostInterface]:
        return [
            load_resource(
                HostInterface,
                {
                    "metadata": {"name": name},
                    "spec": {
                        "hostName": name,
                        "interfaces": [
                            {
                                "interfaceName": f"eth{k}",
                                "netAddress": HOST_NETS[k],
                                "hostIP": str(netaddr.IPNetwork(HOST_NETS[k])[10 + i]),
                            }
                            for k in sorted(nets)
                        ],
                    },
                },
            )
            for i, (name, nets) in enumerate(sorted(self.hosts.items()))
            if name != without
        ]


@st.composite
def cases(draw: st.DrawFn) -> Case:
    subnet = draw(st.sampled_from(["10.128.0.0/16", "fd00:1::/112", ""]))
    interface_block = draw(st.integers(1, 3))
    host_block = draw(st.integers(1, 4))
    # Excludes land in the subnet (or in a host network in no-subnet mode), at
    # any prefix length from wider than an interface block to narrower than a pod block.
    space = netaddr.IPNetwork(subnet or draw(st.sampled_from(HOST_NETS)))
    width = 32 if space.version == 4 else 128
    excludes = set()
    for _ in range(draw(st.integers(0, 5))):
        offset = draw(st.integers(0, space.size - 1))
        prefix = draw(st.integers(space.prefixlen, width - 1))
        excludes.add(str(netaddr.IPNetwork(f"{space[offset]}/{prefix}").cidr))
    master_nets = draw(
        st.one_of(st.just([]), st.permutations(HOST_NETS).flatmap(lambda p: st.just(p[:2])))
    )
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": host_block,
        "interfaceBlock": interface_block,
        "vlanMode": "l3",
        "excludeCIDRs": sorted(excludes),
    }
    network = load_resource(
        MultiNicNetwork,
        {
            "metadata": {"name": "prop"},
            "spec": {
                "subnet": subnet,
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": master_nets,
                "plugin": {"type": "ipvlan"},
            },
        },
    )
    hosts = draw(
        st.dictionaries(
            st.sampled_from(NAMES),
            st.frozensets(st.integers(0, len(HOST_NETS) - 1), max_size=len(HOST_NETS)),
            max_size=len(NAMES),
        )
    )
    return Case(network, hosts)


def placed(spec: CIDRSpec) -> dict[tuple[str, str], tuple[int, str]]:
    return {
        (entry.net_address, host.host_name): (host.host_index, host.pod_cidr)
        for entry in spec.cidr
        for host in entry.hosts
    }


def excluded(block: netaddr.IPNetwork, excludes: list[netaddr.IPNetwork]) -> bool:
    return any(e.prefixlen <= block.prefixlen and block.network in e for e in excludes)


def check_invariants(case: Case, result: PlanResult) -> None:
    config = result.spec.config
    excludes = [netaddr.IPNetwork(e) for e in config.exclude_cidrs]
    all_pods: list[netaddr.IPNetwork] = []
    for entry in result.spec.cidr:
        vlan = netaddr.IPNetwork(entry.vlan_cidr)
        if config.subnet:
            assert vlan in netaddr.IPNetwork(config.subnet)
            assert not excluded(vlan, excludes), f"{vlan} is excluded"
        else:
            assert vlan == netaddr.IPNetwork(entry.net_address)
        indexes = [h.host_index for h in entry.hosts]
        assert indexes == sorted(set(indexes)), "host indexes unique and in order"
        assert all(0 <= i < 2**config.host_block for i in indexes)
        for host in entry.hosts:
            pod = netaddr.IPNetwork(host.pod_cidr)
            assert pod in vlan
            assert pod.prefixlen == vlan.prefixlen + config.host_block
            assert not excluded(pod, excludes), f"{pod} is excluded"
            all_pods.append(pod)
    # No two blocks overlap, within an entry or across entries.
    ordered = sorted(all_pods, key=lambda n: (n.version, n.first))
    for left, right in itertools.pairwise(ordered):
        assert left.version != right.version or left.last < right.first, (left, right)
    # Narrow excludes are carried by the pool that contains them.
    pools = pool_excludes(result.spec)
    for pod in all_pods:
        for exclude in excludes:
            if exclude.prefixlen > pod.prefixlen and exclude.network in pod:
                assert str(exclude) in pools[str(pod)]
    # Every host with a NIC on a planned network is either placed or reported.
    reported = {(p.net_address, p.host_name) for p in result.problems}
    for entry in result.spec.cidr:
        on_entry = {h.host_name for h in entry.hosts}
        for name, nets in case.hosts.items():
            has_nic = any(HOST_NETS[k] == entry.net_address for k in nets)
            assert (name in on_entry) == has_nic or (entry.net_address, name) in reported


@BOUNDED
@given(cases())
def test_blocks_are_disjoint_and_never_excluded(case: Case) -> None:
    check_invariants(case, plan_cidrs(case.network, case.host_objects()))


@BOUNDED
@given(cases())
def test_planning_again_from_the_previous_plan_changes_nothing(case: Case) -> None:
    first = plan_cidrs(case.network, case.host_objects())
    again = plan_cidrs(case.network, case.host_objects(), first.spec)
    assert again.spec == first.spec
    assert again.problems == first.problems
    reordered = plan_cidrs(case.network, list(reversed(case.host_objects())))
    assert reordered.spec == first.spec
    assert reordered.problems == first.problems  # in host-name order, whatever the input's


@BOUNDED
@given(cases(), st.sampled_from(NAMES))
def test_one_host_leaving_or_joining_moves_no_other_host(case: Case, leaving: str) -> None:
    first = plan_cidrs(case.network, case.host_objects())
    after = plan_cidrs(case.network, case.host_objects(without=leaving), first.spec)
    remaining = {name: nets for name, nets in case.hosts.items() if name != leaving}
    check_invariants(Case(case.network, remaining), after)
    before_blocks = placed(first.spec)
    after_blocks = placed(after.spec)
    assert not any(name == leaving for _, name in after_blocks)
    for key, block in before_blocks.items():
        if key[1] != leaving:
            assert after_blocks[key] == block, f"{key} moved"
    before_entries = {e.net_address: e.interface_index for e in first.spec.cidr}
    for entry in after.spec.cidr:
        assert before_entries.get(entry.net_address, entry.interface_index) == (
            entry.interface_index
        )
    assert not any(p.kind.endswith("renumbered") for p in after.problems)
    # Joining again is a join like any other: nobody else moves either.
    rejoined = plan_cidrs(case.network, case.host_objects(), after.spec)
    check_invariants(case, rejoined)
    rejoined_blocks = placed(rejoined.spec)
    for key, block in after_blocks.items():
        assert rejoined_blocks[key] == block, f"{key} moved when {leaving} joined"


@BOUNDED
@given(cases())
def test_pool_excludes_asked_one_pool_at_a_time_are_those_of_the_whole_plan(case: Case) -> None:
    spec = plan_cidrs(case.network, case.host_objects()).spec
    whole = pool_excludes(spec)
    lazy = PoolExcludes(spec)
    assert sorted(lazy) == sorted(whole)
    assert len(lazy) == len(whole)
    for pod_cidr in reversed(list(whole)):
        assert lazy[pod_cidr] == whole[pod_cidr]
