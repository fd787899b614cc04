"""The L3 host routes of SPEC section 7, reconciled by diff in a table per network.

For each l3/l3s network the agent keeps one routing table (an id from a range
reserved for multinic, recorded in the state dir so that it survives restarts)
and one ``ip rule from <subnet> lookup <table>``.  A reconcile adds what is
missing, replaces what changed, deletes what is stale and leaves the rest
alone: never a flush, so established traffic sees no blip.  The main, local
and default tables are refused outright.

All functions block (netlink); the agent runs them in a worker thread.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import socket
import struct
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import netaddr
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from multinic_agent.pod_netns import in_netns
from multinic_core.routes import HostRoute

log = logging.getLogger(__name__)

# Tables 0 (unspec), 253 (default), 254 (main) and 255 (local) belong to the
# kernel and the system; multinic uses its own range and nothing else.
RESERVED_TABLES = frozenset({0, 253, 254, 255})
TABLE_RANGE = range(20000, 21000)
RULE_PRIORITY = 20000
# Marks routes and rules multinic owns (RTPROT numbers above 4 are free for
# routing daemons; 0x6d is "m").
RTPROT_MULTINIC = 109
_NETWORK_NAME = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?\Z")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\Z")


class RouteTableError(ValueError):
    """A table id, network name, device or CIDR that must not reach netlink."""


def check_table(table: int) -> int:
    if table in RESERVED_TABLES or table not in TABLE_RANGE:
        raise RouteTableError(
            f"routing table {table} is not in multinic's range "
            f"{TABLE_RANGE.start}-{TABLE_RANGE.stop - 1}; main/local/default are never touched"
        )
    return table


@dataclass(frozen=True)
class RouteSync:
    """What one reconcile of one network did."""

    network: str
    table: int
    added: tuple[str, ...] = ()
    replaced: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    kept: int = 0
    errors: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.errors

    @property
    def changed(self) -> bool:
        return bool(self.added or self.replaced or self.removed)

    def summary(self) -> str:
        text = (
            f"table {self.table}: {len(self.added)} added, {len(self.replaced)} replaced, "
            f"{len(self.removed)} removed, {self.kept} kept"
        )
        if self.errors:
            text += "; " + "; ".join(self.errors)
        return text


@dataclass
class TableRegistry:
    """network name -> table id, persisted as JSON in the state dir."""

    path: Path
    tables: dict[str, int] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> TableRegistry:
        if not path.exists():
            return cls(path)
        data = json.loads(path.read_text())
        tables = {str(k): check_table(int(v)) for k, v in data.get("tables", {}).items()}
        return cls(path, tables)

    def table_for(self, network: str) -> int:
        if network in self.tables:
            return self.tables[network]
        used = set(self.tables.values())
        for table in TABLE_RANGE:
            if table not in used:
                self.tables[network] = table
                self._save()
                return table
        raise RouteTableError(f"all {len(TABLE_RANGE)} multinic routing tables are in use")

    def release(self, network: str) -> None:
        if self.tables.pop(network, None) is not None:
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".tables-")
        with os.fdopen(fd, "w") as f:
            json.dump({"tables": self.tables}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)


def _check_network(name: str) -> str:
    if not _NETWORK_NAME.match(name):
        raise RouteTableError(f"{name!r} is not a valid network (object) name")
    return name


def _check_route(route: HostRoute) -> HostRoute:
    if _plain_ipv4_route(route):
        return route
    try:
        dst = netaddr.IPNetwork(route.dst)
        netaddr.IPAddress(route.gateway)
    except (netaddr.AddrFormatError, ValueError) as e:
        raise RouteTableError(f"route {route}: {e}") from e
    if str(dst.cidr) != route.dst:
        raise RouteTableError(f"route {route}: destination is not a network address")
    if not _IFNAME.match(route.device):
        raise RouteTableError(f"route {route}: {route.device!r} is not an interface name")
    return route


def _plain_ipv4_route(route: HostRoute) -> bool:
    """Whether ``route`` is an IPv4 network in canonical spelling via an IPv4 gateway
    on a valid interface name (a plan's 80,000 routes are checked on each reconcile:
    this is the quick test; everything else takes ``_check_route``'s netaddr way)."""
    address, slash, length = route.dst.partition("/")
    if not slash or not length.isdigit() or length != str(int(length)) or int(length) > 32:
        return False
    try:
        packed = socket.inet_pton(socket.AF_INET, address)
        socket.inet_pton(socket.AF_INET, route.gateway)
    except OSError:
        return False
    host_bits = (1 << (32 - int(length))) - 1
    return (
        socket.inet_ntop(socket.AF_INET, packed) == address
        and int.from_bytes(packed, "big") & host_bits == 0
        and bool(_IFNAME.match(route.device))
    )


def _attr(msg: Any, name: str) -> Any:
    return msg.get_attr(name)


def _family(cidr: str) -> int:
    return socket.AF_INET6 if netaddr.IPNetwork(cidr).version == 6 else socket.AF_INET


# Netlink (linux/netlink.h, linux/rtnetlink.h) for the route dump.
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWROUTE, _RTM_GETROUTE = 24, 26
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_SOL_NETLINK, _NETLINK_GET_STRICT_CHK = 270, 12
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_TABLE = 1, 4, 5, 15
_NLMSG = struct.Struct("=IHHII")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")


def dump_table(table: int) -> dict[str, tuple[str, int]]:
    """dst -> (gateway, oif) of the routes of ``table`` in this thread's namespace.

    Both families, one dump each; with strict checking (Linux 4.20+) the kernel
    sends only that table, else every route comes and the others are skipped.
    """
    found: dict[str, tuple[str, int]] = {}
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as sock:
        with contextlib.suppress(OSError):
            sock.setsockopt(_SOL_NETLINK, _NETLINK_GET_STRICT_CHK, 1)
        sock.bind((0, 0))
        for seq, family in enumerate((socket.AF_INET, socket.AF_INET6), start=1):
            body = _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
            body += _RTATTR.pack(8, _RTA_TABLE) + _U32.pack(table)
            header = _NLMSG.pack(_NLMSG.size + len(body), _RTM_GETROUTE,
                                 _NLM_F_REQUEST | _NLM_F_DUMP, seq, 0)  # fmt: skip
            sock.sendall(header + body)
            _read_dump(sock, seq, table, found)
    return found


def _read_dump(
    sock: socket.socket, seq: int, table: int, found: dict[str, tuple[str, int]]
) -> None:
    while True:
        data = sock.recv(1 << 20)
        offset = 0
        while offset + _NLMSG.size <= len(data):
            length, kind, _, got_seq, _ = _NLMSG.unpack_from(data, offset)
            if length < _NLMSG.size:
                raise OSError(errno.EPROTO, "malformed netlink message in a route dump")
            if got_seq == seq:
                if kind == _NLMSG_DONE:
                    return
                if kind == _NLMSG_ERROR:
                    code = -struct.unpack_from("=i", data, offset + _NLMSG.size)[0]
                    if code:
                        raise OSError(code, f"route dump of table {table}: {os.strerror(code)}")
                    return
                if kind == _RTM_NEWROUTE:
                    _route(data, offset + _NLMSG.size, offset + length, table, found)
            offset += (length + 3) & ~3


def _route(
    data: bytes, start: int, end: int, table: int, found: dict[str, tuple[str, int]]
) -> None:
    family, dst_len, _, _, in_table, _, _, _, _ = _RTMSG.unpack_from(data, start)
    dst = gateway = b""
    oif = 0
    at = start + _RTMSG.size
    while at + _RTATTR.size <= end:
        length, kind = _RTATTR.unpack_from(data, at)
        if length < _RTATTR.size:
            break
        value = data[at + _RTATTR.size : at + length]
        if kind == _RTA_DST:
            dst = value
        elif kind == _RTA_GATEWAY:
            gateway = value
        elif kind == _RTA_OIF:
            oif = _U32.unpack(value)[0]
        elif kind == _RTA_TABLE:
            in_table = _U32.unpack(value)[0]
        at += (length + 3) & ~3
    if in_table != table or family not in (socket.AF_INET, socket.AF_INET6):
        return
    size = 4 if family == socket.AF_INET else 16
    address = socket.inet_ntop(family, dst or bytes(size))
    key = f"{address}/{dst_len}"
    if family == socket.AF_INET6:
        key = str(netaddr.IPNetwork(key).cidr)  # spelled as the plan spells it
    found[key] = (socket.inet_ntop(family, gateway) if gateway else "", oif)


@dataclass(frozen=True)
class _Applied:
    """A table as a reconcile without errors left it: what ``reconcile(verify=False)``
    diffs against instead of a dump of the kernel's table."""

    routes: Mapping[str, HostRoute]
    """The validated routes, by destination."""
    indexes: Mapping[str, int]
    """Their devices' interface indexes then."""

    def table(self) -> dict[str, tuple[str, int]]:
        """As ``HostRouteTables.current_routes`` would read it: dst -> (gateway, oif)."""
        return {dst: (r.gateway, self.indexes[r.device]) for dst, r in self.routes.items()}


class HostRouteTables:
    """Reconciles this host's multinic routing tables and rules."""

    def __init__(self, state_dir: Path, netns: str | None = None) -> None:
        self.registry = TableRegistry.load(state_dir / "route-tables.json")
        self.netns = netns
        self._applied: dict[str, _Applied] = {}
        """Per network: its table as the last reconcile without errors left it."""

    def _ipr(self) -> IPRoute:
        if self.netns:
            return IPRoute(netns=self.netns, flags=0)
        return IPRoute()

    # ------------------------------------------------------------------ read

    def current_routes(self, table: int) -> dict[str, tuple[str, int]]:
        """dst -> (gateway, oif) of every route in ``table``.

        One netlink dump decoded here: a reconcile reads the whole table, and
        at 10,000 hosts x 8 NICs that is 80,000 routes (pyroute2 took 14 s
        for them, this ~0.3 s).
        """
        check_table(table)
        if not self.netns:
            return dump_table(table)
        path = self.netns if "/" in self.netns else f"/var/run/netns/{self.netns}"
        return in_netns(path, lambda: dump_table(table))

    def current_rules(self, table: int) -> list[str]:
        """Source prefixes of the rules that look up ``table``."""
        check_table(table)
        sources = []
        with self._ipr() as ipr:
            for family in (socket.AF_INET, socket.AF_INET6):
                for msg in ipr.get_rules(family=family):
                    if (_attr(msg, "FRA_TABLE") or msg["table"]) != table:
                        continue
                    src = _attr(msg, "FRA_SRC")
                    if src:
                        sources.append(f"{src}/{msg['src_len']}")
        return sources

    # ------------------------------------------------------------- reconcile

    def reconcile(
        self, network: str, subnet: str, routes: Sequence[HostRoute], *, verify: bool = True
    ) -> RouteSync:
        """Make ``network``'s table hold exactly ``routes`` and its rule match ``subnet``.

        ``verify``: read the table from the kernel (one dump) and repair
        whatever differs.  Without it, the routes are diffed against what the
        last reconcile without errors left (a plan change at 10,000 hosts:
        the new host's routes added, no dump of 80,000); a table not known
        yet is read all the same.  Routes someone else changed meanwhile are
        repaired by the next verifying pass (the agent's periodic resync).
        """
        _check_network(network)
        last = self._applied.pop(network, None)  # until this pass is done
        seen = last.routes if last is not None else {}
        # Routes validated by the last pass are not checked again.
        desired = {r.dst: r if seen.get(r.dst) == r else _check_route(r) for r in routes}
        if len(desired) != len(routes):
            raise RouteTableError(f"network {network}: two routes for one destination")
        if subnet:
            netaddr.IPNetwork(subnet)  # raises on garbage before anything is changed
        table = self.registry.table_for(network)
        check_table(table)
        current = self.current_routes(table) if verify or last is None else last.table()
        added: list[str] = []
        replaced: list[str] = []
        removed: list[str] = []
        errors: list[str] = []
        kept = 0
        with self._ipr() as ipr:
            indexes = self._indexes(ipr, {r.device for r in desired.values()})
            for dst, route in desired.items():
                oif = indexes.get(route.device)
                if oif is None:
                    errors.append(f"{route}: device {route.device} does not exist")
                    continue
                have = current.get(dst)
                if have == (route.gateway, oif):
                    kept += 1
                    continue
                try:
                    ipr.route(
                        "replace",
                        dst=dst,
                        gateway=route.gateway,
                        oif=oif,
                        table=table,
                        proto=RTPROT_MULTINIC,
                        family=_family(dst),
                    )
                except NetlinkError as e:
                    errors.append(f"{route}: {e.args[-1] if e.args else e}")
                    continue
                (replaced if have else added).append(str(route))
            for dst in sorted(set(current) - set(desired)):
                gateway, _ = current[dst]
                try:
                    ipr.route("del", dst=dst, table=table, family=_family(dst))
                except NetlinkError as e:
                    if e.code != 3:  # ESRCH: already gone
                        errors.append(f"delete {dst}: {e.args[-1] if e.args else e}")
                        continue
                removed.append(f"{dst} via {gateway}")
        self._reconcile_rule(table, subnet, errors)
        if not errors:
            self._applied[network] = _Applied(desired, indexes)
        result = RouteSync(
            network, table, tuple(added), tuple(replaced), tuple(removed), kept, tuple(errors)
        )
        log.log(
            logging.INFO if result.changed or errors else logging.DEBUG,
            "routes of network %s: %s",
            network,
            result.summary(),
        )
        return result

    def remove(self, network: str) -> RouteSync:
        """Delete ``network``'s routes (one by one) and rule, and free its table id."""
        _check_network(network)
        if network not in self.registry.tables:
            return RouteSync(network, 0)
        result = self.reconcile(network, "", [])
        self._applied.pop(network, None)
        self.registry.release(network)
        return result

    def networks(self) -> list[str]:
        return sorted(self.registry.tables)

    def _reconcile_rule(self, table: int, subnet: str, errors: list[str]) -> None:
        have = self.current_rules(table)
        want = [str(netaddr.IPNetwork(subnet).cidr)] if subnet else []
        with self._ipr() as ipr:
            for src in have:
                if src in want:
                    continue
                try:
                    ipr.rule(
                        "del",
                        table=table,
                        src=src.split("/")[0],
                        src_len=int(src.split("/")[1]),
                        family=_family(src),
                        priority=RULE_PRIORITY,
                    )
                except NetlinkError as e:
                    errors.append(f"delete rule from {src}: {e.args[-1] if e.args else e}")
            for src in want:
                if src in have:
                    continue
                address, length = src.split("/")
                try:
                    ipr.rule(
                        "add",
                        table=table,
                        src=address,
                        src_len=int(length),
                        family=_family(src),
                        priority=RULE_PRIORITY,
                    )
                except NetlinkError as e:
                    errors.append(f"add rule from {src}: {e.args[-1] if e.args else e}")

    @staticmethod
    def _indexes(ipr: IPRoute, names: Iterable[str]) -> Mapping[str, int]:
        found = {}
        for name in names:
            index = ipr.link_lookup(ifname=name)
            if index:
                found[name] = index[0]
        return found
