"""Incremental CIDR planning: a join or leave replans only the hosts it changes.

``IncrementalPlanner`` starts from a from-scratch plan (``plan_from_config``,
the reference) and keeps, per interface entry, what that plan decided: the
host index of every member, the members still waiting for a block (the entry
is full) and the hosts without a NIC there.  ``apply`` (or ``add_host``,
``remove_host``, ``update_host``, ``sync``) then touches only the entries of
the hosts it is given: one host joining a 10,000-host plan costs about as
much as planning that one host.

The contract, tested as a property: after any change, ``result()`` equals
``plan_from_config(config, hosts, previous)`` where ``hosts`` are the
planner's hosts now and ``previous`` is ``result().spec`` from before the
change.  SPEC 2's stability rules come with it: a kept host keeps its index;
a new host gets (highest index in use) + 1, skipping excluded blocks; only
once that passes 2^H - 1 are gaps reused, lowest first; members of a full
entry wait, in host-name order, for a block to free up.  A change of the
plan's inputs (subnet, block sizes, excludes, masterNets) is not incremental:
build a new planner from the old plan.

The objects ``result()`` returns are shared with the planner's state: read
them, do not modify them.
"""

from __future__ import annotations

import bisect
import heapq
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import netaddr

from multinic_core.errors import PlanError
from multinic_core.models import (
    CIDREntry,
    CIDRSpec,
    HostInterface,
    HostInterfaceInfo,
    MultiNicNetwork,
    PluginConfig,
    compact,
)
from multinic_core.planner import (
    IndexSpace,
    PlanProblem,
    PlanResult,
    _checked_name,
    _format_block,
    _host_nics,
    _Network,
    _network_key,
    _Nic,
    _Planner,
    block_info,
    host_unplaced,
    nic_missing,
    plugin_config,
)

log = logging.getLogger(__name__)

_Key = tuple[int, int, int]


@dataclass(frozen=True)
class PlanDelta:
    """What one change did to the plan's blocks; ``result()`` has the whole plan.

    Each item names the entry (its ``netAddress``) and the host's block there.
    ``updated`` blocks kept their index and podCIDR but have a new
    ``interfaceName`` or ``hostIP``.  Entries appear and disappear only when
    ``masterNets`` is empty (a network is planned once some host has it).
    """

    placed: list[tuple[str, HostInterfaceInfo]] = field(default_factory=list)
    released: list[tuple[str, HostInterfaceInfo]] = field(default_factory=list)
    updated: list[tuple[str, HostInterfaceInfo]] = field(default_factory=list)
    entries_added: list[str] = field(default_factory=list)
    entries_removed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """Whether no block and no entry changed (problems may still have)."""
        return not (
            self.placed
            or self.released
            or self.updated
            or self.entries_added
            or self.entries_removed
        )

    @property
    def hosts(self) -> set[str]:
        """The hosts whose blocks changed."""
        return {info.host_name for _, info in (*self.placed, *self.released, *self.updated)}


@dataclass
class _Host:
    """What the plan uses of one host: its networks (first NIC on each) and the
    ``resourceVersion`` of the HostInterface they were read from."""

    nics: dict[_Key, _Nic]
    version: str | None


