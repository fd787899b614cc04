"""The rtnetlink requests of the in-process macvlan delegate, and entering a netns.

One ``NETLINK_ROUTE`` socket per namespace, messages packed with ``struct``:
the requests are the ones the reference plugin's netlink library
(vishvananda/netlink) sends, attribute for attribute, and each one costs a
few microseconds of Python instead of the ~0.1-0.2 ms pyroute2's message
classes take to encode (measured: 180 us for the macvlan NEWLINK), which
matters at 8 NICs per pod and a thousand NICs a second.  The dumps CHECK
reads (addresses, routes) are parsed for the few fields it compares.

A netlink socket belongs to the network namespace of the thread that opened
it, whatever thread uses it later; :func:`in_netns` moves the calling thread
into a pod's namespace for a piece of work and back (``setns(2)``, which acts
on the calling thread only), as the reference plugin's ``netns.Do`` does.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import ipaddress
import os
import socket
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")

NETLINK_ROUTE = 0
CLONE_NEWNET = 0x40000000
NSFS_MAGIC = 0x6E736673
PROC_SUPER_MAGIC = 0x9FA0

# netlink header flags and types
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLMSG_ERROR = 2
NLMSG_DONE = 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_GETADDR = 20, 22
RTM_NEWROUTE, RTM_GETROUTE = 24, 26
RTM_F_CLONED = 0x200

# attributes
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK = 1, 3, 4, 5
IFLA_TXQLEN, IFLA_LINKINFO, IFLA_NET_NS_FD = 13, 18, 28
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_MACVLAN_MODE = 1
IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_TABLE = 1, 4, 5, 15
IFF_UP = 0x1
IFA_F_DADFAILED, IFA_F_TENTATIVE = 0x08, 0x40
RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST = 254, 3, 0, 1

# Device ioctls (linux/sockios.h): any socket answers them for its namespace.
SIOCGIFHWADDR, SIOCGIFINDEX = 0x8927, 0x8933
IFNAMSIZ = 16

# The kernel's macvlan modes (include/uapi/linux/if_link.h).
MACVLAN_MODES = {"private": 1, "vepa": 2, "bridge": 4, "passthru": 8}

_HEADER = struct.Struct("=IHHII")
_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct("=I")
_ERROR = struct.Struct("=i")
_IFREQ_INDEX = struct.Struct("=16si20x")
_IFREQ_HWADDR = struct.Struct("=16sH6s16x")

_libc = ctypes.CDLL(None, use_errno=True)


class NetlinkError(OSError):
    """The kernel refused a request; ``str()`` is its errno text as Go prints it."""

    def __init__(self, code: int) -> None:
        super().__init__(code, go_strerror(code))

    def __str__(self) -> str:
        return str(self.strerror)


def go_strerror(code: int) -> str:
    """errno text the way Go's ``syscall.Errno`` prints it (glibc's, lower-case first)."""
    text = os.strerror(code)
    return text[:1].lower() + text[1:]


def attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def u32(value: int) -> bytes:
    return _U32.pack(value)


def cstr(value: str) -> bytes:
    return value.encode() + b"\0"


def attrs(data: bytes | memoryview, offset: int = 0) -> dict[int, bytes]:
    """The attributes in ``data[offset:]`` by type (nested ones stay packed)."""
    found: dict[int, bytes] = {}
    end = len(data)
    while offset + _ATTR.size <= end:
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found[kind & 0x3FFF] = bytes(data[offset + _ATTR.size : offset + length])
        offset += (length + 3) & ~3
    return found


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    mtu: int
    address: str
    kind: str
    macvlan_mode: int | None


@dataclass(frozen=True)
class Address:
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    prefixlen: int
    flags: int


@dataclass(frozen=True)
class Route:
    dst: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    """None for a default route (the kernel sends no RTA_DST for prefix length 0)."""
    dst_len: int
    gateway: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    table: int


def _mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class Rtnl:
    """A NETLINK_ROUTE socket in the namespace of the thread that opened it."""

    def __init__(self) -> None:
        self.sock = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, NETLINK_ROUTE
        )
        try:
            self.sock.bind((0, 0))
        except BaseException:
            self.sock.close()
            raise
        self._seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Rtnl:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def request(self, kind: int, flags: int, body: bytes) -> list[tuple[int, bytes]]:
        """Send one request; its replies (type, payload), up to the ACK or DONE.

        Raises NetlinkError with the kernel's errno.
        """
        self._seq += 1
        seq = self._seq
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), kind, flags, seq, 0) + body)
        replies: list[tuple[int, bytes]] = []
        dump = flags & NLM_F_DUMP == NLM_F_DUMP
        while True:
            data = self.sock.recv(65536)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, mtype, _flags, mseq, _pid = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    raise NetlinkError(errno.EPROTO)
                payload = data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3
                if mseq != seq:
                    continue
                if mtype == NLMSG_ERROR:
                    (code,) = _ERROR.unpack_from(payload)
                    if code:
                        raise NetlinkError(-code)
                    return replies
                if mtype == NLMSG_DONE:
                    return replies
                replies.append((mtype, payload))
                if not dump and not flags & NLM_F_ACK:
                    return replies

    # ------------------------------------------------------------ links

    def index(self, name: str) -> int | None:
        """The index of link ``name`` (``SIOCGIFINDEX``: no netlink dump, no rtnl lock).

        None when there is no such link; OSError for a name the kernel refuses.
        The same lookup as RTM_GETLINK by IFLA_IFNAME (alternative names too).
        """
        try:
            reply = fcntl.ioctl(self.sock, SIOCGIFINDEX, _IFREQ_INDEX.pack(_ifr_name(name), 0))
        except OSError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return int(_IFREQ_INDEX.unpack(reply)[1])

    def mac(self, name: str) -> str:
        """The hardware address of link ``name`` (``SIOCGIFHWADDR``), as ``aa:bb:...``."""
        reply = fcntl.ioctl(self.sock, SIOCGIFHWADDR, _IFREQ_HWADDR.pack(_ifr_name(name), 0, b""))
        return _mac_text(_IFREQ_HWADDR.unpack(reply)[2])

    def link(self, name: str) -> Link | None:
        """The link called ``name``; None when there is none."""
        try:
            replies = self.request(
                RTM_GETLINK,
                NLM_F_REQUEST,
                _IFINFO.pack(0, 0, 0, 0, 0) + attr(IFLA_IFNAME, cstr(name)),
            )
        except NetlinkError as e:
            if e.errno == errno.ENODEV:
                return None
            raise
        return _parse_link(replies[0][1])

    def new_macvlan(
        self,
        name: str,
        parent: int,
        mode: int,
        *,
        netns_fd: int,
        mtu: int = 0,
        mac: bytes = b"",
    ) -> None:
        """Create macvlan ``name`` on link ``parent`` straight into namespace ``netns_fd``.

        The attributes vishvananda/netlink sends for the reference plugin's
        ``Macvlan{LinkAttrs{MTU, Name, ParentIndex, Namespace, HardwareAddr}, Mode}``
        (its ``TxQLen`` zero value included: the link's txqueuelen is 0).
        """
        body = [
            _IFINFO.pack(0, 0, 0, 0, 0),
            attr(IFLA_IFNAME, cstr(name)),
            attr(IFLA_TXQLEN, u32(0)),
        ]
        if mtu > 0:
            body.append(attr(IFLA_MTU, u32(mtu)))
        if mac:
            body.append(attr(IFLA_ADDRESS, mac))
        body.append(attr(IFLA_LINK, u32(parent)))
        body.append(attr(IFLA_NET_NS_FD, u32(netns_fd)))
        info = attr(IFLA_INFO_KIND, b"macvlan") + attr(
            IFLA_INFO_DATA, attr(IFLA_MACVLAN_MODE, u32(mode))
        )
        body.append(attr(IFLA_LINKINFO, info))
        self.request(
            RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, b"".join(body)
        )

    def set_name(self, index: int, name: str) -> None:
        self.request(
            RTM_SETLINK,
            NLM_F_REQUEST | NLM_F_ACK,
            _IFINFO.pack(0, 0, index, 0, 0) + attr(IFLA_IFNAME, cstr(name)),
        )

    def set_up(self, index: int) -> None:
        self.request(
            RTM_NEWLINK, NLM_F_REQUEST | NLM_F_ACK, _IFINFO.pack(0, 0, index, IFF_UP, IFF_UP)
        )

    def delete_link(self, index: int = 0, name: str = "") -> None:
        body = _IFINFO.pack(0, 0, index, 0, 0) + (attr(IFLA_IFNAME, cstr(name)) if name else b"")
        self.request(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, body)

    # ------------------------------------------------------------ addresses, routes

    def add_address(
        self, index: int, address: ipaddress.IPv4Interface | ipaddress.IPv6Interface
    ) -> None:
        """``AddrAdd``: IFA_LOCAL and IFA_ADDRESS, and IPv4's computed broadcast below /31."""
        ip = address.ip
        family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
        prefix = address.network.prefixlen
        body = [
            _IFADDR.pack(family, prefix, 0, 0, index),
            attr(IFA_LOCAL, ip.packed),
            attr(IFA_ADDRESS, ip.packed),
        ]
        if ip.version == 4 and prefix < 31:
            body.append(attr(IFA_BROADCAST, address.network.broadcast_address.packed))
        self.request(
            RTM_NEWADDR, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, b"".join(body)
        )

    def addresses(self, index: int) -> list[Address]:
        """Every address of link ``index`` (flags from IFA_FLAGS when the kernel sends it)."""
        found = []
        for _kind, payload in self.request(
            RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, _IFADDR.pack(socket.AF_UNSPEC, 0, 0, 0, 0)
        ):
            _family, prefix, low, _scope, owner = _IFADDR.unpack_from(payload)
            if owner != index:
                continue
            fields = attrs(payload, _IFADDR.size)
            raw = fields.get(IFA_LOCAL) or fields.get(IFA_ADDRESS)
            if raw is None:
                continue
            extended = fields.get(IFA_FLAGS)
            flags = _U32.unpack(extended)[0] if extended else low
            found.append(Address(ipaddress.ip_address(raw), prefix, flags))
        return found

    def routes(self, family: int) -> list[Route]:
        """The routes of ``family`` in every table, cloned (cache) entries left out."""
        found = []
        for _kind, payload in self.request(
            RTM_GETROUTE, NLM_F_REQUEST | NLM_F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)
        ):
            fam, dst_len, _src, _tos, table, _proto, _scope, _type, flags = _RTMSG.unpack_from(
                payload
            )
            if fam != family or flags & RTM_F_CLONED:
                continue
            fields = attrs(payload, _RTMSG.size)
            if RTA_TABLE in fields:
                table = _U32.unpack(fields[RTA_TABLE])[0]
            dst = fields.get(RTA_DST)
            gateway = fields.get(RTA_GATEWAY)
            found.append(
                Route(
                    dst=ipaddress.ip_address(dst) if dst else None,
                    dst_len=dst_len,
                    gateway=ipaddress.ip_address(gateway) if gateway else None,
                    table=table,
                )
            )
        return found

    def add_route(
        self,
        index: int,
        dst: bytes,
        dst_len: int,
        *,
        family: int,
        gateway: bytes = b"",
    ) -> None:
        """``RouteAddEcmp``: main table, proto boot, scope universe, NLM_F_CREATE without EXCL."""
        body = [
            _RTMSG.pack(
                family, dst_len, 0, 0, RT_TABLE_MAIN, RTPROT_BOOT, RT_SCOPE_UNIVERSE, RTN_UNICAST, 0
            ),
            attr(RTA_DST, dst),
        ]
        if gateway:
            body.append(attr(RTA_GATEWAY, gateway))
        body.append(attr(RTA_OIF, u32(index)))
        self.request(RTM_NEWROUTE, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE, b"".join(body))


