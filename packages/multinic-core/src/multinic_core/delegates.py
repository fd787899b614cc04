"""What every main-plugin driver shares: reading ``spec.plugin.args``, building
the NAD ``plugin`` block, and building the per-NIC delegate CNI config.

Drivers (ipvlan, macvlan, sriov, host-device, ...) call these and add only
what is theirs: mode validation and defaults, device keys, dependent objects.

* ``PluginArgs`` -- ``spec.plugin.args`` with JSON-typed values and readers
  that raise ``ConfigError`` naming ``spec.plugin.args.<key>``.
* ``plugin_block`` -- the NAD config's ``plugin`` block: ``cniVersion``,
  ``type`` = the delegate CNI type, and every user key (SPEC section 3).
* ``delegate_config`` -- one delegate's CNI config at ADD time: ``cniVersion``,
  ``name`` = network name, ``type``, the NIC keys (``master`` or
  ``deviceID``), every other ``plugin`` key untouched, and ``ipam``
  (SPEC section 4, step 3).  Built from parsed JSON, never by editing strings.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from multinic_core.errors import ConfigError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import SelectedNic
from multinic_core.models import VLAN_MODES, MultiNicNetwork

log = logging.getLogger(__name__)

ARGS_FIELD = "spec.plugin.args"

# Keys multinic itself writes into every delegate config; a user arg of the
# same name would be silently overwritten, so it is refused instead.
RESERVED_KEYS = ("cniVersion", "name", "type", "ipam")

# The L3 family of vlanMode / ipvlan mode (host routes are programmed for it).
L3_MODES = frozenset(VLAN_MODES) - {"l2"}


def canonical_json(value: Any) -> Any:
    """``value`` with every nested object's keys sorted (Go's map order).

    Used for everything multinic serialises (NAD config, plugin blocks), so
    that the same input always gives the same bytes and a changed object is
    recognised by comparing strings.
    """
    if isinstance(value, Mapping):
        return {str(k): canonical_json(value[k]) for k in sorted(value, key=str)}
    if isinstance(value, list | tuple):
        return [canonical_json(v) for v in value]
    return value


class PluginArgs:
    """``spec.plugin.args`` of one network, typed, with validating readers.

    Values that parse as JSON numbers, booleans, objects or lists are typed
    (``"9000"`` -> ``9000``); everything else stays a string.  Every reader
    raises ``ConfigError`` naming ``spec.plugin.args.<key>`` and the value.
    """

    def __init__(
        self, raw: Mapping[str, str], values: Mapping[str, Any], network: str = ""
    ) -> None:
        self.raw = dict(raw)
        """The args as the user wrote them (strings)."""
        self.values: dict[str, Any] = dict(values)
        """The args typed; what the NAD plugin block carries."""
        self.network = network

    @classmethod
    def of(cls, network: MultiNicNetwork, nic_keys: Iterable[str] = ()) -> PluginArgs:
        """The typed args of ``network``; refuses keys multinic sets itself.

        :param nic_keys: the keys the driver sets per NIC (``master``,
            ``deviceID``...), refused as args for the same reason.
        """
        plugin = network.spec.plugin
        args = cls(plugin.args, plugin.typed_args(), network.name)
        for key in (*RESERVED_KEYS, *nic_keys):
            if key in args.values:
                raise args.error(
                    key, "is set by multinic for every NIC and cannot be given as an arg"
                )
        return args

    def __contains__(self, key: object) -> bool:
        return key in self.values

    def field(self, key: str) -> str:
        return f"{ARGS_FIELD}.{key}"

    def error(self, key: str, problem: str) -> ConfigError:
        where = f"MultiNicNetwork {self.network}: " if self.network else ""
        return ConfigError(f"{where}{self.field(key)} {self.values.get(key)!r} {problem}")

    def text(self, key: str, default: str = "") -> str:
        """A name-like arg exactly as written (``"1234"`` stays a string); not empty."""
        if key not in self.values:
            return default
        value = self.raw.get(key, "")
        if isinstance(self.values[key], dict | list) or not value.strip():
            raise self.error(key, "must be a non-empty name, not empty or a JSON object")
        return value

    def choice(self, key: str, choices: Collection[str], default: str = "") -> str:
        """A string arg that must be one of ``choices``; ``default`` when absent."""
        if key not in self.values:
            return default
        value = self.values[key]
        if value not in choices:
            raise self.error(key, f"must be one of {', '.join(choices)}")
        return str(value)

    def integer(
        self, key: str, minimum: int | None = None, maximum: int | None = None
    ) -> int | None:
        """An integer arg within ``[minimum, maximum]``; ``None`` when absent."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, int) or isinstance(value, bool):
            raise self.error(key, "must be an integer")
        if minimum is not None and value < minimum:
            raise self.error(key, f"must be at least {minimum}")
        if maximum is not None and value > maximum:
            raise self.error(key, f"must be at most {maximum}")
        return value

    def boolean(self, key: str) -> bool | None:
        """A boolean arg (``"true"``/``"false"``); ``None`` when absent."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, bool):
            raise self.error(key, 'must be "true" or "false"')
        return value

    def string_map(self, key: str) -> dict[str, str] | None:
        """A JSON object of strings, e.g. a node selector; ``None`` when absent."""
        if key not in self.values:
            return None
        value = self.values[key]
        if not isinstance(value, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise self.error(key, 'must be a JSON object of strings, e.g. {"key": "value"}')
        return dict(value)

    def mtu(self) -> int | None:
        """The ``mtu`` arg: 0 (inherit the master's) or 68..65535."""
        value = self.integer("mtu", minimum=0, maximum=65535)
        if value is not None and 0 < value < 68:
            raise self.error("mtu", "must be 0 (inherit) or at least 68")
        return value


def ipam_vlan_mode(network: MultiNicNetwork) -> str:
    """The ``vlanMode`` written in the network's ipam JSON; "" when not written."""
    raw = json.loads(network.spec.ipam)
    mode = raw.get("vlanMode", "") if isinstance(raw, dict) else ""
    if mode and mode not in VLAN_MODES:
        raise ConfigError(
            f"MultiNicNetwork {network.name}: spec.ipam vlanMode {mode!r} "
            f"is not one of {', '.join(VLAN_MODES)}"
        )
    return str(mode)


def plugin_block(
    network: MultiNicNetwork, cni_type: str, args: PluginArgs, **driver_keys: Any
) -> dict[str, Any]:
    """The NAD config's ``plugin`` block for ``network`` (SPEC section 3).

    Called by drivers from ``multinic_network_attachment``.  Holds
    ``cniVersion`` (``spec.plugin.cniVersion``), ``type`` (the delegate CNI
    type), every user arg as typed, ``capabilities`` when any are set, and the
    driver's own keys (defaults such as ``mode``); a user arg of the same name
    is kept as written.  Keys are sorted for a stable serialisation.
    """
    block: dict[str, Any] = {**driver_keys, **args.values}
    if network.spec.plugin.capabilities:
        block["capabilities"] = dict(network.spec.plugin.capabilities)
    block["cniVersion"] = network.spec.plugin.cni_version
    block["type"] = cni_type
    result: dict[str, Any] = canonical_json(block)
    return result


def netconf_field(netconf: Mapping[str, Any], key: str, where: str = "NAD config") -> Any:
    """A required field of the NAD config (or its ``plugin`` block)."""
    value = netconf.get(key)
    if value in (None, "", {}):
        raise ConfigError(f"{where} has no {key!r}; the NAD was not written by multinic")
    return value


def delegate_config(
    netconf: Mapping[str, Any], ipam: Mapping[str, Any], **nic_keys: Any
) -> dict[str, Any]:
    """The CNI config of the delegate that attaches one NIC (SPEC section 4, step 3).

    Called by drivers from ``multinic_delegate_config`` once per selected NIC.

    :param netconf: the NAD config (parsed), with its ``plugin`` block.
    :param ipam: the delegate's ``ipam`` section from the IPAM plugin.
    :param nic_keys: what identifies this NIC to the delegate
        (``master="eth1"``, ``deviceID="0000:3b:02.1"``...); keys whose value
        is ``None`` are left out.
    :returns: ``cniVersion``, ``name`` (the network), ``type``, the NIC keys,
        every other ``plugin`` key exactly as in the NAD, then ``ipam``.
    """
    plugin = netconf_field(netconf, "plugin")
    if not isinstance(plugin, Mapping):
        raise ConfigError(f"NAD config 'plugin' must be an object, not {plugin!r}")
    cni_type = netconf_field(plugin, "type", "NAD config plugin block")
    nic = {k: v for k, v in nic_keys.items() if v is not None}
    config: dict[str, Any] = {
        "cniVersion": plugin.get("cniVersion") or netconf_field(netconf, "cniVersion"),
        "name": netconf_field(netconf, "name"),
        "type": cni_type,
        **nic,
    }
    for key, value in plugin.items():
        if key not in config and key != "ipam":
            config[key] = value
    config["ipam"] = ipam
    # A copy: the agent adds to a delegate's config, and the NAD config it
    # came from is shared by every NIC and every pod.
    config = copy.deepcopy(config)
    log.debug("delegate config for %s on %s built", config["name"], nic)
    return config


class MasterNicDelegate:
    """Base of drivers whose delegate enslaves the host NIC as ``master``.

    ipvlan and macvlan (and their variants) differ only in their NAD plugin
    block; their delegate config is the common one with ``master`` = the NIC.
    """

    @hookimpl
    def multinic_delegate_config(
        self, netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
    ) -> dict[str, Any]:
        return delegate_config(netconf, ipam, master=nic.name)
