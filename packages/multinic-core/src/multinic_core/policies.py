"""The built-in attach policies (SPEC section 6): which host NICs a pod gets.

Every policy is a pure function of the ``SelectionRequest``: the network, the
node's NICs, the pod's ``cni-args`` and device allocations, and the node's
current attachment counts.  They register through the ``multinic.policies``
entry points of ``multinic-core``, exactly as a third-party policy would.

All of them share one pipeline, in :class:`NicSelectionPolicy`:

1. the *pool*: the network's NICs in masterNets order (all NICs sorted by
   network address when masterNets is empty);
2. ``filter`` (``devClass`` keeps only one class of NICs);
3. the pod's ``masters``, when given: exactly those NICs, in that order;
4. ``rank`` (``topology``, ``costOpt``, ``perfOpt`` reorder with a stable sort,
   so ties keep the order of steps 1-3);
5. ``take``: the first ``nics`` of them (all when ``nics`` is 0), or for the
   bandwidth policies as many as reach ``attachPolicy.target``.

A third-party policy may subclass :class:`NicSelectionPolicy` and override
``filter``, ``rank`` or ``take``, or implement ``multinic_select_nics`` from
scratch with the functions below.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import netaddr

from multinic_core.errors import NicMissingError, SelectionError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import SelectedNic, SelectionRequest
from multinic_core.models import InterfaceInfo, MultiNicNetwork

log = logging.getLogger(__name__)

# domain:bus:device.function, the domain optional (lspci prints it short).
_PCI_ADDRESS = re.compile(
    r"^(?:(?P<domain>[0-9a-f]{1,8}):)?(?P<bus>[0-9a-f]{1,2}):(?P<device>[0-9a-f]{1,2})"
    r"\.(?P<function>[0-7])$"
)
_BANDWIDTH = re.compile(r"^(?P<value>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>[kmgt]?bps)?\Z")
# Multiples of Mbit/s, the unit of InterfaceInfo.speed (sysfs ``speed``).
_BANDWIDTH_UNITS_MBPS = {
    "bps": 1e-6,
    "kbps": 1e-3,
    "mbps": 1.0,
    "gbps": 1e3,
    "tbps": 1e6,
}


# --------------------------------------------------------------------------- building blocks


def normalise_pci_address(address: str) -> str:
    """The canonical ``dddd:bb:dd.f`` lowercase form of a PCI address.

    ``3b:00.0``, ``0000:3b:00.0`` and ``0000:3B:00.0`` all name the same
    device.  A value that is not a PCI address is returned stripped and
    lowercased, so that it still compares equal to itself.
    """
    value = address.strip().lower()
    match = _PCI_ADDRESS.match(value)
    if not match:
        return value
    domain = int(match["domain"] or "0", 16)
    return (
        f"{domain:04x}:{int(match['bus'], 16):02x}:{int(match['device'], 16):02x}"
        f".{match['function']}"
    )


def _network_key(net_address: str) -> tuple[int, int, int] | None:
    """(IP version, network address, prefix length) for sorting and comparing."""
    if not net_address:
        return None
    try:
        net = netaddr.IPNetwork(net_address)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return (net.version, int(net.network), net.prefixlen)


def network_order(network: MultiNicNetwork, nics: Iterable[InterfaceInfo]) -> list[InterfaceInfo]:
    """The NICs a network may use on this node, in masterNets order.

    A NIC belongs to a masterNet when its ``netAddress`` is that network.
    With masterNets empty every NIC is used, sorted by network address (NICs
    without one last).  NICs on the same network are ordered by name, so the
    result never depends on discovery order.
    """
    by_name = sorted(nics, key=lambda nic: nic.interface_name)
    master_nets = network.spec.master_nets
    if not master_nets:

        def by_network(nic: InterfaceInfo) -> tuple[bool, tuple[int, int, int]]:
            key = _network_key(nic.net_address)
            return (key is None, key or (0, 0, 0))

        return sorted(by_name, key=by_network)
    ordered: list[InterfaceInfo] = []
    for master_net in master_nets:
        wanted = _network_key(master_net)
        ordered.extend(nic for nic in by_name if _network_key(nic.net_address) == wanted)
    return ordered


def _names(nics: Iterable[InterfaceInfo]) -> str:
    return ", ".join(nic.interface_name for nic in nics) or "none"


def resolve_masters(pool: Sequence[InterfaceInfo], masters: Sequence[str]) -> list[InterfaceInfo]:
    """The NICs the pod named in ``cni-args`` ``masters``, in that order.

    Raises SelectionError naming every unknown or repeated name and listing
    the NICs that are available.
    """
    by_name = {nic.interface_name: nic for nic in pool}
    unknown = [name for name in masters if name not in by_name]
    if unknown:
        raise NicMissingError(
            f"cni-args masters names unknown interface(s) {', '.join(unknown)}; "
            f"available: {_names(pool)}"
        )
    repeated = sorted(name for name, count in Counter(masters).items() if count > 1)
    if repeated:
        raise SelectionError(f"cni-args masters names interface(s) twice: {', '.join(repeated)}")
    return [by_name[name] for name in masters]


def take(ranked: Sequence[InterfaceInfo], count: int) -> list[InterfaceInfo]:
    """The first ``count`` NICs (all of them when ``count`` is 0).

    Asking for more NICs than there are is an error rather than a silent
    shortfall: the pod would start with fewer interfaces than it requested.
    """
    if count > len(ranked):
        raise NicMissingError(
            f"cni-args nics={count} but only {len(ranked)} NIC(s) are available: {_names(ranked)}"
        )
    return list(ranked[:count] if count > 0 else ranked)


def parse_target_bandwidth(target: str) -> float | None:
    """``attachPolicy.target`` as Mbit/s; ``None`` when it is empty.

    A bare number is Gbit/s (``"100"``); a unit may follow: ``bps``, ``Kbps``,
    ``Mbps``, ``Gbps``, ``Tbps`` (any case, e.g. ``"400Mbps"``, ``"10Kbps"``).
    """
    text = target.strip().lower()
    if not text:
        return None
    match = _BANDWIDTH.match(text)
    if not match or float(match["value"]) <= 0:
        raise SelectionError(
            f"attachPolicy.target {target!r} is not a positive bandwidth "
            "(expected e.g. 100, 100Gbps, 400Mbps or 10Kbps)"
        )
    return float(match["value"]) * _BANDWIDTH_UNITS_MBPS[match["unit"] or "gbps"]


def take_bandwidth(
    ranked: Sequence[InterfaceInfo], target_mbps: float, count: int
) -> list[InterfaceInfo]:
    """NICs in rank order until their link speeds add up to ``target_mbps``.

    ``count`` (when > 0) caps how many are taken.  A NIC of unknown speed adds
    nothing.  When even all of them fall short, all are taken (and a warning
    logged): a pod with less bandwidth than desired beats a pod that cannot
    start.
    """
    limit = take(ranked, count)
    chosen: list[InterfaceInfo] = []
    total = 0.0
    for nic in limit:
        if total >= target_mbps:
            break
        chosen.append(nic)
        total += nic.speed or 0
    if total < target_mbps:
        log.warning(
            "target bandwidth %g Mbit/s not reached: %s give %g Mbit/s",
            target_mbps,
            _names(chosen),
            total,
        )
    return chosen


def selected_nics(nics: Iterable[InterfaceInfo], device_ids: Iterable[str]) -> list[SelectedNic]:
    """The hook's answer for the chosen NICs, in attach order.

    ``device_id`` is set only when the NIC itself was allocated to the pod by a
    device plugin (its PCI address is among ``device_ids``, e.g. host-device).
    """
    allocated = {normalise_pci_address(d) for d in device_ids if d}
    result = []
    for nic in nics:
        pci = normalise_pci_address(nic.pci_address) if nic.pci_address else ""
        result.append(
            SelectedNic(
                name=nic.interface_name,
                net_address=nic.net_address,
                device_id=pci if pci and pci in allocated else "",
                host_ip=nic.host_ip,
            )
        )
    return result


# --------------------------------------------------------------------------- policies


class NicSelectionPolicy:
    """The ``none`` policy and the pipeline every built-in policy shares.

    Subclasses override ``filter`` (drop NICs), ``rank`` (reorder with a stable
    sort) or ``take`` (decide how many); the pool, ``masters`` handling and
    the answer's construction stay here.
    """

    strategy: ClassVar[str] = "none"

    @hookimpl
    def multinic_select_nics(self, request: SelectionRequest) -> list[SelectedNic]:
        """Select NICs for one pod; raises SelectionError when that is impossible."""
        pool = self.filter(request, network_order(request.network, request.nics))
        if not pool:
            raise NicMissingError(
                f"attach policy {self.strategy!r}: no NIC of network "
                f"{request.network.name!r} on this node"
                + _master_nets_hint(request.network)
                + f" (discovered: {_names(request.nics)})"
            )
        if request.args.masters:
            pool = resolve_masters(pool, request.args.masters)
        chosen = self.take(request, self.rank(request, pool))
        log.debug(
            "attach policy %s chose %s for pod %s/%s",
            self.strategy,
            _names(chosen),
            request.pod.namespace,
            request.pod.name,
        )
        return selected_nics(chosen, request.device_ids)

    def filter(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        """Drop NICs this policy never uses (``devClass``); all are kept by default."""
        return pool

    def rank(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        """Order the NICs, best first; the pool order by default."""
        return pool

    def take(self, request: SelectionRequest, ranked: list[InterfaceInfo]) -> list[InterfaceInfo]:
        """How many of the ranked NICs the pod gets: ``nics``, or all."""
        return take(ranked, request.args.nics)


def _master_nets_hint(network: MultiNicNetwork) -> str:
    nets = network.spec.master_nets
    return f" in masterNets {', '.join(nets)}" if nets else ""


class NonePolicy(NicSelectionPolicy):
    """``none`` (default): the pod's ``masters``, else every NIC in masterNets order."""

    strategy = "none"


