"""The CIDR planner: one address block per host per NIC (SPEC section 2).

``plan_cidrs`` is a pure function of a ``MultiNicNetwork``, the hosts'
``HostInterface`` objects and the previous plan: the reference.  The
``multinic plan`` command calls it once; the operator plans through
``multinic_core.incremental.IncrementalPlanner``, which starts from it and
then replans only the hosts that join, leave or change (same results).

Bit layout of the global subnet (prefix P)::

    | P | interfaceBlock I | hostBlock H | pod bits |

All arithmetic is on integers (``netaddr`` only parses and prints), indexes in
use are kept in sets and excludes are indexed by prefix length, so planning
thousands of hosts is linear in the number of (host, NIC) pairs.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Container, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import netaddr
from netaddr.strategy import ipv4, ipv6

from multinic_core.errors import PlanError
from multinic_core.models import (
    CIDR,
    CIDREntry,
    CIDRSpec,
    CIDRStatus,
    HostInterface,
    HostInterfaceInfo,
    IPPool,
    IPPoolSpec,
    MultiNicNetwork,
    NetworkResult,
    ObjectMeta,
    OwnerReference,
    PluginConfig,
    compact,
    ippool_name,
    parse_cidr,
)

log = logging.getLogger(__name__)

ProblemKind = Literal[
    "network-unplaced",
    "network-renumbered",
    "host-unplaced",
    "host-renumbered",
    "nic-missing",
]


@dataclass(frozen=True)
class PlanProblem:
    """Something the plan could not do as asked, for the network's status.

    ``kind`` is one of: ``network-unplaced`` (no interface index left, or the
    host network is too small for ``hostBlock`` in no-subnet mode),
    ``network-renumbered`` (an existing entry's blocks moved because of a
    changed subnet, block size or exclude), ``host-unplaced`` (the entry is
    full), ``host-renumbered`` (an existing host had to take a new host index),
    ``nic-missing`` (a host has no NIC on one of the plan's networks).
    """

    kind: ProblemKind
    net_address: str
    message: str
    host_name: str = ""

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class PlanResult:
    """The computed ``CIDR`` spec and what could not be planned as asked."""

    spec: CIDRSpec
    problems: list[PlanProblem] = field(default_factory=list)


# --------------------------------------------------------------------------- arithmetic


def _width(version: int) -> int:
    return 32 if version == 4 else 128


def _format_block(value: int, prefixlen: int, version: int) -> str:
    # The strategy functions print exactly like str(IPAddress) without building one.
    strategy = ipv4 if version == 4 else ipv6
    return f"{strategy.int_to_str(value)}/{prefixlen}"


def _network_key(net: netaddr.IPNetwork) -> tuple[int, int, int]:
    """Sort key of a network: IPv4 before IPv6, then by address, then wider first."""
    return (net.version, net.first, net.prefixlen)


class ExcludeSet:
    """The ``excludeCIDRs`` of one IP version, indexed by prefix length.

    SPEC 2: a candidate block is unusable if an exclude whose prefix length is
    at most the candidate's contains the candidate's network address.  Each
    check costs one set look-up per distinct exclude prefix length.
    """

    def __init__(self, networks: Iterable[netaddr.IPNetwork], version: int) -> None:
        self.version = version
        self.width = _width(version)
        by_length: dict[int, dict[int, str]] = {}
        for net in networks:
            if net.version == version:
                by_length.setdefault(net.prefixlen, {})[net.first] = str(net.cidr)
        # Widest first, so that the first hit also gives the longest skip.
        self._levels = [
            (length, self._mask(length), (1 << (self.width - length)) - 1, by_length[length])
            for length in sorted(by_length)
        ]

    def _mask(self, length: int) -> int:
        return ((1 << length) - 1) << (self.width - length)

    def may_cover(self, prefixlen: int) -> bool:
        """Whether any exclude is wide enough to make a /``prefixlen`` block unusable."""
        return bool(self._levels) and self._levels[0][0] <= prefixlen

    def covering(self, network: int, prefixlen: int) -> tuple[int, str] | None:
        """The exclude that makes block ``network/prefixlen`` unusable, if any.

        Returns its last address (to skip past it) and its CIDR (for messages).
        """
        for length, mask, hostmask, starts in self._levels:
            if length > prefixlen:
                break
            start = network & mask
            cidr = starts.get(start)
            if cidr is not None:
                return start | hostmask, cidr
        return None


class IndexSpace:
    """Index ``k`` placed in ``bits`` bits after ``prefixlen`` bits of ``base``.

    Used twice: interface indexes in the global subnet, host indexes in an
    interface's ``vlanCIDR``.
    """

    def __init__(
        self, base: int, prefixlen: int, bits: int, version: int, excludes: ExcludeSet
    ) -> None:
        width = _width(version)
        if prefixlen + bits > width:
            raise PlanError(
                f"{bits} index bits after /{prefixlen} exceed the {width}-bit IPv{version} address"
            )
        self.base = base & (((1 << prefixlen) - 1) << (width - prefixlen))
        self.prefixlen = prefixlen
        self.bits = bits
        self.version = version
        self.size = 1 << bits
        self.block_prefixlen = prefixlen + bits
        self._shift = width - self.block_prefixlen
        self._excludes = excludes
        self._may_exclude = excludes.may_cover(self.block_prefixlen)

    def block(self, index: int) -> int:
        """Network address of block ``index``; PlanError when it does not fit the bits."""
        if not 0 <= index < self.size:
            raise PlanError(
                f"index {index} does not fit in {self.bits} bits (at most {self.size - 1})"
            )
        return self.base | (index << self._shift)

    def block_cidr(self, index: int) -> str:
        return _format_block(self.block(index), self.block_prefixlen, self.version)

    def excluded_by(self, index: int) -> str | None:
        """The exclude CIDR that makes block ``index`` unusable, or None."""
        hit = self._excludes.covering(self.block(index), self.block_prefixlen)
        return None if hit is None else hit[1]

    def unusable_reason(self, index: int, used: Container[int]) -> str | None:
        """Why an existing ``index`` cannot be kept, or None when it can."""
        if not 0 <= index < self.size:
            return f"index {index} is out of range for {self.bits} bits"
        if index in used:
            return f"index {index} is taken twice"
        exclude = self.excluded_by(index) if self._may_exclude else None
        if exclude is not None:
            return f"{self.block_cidr(index)} is now excluded by {exclude}"
        return None

    def next_usable(self, start: int, used: Container[int]) -> int | None:
        """Lowest index >= ``start`` that is in range, not in ``used`` and not excluded."""
        index = max(start, 0)
        while index < self.size:
            if index in used:
                index += 1
                continue
            if not self._may_exclude:
                return index
            hit = self._excludes.covering(self.block(index), self.block_prefixlen)
            if hit is None:
                return index
            # An exclude at most as long as the block is aligned to block
            # boundaries: jump to the first block after it in one step.
            index = (hit[0] + 1 - self.base) >> self._shift
        return None


class HostIndexAllocator:
    """Host indexes of one interface entry (SPEC 2, "Host index").

    A new host gets (highest assigned) + 1, skipping excluded candidates; only
    once that passes 2^H - 1 are gaps reused, lowest first.  Indexes released
    by leaving hosts are therefore not handed out again until the top is
    reached, which keeps stale routes and pools of a departed host from being
    confused with a newcomer's.
    """

    def __init__(self, space: IndexSpace, kept: Iterable[int]) -> None:
        self.space = space
        self.used: set[int] = set(kept)
        self._highest = max(self.used, default=-1)
        self._top_reached = False
        self._gap = 0

    def allocate(self) -> int | None:
        """The next host index, or None when the entry is full."""
        index: int | None = None
        if not self._top_reached:
            index = self.space.next_usable(self._highest + 1, self.used)
            if index is None:
                self._top_reached = True
            else:
                self._highest = index
        if index is None:
            # Gaps only fill up during one plan, so the scan never goes back.
            index = self.space.next_usable(self._gap, self.used)
            if index is None:
                self._gap = self.space.size
                return None
            self._gap = index + 1
        self.used.add(index)
        return index


# --------------------------------------------------------------------------- inputs


class _Nic(NamedTuple):
    """The NIC that carries a host's block on one network (a tuple: built 10,000s of times)."""

    interface_name: str
    host_ip: str


@dataclass
class _Network:
    """One network the plan covers: its key, how it is written, who is on it."""

    net: netaddr.IPNetwork
    net_address: str
    members: dict[str, _Nic] = field(default_factory=dict)


@dataclass
class _PreviousHosts:
    """An entry's hosts in the previous plan that are still members."""

    kept: dict[str, int] = field(default_factory=dict)
    indexes: set[int] = field(default_factory=set)
    pod_cidr: dict[str, str] = field(default_factory=dict)
    moved: dict[str, str] = field(default_factory=dict)


class _NetworkNames:
    """Parses network strings once; plans see the same few strings thousands of times."""

    def __init__(self) -> None:
        self._cache: dict[str, tuple[netaddr.IPNetwork, tuple[int, int, int]] | None] = {}

    def parse(self, value: str) -> netaddr.IPNetwork | None:
        """The network (host bits cleared), or None for an empty or invalid string."""
        known = self.parse_keyed(value)
        return None if known is None else known[0]

    def parse_keyed(self, value: str) -> tuple[netaddr.IPNetwork, tuple[int, int, int]] | None:
        """The network and its sort key, or None for an empty or invalid string."""
        if value not in self._cache:
            try:
                net = netaddr.IPNetwork(value).cidr if value else None
            except (netaddr.AddrFormatError, ValueError, TypeError):
                net = None
            self._cache[value] = None if net is None else (net, _network_key(net))
        return self._cache[value]


def _host_name(host: HostInterface) -> str:
    return host.spec.host_name or host.metadata.name


def _checked_name(host: HostInterface) -> str:
    name = _host_name(host)
    if not name:
        raise PlanError("a HostInterface has neither spec.hostName nor metadata.name")
    return name


def _host_nics(
    host: HostInterface, names: _NetworkNames
) -> dict[tuple[int, int, int], tuple[netaddr.IPNetwork, _Nic]]:
    """The host's networks (by key), each with the NIC that carries its block there.

    A second NIC on the same network is not a second member; the first one
    listed carries the host's block.  NICs without a (valid) network are skipped.
    """
    nics: dict[tuple[int, int, int], tuple[netaddr.IPNetwork, _Nic]] = {}
    for nic in host.spec.interfaces:
        known = names.parse_keyed(nic.net_address)
        if known is not None and known[1] not in nics:
            nics[known[1]] = (known[0], _Nic(nic.interface_name, nic.host_ip.partition("/")[0]))
    return nics


def _collect_members(
    hosts: Sequence[HostInterface], names: _NetworkNames
) -> tuple[dict[tuple[int, int, int], _Network], list[str]]:
    """Networks found on the hosts, each with its member hosts, and all host names."""
    found: dict[tuple[int, int, int], _Network] = {}
    host_names: list[str] = []
    seen: set[str] = set()
    for host in hosts:
        name = _checked_name(host)
        if name in seen:
            raise PlanError(f"HostInterface hostName {name!r} is given twice")
        seen.add(name)
        host_names.append(name)
        for key, (net, nic) in _host_nics(host, names).items():
            network = found.get(key)
            if network is None:
                network = found[key] = _Network(net, str(net))
            network.members[name] = nic
    return found, host_names


def _parse_config_cidr(value: str, what: str) -> netaddr.IPNetwork:
    try:
        return parse_cidr(value)
    except ValueError as e:
        raise PlanError(f"{what} {value!r}: {e}") from e


# --------------------------------------------------------------------------- the plan


def plugin_config(network: MultiNicNetwork) -> PluginConfig:
    """The inputs of a plan as recorded in ``CIDR.spec.config``.

    Raises PlanError when the network does not use the built-in multi-nic-ipam
    (only that IPAM has a CIDR plan).
    """
    ipam = network.spec.multi_nic_ipam_config
    if ipam is None:
        raise PlanError(
            f"network {network.name}: ipam type {network.spec.ipam_config.type!r} has no "
            "CIDR plan (only multi-nic-ipam has one)"
        )
    return PluginConfig(
        name=network.name,
        type=network.spec.plugin.type,
        subnet=network.spec.subnet,
        master_nets=list(network.spec.master_nets),
        host_block=ipam.host_block,
        interface_block=ipam.interface_block,
        exclude_cidrs=list(ipam.exclude_cidrs),
        vlan_mode=ipam.vlan_mode,
    )


def plan_cidrs(
    network: MultiNicNetwork,
    hosts: Sequence[HostInterface],
    previous: CIDRSpec | None = None,
) -> PlanResult:
    """Compute the network's CIDR plan for ``hosts``, keeping ``previous`` where valid.

    ``hosts`` are the hosts that exist now; a host of ``previous`` missing from
    it (or whose HostInterface no longer has a network) leaves that entry.  The
    caller decides who exists (Node NotFound); the planner never guesses.
    Entries come in masterNets order (or by network address when masterNets
    is empty), hosts in hostIndex order.
    """
    return plan_from_config(plugin_config(network), hosts, previous)


def plan_from_config(
    config: PluginConfig,
    hosts: Sequence[HostInterface],
    previous: CIDRSpec | None = None,
) -> PlanResult:
    """``plan_cidrs`` from an already recorded ``CIDR.spec.config``."""
    planner = _Planner(config, previous)
    return planner.plan(hosts)


class _Planner:
    def __init__(self, config: PluginConfig, previous: CIDRSpec | None) -> None:
        self.config = config
        self.problems: list[PlanProblem] = []
        self.renumbered: set[str] = set()
        self.names = _NetworkNames()
        self.excludes = [
            _parse_config_cidr(value, "excludeCIDRs entry") for value in config.exclude_cidrs
        ]
        self._exclude_sets: dict[int, ExcludeSet] = {}
        self.subnet = _parse_config_cidr(config.subnet, "subnet") if config.subnet else None
        if config.host_block < 0 or config.interface_block < 0:
            raise PlanError(
                f"hostBlock {config.host_block} and interfaceBlock {config.interface_block} "
                "must not be negative"
            )
        if self.subnet is not None:
            width = _width(self.subnet.version)
            pod_prefix = self.subnet.prefixlen + config.interface_block + config.host_block
            if pod_prefix > width:
                raise PlanError(
                    f"hostBlock {config.host_block} + interfaceBlock {config.interface_block} "
                    f"do not fit subnet {config.subnet} (pod blocks would be /{pod_prefix})"
                )
        self.previous: dict[tuple[int, int, int], CIDREntry] = {}
        for entry in previous.cidr if previous is not None else ():
            net = self.names.parse(entry.net_address)
            if net is None:
                log.warning("previous plan entry %r is not a network; ignored", entry.net_address)
                continue
            self.previous.setdefault(_network_key(net), entry)
        # Interface indexes to keep where still valid (the incremental planner sets its own).
        self.previous_interface = {
            key: entry.interface_index for key, entry in self.previous.items()
        }
        # What ``plan`` found and placed, for the incremental planner to continue from.
        self.found: dict[tuple[int, int, int], _Network] = {}
        self.targets_list: list[_Network] = []
        self.placed: list[tuple[_Network, int]] = []

    def exclude_set(self, version: int) -> ExcludeSet:
        if version not in self._exclude_sets:
            self._exclude_sets[version] = ExcludeSet(self.excludes, version)
        return self._exclude_sets[version]

    def problem(self, kind: ProblemKind, net_address: str, message: str, host: str = "") -> None:
        log.debug("plan %s: %s", self.config.name, message)
        self.problems.append(PlanProblem(kind, net_address, message, host))

    # ------------------------------------------------------------------ networks

    def targets(self, found: dict[tuple[int, int, int], _Network]) -> list[_Network]:
        """The plan's networks in entry order: masterNets order, else by address."""
        if not self.config.master_nets:
            return [found[key] for key in sorted(found)]
        networks: list[_Network] = []
        seen: set[tuple[int, int, int]] = set()
        for value in self.config.master_nets:
            net = _parse_config_cidr(value, "masterNets entry")
            if _network_key(net) in seen:
                continue  # a hand-edited CIDR config may list a network twice: plan it once
            seen.add(_network_key(net))
            network = found.get(_network_key(net))
            members = network.members if network is not None else {}
            networks.append(_Network(net, value, members))
        return networks

    def interface_indexes(self, networks: list[_Network]) -> list[tuple[_Network, int]]:
        """Assign interface indexes: keep valid previous ones, then lowest free usable."""
        space: IndexSpace | None = None
        if self.subnet is not None:
            space = IndexSpace(
                self.subnet.first,
                self.subnet.prefixlen,
                self.config.interface_block,
                self.subnet.version,
                self.exclude_set(self.subnet.version),
            )
        else:
            networks = [n for n in networks if self._fits_host_network(n)]
        used: set[int] = set()
        index_of: dict[str, int] = {}
        for network in networks:
            previous = self.previous_interface.get(_network_key(network.net))
            if previous is None:
                continue
            reason = (
                space.unusable_reason(previous, used)
                if space is not None
                else (
                    f"index {previous} is taken twice" if previous in used or previous < 0 else None
                )
            )
            if reason is None:
                used.add(previous)
                index_of[network.net_address] = previous
            else:
                self.renumbered.add(network.net_address)
                self.problem(
                    "network-renumbered",
                    network.net_address,
                    f"network {network.net_address} needs a new interface index: {reason}",
                )
        placed: list[tuple[_Network, int]] = []
        lowest = 0
        for network in networks:
            index = index_of.get(network.net_address)
            if index is None:
                if space is not None:
                    index = space.next_usable(lowest, used)
                else:
                    index = lowest
                    while index in used:
                        index += 1
                if index is None:
                    assert space is not None
                    self.problem(
                        "network-unplaced",
                        network.net_address,
                        f"network {network.net_address} is not planned: no usable interface "
                        f"index left in subnet {self.config.subnet} with interfaceBlock "
                        f"{self.config.interface_block} ({space.size} indexes, "
                        f"{len(used)} in use, the rest excluded)",
                    )
                    lowest = space.size
                    continue
                used.add(index)
                lowest = index + 1
            placed.append((network, index))
        return placed

    def _fits_host_network(self, network: _Network) -> bool:
        width = _width(network.net.version)
        pod_prefix = network.net.prefixlen + self.config.host_block
        if pod_prefix <= width - 2:
            return True
        self.problem(
            "network-unplaced",
            network.net_address,
            f"network {network.net_address} is not planned: hostBlock {self.config.host_block} "
            f"would make /{pod_prefix} pod blocks, leaving no pod addresses",
        )
        return False

    def vlan_space(self, network: _Network, interface_index: int) -> IndexSpace:
        """Where the entry's host blocks are carved from (its ``vlanCIDR``)."""
        if self.subnet is None:
            # No-subnet mode: pod blocks come out of the host network itself.
            base, prefixlen, version = (
                network.net.first,
                network.net.prefixlen,
                network.net.version,
            )
        else:
            interfaces = IndexSpace(
                self.subnet.first,
                self.subnet.prefixlen,
                self.config.interface_block,
                self.subnet.version,
                self.exclude_set(self.subnet.version),
            )
            base = interfaces.block(interface_index)
            prefixlen, version = interfaces.block_prefixlen, self.subnet.version
        return IndexSpace(
            base, prefixlen, self.config.host_block, version, self.exclude_set(version)
        )

    # ------------------------------------------------------------------ hosts

    def previous_hosts(self, network: _Network, space: IndexSpace) -> _PreviousHosts:
        """Sort the entry's previous hosts into kept (index still valid) and moved."""
        found = _PreviousHosts()
        prev = self.previous.get(_network_key(network.net))
        if prev is None:
            return found
        left = 0
        for host in sorted(prev.hosts, key=lambda h: (h.host_index, h.host_name)):
            name = host.host_name
            if name not in network.members:
                left += 1
            elif name not in found.pod_cidr:
                found.pod_cidr[name] = host.pod_cidr
                reason = space.unusable_reason(host.host_index, found.indexes)
                if reason is None:
                    found.kept[name] = host.host_index
                    found.indexes.add(host.host_index)
                else:
                    found.moved[name] = reason
        if left:
            log.info(
                "plan %s: %d host(s) left network %s", self.config.name, left, network.net_address
            )
        return found

    def entry(self, network: _Network, interface_index: int) -> CIDREntry:
        """One interface entry: previous hosts kept where valid, newcomers added."""
        space = self.vlan_space(network, interface_index)
        vlan_cidr = _format_block(space.base, space.prefixlen, space.version)
        members = network.members
        previous = self.previous_hosts(network, space)
        kept, moved = previous.kept, previous.moved
        allocator = HostIndexAllocator(space, previous.indexes)
        indexes = dict(kept)
        for name in sorted(n for n in members if n not in kept):
            index = allocator.allocate()
            if index is None:
                self.problems.append(host_unplaced(self.config, network, vlan_cidr, space, name))
                continue
            indexes[name] = index
            if name in moved:
                self.problem(
                    "host-renumbered",
                    network.net_address,
                    f"host {name} on {network.net_address} moved from {previous.pod_cidr[name]} to "
                    f"{space.block_cidr(index)}: {moved[name]}",
                    name,
                )
        infos: list[dict[str, Any]] = []
        resized = 0
        prefix = space.block_prefixlen
        for index, name in sorted((index, name) for name, index in indexes.items()):
            info = block_fields(self.config.name, space, index, name, members[name])
            if name in kept and not _same_network(previous.pod_cidr[name], info["pod_cidr"]):
                resized += 1
            infos.append(info)
        if resized and network.net_address not in self.renumbered:
            self.problem(
                "network-renumbered",
                network.net_address,
                f"pod blocks of {resized} host(s) on {network.net_address} moved with the "
                f"plan's subnet or block sizes (vlanCIDR now {vlan_cidr}, pod blocks /{prefix})",
            )
        # One validation of the whole entry: cheaper than one per host.
        return CIDREntry.model_validate(
            {
                "net_address": network.net_address,
                "interface_index": interface_index,
                "vlan_cidr": vlan_cidr,
                "hosts": infos,
            }
        )

    def plan(self, hosts: Sequence[HostInterface]) -> PlanResult:
        found, host_names = _collect_members(hosts, self.names)
        # Problems are in host-name order, whatever the order of ``hosts``.
        host_names.sort()
        self.found = found
        self.targets_list = self.targets(found)
        self.placed = self.interface_indexes(self.targets_list)
        entries: list[CIDREntry] = []
        for network, interface_index in self.placed:
            entries.append(self.entry(network, interface_index))
            self.problems.extend(
                nic_missing(network, name) for name in host_names if name not in network.members
            )
        spec = CIDRSpec(config=self.config.model_copy(deep=True), cidr=entries)
        log.info(
            "plan %s: %d interface entries, %d host blocks, %d problems",
            self.config.name,
            len(entries),
            sum(len(entry.hosts) for entry in entries),
            len(self.problems),
        )
        return PlanResult(spec=spec, problems=list(self.problems))


def block_fields(
    network_name: str, space: IndexSpace, index: int, name: str, nic: _Nic
) -> dict[str, Any]:
    """Host ``name``'s block ``index`` of an interface entry: the ``HostInterfaceInfo`` fields."""
    pod_cidr = _format_block(space.block(index), space.block_prefixlen, space.version)
    return {
        "host_index": index,
        "host_name": name,
        "interface_name": nic.interface_name,
        "host_ip": nic.host_ip,
        "pod_cidr": pod_cidr,
        "ippool": ippool_name(network_name, pod_cidr),
    }


_BLOCK_FIELDS = {"host_index", "host_name", "interface_name", "host_ip", "pod_cidr", "ippool"}


def block_info(
    network_name: str, space: IndexSpace, index: int, name: str, nic: _Nic
) -> HostInterfaceInfo:
    """Host ``name``'s block ``index`` of an interface entry, as the plan lists it."""
    # The planner's own values (checked when parsed): no validation; compacted,
    # as the plan keeps one per host and NIC (80,000 at 10,000 x 8).
    return compact(
        HostInterfaceInfo.model_construct(
            _BLOCK_FIELDS, **block_fields(network_name, space, index, name, nic)
        )
    )


def host_unplaced(
    config: PluginConfig, network: _Network, vlan_cidr: str, space: IndexSpace, name: str
) -> PlanProblem:
    """The ``host-unplaced`` problem of host ``name`` on a full interface entry."""
    return PlanProblem(
        "host-unplaced",
        network.net_address,
        f"host {name} gets no block on {network.net_address}: {vlan_cidr} is full "
        f"(hostBlock {config.host_block} allows {space.size} hosts, excluded blocks included)",
        name,
    )


def nic_missing(network: _Network, name: str) -> PlanProblem:
    """The ``nic-missing`` problem of a host without a NIC on an entry's network."""
    return PlanProblem(
        "nic-missing",
        network.net_address,
        f"host {name} has no NIC on {network.net_address}",
        name,
    )


def _same_network(old: str, new: str) -> bool:
    """Whether two CIDR strings name the same block (old ones may be spelled differently)."""
    if old == new:
        return True
    try:
        return bool(netaddr.IPNetwork(old) == netaddr.IPNetwork(new))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return False


# --------------------------------------------------------------------------- derived views


def cidr_object(network: MultiNicNetwork, result: PlanResult) -> CIDR:
    """The full ``CIDR`` resource of a plan: name = network name, owned by the network."""
    owners = []
    if network.metadata.uid:
        owners.append(
            OwnerReference(
                api_version=network.api_version,
                kind=network.kind,
                name=network.name,
                uid=network.metadata.uid,
                controller=True,
                block_owner_deletion=True,
            )
        )
    status = CIDRStatus(problems=[str(p) for p in result.problems]) if result.problems else None
    return CIDR(
        metadata=ObjectMeta(name=network.name, owner_references=owners),
        spec=result.spec,
        status=status,
    )


def compute_results(spec: CIDRSpec) -> list[NetworkResult]:
    """Status ``computeResults``: per entry its network and number of hosts."""
    return [
        NetworkResult(net_address=entry.net_address, num_of_hosts=len(entry.hosts))
        for entry in spec.cidr
    ]


def cidr_processed(spec: CIDRSpec) -> int:
    """Status ``discovery.cidrProcessed``: distinct hosts with at least one block."""
    return len({host.host_name for entry in spec.cidr for host in entry.hosts})


def _block_start(cidr: str) -> tuple[int, int, int]:
    """(IP version, prefix length, first address as an int) of a CIDR.

    As ``netaddr.IPNetwork`` gives them (``first`` is the block's start), in
    a fraction of its time: called once per pool (80,000 at 10,000 x 8) on
    every reconcile.
    """
    address, slash, length = cidr.partition("/")
    try:
        if ":" in address:
            version, width, value = 6, 128, socket.inet_pton(socket.AF_INET6, address)
        else:
            version, width, value = 4, 32, socket.inet_pton(socket.AF_INET, address)
        prefixlen = int(length) if slash else width
    except (OSError, ValueError):
        net = netaddr.IPNetwork(cidr)  # an unusual spelling: netaddr reads (or refuses) it
        return net.version, net.prefixlen, net.first
    if not 0 <= prefixlen <= width:
        net = netaddr.IPNetwork(cidr)
        return net.version, net.prefixlen, net.first
    mask = ((1 << prefixlen) - 1) << (width - prefixlen)
    return version, prefixlen, int.from_bytes(value, "big") & mask


def pool_excludes(
    spec: CIDRSpec, exclude_cidrs: Sequence[str] | None = None
) -> dict[str, list[str]]:
    """The ``excludes`` of each IPPool, keyed by podCIDR (every planned podCIDR is a key).

    Excludes narrower than a pod block do not remove blocks from the plan; they
    are copied into every pool whose podCIDR contains them instead.  In
    no-subnet mode the pool is also part of the hosts' own network, so every
    host address of that network inside the pool is excluded (as /32 or /128).
    Lists are sorted by address.  ``exclude_cidrs`` defaults to the plan's.
    """
    values = spec.config.exclude_cidrs if exclude_cidrs is None else exclude_cidrs
    excludes = [_parse_config_cidr(value, "excludeCIDRs entry") for value in values]
    result: dict[str, list[netaddr.IPNetwork]] = {}
    # (version, pod prefix) -> pod block start -> podCIDR
    groups: dict[tuple[int, int], dict[int, str]] = {}
    for entry in spec.cidr:
        for host in entry.hosts:
            pod_cidr = host.pod_cidr
            result[pod_cidr] = []
            version, prefixlen, first = _block_start(pod_cidr)
            groups.setdefault((version, prefixlen), {})[first] = pod_cidr
    for (version, prefixlen), starts in groups.items():
        for start, nets in _narrow_excludes(excludes, version, prefixlen).items():
            holder = starts.get(start)
            if holder is not None:
                result[holder].extend(nets)
    if not spec.config.subnet:
        for entry in spec.cidr:
            for pod_cidr, address in _host_addresses_in_pools(entry):
                result[pod_cidr].append(address)
    return {pod_cidr: _exclude_list(nets) for pod_cidr, nets in result.items()}


def _exclude_list(nets: Iterable[netaddr.IPNetwork] | None) -> list[str]:
    """A pool's ``excludes``: each network once, sorted by address."""
    # Most pools exclude nothing: no sort for those.
    return [str(net) for net in sorted(set(nets), key=_network_key)] if nets else []


def _narrow_excludes(
    excludes: Iterable[netaddr.IPNetwork], version: int, prefixlen: int
) -> dict[int, list[netaddr.IPNetwork]]:
    """The excludes narrower than a pod block of ``prefixlen``, by the start of
    the block that contains each: the pool of that block carries them."""
    mask = ((1 << prefixlen) - 1) << (_width(version) - prefixlen)
    found: dict[int, list[netaddr.IPNetwork]] = {}
    for exclude in excludes:
        if exclude.version == version and exclude.prefixlen > prefixlen:
            found.setdefault(exclude.first & mask, []).append(exclude)
    return found


class PoolExcludes(Mapping[str, list[str]]):
    """``pool_excludes(spec)`` worked out for one podCIDR when it is asked for.

    The operator asks for the excludes of the pools it builds a body of (a
    join: that host's), not of all 80,000: parsing every podCIDR of the plan
    on every reconcile was most of a join's pool bookkeeping.  Same values as
    ``pool_excludes``; iterates the plan's podCIDRs.  In no-subnet mode (every
    host address inside a pool is excluded too) it is computed whole, once.
    """

    def __init__(self, spec: CIDRSpec) -> None:
        self._spec = spec
        values = spec.config.exclude_cidrs
        self._narrow = [_parse_config_cidr(value, "excludeCIDRs entry") for value in values]
        self._eager = not spec.config.subnet
        self._whole: dict[str, list[str]] | None = None
        self._by_block: dict[tuple[int, int], dict[int, list[netaddr.IPNetwork]]] = {}

    def __getitem__(self, pod_cidr: str) -> list[str]:
        if self._eager:
            if self._whole is None:
                self._whole = pool_excludes(self._spec)
            return self._whole[pod_cidr]
        version, prefixlen, first = _block_start(pod_cidr)
        by_block = self._by_block.get((version, prefixlen))
        if by_block is None:
            by_block = _narrow_excludes(self._narrow, version, prefixlen)
            self._by_block[version, prefixlen] = by_block
        return _exclude_list(by_block.get(first))

    def __iter__(self) -> Iterator[str]:
        return (host.pod_cidr for entry in self._spec.cidr for host in entry.hosts)

    def __len__(self) -> int:
        return sum(len(entry.hosts) for entry in self._spec.cidr)


def planned_ippools(spec: CIDRSpec) -> list[IPPool]:
    """The IPPool objects a plan calls for, one per (host, interface), without allocations.

    Name from the plan's ``ippool`` field, labels ``hostname`` and ``netname``,
    ``excludes`` from ``pool_excludes``.  The operator creates or updates these
    and keeps the allocations the agents mirrored into existing pools.
    """
    excludes = pool_excludes(spec)
    network = spec.config.name
    pools: list[IPPool] = []
    for entry in spec.cidr:
        for host in entry.hosts:
            pools.append(
                IPPool(
                    metadata=ObjectMeta(
                        name=host.ippool or ippool_name(network, host.pod_cidr),
                        labels={"hostname": host.host_name, "netname": network},
                    ),
                    spec=IPPoolSpec(
                        pod_cidr=host.pod_cidr,
                        vlan_cidr=entry.vlan_cidr,
                        net_attach_def=network,
                        host_name=host.host_name,
                        interface_name=host.interface_name,
                        excludes=excludes[host.pod_cidr],
                    ),
                )
            )
    return pools


def _host_addresses_in_pools(entry: CIDREntry) -> list[tuple[str, netaddr.IPNetwork]]:
    """(podCIDR, host address as /32 or /128) for each host address inside a pod block.

    In no-subnet mode pod blocks are carved from the host network itself, so
    any host's address may fall in any pool of that network.
    """
    pools: dict[tuple[int, int], dict[int, str]] = {}
    for host in entry.hosts:
        pod = netaddr.IPNetwork(host.pod_cidr)
        pools.setdefault((pod.version, pod.prefixlen), {})[pod.first] = host.pod_cidr
    found: list[tuple[str, netaddr.IPNetwork]] = []
    for host in entry.hosts:
        if not host.host_ip:
            continue
        address = netaddr.IPAddress(host.host_ip.partition("/")[0])
        for (version, prefixlen), starts in pools.items():
            if address.version != version:
                continue
            mask = ((1 << prefixlen) - 1) << (_width(version) - prefixlen)
            pod_cidr = starts.get(int(address) & mask)
            if pod_cidr is not None:
                found.append((pod_cidr, netaddr.IPNetwork(address)))
    return found


# --------------------------------------------------------------------------- plan edits


@dataclass(frozen=True)
class Stranded:
    """A held address a plan edit left outside its host's current pool of that NIC
    (or under a new exclude): kept until its pod is deleted, never renumbered."""

    pool: str
    address: str
    pod: str
    namespace: str

    def __str__(self) -> str:
        who = f"{self.namespace}/{self.pod}" if self.pod else "no pod"
        return f"{who} {self.address} (IPPool {self.pool})"


def stranded_allocations(spec: CIDRSpec, pools: Iterable[IPPool]) -> list[Stranded]:
    """The allocations of ``pools`` (the IPPools as they are) that ``spec`` strands.

    An allocation is stranded when no pool of the new plan for its host and
    NIC contains its address, or when one does but its excludes cover it.
    """
    excludes = {
        cidr: [netaddr.IPNetwork(c) for c in values] for cidr, values in pool_excludes(spec).items()
    }
    blocks: dict[tuple[str, str], list[tuple[netaddr.IPNetwork, str]]] = {}
    for entry in spec.cidr:
        for host in entry.hosts:
            blocks.setdefault((host.host_name, host.interface_name), []).append(
                (netaddr.IPNetwork(host.pod_cidr), host.pod_cidr)
            )
    found = []
    for pool in pools:
        current = blocks.get((pool.spec.host_name, pool.spec.interface_name), [])
        for allocation in pool.spec.allocations:
            address = netaddr.IPAddress(allocation.address)
            fits = any(
                address in block and not any(address in c for c in excludes.get(cidr, []))
                for block, cidr in current
            )
            if not fits:
                found.append(
                    Stranded(pool.name, str(address), allocation.pod, allocation.namespace)
                )
    return found
