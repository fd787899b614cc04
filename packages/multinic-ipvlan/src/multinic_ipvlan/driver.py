"""The ``ipvlan`` main plugin (SPEC section 8).

NAD plugin block: ``{cniVersion, type: ipvlan, mode, mtu?, <other args>}``;
delegate per NIC: ``{cniVersion, name, type: ipvlan, master: <NIC>, mode, ...,
ipam}``.  ``mode`` is ``l2``, ``l3`` or ``l3s``.  When the args do not name a
mode it follows the ipam's ``vlanMode`` (which decides whether host routes
are programmed), else ``l2``.
"""

from __future__ import annotations

import logging

from multinic_core.delegates import (
    L3_MODES,
    MasterNicDelegate,
    PluginArgs,
    ipam_vlan_mode,
    plugin_block,
)
from multinic_core.errors import ConfigError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import NetworkAttachment
from multinic_core.models import MultiNicNetwork

log = logging.getLogger(__name__)

CNI_TYPE = "ipvlan"
IPVLAN_MODES = ("l2", "l3", "l3s")
DEFAULT_MODE = "l2"


def ipvlan_mode(network: MultiNicNetwork, args: PluginArgs) -> str:
    """The ipvlan mode of ``network``: the ``mode`` arg, else ipam ``vlanMode``, else l2.

    An L2 mode with an L3 ``vlanMode`` (or the reverse) is refused: host
    routes follow ``vlanMode``, so pods on other hosts would be unreachable.
    """
    vlan_mode = ipam_vlan_mode(network)
    mode = args.choice("mode", IPVLAN_MODES, default=vlan_mode or DEFAULT_MODE)
    if vlan_mode and (mode in L3_MODES) != (vlan_mode in L3_MODES):
        raise ConfigError(
            f"MultiNicNetwork {network.name}: {args.field('mode')} {mode!r} disagrees with "
            f"spec.ipam vlanMode {vlan_mode!r}; host routes follow vlanMode, "
            "so set both to the same mode"
        )
    return mode


class IpvlanDriver(MasterNicDelegate):
    """Main plugin ``ipvlan`` (entry point in ``multinic.main_plugins``)."""

    @hookimpl
    def multinic_network_attachment(self, network: MultiNicNetwork) -> NetworkAttachment:
        args = PluginArgs.of(network, nic_keys=("master",))
        args.mtu()
        mode = ipvlan_mode(network, args)
        log.debug("network %s: ipvlan mode %s", network.name, mode)
        return NetworkAttachment(plugin=plugin_block(network, CNI_TYPE, args, mode=mode))
