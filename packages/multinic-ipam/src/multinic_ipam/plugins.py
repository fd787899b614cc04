"""The IPAM plugins of the ``multinic.ipam`` entry-point group (SPEC section 5).

* ``multi-nic-ipam``: one address per selected NIC from this node's IPPool of
  that NIC, allocated by the agent's :class:`AllocationJournal`.
* ``multi-config``: a per-NIC IPAM config taken from ``ipam.args[<NIC>]``.
* ``host-device-ipam``: the pod gets the device's host address and prefix.
* ``static``: one address of ``ipam.addresses`` per NIC, in NIC order.
* ``host-local``, ``whereabouts``, ``dhcp``: the network's ``ipam`` passed
  unchanged to every NIC's delegate, which runs it.

The agent passes its services in ``IpamRequest.context``: ``allocations``
(the node's AllocationJournal) and ``pools`` (interface name -> IPPoolSpec of
this network on this node).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import netaddr
from pydantic import ValidationError

from multinic_core.errors import ConfigError, PluginError, TryAgainError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import IpamRequest, SelectedNic
from multinic_core.models import (
    IpamRoute,
    IPPoolSpec,
    MultiNicIpamConfig,
    describe_validation_error,
    parse_cidr,
)
from multinic_ipam.journal import AllocationJournal, PoolBlock

log = logging.getLogger(__name__)

CONTEXT_JOURNAL = "allocations"
CONTEXT_POOLS = "pools"


def _journal(request: IpamRequest) -> AllocationJournal:
    journal = request.context.get(CONTEXT_JOURNAL)
    if not isinstance(journal, AllocationJournal):
        raise PluginError(
            "IPAM plugin 'multi-nic-ipam' runs inside the multinic agent: "
            f"IpamRequest.context[{CONTEXT_JOURNAL!r}] must be the node's AllocationJournal"
        )
    return journal


def routes_for_nic(
    routes: Sequence[IpamRoute], on_link: netaddr.IPNetwork, first: bool
) -> list[dict[str, str]]:
    """The IPAM routes one NIC's delegate installs.

    A route belongs to a NIC when its gateway is on that NIC's link (inside
    the NIC's vlanCIDR); a route without a gateway goes to the first NIC only,
    so that no destination is claimed twice without a reason.
    """
    chosen = []
    for route in routes:
        if route.gw:
            gateway = netaddr.IPAddress(route.gw)
            if gateway.version == on_link.version and gateway in on_link:
                chosen.append({"dst": route.dst, "gw": route.gw})
        elif first:
            chosen.append({"dst": route.dst})
    return chosen


def requested_address(value: str) -> netaddr.IPAddress:
    """The address of a ``runtimeConfig.ips`` entry (``ADDRESS`` or ``ADDRESS/PREFIX``)."""
    try:
        return netaddr.IPNetwork(value).ip if "/" in value else netaddr.IPAddress(value)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise ConfigError(
            f"runtimeConfig.ips entry {value!r} is not an IP address (or ADDRESS/PREFIX)"
        ) from e


def requested_by_pool(
    network: str, requested: Sequence[str], blocks: Sequence[PoolBlock]
) -> dict[str, str]:
    """Which pool gives which requested address: the selected NIC's pool that contains it.

    Each address goes to the NIC whose pool on this node holds it (its prefix
    is not used: a NIC's address always has its vlanCIDR's prefix).  Raises
    ConfigError for an address in no selected NIC's pool (pools are per
    node: it may be another node's) and for two addresses of one NIC.
    """
    found: dict[str, str] = {}
    for value in requested:
        address = requested_address(value)
        pool = next((b for b in blocks if address in parse_cidr(b.pod_cidr)), None)
        if pool is None:
            pools = ", ".join(f"{b.interface_name} {b.pod_cidr}" for b in blocks) or "none"
            raise ConfigError(
                f"runtimeConfig.ips {value!r} is in none of this node's IPPools of network "
                f"{network} for the selected NICs ({pools}); a requested address must be in "
                "the pool of the node the pod runs on"
            )
        if pool.name in found:
            raise ConfigError(
                f"runtimeConfig.ips asks for {found[pool.name]} and {address} on NIC "
                f"{pool.interface_name} (IPPool {pool.name}): one address per NIC"
            )
        found[pool.name] = str(address)
    return found


def refuse_requested_ips(request: IpamRequest, ipam_type: str) -> None:
    """ConfigError when the runtime asked for addresses an IPAM type cannot give."""
    if request.requested_ips:
        raise ConfigError(
            f"runtimeConfig.ips ({', '.join(request.requested_ips)}) cannot be honoured with "
            f"ipam type {ipam_type!r}: requested addresses need multi-nic-ipam or multi-config"
        )


class MultiNicIpam:
    """``multi-nic-ipam``: addresses for all selected NICs at once, from this node's IPPools.

    Addresses the pod requested (``runtimeConfig.ips``) are given exactly, each
    on the NIC whose pool contains it; the other NICs get the next free one.
    """

    @hookimpl
    def multinic_ipam_add(self, request: IpamRequest) -> list[dict[str, Any]]:
        try:
            config = MultiNicIpamConfig.model_validate(dict(request.ipam))
        except ValidationError as e:
            raise ConfigError(f"ipam: {describe_validation_error(e)}") from e
        pools: Mapping[str, IPPoolSpec] = request.context.get(CONTEXT_POOLS, {})
        blocks = []
        for nic in request.nics:
            spec = pools.get(nic.name)
            if spec is None:
                raise TryAgainError(
                    f"this node has no IPPool of network {request.network.name!r} for "
                    f"interface {nic.name!r} yet (the operator's plan has not arrived)"
                )
            blocks.append(PoolBlock.from_spec(spec))
        entries = _journal(request).allocate(
            request.network.name,
            request.container_id,
            request.if_name,
            blocks,
            pod=request.pod.name,
            namespace=request.pod.namespace,
            requested=requested_by_pool(request.network.name, request.requested_ips, blocks),
        )
        dns = config.dns.model_dump(mode="json", exclude_defaults=True) if config.dns else {}
        sections: list[dict[str, Any]] = []
        for position, (block, entry) in enumerate(zip(blocks, entries, strict=True)):
            on_link = parse_cidr(block.vlan_cidr)
            # The vlanCIDR's prefix (not the pod block's): pods on the same
            # interface index of every host are then on-link (SPEC 4 step 3).
            section: dict[str, Any] = {
                "type": "static",
                "addresses": [{"address": f"{entry.address}/{on_link.prefixlen}"}],
                "routes": routes_for_nic(config.routes, on_link, first=position == 0),
            }
            if dns:
                section["dns"] = dns
            sections.append(section)
        return sections

    @hookimpl
    def multinic_ipam_del(self, request: IpamRequest) -> bool:
        _journal(request).release(request.network.name, request.container_id, request.if_name)
        return True


def _static_address(value: str, nic: SelectedNic, source: str = "CNI_ARGS IP=") -> dict[str, str]:
    try:
        netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise ConfigError(f"{source}{value!r} for {nic.name} is not ADDRESS/PREFIX") from e
    if "/" not in value:
        raise ConfigError(f"{source}{value!r} for {nic.name} needs a prefix length")
    return {"address": value}


class MultiConfigIpam:
    """``multi-config``: each NIC's delegate runs its own IPAM, configured per NIC.

    ``{"type": "multi-config", "ipam_type": "whereabouts", "args": {"eth1": {...}}}``.
    A NIC's config may name its own ``type`` (``{"eth2": {"type": "static",
    "addresses": [...]}}``), which wins over ``ipam_type``; ``ipam_type`` is
    needed only for NIC configs without one.  Static addresses from CNI_ARGS
    ``IP=`` win, in NIC order; without them the requested ``runtimeConfig.ips``
    (``ADDRESS/PREFIX``), in NIC order too.
    """

    @hookimpl
    def multinic_ipam_add(self, request: IpamRequest) -> list[dict[str, Any]]:
        static_ips = request.static_ips or request.requested_ips
        source = "CNI_ARGS IP=" if request.static_ips else "runtimeConfig.ips "
        if not request.static_ips and len(static_ips) > len(request.nics):
            raise ConfigError(
                f"runtimeConfig.ips has {len(static_ips)} addresses ({', '.join(static_ips)}) "
                f"for {len(request.nics)} NIC(s): at most one per NIC"
            )
        ipam_type = request.ipam.get("ipam_type")
        if ipam_type is not None and (not isinstance(ipam_type, str) or not ipam_type):
            raise ConfigError(f"ipam.ipam_type must name an IPAM plugin, not {ipam_type!r}")
        per_nic = request.ipam.get("args") or {}
        if not isinstance(per_nic, Mapping):
            raise ConfigError(f"ipam.args must map interface names to IPAM configs: {per_nic!r}")
        sections: list[dict[str, Any]] = []
        for position, nic in enumerate(request.nics):
            if position < len(static_ips):
                address = _static_address(static_ips[position], nic, source)
                sections.append({"type": "static", "addresses": [address]})
                continue
            config = per_nic.get(nic.name)
            if not isinstance(config, Mapping):
                raise ConfigError(
                    f"ipam.args has no IPAM config for interface {nic.name!r} "
                    f"(has: {', '.join(sorted(per_nic)) or 'none'})"
                )
            chosen = config.get("type") or ipam_type
            if not isinstance(chosen, str) or not chosen:
                raise ConfigError(
                    f"ipam.args[{nic.name!r}] names no IPAM type and ipam.ipam_type is not set"
                )
            section = {**copy.deepcopy(dict(config)), "type": chosen}
            if chosen == "whereabouts":
                section.setdefault("network_name", nic.name)
            sections.append(section)
        return sections

    @hookimpl
    def multinic_ipam_del(self, request: IpamRequest) -> bool:
        # Each delegate's own IPAM releases its address on the delegate's DEL.
        return True


class HostDeviceIpam:
    """``host-device-ipam``: the pod takes over the device's host address and prefix."""

    @hookimpl
    def multinic_ipam_add(self, request: IpamRequest) -> list[dict[str, Any]]:
        refuse_requested_ips(request, "host-device-ipam")
        sections: list[dict[str, Any]] = []
        for nic in request.nics:
            if not nic.host_ip or not nic.net_address:
                raise ConfigError(
                    f"host-device-ipam: interface {nic.name!r} has no host address "
                    f"(hostIP {nic.host_ip!r}, netAddress {nic.net_address!r})"
                )
            prefix = parse_cidr(nic.net_address).prefixlen
            sections.append(
                {"type": "static", "addresses": [{"address": f"{nic.host_ip}/{prefix}"}]}
            )
        return sections

    @hookimpl
    def multinic_ipam_del(self, request: IpamRequest) -> bool:
        return True


