"""NIC discovery: which of this node's interfaces are secondary NICs (SPEC section 1).

A secondary NIC has a global IPv4 or IPv6 address, is not the loopback, does
not carry a default route (that is the node's primary network), and does not
match the agent's ignore patterns.  Hardware facts come from sysfs (PCI
address, vendor and product ids, NUMA node, link speed) -- read as numbers,
with no PCI-id database to download.

Blocking (netlink); the agent calls it from a worker thread, on start, on
netlink link/address events, and periodically.
"""

from __future__ import annotations

import fnmatch
import logging
import re
import socket
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import netaddr
from pyroute2 import IPRoute

from multinic_core.models import HostInterface, HostInterfaceSpec, InterfaceInfo, ObjectMeta

log = logging.getLogger(__name__)

_PCI_ADDRESS = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]\Z")
IFF_LOOPBACK = 0x8
RT_SCOPE_UNIVERSE = 0
MAIN_TABLE = 254


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        # Absent attribute, or EINVAL (e.g. `speed` of a link that is down).
        return ""


def hardware_facts(sysfs: Path, ifname: str) -> dict[str, Any]:
    """pciAddress, vendor, product, numaNode, speed of ``ifname`` from sysfs."""
    facts: dict[str, Any] = {}
    net = sysfs / "class" / "net" / ifname
    device = net / "device"
    if device.exists():
        pci = device.resolve().name
        if _PCI_ADDRESS.match(pci):
            facts["pciAddress"] = pci
            facts["vendor"] = _read(device / "vendor").lower().removeprefix("0x")
            facts["product"] = _read(device / "device").lower().removeprefix("0x")
            numa = _read(device / "numa_node")
            if numa.lstrip("-").isdigit() and int(numa) >= 0:
                facts["numaNode"] = int(numa)
    speed = _read(net / "speed")
    if speed.lstrip("-").isdigit() and int(speed) > 0:
        facts["speed"] = int(speed)
    return facts


def _default_route_interfaces(ipr: IPRoute) -> set[int]:
    indexes: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=MAIN_TABLE):
            if route["dst_len"] != 0 or route.get_attr("RTA_DST"):
                continue
            oif = route.get_attr("RTA_OIF")
            if oif:
                indexes.add(int(oif))
            for hop in route.get_attr("RTA_MULTIPATH") or []:
                indexes.add(int(hop["oif"]))
    return indexes


def _global_address(ipr: IPRoute, index: int) -> netaddr.IPNetwork | None:
    """The interface's first global IPv4 address, else its first global IPv6 one."""
    found: list[netaddr.IPNetwork] = []
    for msg in ipr.get_addr(index=index):
        if msg["scope"] != RT_SCOPE_UNIVERSE:
            continue
        address = msg.get_attr("IFA_ADDRESS")
        if not address:
            continue
        net = netaddr.IPNetwork(f"{address}/{msg['prefixlen']}")
        if net.version == 6 and net.ip.is_link_local():
            continue
        found.append(net)
    found.sort(key=lambda n: n.version)
    return found[0] if found else None


def discover_nics(
    netns: str | None = None,
    sysfs: Path = Path("/sys"),
    ignore: Sequence[str] = (),
) -> list[InterfaceInfo]:
    """The node's secondary NICs, sorted by name.

    :param netns: a network namespace (name or path) to look in; the caller's own
        when None.
    :param sysfs: where sysfs is mounted for that namespace.
    :param ignore: shell patterns of interface names never to report.
    """
    ipr = IPRoute(netns=netns, flags=0) if netns else IPRoute()
    nics: list[InterfaceInfo] = []
    with ipr:
        primary = _default_route_interfaces(ipr)
        for link in ipr.get_links():
            name = link.get_attr("IFLA_IFNAME")
            index = link["index"]
            if link["flags"] & IFF_LOOPBACK or index in primary:
                continue
            if any(fnmatch.fnmatchcase(name, pattern) for pattern in ignore):
                continue
            address = _global_address(ipr, index)
            if address is None:
                continue
            info = {
                "interfaceName": name,
                "netAddress": str(address.cidr),
                "hostIP": str(address.ip),
                **hardware_facts(sysfs, name),
            }
            nics.append(InterfaceInfo.model_validate(info))
    nics.sort(key=lambda n: n.interface_name)
    log.debug("discovered NICs: %s", ", ".join(n.interface_name for n in nics) or "none")
    return nics


def host_interface(
    node: str, nics: Sequence[InterfaceInfo], current: HostInterface | None
) -> HostInterface | None:
    """The HostInterface this node's agent should write, or None to leave it alone.

    A HostInterface labelled ``multi-nic-unmanaged: "true"`` belongs to a
    user and is never overwritten.  Otherwise labels, annotations and status
    of the current object are kept and only ``spec`` is replaced.
    """
    if current is not None and current.unmanaged:
        return None
    spec = HostInterfaceSpec.model_validate({"hostName": node, "interfaces": []})
    spec.interfaces = list(nics)
    if current is None:
        return HostInterface(metadata=ObjectMeta(name=node), spec=spec)
    return current.model_copy(update={"spec": spec})
