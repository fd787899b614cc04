"""The durable address journal of one node: who holds which pod address (SPEC section 5).

The agent keeps every allocation of its own node's IPPools in memory and makes
each change durable before the CNI reply: one JSON line per change, appended
to ``<state dir>/ipam-journal.jsonl`` and fsync'ed.  On start the journal is
replayed (a torn last line from a crash is ignored, because its change was
never acknowledged), then compacted into a snapshot written atomically.

Entries carry exactly what an IPPool ``spec.allocations`` item holds (pod,
namespace, index, address, containerID, ifName), so the Kubernetes mirror is a
projection of this journal.

Uniqueness is by address, not by pool: every entry holds a *slot* (host NIC,
address), and no slot is handed out while any entry holds it, whatever pool
the entry came from.  A plan edit that replaces a pool (a new block size, a
new exclude) therefore never hands out an address a running pod still holds
from the old pool.  Entries the agent did not write (the predecessor's, with
no containerID) are *adopted*: reserved like the agent's own, keyed by their
pod, and released only by a DEL or a leak collection that names that pod.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import netaddr

from multinic_core.errors import ConfigError, MultinicError, TryAgainError
from multinic_core.models import IPPoolSpec, ippool_name, parse_cidr

log = logging.getLogger(__name__)

JOURNAL_FILE = "ipam-journal.jsonl"
COMPACT_MIN_LINES = 10_000
"""The journal is compacted when it has this many lines (or 4 per live attachment)."""
REUSE_DELAY_S = 60.0
"""An address released less than this long ago is handed out again only when
nothing else is free (stale ARP and conntrack entries still point at it)."""


class PoolExhaustedError(MultinicError):
    """An IPPool has no free address left."""


class AddressInUseError(TryAgainError):
    """A requested address is held by another attachment (free again once that pod goes)."""


@dataclass(frozen=True)
class PoolBlock:
    """One host's address block on one NIC: the part of an IPPool allocation needs."""

    name: str
    """The IPPool name, ``<network>-<podCIDR>``."""
    pod_cidr: str
    vlan_cidr: str
    interface_name: str
    excludes: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: IPPoolSpec) -> PoolBlock:
        return cls(
            name=ippool_name(spec.net_attach_def, spec.pod_cidr),
            pod_cidr=spec.pod_cidr,
            vlan_cidr=spec.vlan_cidr,
            interface_name=spec.interface_name,
            excludes=tuple(spec.excludes),
        )

    def excluded_indexes(self) -> list[tuple[int, int]]:
        """Inclusive index ranges inside the block that ``excludes`` forbid."""
        net = parse_cidr(self.pod_cidr)
        ranges = []
        for exclude in self.excludes:
            other = parse_cidr(exclude)
            if other.version != net.version:
                continue
            low, high = max(other.first, net.first), min(other.last, net.last)
            if low <= high:
                ranges.append((low - net.first, high - net.first))
        return sorted(ranges)

    def capacity(self) -> int:
        """How many addresses the pool can hand out: indexes 1..size-2 (as ``_choose``
        picks them) that no exclude covers."""
        last = int(parse_cidr(self.pod_cidr).size) - 2
        if last < 1:
            return 0
        excluded, covered = 0, 0  # covered: the highest index counted so far
        for begin, end in self.excluded_indexes():  # sorted; excludes may overlap
            low, high = max(begin, 1, covered + 1), min(end, last)
            if low <= high:
                excluded += high - low + 1
                covered = high
        return last - excluded


