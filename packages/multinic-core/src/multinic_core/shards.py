"""One CIDR plan stored as several ``CIDR`` objects when one would be too large.

kube-apiserver stores an object of at most about 1.5 MiB (etcd's default
request limit; measured: a plan of 1,500 hosts x 8 NICs, 1.78 MB, is
refused).  A network of 10,000 hosts x 8 NICs plans 12 MB, and every change
to one object is sent whole to every watcher.  So a plan is kept in shards:

* shard 0 is the ``CIDR`` named after the network, exactly as the
  predecessor writes it.  A plan that fits in one shard (up to
  :data:`SHARD_ENTRIES` host blocks, e.g. 512 hosts x 8 NICs or 4,096 hosts
  x 1 NIC) is that one object and nothing else;
* shard ``k`` >= 1 is the ``CIDR`` named ``<network>.shard-<k>``, labelled
  ``netname=<network>`` and ``multinic.fms.io/shard=<k>`` (shard 0 is
  labelled ``netname`` too when the operator creates it).

Every shard holds the plan's ``config`` and all its interface entries; an
entry's hosts are split by ``hostIndex``: shard ``k`` holds the hosts whose
``hostIndex // hosts_per_shard(entries) == k``.  Host indexes are stable, so
one host joining or leaving changes one shard.  Shards are never deleted
while their network exists (an emptied shard is written with no hosts), so
the sum of their generations (:func:`plan_generation`) only grows.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import netaddr
from pydantic import BaseModel

from multinic_core.errors import ConfigError
from multinic_core.models import GROUP, CIDRSpec, HostInterfaceInfo

SHARD_ENTRIES = 4096
"""Host blocks (hosts x interface entries) per shard: ~0.7 MB of JSON at most."""
SHARD_LABEL = f"{GROUP}/shard"
NETWORK_LABEL = "netname"
_SUFFIX = ".shard-"

M = TypeVar("M", bound=BaseModel)


class ShardMismatch(ConfigError):
    """The shards of a plan disagree (its config or entries are being rewritten)."""


def hosts_per_shard(entries: int, budget: int = SHARD_ENTRIES) -> int:
    """Hosts per shard for a plan of ``entries`` interface entries: a power of two."""
    per = max(1, budget // max(1, entries))
    return 1 << (per.bit_length() - 1)


def shard_name(network: str, index: int) -> str:
    """The name of shard ``index`` of ``network``'s plan (shard 0: the network's name)."""
    return network if index == 0 else f"{network}{_SUFFIX}{index}"


def shard_labels(network: str, index: int) -> dict[str, str]:
    """The labels of a shard: its network, and its index for the shards after 0."""
    labels = {NETWORK_LABEL: network}
    if index:
        labels[SHARD_LABEL] = str(index)
    return labels


def shard_owner(name: str) -> tuple[str, int] | None:
    """(network, index) when ``name`` is the name of a shard ``k`` >= 1 of a plan.

    Such a name (``<network>.shard-<k>``) is reserved for that shard: a
    network of that name would share its CIDR with another network's shard.
    """
    network, found, number = name.rpartition(_SUFFIX)
    if not found or not network or not number.isdigit() or number != str(int(number)):
        return None
    index = int(number)
    return (network, index) if index >= 1 else None


def shard_of(metadata: Mapping[str, Any]) -> tuple[str, int]:
    """(network, shard index) of a CIDR object's metadata.

    A CIDR without the shard label (the predecessor's, or a plan that fits in
    one) is shard 0 of the network of its name.  A label that is not a
    positive number is read as no label.
    """
    labels = metadata.get("labels") or {}
    name = str(metadata.get("name") or "")
    value = labels.get(SHARD_LABEL)
    network = labels.get(NETWORK_LABEL)
    if value is None or not network:
        return name, 0
    try:
        index = int(value)
    except (TypeError, ValueError):
        return name, 0
    if index < 1 or name != shard_name(str(network), index):
        return name, 0
    return str(network), index


def split_plan(spec: CIDRSpec, budget: int = SHARD_ENTRIES, at_least: int = 1) -> list[CIDRSpec]:
    """``spec`` as its shards, shard 0 first: at least ``at_least`` of them.

    ``at_least``: how many shards exist already (they are kept, emptied).
    The hosts of an entry keep their order; the models are shared, not copied.
    """
    size = hosts_per_shard(len(spec.cidr), budget)
    count = max(
        at_least,
        1,
        1 + max((h.host_index // size for e in spec.cidr for h in e.hosts), default=0),
    )
    if count == 1:
        return [spec]
    buckets: list[list[list[Any]]] = [[[] for _ in spec.cidr] for _ in range(count)]
    for position, entry in enumerate(spec.cidr):
        for host in entry.hosts:
            buckets[host.host_index // size][position].append(host)
    return [
        _with(
            spec,
            cidr=[_with(entry, hosts=hosts) for entry, hosts in zip(spec.cidr, shard, strict=True)],
        )
        for shard in buckets
    ]


def merge_plan(
    network: str, shards: Sequence[CIDRSpec], indexes: Sequence[int] | None = None
) -> CIDRSpec:
    """The whole plan of ``network`` from its shards (shard 0 first).

    ``indexes``: the shard index of each (default 0, 1, 2...).  Raises
    :class:`ShardMismatch` when a shard is missing (the indexes have a gap:
    the hosts of the missing one would lose their blocks) or has another
    config or other entries than shard 0 (the plan is being rewritten by a
    spec edit): the caller keeps what it has until the shards agree again.
    """
    numbers = list(indexes) if indexes is not None else list(range(len(shards)))
    if not shards or numbers[0] != 0:
        raise ShardMismatch(f"network {network}: no CIDR {network}")
    for expected, number in enumerate(numbers):
        if number != expected:
            raise ShardMismatch(
                f"network {network}: CIDR {shard_name(network, expected)} is missing"
            )
    base = shards[0]
    if len(shards) == 1:
        return base
    keys = [(e.interface_index, e.net_address, e.vlan_cidr) for e in base.cidr]
    merged: list[list[Any]] = [list(e.hosts) for e in base.cidr]
    for number, shard in zip(numbers[1:], shards[1:], strict=True):
        if (
            shard.config != base.config
            or [(e.interface_index, e.net_address, e.vlan_cidr) for e in shard.cidr] != keys
        ):
            raise ShardMismatch(
                f"network {network}: CIDR shard {number} has another config or other interface "
                "entries than the CIDR itself (the plan is being rewritten)"
            )
        for hosts, entry in zip(merged, shard.cidr, strict=True):
            hosts.extend(entry.hosts)
    return _with(
        base,
        cidr=[
            _with(entry, hosts=sorted(hosts, key=lambda h: h.host_index))
            for entry, hosts in zip(base.cidr, merged, strict=True)
        ],
    )


def restore_lost(
    spec: CIDRSpec,
    present: Iterable[int],
    blocks: Iterable[tuple[str, str, str, str, str]],
    host_ip: Callable[[str, str], str | None],
    budget: int = SHARD_ENTRIES,
) -> tuple[CIDRSpec, int]:
    """``spec`` (a plan merged from the shards found) with the hosts of the shards
    that are missing put back from the blocks their IPPools hold.

    A shard deleted while no operator ran would otherwise leave its hosts out
    of the previous plan: planned again, they would move to other blocks.
    ``present``: the shard indexes found.  ``blocks``: (name, vlanCIDR,
    podCIDR, host, interface) of each live (not retired) pool.
    ``host_ip(host, interface)``: that NIC's address now (None: the host or
    NIC is gone, its block is not put back).  A block goes back only into the
    entry of its vlanCIDR, at the host index its place in that vlanCIDR
    gives, when that index falls in a missing shard and is not taken there.
    Returns the plan and how many blocks were put back.
    """
    found = set(present)
    size = hosts_per_shard(len(spec.cidr), budget)
    positions: dict[netaddr.IPNetwork, int] = {}
    for position, entry in enumerate(spec.cidr):
        try:
            positions[netaddr.IPNetwork(entry.vlan_cidr).cidr] = position
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue
    added: list[list[HostInterfaceInfo]] = [[] for _ in spec.cidr]
    taken = [{h.host_index for h in e.hosts} for e in spec.cidr]
    known = {(h.host_name, h.interface_name) for e in spec.cidr for h in e.hosts}
    for pool, vlan_cidr, pod_cidr, host, interface in blocks:
        if (host, interface) in known:
            continue  # in a shard found (most are: nothing to parse)
        address = host_ip(host, interface)
        if not address:
            continue
        try:
            vlan, pod = netaddr.IPNetwork(vlan_cidr).cidr, netaddr.IPNetwork(pod_cidr)
        except (netaddr.AddrFormatError, ValueError, TypeError):
            continue
        at = positions.get(vlan)
        if at is None or pod.version != vlan.version or pod not in vlan or pod.ip != pod.network:
            continue
        index = (pod.first - vlan.first) // pod.size
        if index // size in found or index in taken[at]:
            continue
        taken[at].add(index)
        known.add((host, interface))
        added[at].append(
            HostInterfaceInfo(
                host_index=index,
                host_name=host,
                interface_name=interface,
                host_ip=address,
                pod_cidr=str(pod),
                ippool=pool,
            )
        )
    count = sum(len(hosts) for hosts in added)
    if not count:
        return spec, 0
    return _with(
        spec,
        cidr=[
            _with(entry, hosts=sorted([*entry.hosts, *more], key=lambda h: h.host_index))
            if more
            else entry
            for entry, more in zip(spec.cidr, added, strict=True)
        ],
    ), count


def same_models(a: CIDRSpec, b: CIDRSpec) -> bool:
    """Whether ``b`` is ``a`` made of the same host models: the same config and
    entries, each entry's hosts the very same objects in the same order.

    A planner shares the models of the hosts that did not change, so two plans'
    unchanged shards compare so without being encoded.  False says nothing.
    """
    if a.config != b.config or len(a.cidr) != len(b.cidr):
        return False
    for old, new in zip(a.cidr, b.cidr, strict=True):
        if (old.interface_index, old.net_address, old.vlan_cidr) != (
            new.interface_index,
            new.net_address,
            new.vlan_cidr,
        ) or len(old.hosts) != len(new.hosts):
            return False
        if not all(x is y for x, y in zip(old.hosts, new.hosts, strict=True)):
            return False
    return True


def _with(model: M, **update: Any) -> M:
    """A shallow copy of ``model`` with ``update``: also of a compacted one
    (``models.compact``: its field set is frozen, which ``model_copy`` updates)."""
    copied = model.__copy__()
    object.__setattr__(
        copied, "__pydantic_fields_set__", set(model.__pydantic_fields_set__) | set(update)
    )
    copied.__dict__.update(update)
    return copied


def plan_generation(generations: Sequence[int | None]) -> int | None:
    """The generation of a sharded plan: the sum of its shards' (None if one is unknown)."""
    total = 0
    for generation in generations:
        if generation is None:
            return None
        total += int(generation)
    return total