class _Entry:
    """One interface entry kept up to date: who has which block, who waits.

    ``order``/``infos`` are the entry's blocks sorted by host index.  The
    highest index in use comes from a max-heap and the lowest free one from a
    min-heap of released indexes below ``_floor`` plus a scan from ``_floor``
    (everything below it is in use, excluded or in the heap), both cleaned
    lazily, so neither needs a pass over the entry.
    """

    def __init__(
        self, network: _Network, interface_index: int, space: IndexSpace, config: PluginConfig
    ) -> None:
        self.network = network
        self.key = _network_key(network.net)
        self.interface_index = interface_index
        self.space = space
        self.config = config
        self.vlan_cidr = _format_block(space.base, space.prefixlen, space.version)
        self.index_of: dict[str, int] = {}
        self.used: set[int] = set()
        self.order: list[int] = []
        self.infos: list[HostInterfaceInfo] = []
        self._tops: list[int] = []  # negated indexes: a max-heap
        self._holes: list[int] = []
        self._floor = 0
        self.pending: list[str] = []
        self.pending_problems: list[PlanProblem] = []
        self.missing: list[str] = []
        self.missing_problems: list[PlanProblem] = []
        self._cidr_entry: CIDREntry | None = None

    # ------------------------------------------------------------------ blocks

    def adopt(self, infos: Sequence[HostInterfaceInfo], host_names: Iterable[str]) -> None:
        """Take over the entry as a from-scratch plan made it (``infos`` by index)."""
        # Kept for as long as the planner lives (80,000 at 10,000 x 8): compacted.
        self.infos = [compact(info) for info in infos]
        self.order = [info.host_index for info in infos]
        self.index_of = {info.host_name: info.host_index for info in infos}
        self.used = set(self.order)
        self._tops = [-index for index in self.order]
        heapq.heapify(self._tops)
        members = self.network.members
        self.pending = sorted(name for name in members if name not in self.index_of)
        self.pending_problems = [self._unplaced(name) for name in self.pending]
        self.missing = sorted(name for name in host_names if name not in members)
        self.missing_problems = [nic_missing(self.network, name) for name in self.missing]

    def place(self, name: str, index: int) -> HostInterfaceInfo:
        info = block_info(self.config.name, self.space, index, name, self.network.members[name])
        at = bisect.bisect_left(self.order, index)
        self.order.insert(at, index)
        self.infos.insert(at, info)
        self.index_of[name] = index
        self.used.add(index)
        heapq.heappush(self._tops, -index)
        self._cidr_entry = None
        return info

    def release(self, name: str) -> HostInterfaceInfo:
        index = self.index_of.pop(name)
        at = bisect.bisect_left(self.order, index)
        del self.order[at]
        info = self.infos.pop(at)
        self.used.discard(index)
        if index < self._floor:
            heapq.heappush(self._holes, index)
        self._cidr_entry = None
        return info

    def update(self, name: str) -> HostInterfaceInfo | None:
        """Rewrite ``name``'s block for its current NIC; None when it has none."""
        index = self.index_of.get(name)
        if index is None:
            return None
        at = bisect.bisect_left(self.order, index)
        info = block_info(self.config.name, self.space, index, name, self.network.members[name])
        self.infos[at] = info
        self._cidr_entry = None
        return info

    def _highest(self) -> int:
        tops = self._tops
        while tops and -tops[0] not in self.used:
            heapq.heappop(tops)
        if len(tops) > 2 * len(self.used) + 64:  # stale copies of reused indexes
            self._tops = tops = [-index for index in self.used]
            heapq.heapify(tops)
        return -tops[0] if tops else -1

    def _lowest_free(self) -> int | None:
        holes = self._holes
        while holes and holes[0] in self.used:
            heapq.heappop(holes)
        if holes:
            return holes[0]
        found = self.space.next_usable(self._floor, self.used)
        self._floor = self.space.size if found is None else found
        return found

    def allocate(self) -> list[HostInterfaceInfo]:
        """Give waiting members blocks, in name order, as ``HostIndexAllocator`` would."""
        if not self.pending:
            return []
        placed: list[HostInterfaceInfo] = []
        highest = self._highest()
        top_reached = False
        for name in self.pending:
            index: int | None = None
            if not top_reached:
                index = self.space.next_usable(highest + 1, self.used)
                if index is None:
                    top_reached = True
                else:
                    highest = index
            if index is None:
                index = self._lowest_free()
                if index is None:
                    break  # full: the rest wait too
            placed.append(self.place(name, index))
        del self.pending[: len(placed)]
        del self.pending_problems[: len(placed)]
        return placed

    # ------------------------------------------------------------------ problems

    def _unplaced(self, name: str) -> PlanProblem:
        return host_unplaced(self.config, self.network, self.vlan_cidr, self.space, name)

    def add_pending(self, name: str) -> None:
        at = bisect.bisect_left(self.pending, name)
        self.pending.insert(at, name)
        self.pending_problems.insert(at, self._unplaced(name))

    def remove_pending(self, name: str) -> None:
        at = bisect.bisect_left(self.pending, name)
        del self.pending[at]
        del self.pending_problems[at]

    def add_missing(self, name: str) -> None:
        at = bisect.bisect_left(self.missing, name)
        self.missing.insert(at, name)
        self.missing_problems.insert(at, nic_missing(self.network, name))

    def remove_missing(self, name: str) -> None:
        at = bisect.bisect_left(self.missing, name)
        if at < len(self.missing) and self.missing[at] == name:
            del self.missing[at]
            del self.missing_problems[at]

    def cidr_entry(self) -> CIDREntry:
        if self._cidr_entry is None:
            # The values are the planner's own (checked when made): no validation pass.
            self._cidr_entry = CIDREntry.model_construct(
                net_address=self.network.net_address,
                interface_index=self.interface_index,
                vlan_cidr=self.vlan_cidr,
                hosts=list(self.infos),
            )
        return self._cidr_entry