@dataclass(frozen=True)
class AllocationEntry:
    """One address held by one NIC of one attachment."""

    network: str
    pool: str
    interface_name: str
    index: int
    address: str
    container_id: str
    if_name: str
    pod: str = ""
    namespace: str = ""

    @property
    def adopted(self) -> bool:
        """Written by someone else (the predecessor, a user): no containerID."""
        return not self.container_id

    @property
    def key(self) -> AttachmentKey:
        """The attachment the entry belongs to; adopted entries are grouped by pod."""
        if self.adopted:
            return adopted_key(self.network, self.namespace, self.pod)
        return (self.network, self.container_id, self.if_name)

    @property
    def slot(self) -> Slot:
        return address_slot(self.interface_name, self.address)

    @property
    def holder(self) -> str:
        """Who holds the address, for messages."""
        who = f"{self.namespace}/{self.pod}" if self.pod else "no pod"
        if self.adopted:
            return f"{who} (adopted from IPPool {self.pool})"
        return f"{who} (container {self.container_id} ifname {self.if_name})"

    def ippool_allocation(self) -> dict[str, Any]:
        """The entry as an IPPool ``spec.allocations`` item (an adopted one as it was)."""
        item: dict[str, Any] = {
            "pod": self.pod,
            "namespace": self.namespace,
            "index": self.index,
            "address": self.address,
        }
        if not self.adopted:
            item["containerID"] = self.container_id
            item["ifName"] = self.if_name
        return item


AttachmentKey = tuple[str, str, str]
"""(network, containerID, ifName): what one CNI ADD allocates for.  Adopted
entries have ``(network, "", "<namespace>/<pod>")``."""

Slot = tuple[str, int, int]
"""(host NIC, IP version, address as an integer): what must never have two holders."""

ForeignRow = tuple[int, str, str, str]
"""An adopted IPPool allocation as (index, address, pod, namespace)."""


def adopted_key(network: str, namespace: str, pod: str) -> AttachmentKey:
    return (network, "", f"{namespace}/{pod}")


def address_slot(interface_name: str, address: str) -> Slot:
    ip = netaddr.IPAddress(address)
    return (interface_name, ip.version, int(ip))


@dataclass
class _PoolState:
    used: dict[int, AllocationEntry] = field(default_factory=dict)
    released: dict[int, float] = field(default_factory=dict)
    entries: list[AllocationEntry] = field(default_factory=list)
    """Every entry of the pool (``used`` keeps one per index; a pre-existing
    duplicate of an index is listed here too)."""
    forgotten: set[ForeignRow] = field(default_factory=set)
    """Adopted rows released here that the IPPool object may still list."""


