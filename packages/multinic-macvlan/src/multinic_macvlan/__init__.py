"""multinic main plugin ``macvlan``: each pod interface gets its own MAC on a host NIC."""

from __future__ import annotations

from multinic_macvlan.driver import MACVLAN_MODES, MacvlanDriver

__all__ = ["MACVLAN_MODES", "MacvlanDriver"]
