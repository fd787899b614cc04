"""The L3 host routes a CIDR plan implies for one host (SPEC section 7).

Pure computation: the agent's route reconciler diffs this list against the
routes it finds in the network's table and applies the difference; the
``multinic routes`` command prints it.  Only networks for which
``MultiNicNetworkSpec.manages_routes`` is true (l3/l3s with multiNICIPAM) get
host routes; that decision belongs to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

from multinic_core.models import CIDRSpec


@dataclass(frozen=True)
class HostRoute:
    """``dst via gateway dev device``: how this host reaches another host's pod block."""

    dst: str
    gateway: str
    device: str

    def __str__(self) -> str:
        return f"{self.dst} via {self.gateway} dev {self.device}"


def host_routes(spec: CIDRSpec, host_name: str) -> list[HostRoute]:
    """The routes host ``host_name`` needs for the plan ``spec``.

    For each interface entry where the host has a block, one route per other
    host D of that entry: ``D.podCIDR via D.hostIP dev <this host's NIC>``.
    Order: entry order, then hostIndex order.  Hosts without a hostIP (e.g. an
    unmanaged node whose NIC has no address) cannot be routed to and are left
    out.  A host that is not in the plan gets no routes.
    """
    routes: list[HostRoute] = []
    for entry in spec.cidr:
        device = next((h.interface_name for h in entry.hosts if h.host_name == host_name), None)
        if device is None:
            continue
        for other in entry.hosts:
            gateway = other.host_ip.partition("/")[0]
            if other.host_name == host_name or not gateway:
                continue
            routes.append(HostRoute(dst=other.pod_cidr, gateway=gateway, device=device))
    return routes
