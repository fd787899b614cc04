"""The ``ptp`` main plugin: routed (L3) pods on any kernel.

Each selected NIC gives the pod one veth pair made by the reference ``ptp``
CNI plugin: the pod side carries the pod's address, the host side stays in
the host's namespace.  Nothing is enslaved to the host NIC; the NIC's role is
the L3 one of SPEC section 7:

* in the pod (ptp): ``<gateway>/32 dev net1-i scope link`` and the NIC's
  ``vlanCIDR`` (the prefix of the address multi-nic-ipam gives) ``via
  <gateway>``.  The gateway is the host's own address on that NIC, so every
  NIC of a pod has a gateway of its own (two NICs never want the same
  on-link route) and the pod reaches the host itself as well;
* on the host (ptp): the gateway as a /32 (/128) on the host-side veth, the
  pod's /32 (/128) route to it in the main table, and IP forwarding on (ptp
  enables it at ADD for each address family it configures);
* between hosts (the agent's route sync): the network's table with
  ``D.podCIDR via D.hostIP dev <NIC>`` and ``ip rule from <subnet> lookup
  <table>``.  A packet for a pod of this host finds no route in that table
  and falls through to the main table's /32.

So the driver accepts only networks whose host routes are managed
(``multiNICIPAM`` with multi-nic-ipam in ``vlanMode`` l3 or l3s, and a
``subnet``) and refuses what ptp cannot carry: ipam ``routes`` (their
gateways would have to be on-link, and a routed pod's only neighbour is its
host), and NICs whose family differs from the subnet's.

NAD plugin block: ``{cniVersion, type: ptp, ipMasq: false, mtu?, <other args>}``;
delegate per NIC: ``{cniVersion, name, type: ptp, ipMasq, ..., ipam: {type:
static, addresses: [{address, gateway: <host IP of the NIC>}], routes: []}}``.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Mapping
from typing import Any

import netaddr

from multinic_core.delegates import PluginArgs, delegate_config, plugin_block
from multinic_core.errors import ConfigError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import NetworkAttachment, SelectedNic
from multinic_core.models import L3_VLAN_MODES, MultiNicNetwork, parse_cidr

log = logging.getLogger(__name__)

CNI_TYPE = "ptp"
ROUTED = f"plugin {CNI_TYPE} routes every pod through its host"


def _routed_network_problem(network: MultiNicNetwork) -> str:
    """Why ``network`` cannot be a ptp network; "" when it can."""
    spec = network.spec
    ipam = spec.multi_nic_ipam_config
    if ipam is None:
        return (
            f"{ROUTED}: spec.ipam must be multi-nic-ipam (type "
            f"{spec.ipam_config.type!r} has no CIDR plan, so no host routes)"
        )
    if not spec.multi_nic_ipam:
        return f"{ROUTED}: spec.multiNICIPAM must be true (host routes are managed only then)"
    if ipam.vlan_mode not in L3_VLAN_MODES:
        return (
            f"{ROUTED}: spec.ipam vlanMode must be l3 or l3s (host routes), not {ipam.vlan_mode!r}"
        )
    if not spec.subnet:
        return (
            f"{ROUTED}: spec.subnet is required (no-subnet mode carves pod blocks out of the "
            "host network, and only an 'ip rule from <subnet>' sends them to the host routes)"
        )
    if ipam.routes:
        return (
            f"{ROUTED}: spec.ipam routes are not supported (a routed pod's only neighbour is "
            "its host; route further destinations on the hosts)"
        )
    subnet = parse_cidr(spec.subnet)
    for master in spec.master_nets:
        net = parse_cidr(master)
        if net.version != subnet.version:
            return (
                f"{ROUTED}: masterNets entry {master} is IPv{net.version} but spec.subnet "
                f"{spec.subnet} is IPv{subnet.version}; the pods' gateway and the host routes' "
                "next hops are the hosts' addresses on those NICs, so they must be of the "
                "subnet's family (a network has one family: one network per family)"
            )
    return ""


def _gateway(nic: SelectedNic) -> netaddr.IPAddress:
    """The NIC's host address: the gateway of the pod interface on that NIC."""
    address = nic.host_ip.partition("/")[0]
    if not address:
        raise ConfigError(
            f"{ROUTED}: host NIC {nic.name} has no address (hostIP), so it can be neither the "
            "pod's gateway nor a host route's next hop"
        )
    try:
        return netaddr.IPAddress(address)
    except (netaddr.AddrFormatError, ValueError) as e:
        raise ConfigError(f"{ROUTED}: host NIC {nic.name} hostIP {address!r}: {e}") from e


def routed_ipam(nic: SelectedNic, ipam: Mapping[str, Any]) -> dict[str, Any]:
    """The static IPAM section of one NIC with every address's ``gateway`` set.

    ptp needs a gateway per address: it puts it on the host-side veth and
    routes the address's prefix (the NIC's vlanCIDR) through it.  The gateway
    is the host's address on ``nic``, of the same family as the address.
    """
    if ipam.get("type") != "static" or not isinstance(ipam.get("addresses"), list):
        raise ConfigError(
            f"{ROUTED}: the NIC's ipam must be static addresses from multi-nic-ipam, "
            f"not {ipam.get('type')!r}"
        )
    if ipam.get("routes"):
        raise ConfigError(
            f"{ROUTED}: ipam routes {ipam['routes']!r} are not supported (a routed pod's only "
            "neighbour is its host)"
        )
    gateway = _gateway(nic)
    section = copy.deepcopy(dict(ipam))
    for entry in section["addresses"]:
        address = netaddr.IPNetwork(str(entry.get("address", "")))
        if address.version != gateway.version:
            raise ConfigError(
                f"{ROUTED}: pod address {entry['address']} is IPv{address.version} but host NIC "
                f"{nic.name}'s address {gateway} is IPv{gateway.version}; the gateway must be "
                "of the address's family"
            )
        entry["gateway"] = str(gateway)
    return section


class PtpDriver:
    """Main plugin ``ptp`` (entry point in ``multinic.main_plugins``)."""

    @hookimpl
    def multinic_network_attachment(self, network: MultiNicNetwork) -> NetworkAttachment:
        args = PluginArgs.of(network)
        if "master" in args:
            raise args.error(
                "master",
                "is not a ptp key: the pod side is a veth pair to the host, and which host NIC "
                "a pod's traffic uses is the attach policy's choice (masterNets, cni-args masters)",
            )
        args.mtu()
        masquerade = args.boolean("ipMasq")
        problem = _routed_network_problem(network)
        if problem:
            raise ConfigError(f"MultiNicNetwork {network.name}: {problem}")
        log.debug("network %s: ptp, ipMasq %s", network.name, bool(masquerade))
        return NetworkAttachment(plugin=plugin_block(network, CNI_TYPE, args, ipMasq=False))

    @hookimpl
    def multinic_delegate_config(
        self, netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
    ) -> dict[str, Any]:
        # No ``master``: ptp makes its own veth pair; the NIC is the gateway.
        return delegate_config(netconf, routed_ipam(nic, ipam))