def _ifr_name(name: str) -> bytes:
    raw = name.encode()
    if not raw or len(raw) >= IFNAMSIZ or b"\0" in raw:
        raise OSError(errno.EINVAL, go_strerror(errno.EINVAL))
    return raw


def _parse_link(payload: bytes) -> Link:
    _family, _type, index, _flags, _change = _IFINFO.unpack_from(payload)
    found = attrs(payload, _IFINFO.size)
    kind, mode = "", None
    if IFLA_LINKINFO in found:
        info = attrs(found[IFLA_LINKINFO])
        kind = info.get(IFLA_INFO_KIND, b"").rstrip(b"\0").decode()
        data = attrs(info.get(IFLA_INFO_DATA, b""))
        if kind == "macvlan" and IFLA_MACVLAN_MODE in data:
            mode = _U32.unpack(data[IFLA_MACVLAN_MODE])[0]
    mtu = _U32.unpack(found[IFLA_MTU])[0] if IFLA_MTU in found else 0
    return Link(
        index=index,
        name=found.get(IFLA_IFNAME, b"").rstrip(b"\0").decode(),
        mtu=mtu,
        address=_mac_text(found.get(IFLA_ADDRESS, b"")),
        kind=kind,
        macvlan_mode=mode,
    )


# ---------------------------------------------------------------- namespaces


class _Statfs(ctypes.Structure):
    _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 120)]


def is_netns(fd: int) -> bool:
    """Whether ``fd`` is a network namespace file (nsfs, or /proc/PID/ns/net)."""
    buf = _Statfs()
    if _libc.fstatfs(fd, ctypes.byref(buf)) != 0:
        code = ctypes.get_errno()
        raise OSError(code, go_strerror(code))
    return buf.f_type in (NSFS_MAGIC, PROC_SUPER_MAGIC)


def setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, go_strerror(code))


@contextlib.contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """The calling thread inside the namespace of ``fd``, then back in its own."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        setns(fd)
        try:
            yield
        finally:
            setns(own)
    finally:
        os.close(own)


def run_in_netns(fd: int, work: Callable[[], T]) -> T:
    with in_netns(fd):
        return work()