class PassThroughIpam:
    """A single-NIC IPAM (host-local, static, whereabouts, dhcp) given to every NIC unchanged."""

    @hookimpl
    def multinic_ipam_add(self, request: IpamRequest) -> list[dict[str, Any]]:
        refuse_requested_ips(request, str(request.ipam.get("type", "")))
        return [copy.deepcopy(dict(request.ipam)) for _ in request.nics]

    @hookimpl
    def multinic_ipam_del(self, request: IpamRequest) -> bool:
        return True


class StaticIpam:
    """``static``: the reference static IPAM, one address per NIC.

    Passing one ``addresses`` list to every NIC would give each NIC the same
    address; so with several NICs the list must hold one address per NIC, in
    NIC order (each NIC gets its own), and routes and DNS go to every NIC.
    """

    @hookimpl
    def multinic_ipam_add(self, request: IpamRequest) -> list[dict[str, Any]]:
        refuse_requested_ips(request, "static")
        addresses = request.ipam.get("addresses") or []
        if not isinstance(addresses, list):
            raise ConfigError(f"ipam.addresses must be a list, not {addresses!r}")
        if len(request.nics) == 1:
            return [copy.deepcopy(dict(request.ipam))]
        if len(addresses) != len(request.nics):
            raise ConfigError(
                f"static IPAM for {len(request.nics)} NICs "
                f"({', '.join(n.name for n in request.nics)}) needs one address per NIC in "
                f"ipam.addresses, not {len(addresses)}; or use multi-config with a static "
                "config per NIC"
            )
        sections = []
        for address in addresses:
            section = copy.deepcopy(dict(request.ipam))
            section["addresses"] = [copy.deepcopy(address)]
            sections.append(section)
        return sections

    @hookimpl
    def multinic_ipam_del(self, request: IpamRequest) -> bool:
        return True