class _Batch:
    """What one ``apply`` collects before the entries allocate."""

    def __init__(self) -> None:
        self.delta = PlanDelta()
        self.touched: set[_Entry] = set()
        self.emptied: set[_Key] = set()
        self.appeared = False


class IncrementalPlanner:
    """A CIDR plan that follows host joins, leaves and NIC changes one host at a time.

    ``config`` is the network's ``CIDR.spec.config`` (``plugin_config``);
    ``hosts`` and ``previous`` are as for ``plan_from_config``, which makes
    the first plan.  Raises PlanError like ``plan_from_config``.  Not
    thread-safe: one caller at a time (the operator's reconcile lock).
    """

    def __init__(
        self,
        config: PluginConfig,
        hosts: Sequence[HostInterface] = (),
        previous: CIDRSpec | None = None,
    ) -> None:
        self.config = config.model_copy(deep=True)
        reference = _Planner(self.config, previous)
        self._result: PlanResult | None = reference.plan(hosts)
        self._reference = reference  # parsed config: vlan spaces, exclude sets, network names
        self._networks: dict[_Key, _Network] = reference.found
        for network in reference.targets_list:
            # A masterNets entry no host has yet: its (empty) member dict is the one to fill.
            self._networks.setdefault(_network_key(network.net), network)
        self._master_keys: set[_Key] | None = (
            {_network_key(network.net) for network in reference.targets_list}
            if self.config.master_nets
            else None
        )
        self._hosts: dict[str, _Host] = {}
        for host in hosts:
            self._hosts[_checked_name(host)] = _Host({}, host.metadata.resource_version)
        for key, network in self._networks.items():
            for name, nic in network.members.items():
                self._hosts[name].nics[key] = nic
        self._entries: list[_Entry] = []
        for (network, index), built in zip(reference.placed, self._result.spec.cidr, strict=True):
            entry = _Entry(network, index, reference.vlan_space(network, index), self.config)
            entry.adopt(built.hosts, self._hosts)
            self._entries.append(entry)
        self._by_key = {entry.key: entry for entry in self._entries}
        self._interface_problems = self._place_networks()[1]

    @classmethod
    def for_network(
        cls,
        network: MultiNicNetwork,
        hosts: Sequence[HostInterface] = (),
        previous: CIDRSpec | None = None,
    ) -> IncrementalPlanner:
        """The planner of a MultiNicNetwork (``plan_cidrs``'s inputs)."""
        return cls(plugin_config(network), hosts, previous)

    # ------------------------------------------------------------------ reading

    @property
    def host_names(self) -> list[str]:
        return list(self._hosts)

    def __contains__(self, name: object) -> bool:
        """Whether host ``name`` is one of the planner's hosts."""
        return name in self._hosts

    def result(self) -> PlanResult:
        """The plan as it is now (the same object until the next change)."""
        if self._result is None:
            problems = list(self._interface_problems)
            entries = []
            for entry in self._entries:
                entries.append(entry.cidr_entry())
                problems.extend(entry.pending_problems)
                problems.extend(entry.missing_problems)
            spec = CIDRSpec.model_construct(config=self.config.model_copy(deep=True), cidr=entries)
            self._result = PlanResult(spec=spec, problems=problems)
        return self._result

    # ------------------------------------------------------------------ changes

    def add_host(self, host: HostInterface) -> PlanDelta:
        return self.apply(joined=[host])

    def remove_host(self, name: str) -> PlanDelta:
        return self.apply(left=[name])

    def update_host(self, host: HostInterface) -> PlanDelta:
        return self.apply(updated=[host])

    def sync(self, hosts: Sequence[HostInterface]) -> PlanDelta:
        """Make ``hosts`` the planner's hosts: one ``apply`` of the difference.

        A host whose HostInterface has the ``resourceVersion`` seen last is
        taken as unchanged without looking at its NICs.
        """
        # One pass over every host: kept to the few operations it needs.
        seen: set[str] = set()
        joined: list[HostInterface] = []
        updated: list[HostInterface] = []
        hosts_known = self._hosts
        for host in hosts:
            metadata = host.metadata
            name = host.spec.host_name or metadata.name
            if not name or name in seen:
                _checked_name(host)
                raise PlanError(f"HostInterface hostName {name!r} is given twice")
            seen.add(name)
            known = hosts_known.get(name)
            if known is None:
                joined.append(host)
            elif known.version is None or known.version != metadata.resource_version:
                updated.append(host)
        left: list[str] = []
        if len(seen) - len(joined) != len(hosts_known):
            left = [name for name in hosts_known if name not in seen]
        return self.apply(joined, left, updated)

    def apply(
        self,
        joined: Sequence[HostInterface] = (),
        left: Sequence[str] = (),
        updated: Sequence[HostInterface] = (),
    ) -> PlanDelta:
        """Join, remove and update hosts in one step; returns what changed.

        Equal to planning the resulting hosts from scratch with the current
        plan as the previous one.  Raises PlanError (changing nothing) for a
        host named twice, a joining host already there, or a leaving or
        updated host that is not.
        """
        names = self._reference.names
        seen: set[str] = set()
        parsed: list[tuple[str, dict[_Key, _Nic], dict[_Key, netaddr.IPNetwork], str | None]] = []

        def claim(name: str) -> None:
            if name in seen:
                raise PlanError(f"host {name!r} is given twice in one change")
            seen.add(name)

        for host in joined:
            name = _checked_name(host)
            claim(name)
            if name in self._hosts:
                raise PlanError(f"HostInterface hostName {name!r} is given twice")
        for name in left:
            claim(name)
            if name not in self._hosts:
                raise PlanError(f"host {name!r} is not in the plan, so it cannot leave it")
        for host in updated:
            name = _checked_name(host)
            claim(name)
            if name not in self._hosts:
                raise PlanError(f"host {name!r} is not in the plan, so it cannot be updated")
        for host in (*joined, *updated):
            nics: dict[_Key, _Nic] = {}
            nets: dict[_Key, netaddr.IPNetwork] = {}
            for key, (net, nic) in _host_nics(host, names).items():
                nics[key] = nic
                nets[key] = net
            parsed.append((_checked_name(host), nics, nets, host.metadata.resource_version))

        batch = _Batch()
        for name in left:
            self._drop_host(name, batch)
        joining = len(joined)
        for i, (name, nics, nets, version) in enumerate(parsed):
            if i < joining:
                self._add_host(name, nics, nets, version, batch)
            else:
                self._change_host(name, nics, nets, version, batch)
        for key in batch.emptied:
            network = self._networks.get(key)
            if (
                network is not None
                and not network.members
                and (self._master_keys is None or key not in self._master_keys)
            ):
                del self._networks[key]
        if self._master_keys is None and (batch.appeared or batch.emptied):
            self._replace_entries(batch)
        for entry in self._entries:
            if entry in batch.touched:
                batch.delta.placed.extend(
                    (entry.network.net_address, info) for info in entry.allocate()
                )
        self._result = None
        delta = batch.delta
        if not delta.empty:
            log.info(
                "plan %s: %d host(s) joined, %d left, %d updated: %d block(s) placed, "
                "%d released, %d updated",
                self.config.name,
                len(joined),
                len(left),
                len(updated),
                len(delta.placed),
                len(delta.released),
                len(delta.updated),
            )
        return delta

    # ------------------------------------------------------------------ one host

    def _leave(self, name: str, key: _Key, batch: _Batch, *, stays: bool) -> None:
        """Host ``name`` no longer has a NIC on network ``key``."""
        network = self._networks[key]
        del network.members[name]
        if not network.members:
            batch.emptied.add(key)
        entry = self._by_key.get(key)
        if entry is None:
            return
        batch.touched.add(entry)
        if name in entry.index_of:
            batch.delta.released.append((network.net_address, entry.release(name)))
        else:
            entry.remove_pending(name)
        if stays:
            entry.add_missing(name)

    def _join(self, name: str, key: _Key, nic: _Nic, net: netaddr.IPNetwork, batch: _Batch) -> None:
        """Host ``name`` has a NIC on network ``key`` now."""
        network = self._networks.get(key)
        if network is None:
            network = self._networks[key] = _Network(net, str(net))
            batch.appeared = True
        network.members[name] = nic
        entry = self._by_key.get(key)
        if entry is not None:
            batch.touched.add(entry)
            entry.remove_missing(name)
            entry.add_pending(name)

    def _drop_host(self, name: str, batch: _Batch) -> None:
        host = self._hosts.pop(name)
        for key in host.nics:
            self._leave(name, key, batch, stays=False)
        for entry in self._entries:
            if entry.key not in host.nics:
                entry.remove_missing(name)

    def _add_host(
        self,
        name: str,
        nics: dict[_Key, _Nic],
        nets: dict[_Key, netaddr.IPNetwork],
        version: str | None,
        batch: _Batch,
    ) -> None:
        self._hosts[name] = _Host(nics, version)
        for key, nic in nics.items():
            self._join(name, key, nic, nets[key], batch)
        for entry in self._entries:
            if entry.key not in nics:
                entry.add_missing(name)

    def _change_host(
        self,
        name: str,
        nics: dict[_Key, _Nic],
        nets: dict[_Key, netaddr.IPNetwork],
        version: str | None,
        batch: _Batch,
    ) -> None:
        host = self._hosts[name]
        host.version = version
        if nics == host.nics:
            return
        for key in host.nics:
            if key not in nics:
                self._leave(name, key, batch, stays=True)
        for key, nic in nics.items():
            old = host.nics.get(key)
            if old is None:
                self._join(name, key, nic, nets[key], batch)
            elif old != nic:
                self._networks[key].members[name] = nic
                entry = self._by_key.get(key)
                info = entry.update(name) if entry is not None else None
                if entry is not None and info is not None:
                    batch.delta.updated.append((entry.network.net_address, info))
        host.nics = nics

    # ------------------------------------------------------------------ networks

    def _place_networks(self) -> tuple[list[tuple[_Network, int]], list[PlanProblem]]:
        """Interface indexes and their problems, as a plan from the current one gives them."""
        helper = _Planner(self.config, None)
        helper.previous_interface = {entry.key: entry.interface_index for entry in self._entries}
        placed = helper.interface_indexes(helper.targets(self._networks))
        return placed, helper.problems

    def _replace_entries(self, batch: _Batch) -> None:
        """A network appeared or went (masterNets empty): place the networks again."""
        placed, self._interface_problems = self._place_networks()
        entries: list[_Entry] = []
        for network, index in placed:
            key = _network_key(network.net)
            entry = self._by_key.get(key)
            if entry is None or entry.interface_index != index or entry.network is not network:
                entry = _Entry(
                    network, index, self._reference.vlan_space(network, index), self.config
                )
                entry.adopt([], self._hosts)
                batch.touched.add(entry)
                batch.delta.entries_added.append(network.net_address)
            entries.append(entry)
        kept = {id(entry) for entry in entries}
        for entry in self._entries:
            if id(entry) not in kept:
                batch.delta.entries_removed.append(entry.network.net_address)
                batch.delta.released.extend(
                    (entry.network.net_address, info) for info in entry.infos
                )
        self._entries = entries
        self._by_key = {entry.key: entry for entry in entries}