class AllocationJournal:
    """Allocations of one node, in memory, made durable in an append-only journal.

    Thread-safe; every public method that changes something returns only
    after the change is on disk.  Changes made at the same time by several
    threads share one fsync (group commit): each appends its line under the
    lock, then waits outside it until an fsync that began after its write
    has ended, so one thread's fsync makes every line written before it
    durable.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        reuse_delay: float = REUSE_DELAY_S,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = state_dir / JOURNAL_FILE
        self.reuse_delay = reuse_delay
        self._clock = clock
        self._lock = threading.Lock()
        self._by_key: dict[AttachmentKey, list[AllocationEntry]] = {}
        self._pools: dict[str, _PoolState] = {}
        self._held: dict[Slot, list[AllocationEntry]] = {}
        self._retired: frozenset[str] = frozenset()
        self._excluded: dict[PoolBlock, list[tuple[int, int]]] = {}
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._appended = 0
        self._written = 0
        """Lines appended so far (a sequence number: the last line's)."""
        self._synced = 0
        """Every line up to this one is on disk."""
        self._sync_lock = threading.Lock()
        self._recover()
        self._fd = self._open()

    # ------------------------------------------------------------------ queries

    def entries(self, network: str, container_id: str, if_name: str) -> list[AllocationEntry]:
        with self._lock:
            return list(self._by_key.get((network, container_id, if_name), ()))

    def attachments(self, network: str | None = None) -> list[AttachmentKey]:
        """Every (network, containerID, ifName) holding addresses, optionally of one network."""
        with self._lock:
            return [k for k in self._by_key if network is None or k[0] == network]

    def pool_allocations(self, pool: str) -> list[AllocationEntry]:
        """The allocations of one IPPool, by index (its ``spec.allocations``)."""
        with self._lock:
            state = self._pools.get(pool)
            found = state.entries if state else []
            return sorted(found, key=lambda e: (e.index, e.adopted))

    def holders(self, interface_name: str, address: str) -> list[AllocationEntry]:
        """Every entry holding ``address`` on host NIC ``interface_name`` (at most one)."""
        with self._lock:
            return list(self._held.get(address_slot(interface_name, address), ()))

    def all_entries(self) -> list[AllocationEntry]:
        with self._lock:
            return [e for entries in self._by_key.values() for e in entries]

    def forgotten(self, pool: str) -> set[ForeignRow]:
        """Adopted rows of ``pool`` released here, that the mirror must drop from the object."""
        with self._lock:
            state = self._pools.get(pool)
            return set(state.forgotten) if state else set()

    # ------------------------------------------------------------------ plan edits

    def set_retired(self, retired: set[str], current: set[str]) -> None:
        """Pools a new plan replaced: nothing more is allocated from them.

        ``retired``: pools the node's cache shows retired; ``current``: pools it
        shows in use.  A pool once retired stays refused until it is current
        again (the edit was undone), also after it is deleted: an ADD that read
        it just before the edit must not allocate from it later.  Its entries
        stay (the pods still run) and keep holding their addresses; an ADD
        that names a refused pool is told to try again, and its retry gets
        the new pool.
        """
        with self._lock:
            self._retired = frozenset((self._retired | retired) - current)

    def adopt(
        self,
        network: str,
        block: PoolBlock,
        allocations: Sequence[Mapping[str, Any]],
    ) -> list[AllocationEntry]:
        """Reserve the allocations of an IPPool object that no agent wrote.

        ``allocations`` are ``spec.allocations`` items; those with a
        ``containerID`` are an agent's and are skipped, as are rows already
        adopted and rows released here (a DEL named their pod) that the object
        still lists.  Durable before it returns.  An adopted row whose address
        another entry already holds is kept too (it is live), with an error:
        the address then has two holders until one of them is deleted.
        """
        with self._lock:
            state = self._pools.setdefault(block.name, _PoolState())
            adopted: list[AllocationEntry] = []
            for item in allocations:
                if item.get("containerID"):
                    continue
                try:
                    entry = AllocationEntry(
                        network=network,
                        pool=block.name,
                        interface_name=block.interface_name,
                        index=int(item["index"]),
                        address=str(netaddr.IPAddress(str(item["address"]))),
                        container_id="",
                        if_name="",
                        pod=str(item.get("pod") or ""),
                        namespace=str(item.get("namespace") or ""),
                    )
                except (KeyError, ValueError, TypeError, netaddr.AddrFormatError) as e:
                    log.warning("IPPool %s: allocation %r not adopted: %s", block.name, item, e)
                    continue
                row = (entry.index, entry.address, entry.pod, entry.namespace)
                if row in state.forgotten or state.used.get(entry.index) == entry:
                    continue
                held = self._held.get(entry.slot)
                if held:
                    if entry in held:
                        continue
                    log.error(
                        "IPPool %s: allocation %s of %s/%s (not written by an agent) is an "
                        "address %s already holds; both are kept, so it has two holders "
                        "until one of them is deleted",
                        block.name,
                        entry.address,
                        entry.namespace,
                        entry.pod,
                        held[0].holder,
                    )
                adopted.append(entry)
            written = 0
            if adopted:
                written = self._append({"op": "add", "entries": [asdict(e) for e in adopted]})
                self._apply_add(adopted)
                self._compact_if_long()
                log.info(
                    "adopted %d allocation(s) of IPPool %s written by no agent: %s",
                    len(adopted),
                    block.name,
                    ", ".join(f"{e.address} ({e.namespace}/{e.pod})" for e in adopted),
                )
        self._durable(written)
        return adopted

    def restore(self, entries: Sequence[AllocationEntry]) -> list[AllocationEntry]:
        """Hold addresses an attachment record on disk shows but the journal lost.

        Entries of an attachment the journal already knows are skipped.
        """
        with self._lock:
            missing = [e for e in entries if e.key not in self._by_key]
            written = 0
            if missing:
                written = self._append({"op": "add", "entries": [asdict(e) for e in missing]})
                self._apply_add(missing)
                log.warning(
                    "IPAM journal had no entry of %d recorded address(es); held again: %s",
                    len(missing),
                    ", ".join(f"{e.address} ({e.holder})" for e in missing),
                )
        self._durable(written)
        return missing

    def settle_forgotten(self, pool: str, listed: set[ForeignRow]) -> None:
        """Forget released adopted rows that the IPPool object no longer lists."""
        with self._lock:
            state = self._pools.get(pool)
            if state is not None and state.forgotten - listed:
                state.forgotten &= listed

    # ------------------------------------------------------------------ changes

    def allocate(
        self,
        network: str,
        container_id: str,
        if_name: str,
        blocks: Sequence[PoolBlock],
        *,
        pod: str = "",
        namespace: str = "",
        requested: Mapping[str, str] | None = None,
    ) -> list[AllocationEntry]:
        """One address from each block, for one attachment, all or none.

        ``requested`` maps block names to the address the pod asked for in
        that block (the CNI ``ips`` capability); it is given exactly, even if
        released a moment ago, or not at all: ConfigError when the block
        never hands it out (its network or last address, excluded, outside
        it), AddressInUseError naming the holder when another attachment
        holds it.  Other blocks get the next free address.

        Idempotent: the same (network, containerID, ifName) gets the addresses
        it already holds.  Raises PoolExhaustedError naming the full pool.
        """
        requested = requested or {}
        key = (network, container_id, if_name)
        with self._lock:
            held = self._by_key.get(key)
            if held:
                if [e.pool for e in held] == [b.name for b in blocks]:
                    return list(held)
                raise ConfigError(
                    f"container {container_id} ifname {if_name} already holds addresses in "
                    f"{', '.join(e.pool for e in held)} of network {network}, not in "
                    f"{', '.join(b.name for b in blocks)}; DEL it first"
                )
            retired = [b.name for b in blocks if b.name in self._retired]
            if retired:
                raise TryAgainError(
                    f"IPPool {', '.join(retired)} was replaced by a new plan of network "
                    f"{network}; the next try uses the new pool"
                )
            chosen: list[AllocationEntry] = []
            for block in blocks:
                if block.name in requested:
                    index: int | None = self._requested(block, requested[block.name], network)
                else:
                    index = self._choose(block, {e.slot for e in chosen})
                if index is None:
                    raise PoolExhaustedError(
                        f"IPPool {block.name} ({block.pod_cidr}) has no free address "
                        f"({self._held_in(block)} in use or held by pods of earlier plans)"
                    )
                net = parse_cidr(block.pod_cidr)
                address = str(netaddr.IPAddress(net.first + index, net.version))
                chosen.append(
                    AllocationEntry(
                        network=network,
                        pool=block.name,
                        interface_name=block.interface_name,
                        index=index,
                        address=address,
                        container_id=container_id,
                        if_name=if_name,
                        pod=pod,
                        namespace=namespace,
                    )
                )
            written = self._append({"op": "add", "entries": [asdict(e) for e in chosen]})
            self._apply_add(chosen)
            self._compact_if_long()
            log.debug(
                "allocated %s to %s/%s of network %s",
                ", ".join(e.address for e in chosen),
                container_id,
                if_name,
                network,
            )
        self._durable(written)
        return chosen

    def release(self, network: str, container_id: str, if_name: str) -> list[AllocationEntry]:
        """Free what the attachment holds; nothing to free is not an error."""
        key = (network, container_id, if_name)
        with self._lock:
            if key not in self._by_key:
                return []
            now = self._clock()
            written = self._append(
                {
                    "op": "del",
                    "network": network,
                    "containerID": container_id,
                    "ifName": if_name,
                    "ts": now,
                }
            )
            released = self._apply_del(key, now)
            self._compact_if_long()
            log.debug(
                "released %s of %s/%s network %s",
                ", ".join(e.address for e in released),
                container_id,
                if_name,
                network,
            )
        self._durable(written)
        return released

    def release_adopted(self, network: str, namespace: str, pod: str) -> list[AllocationEntry]:
        """Free the adopted allocations of one pod (its DEL, or it is known gone)."""
        if not pod:
            return []
        return self.release(*adopted_key(network, namespace, pod))

    def close(self) -> None:
        os.close(self._fd)

    # ------------------------------------------------------------------ internals

    def _held_in(self, block: PoolBlock) -> int:
        net = parse_cidr(block.pod_cidr)
        return sum(
            1
            for (nic, version, value) in self._held
            if nic == block.interface_name
            and version == net.version
            and net.first <= value <= net.last
        )

    def _requested(self, block: PoolBlock, address: str, network: str) -> int:
        """The index of ``address`` in ``block``, when the block may give it out now."""
        net = parse_cidr(block.pod_cidr)
        try:
            ip = netaddr.IPAddress(address)
        except (netaddr.AddrFormatError, ValueError, TypeError) as e:
            raise ConfigError(f"requested address {address!r} is not an IP address") from e
        where = f"IPPool {block.name} ({block.pod_cidr})"
        if ip.version != net.version or ip not in net:
            raise ConfigError(f"requested address {ip} is not in {where}")
        index = int(ip) - int(net.first)
        if index == 0 or index >= net.size - 1:
            what = "network" if index == 0 else "last"
            raise ConfigError(f"requested address {ip} is the {what} address of {where}")
        if block not in self._excluded:
            self._excluded[block] = block.excluded_indexes()
        if any(low <= index <= high for low, high in self._excluded[block]):
            raise ConfigError(f"requested address {ip} is excluded from {where}")
        holders = self._held.get(address_slot(block.interface_name, str(ip)))
        if holders:
            raise AddressInUseError(
                f"requested address {ip} of network {network} is held by {holders[0].holder}; "
                "it can be given once that attachment is deleted"
            )
        return index

    def _choose(self, block: PoolBlock, taken: set[Slot]) -> int | None:
        """Next free index after the highest used one, then the lowest free one.

        Free means: no entry of any pool holds the address on that NIC.  An
        index released less than ``reuse_delay`` ago is used only when no
        other index is free (the one released longest ago first).
        """
        net = parse_cidr(block.pod_cidr)
        size = net.size
        last = size - 2
        if last < 1:
            return None
        state = self._pools.setdefault(block.name, _PoolState())
        if block not in self._excluded:
            self._excluded[block] = block.excluded_indexes()
        excluded = self._excluded[block]
        start = max(state.used) + 1 if state.used else 1
        now = self._clock()
        fallback: tuple[float, int] | None = None
        for index in _candidates(start, last, excluded):
            slot = (block.interface_name, net.version, net.first + index)
            if index in state.used or slot in self._held or slot in taken:
                continue
            released_at = state.released.get(index)
            if released_at is not None and now - released_at < self.reuse_delay:
                if fallback is None or released_at < fallback[0]:
                    fallback = (released_at, index)
                continue
            return index
        return fallback[1] if fallback else None

    def _apply_add(self, entries: Sequence[AllocationEntry]) -> None:
        for entry in entries:
            state = self._pools.setdefault(entry.pool, _PoolState())
            state.used.setdefault(entry.index, entry)
            state.entries.append(entry)
            state.released.pop(entry.index, None)
            self._by_key.setdefault(entry.key, []).append(entry)
            self._held.setdefault(entry.slot, []).append(entry)

    def _apply_del(self, key: AttachmentKey, at: float) -> list[AllocationEntry]:
        entries = self._by_key.pop(key, [])
        for entry in entries:
            state = self._pools.setdefault(entry.pool, _PoolState())
            if state.used.get(entry.index) == entry:
                del state.used[entry.index]
                state.released[entry.index] = at
            if entry in state.entries:
                state.entries.remove(entry)
            holders = self._held.get(entry.slot, [])
            if entry in holders:
                holders.remove(entry)
            if not holders:
                self._held.pop(entry.slot, None)
            if entry.adopted:
                state.forgotten.add((entry.index, entry.address, entry.pod, entry.namespace))
        return entries

    def _append(self, record: dict[str, Any]) -> int:
        """Write one line (under ``_lock``); its sequence number for :meth:`_durable`.

        Not yet on disk: the caller waits in :meth:`_durable` after releasing
        the lock, before it returns.  Lines reach the file in the order the
        changes reach memory, so an fsync that covers a line covers every
        change another thread could have seen before it.
        """
        # One write per line: with O_APPEND a crash leaves at worst a torn
        # last line, which recovery ignores (its change was never acknowledged).
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        self._appended += 1
        self._written += 1
        return self._written

    def _durable(self, written: int) -> None:
        """Return once line ``written`` (and every line before it) is on disk.

        Group commit: the first waiter fsyncs everything written so far; those
        that queued behind it find their line covered and return at once.
        """
        if not written:
            return
        with self._sync_lock:
            if self._synced >= written:
                return
            with self._lock:
                target = self._written
                # A duplicate: a compaction may replace (and close) the journal's
                # descriptor meanwhile; it writes and fsyncs a snapshot holding
                # these changes itself, so syncing the old file is still enough.
                fd = os.dup(self._fd)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._synced = max(self._synced, target)

    def _compact_if_long(self) -> None:
        """Rewrite the journal once it holds far more lines than live attachments.

        Called after a change has been applied in memory, so the snapshot
        includes it; keeps the file (and the next start's replay) small.
        """
        if self._appended < max(COMPACT_MIN_LINES, 4 * len(self._by_key)):
            return
        os.close(self._fd)
        self._compact()
        self._fd = self._open()

    def _open(self) -> int:
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def _recover(self) -> None:
        replayed = 0
        if self.path.exists():
            with self.path.open(encoding="utf-8") as journal:
                for number, line in enumerate(journal, start=1):
                    try:
                        self._replay(json.loads(line))
                        replayed += 1
                    except (ValueError, KeyError, TypeError) as e:
                        log.warning(
                            "%s line %d is damaged and skipped (%s): %.80s",
                            self.path,
                            number,
                            e,
                            line,
                        )
        self._compact()
        log.info(
            "IPAM journal %s recovered: %d records replayed, %d attachments hold addresses",
            self.path,
            replayed,
            len(self._by_key),
        )

    def _replay(self, record: dict[str, Any]) -> None:
        op = record["op"]
        if op == "add":
            self._apply_add([AllocationEntry(**e) for e in record["entries"]])
        elif op == "del":
            key = (record["network"], record["containerID"], record["ifName"])
            self._apply_del(key, float(record["ts"]))
        elif op == "released":
            state = self._pools.setdefault(record["pool"], _PoolState())
            if int(record["index"]) not in state.used:
                state.released[int(record["index"])] = float(record["ts"])
        elif op == "forgotten":
            state = self._pools.setdefault(record["pool"], _PoolState())
            state.forgotten.update(
                (int(i), str(a), str(p), str(n)) for i, a, p, n in record["rows"]
            )
        else:
            raise ValueError(f"unknown op {op!r}")

    def _compact(self) -> None:
        """Rewrite the journal as a snapshot: current entries and recent releases."""
        now = self._clock()
        lines = [
            json.dumps({"op": "add", "entries": [asdict(e) for e in entries]})
            for entries in self._by_key.values()
        ]
        for pool, state in self._pools.items():
            for index, at in state.released.items():
                if now - at < self.reuse_delay:
                    lines.append(
                        json.dumps({"op": "released", "pool": pool, "index": index, "ts": at})
                    )
            if state.forgotten:
                rows = sorted(state.forgotten)
                lines.append(json.dumps({"op": "forgotten", "pool": pool, "rows": rows}))
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w", encoding="utf-8") as snapshot:
            snapshot.write("".join(line + "\n" for line in lines))
            snapshot.flush()
            os.fsync(snapshot.fileno())
        os.chmod(temporary, 0o600)
        temporary.replace(self.path)
        self._appended = len(lines)
        directory = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _candidates(start: int, last: int, excluded: Sequence[tuple[int, int]]) -> Iterator[int]:
    """Indexes ``start..last`` then ``1..start-1``, jumping over excluded ranges."""
    for low, high in ((start, last), (1, start - 1)):
        index = low
        while index <= high:
            jump = next((end for begin, end in excluded if begin <= index <= end), None)
            if jump is not None:
                index = jump + 1
                continue
            yield index
            index += 1
