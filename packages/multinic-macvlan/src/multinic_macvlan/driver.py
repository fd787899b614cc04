"""The ``macvlan`` main plugin (SPEC section 8).

NAD plugin block: ``{cniVersion, type: macvlan, mode, mtu?, <other args>}``;
delegate per NIC: ``{cniVersion, name, type: macvlan, master: <NIC>, mode, ...,
ipam}``.  ``mode`` is ``bridge`` (default), ``private``, ``vepa`` or ``passthru``.
"""

from __future__ import annotations

from multinic_core.delegates import MasterNicDelegate, PluginArgs, plugin_block
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import NetworkAttachment
from multinic_core.models import MultiNicNetwork

CNI_TYPE = "macvlan"
MACVLAN_MODES = ("bridge", "private", "vepa", "passthru")
DEFAULT_MODE = "bridge"


class MacvlanDriver(MasterNicDelegate):
    """Main plugin ``macvlan`` (entry point in ``multinic.main_plugins``)."""

    @hookimpl
    def multinic_network_attachment(self, network: MultiNicNetwork) -> NetworkAttachment:
        args = PluginArgs.of(network, nic_keys=("master",))
        args.mtu()
        mode = args.choice("mode", MACVLAN_MODES, default=DEFAULT_MODE)
        return NetworkAttachment(plugin=plugin_block(network, CNI_TYPE, args, mode=mode))