class DevClassPolicy(NicSelectionPolicy):
    """``devClass``: only NICs whose PCI vendor/product are in a DeviceClass.

    The class is the pod's ``cni-args`` ``class``, else ``attachPolicy.target``.
    A missing name or DeviceClass is an error, never a fall back to all NICs.
    """

    strategy = "devClass"

    def filter(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        name = request.args.device_class or request.network.spec.attach_policy.target
        if not name:
            raise SelectionError(
                "attach policy 'devClass' needs a DeviceClass name: set cni-args class "
                "or attachPolicy.target"
            )
        device_class = request.device_classes(name)
        if device_class is None:
            raise SelectionError(f"DeviceClass {name!r} (attach policy 'devClass') does not exist")
        members = [nic for nic in pool if device_class.matches(nic.vendor, nic.product)]
        # With no NIC at all, the pipeline's own "no NIC of network" error says more.
        if pool and not members:
            ids = ", ".join(f"{nic.interface_name}={nic.vendor}:{nic.product}" for nic in pool)
            raise SelectionError(
                f"no NIC of network {request.network.name!r} is in DeviceClass {name!r} "
                f"(vendor:product of the NICs: {ids or 'no NICs'})"
            )
        return members


class TopologyPolicy(NicSelectionPolicy):
    """``topology``: NICs on the NUMA node(s) of the pod's allocated devices first.

    A NIC's rank is how many of the pod's devices share its NUMA node, so with
    GPUs split over two nodes the node holding more of them comes first.  NICs
    of unknown NUMA node, and every NIC when the pod has no devices, keep the
    pool order.
    """

    strategy = "topology"

    def rank(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        devices_per_numa: Counter[int] = Counter()
        for device in request.device_ids:
            numa = request.numa_node_of(normalise_pci_address(device))
            if numa is not None and numa >= 0:
                devices_per_numa[numa] += 1
        if not devices_per_numa:
            log.debug("topology: no NUMA node known for devices %s", list(request.device_ids))
            return pool

        def nearby_devices(nic: InterfaceInfo) -> int:
            numa = nic.numa_node
            if numa is None and nic.pci_address:
                numa = request.numa_node_of(normalise_pci_address(nic.pci_address))
            return devices_per_numa.get(numa, 0) if numa is not None else 0

        return sorted(pool, key=lambda nic: -nearby_devices(nic))


class _BandwidthPolicy(NicSelectionPolicy):
    """Shared ``take`` of costOpt and perfOpt: reach ``attachPolicy.target`` if set."""

    def take(self, request: SelectionRequest, ranked: list[InterfaceInfo]) -> list[InterfaceInfo]:
        target = parse_target_bandwidth(request.network.spec.attach_policy.target)
        if target is None:
            return take(ranked, request.args.nics)
        return take_bandwidth(ranked, target, request.args.nics)


def _usage(usage: Mapping[str, int], nic: InterfaceInfo) -> int:
    return usage.get(nic.interface_name, 0)


class CostOptPolicy(_BandwidthPolicy):
    """``costOpt``: spread pods over NICs, least-used (fewest attachments) first."""

    strategy = "costOpt"

    def rank(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        return sorted(pool, key=lambda nic: _usage(request.usage, nic))


class PerfOptPolicy(_BandwidthPolicy):
    """``perfOpt``: the fastest links first (``speed``), then the least-used."""

    strategy = "perfOpt"

    def rank(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        return sorted(pool, key=lambda nic: (-(nic.speed or 0), _usage(request.usage, nic)))
