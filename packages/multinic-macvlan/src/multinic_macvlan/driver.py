"""The ``macvlan`` main plugin (SPEC section 8).

NAD plugin block: ``{cniVersion, type: macvlan, mode, mtu?, <other args>}``;
delegate per NIC: ``{cniVersion, name, type: macvlan, master: <NIC>, mode, ...,
ipam}``.  ``mode`` is ``bridge`` (default), ``private``, ``vepa`` or ``passthru``.

The agent runs the ``macvlan`` delegate in process (``multinic_inprocess_delegate``,
:mod:`multinic_macvlan.inprocess`) unless told ``--exec-delegates``.
"""

from __future__ import annotations

from multinic_core.delegates import MasterNicDelegate, PluginArgs, plugin_block
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import InProcessDelegate, NetworkAttachment
from multinic_core.models import MultiNicNetwork
from multinic_macvlan.inprocess import MacvlanInProcess

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

    @hookimpl
    def multinic_inprocess_delegate(self, plugin_type: str) -> InProcessDelegate | None:
        """The reference ``macvlan`` plugin (with static IPAM) done in the agent's process."""
        return MacvlanInProcess() if plugin_type == CNI_TYPE else None
