"""Netlink work the agent does inside a pod's network namespace (pyroute2).

The functions block; the CNI server runs them in a worker thread, which
enters the pod's namespace with ``setns(2)`` and returns to its own before
the thread is reused.  (pyroute2's ``IPRoute(netns=...)`` forks a helper and
SIGTERMs it; the child would run the agent's asyncio signal handler and
stop the agent.)
"""

from __future__ import annotations

import ctypes
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import netaddr
from pyroute2 import IPRoute

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def _setns(fd: int, what: str) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"setns into {what}: {os.strerror(errno)}")


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """Run ``work`` with the calling thread inside network namespace ``netns``."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        target = os.open(netns, os.O_RDONLY)
        try:
            _setns(target, netns)
        finally:
            os.close(target)
        try:
            return work()
        finally:
            _setns(own, "the agent's own network namespace")
    finally:
        os.close(own)


def program_multipath(netns: str, routes: Sequence[Mapping[str, Any]]) -> None:
    """Install each ``{"dst", "nexthops": [{"gw", "dev"}]}`` as one multipath route.

    Called during ADD after the delegates attached the interfaces; the route
    goes away with them on rollback or DEL.
    """
    in_netns(netns, lambda: _program_multipath(netns, routes))


def _program_multipath(netns: str, routes: Sequence[Mapping[str, Any]]) -> None:
    with IPRoute() as ipr:
        for route in routes:
            hops = []
            for hop in route["nexthops"]:
                index = ipr.link_lookup(ifname=hop["dev"])
                if not index:
                    raise LookupError(f"interface {hop['dev']} not found in {netns}")
                hops.append({"gateway": hop["gw"], "oif": index[0]})
            ipr.route("replace", dst=route["dst"], multipath=hops)
            log.debug("multipath route %s via %s in %s", route["dst"], hops, netns)


def _canonical(address: str) -> str:
    net = netaddr.IPNetwork(address)
    return f"{net.ip}/{net.prefixlen}"


def check_pod_netns(
    netns: str,
    expected: Sequence[tuple[str, Sequence[str]]],
    multipath: Sequence[Mapping[str, Any]] = (),
) -> list[str]:
    """What is missing in ``netns``: one message per absent interface, address or route.

    :param expected: (interface name, its addresses ``ADDRESS/PREFIX``) pairs.
    :param multipath: the routes the agent programmed (``{"dst", "nexthops"}``).
    """
    if not netns or not os.path.exists(netns):
        return [f"network namespace {netns!r} does not exist"]
    return in_netns(netns, lambda: _check(netns, expected, multipath))


def _check(
    netns: str,
    expected: Sequence[tuple[str, Sequence[str]]],
    multipath: Sequence[Mapping[str, Any]],
) -> list[str]:
    problems: list[str] = []
    with IPRoute() as ipr:
        if multipath:
            present = {
                f"{r.get('RTA_DST')}/{r['dst_len']}"
                for r in ipr.get_routes()
                if r.get("RTA_DST") and r.get("RTA_MULTIPATH")
            }
            problems.extend(
                f"multipath route {route['dst']} is missing from {netns}"
                for route in multipath
                if _canonical(route["dst"]) not in present
            )
        for ifname, addresses in expected:
            index = ipr.link_lookup(ifname=ifname)
            if not index:
                problems.append(f"interface {ifname} is missing from {netns}")
                continue
            present = {
                _canonical(f"{a.get('IFA_ADDRESS')}/{a['prefixlen']}")
                for a in ipr.get_addr(index=index[0])
            }
            problems.extend(
                f"address {address} is missing from {ifname} in {netns}"
                for address in addresses
                if _canonical(address) not in present
            )
    return problems
