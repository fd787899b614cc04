"""multinic main plugin ``ipvlan``: pods share a host NIC's MAC in l2, l3 or l3s mode."""

from __future__ import annotations

from multinic_ipvlan.driver import IPVLAN_MODES, IpvlanDriver

__all__ = ["IPVLAN_MODES", "IpvlanDriver"]
