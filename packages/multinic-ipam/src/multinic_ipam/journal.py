"""The durable address journal of one node: who holds which pod address (SPEC section 5).

The agent keeps every allocation of its own node's IPPools in memory and makes
each change durable before the CNI reply: one JSON line per change, appended
to ``<state dir>/ipam-journal.jsonl`` and fsync'ed.  On start the journal is
replayed (a torn last line from a crash is ignored, because its change was
never acknowledged), then compacted into a snapshot written atomically.

Entries carry exactly what an IPPool ``spec.allocations`` item holds (pod,
namespace, index, address, containerID, ifName), so the Kubernetes mirror is a
projection of this journal.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import netaddr

from multinic_core.errors import ConfigError, MultinicError
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

    def ippool_allocation(self) -> dict[str, Any]:
        """The entry as an IPPool ``spec.allocations`` item."""
        return {
            "pod": self.pod,
            "namespace": self.namespace,
            "index": self.index,
            "address": self.address,
            "containerID": self.container_id,
            "ifName": self.if_name,
        }


AttachmentKey = tuple[str, str, str]
"""(network, containerID, ifName): what one CNI ADD allocates for."""


@dataclass
class _PoolState:
    used: dict[int, AllocationEntry] = field(default_factory=dict)
    released: dict[int, float] = field(default_factory=dict)


class AllocationJournal:
    """Allocations of one node, in memory, made durable in an append-only journal.

    Thread-safe; every public method that changes something returns only
    after the change is on disk.
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
        self._excluded: dict[PoolBlock, list[tuple[int, int]]] = {}
        state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._appended = 0
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
            return [state.used[i] for i in sorted(state.used)] if state else []

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
    ) -> list[AllocationEntry]:
        """One address from each block, for one attachment, all or none.

        Idempotent: the same (network, containerID, ifName) gets the addresses
        it already holds.  Raises PoolExhaustedError naming the full pool.
        """
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
            chosen: list[AllocationEntry] = []
            for block in blocks:
                index = self._choose(block, {e.index for e in chosen if e.pool == block.name})
                if index is None:
                    raise PoolExhaustedError(
                        f"IPPool {block.name} ({block.pod_cidr}) has no free address "
                        f"({len(self._pools.get(block.name, _PoolState()).used)} in use)"
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
            self._append({"op": "add", "entries": [asdict(e) for e in chosen]})
            self._apply_add(chosen)
            self._compact_if_long()
            log.debug(
                "allocated %s to %s/%s of network %s",
                ", ".join(e.address for e in chosen),
                container_id,
                if_name,
                network,
            )
            return chosen

    def release(self, network: str, container_id: str, if_name: str) -> list[AllocationEntry]:
        """Free what the attachment holds; nothing to free is not an error."""
        key = (network, container_id, if_name)
        with self._lock:
            if key not in self._by_key:
                return []
            now = self._clock()
            self._append(
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
            return released

    def close(self) -> None:
        os.close(self._fd)

    # ------------------------------------------------------------------ internals

    def _choose(self, block: PoolBlock, taken: set[int]) -> int | None:
        """Next free index after the highest used one, then the lowest free one.

        An index released less than ``reuse_delay`` ago is used only when no
        other index is free (the one released longest ago first).
        """
        size = parse_cidr(block.pod_cidr).size
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
            if index in state.used or index in taken:
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
            state.used[entry.index] = entry
            state.released.pop(entry.index, None)
            key = (entry.network, entry.container_id, entry.if_name)
            self._by_key.setdefault(key, []).append(entry)

    def _apply_del(self, key: AttachmentKey, at: float) -> list[AllocationEntry]:
        entries = self._by_key.pop(key, [])
        for entry in entries:
            state = self._pools.setdefault(entry.pool, _PoolState())
            if state.used.get(entry.index) == entry:
                del state.used[entry.index]
                state.released[entry.index] = at
        return entries

    def _append(self, record: dict[str, Any]) -> None:
        # One write per line: with O_APPEND a crash leaves at worst a torn
        # last line, which recovery ignores (its change was never acknowledged).
        os.write(self._fd, (json.dumps(record, separators=(",", ":")) + "\n").encode())
        os.fsync(self._fd)
        self._appended += 1

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
