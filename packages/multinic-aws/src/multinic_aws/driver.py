"""The ``aws-ipvlan`` main plugin (SPEC section 8): ipvlan on EC2.

Each pod interface is an ipvlan slave of a host NIC, as with ``ipvlan``, and
its address is made a secondary private IP of the ENI behind that NIC, so
that the VPC delivers the pod's traffic.  Pods take addresses of the host
subnet ("no-subnet" mode: ``spec.subnet`` empty, SPEC section 1).

* NAD plugin block: ``{cniVersion, type: aws-ipvlan, mode, mtu?, region?,
  endpoint_url?, max_attempts?, connect_timeout?, read_timeout?, ...}``.  Its
  ``type`` is this driver's name (the agent finds the driver by it); the
  delegates are the reference ``ipvlan``.
* Delegate per NIC: ``{cniVersion, name, type: ipvlan, master: <NIC>, mode,
  ..., ipam}``; ``mode`` ``l2`` (default), ``l3`` or ``l3s``.
* ADD (``multinic_nics_attached``), NIC by NIC in attach order: the ENI whose
  MAC is the NIC's; the pod's IPv4 addresses (from the delegate's result) are
  refused if another ENI holds them, else assigned with
  ``AssignPrivateIpAddresses`` and ``AllowReassignment=False``.  A failure
  unassigns what this ADD assigned (the NICs before, and the failing NIC's in
  case EC2 applied a call it did not confirm) and raises naming the NIC and
  EC2's answer.
* DEL (``multinic_nics_detached``): ``UnassignPrivateIpAddresses`` of the
  recorded addresses that the recorded ENI still holds; nothing left is fine.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from multinic_aws import host
from multinic_aws.ec2 import Ec2, Ec2Error, Ec2Settings, Eni
from multinic_core.delegates import (
    L3_MODES,
    PluginArgs,
    delegate_config,
    ipam_vlan_mode,
    plugin_block,
)
from multinic_core.errors import ConfigError, MultinicError, TryAgainError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import NetworkAttachment, NicAttachment, SelectedNic
from multinic_core.models import MultiNicNetwork

log = logging.getLogger(__name__)

PLUGIN_TYPE = "aws-ipvlan"
"""The NAD plugin block's ``type``: this driver (there is no ``aws-ipvlan`` binary)."""
CNI_TYPE = "ipvlan"
"""The delegate that attaches each NIC."""
IPVLAN_MODES = ("l2", "l3", "l3s")
DEFAULT_MODE = "l2"


def ipvlan_mode(network: MultiNicNetwork, args: PluginArgs) -> str:
    """The ``mode`` arg, else the ipam's ``vlanMode``, else l2; both L2 or both L3."""
    vlan_mode = ipam_vlan_mode(network)
    mode = args.choice("mode", IPVLAN_MODES, default=vlan_mode or DEFAULT_MODE)
    if vlan_mode and (mode in L3_MODES) != (vlan_mode in L3_MODES):
        raise ConfigError(
            f"MultiNicNetwork {network.name}: {args.field('mode')} {mode!r} disagrees with "
            f"spec.ipam vlanMode {vlan_mode!r}; host routes follow vlanMode, "
            "so set both to the same mode"
        )
    return mode


def ec2_settings(args: PluginArgs) -> Ec2Settings:
    """The EC2 settings of the network's args; ``ConfigError`` naming a bad arg."""
    endpoint = args.text("endpoint_url")
    if endpoint and not endpoint.startswith(("http://", "https://")):
        raise args.error("endpoint_url", "must be an http:// or https:// URL")
    defaults = Ec2Settings()
    attempts = args.integer("max_attempts", minimum=1, maximum=10)
    connect = args.integer("connect_timeout", minimum=1, maximum=60)
    read = args.integer("read_timeout", minimum=1, maximum=120)
    return Ec2Settings(
        region=args.text("region"),
        endpoint_url=endpoint,
        max_attempts=defaults.max_attempts if attempts is None else attempts,
        connect_timeout=defaults.connect_timeout if connect is None else connect,
        read_timeout=defaults.read_timeout if read is None else read,
    )


def ipv4_addresses(attachment: NicAttachment) -> list[str]:
    """The pod interface's IPv4 addresses (no prefix); IPv6 is refused."""
    found = []
    for cidr in attachment.addresses:
        address = ipaddress.ip_interface(cidr).ip
        if address.version != 4:
            raise ConfigError(
                f"aws-ipvlan: NIC {attachment.nic}: pod address {cidr} is IPv6; "
                "only IPv4 secondary private IPs are assigned"
            )
        found.append(str(address))
    return found


@dataclass
class _Assignment:
    """One NIC of an ADD, as far as it got."""

    attachment: NicAttachment
    settings: Ec2Settings | None = None
    eni: Eni | None = None
    addresses: list[str] = field(default_factory=list)
    asked: list[str] = field(default_factory=list)
    """The addresses this ADD asked EC2 to assign (the ENI did not hold them)."""

    @property
    def where(self) -> str:
        eni = f", ENI {self.eni.id}" if self.eni else ""
        return f"NIC {self.attachment.nic} ({self.attachment.ifname}{eni})"

    def state(self) -> dict[str, Any]:
        if self.eni is None:
            return {}
        return {"eni": self.eni.id, "addresses": list(self.addresses)}


class AwsIpvlanDriver:
    """Main plugin ``aws-ipvlan`` (entry point in ``multinic.main_plugins``)."""

    def __init__(self, ec2: Ec2 | None = None) -> None:
        self.ec2 = ec2 or Ec2()

    # ------------------------------------------------------------------ operator

    @hookimpl
    def multinic_network_attachment(self, network: MultiNicNetwork) -> NetworkAttachment:
        args = PluginArgs.of(network, nic_keys=("master",))
        args.mtu()
        mode = ipvlan_mode(network, args)
        ec2_settings(args)
        if network.spec.subnet:
            raise ConfigError(
                f"MultiNicNetwork {network.name}: spec.subnet {network.spec.subnet!r} must be "
                "empty for aws-ipvlan: pods take addresses of the host subnet (no-subnet "
                "mode), the only ones EC2 assigns to the hosts' ENIs"
            )
        return NetworkAttachment(plugin=plugin_block(network, PLUGIN_TYPE, args, mode=mode))

    # ------------------------------------------------------------------ agent: ADD

    @hookimpl
    def multinic_delegate_config(
        self, netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
    ) -> dict[str, Any]:
        config = delegate_config(netconf, ipam, master=nic.name)
        config["type"] = CNI_TYPE
        return config

    @hookimpl
    def multinic_nics_attached(self, attachments: Sequence[NicAttachment]) -> list[dict[str, Any]]:
        done: list[_Assignment] = []
        for attachment in attachments:
            step = _Assignment(attachment)
            try:
                self._assign(step)
            except MultinicError as e:
                outcome = self._roll_back([*done, step])
                raise type(e)(f"aws-ipvlan: {step.where}: {e}; {outcome}") from e
            done.append(step)
        return [step.state() for step in done]

    def _assign(self, step: _Assignment) -> None:
        step.addresses = ipv4_addresses(step.attachment)
        if not step.addresses:
            return
        step.settings = Ec2Settings.from_config(step.attachment.config)
        step.eni = self.ec2.eni_of_mac(step.settings, host.mac_address(step.attachment.nic))
        step.asked = self.ec2.to_assign(step.settings, step.eni, step.addresses)
        self.ec2.assign(step.settings, step.eni, step.asked)

    def _roll_back(self, steps: Sequence[_Assignment]) -> str:
        """Unassign what ``steps`` asked for; says what was rolled back (or could not be)."""
        undone, failed = [], []
        for step in steps:
            if step.eni is None or step.settings is None or not step.asked:
                continue
            try:
                removed = self.ec2.unassign(step.settings, step.eni.id, step.asked)
            except MultinicError as e:
                failed.append(f"{', '.join(step.asked)} on {step.where}: {e}")
                continue
            if removed:
                undone.append(f"{', '.join(removed)} from {step.where}")
        if failed:
            log.error("aws-ipvlan: rollback failed, left assigned: %s", "; ".join(failed))
            return "ROLLBACK FAILED, may be left assigned: " + "; ".join(failed)
        if undone:
            return "unassigned again: " + "; ".join(undone)
        return "nothing was assigned"

    # ------------------------------------------------------------------ agent: DEL

    @hookimpl
    def multinic_nics_detached(self, attachments: Sequence[NicAttachment]) -> bool:
        problems: list[tuple[NicAttachment, MultinicError]] = []
        for attachment in attachments:
            try:
                self._unassign(attachment)
            except MultinicError as e:
                problems.append((attachment, e))
        if problems:
            text = "aws-ipvlan: " + "; ".join(f"NIC {a.nic} ({a.ifname}): {e}" for a, e in problems)
            if all(isinstance(e, TryAgainError) for _, e in problems):
                raise TryAgainError(text)
            raise Ec2Error(text)
        return True

    def _unassign(self, attachment: NicAttachment) -> None:
        settings = Ec2Settings.from_config(attachment.config)
        addresses = [str(a) for a in attachment.state.get("addresses", ())]
        eni_id = str(attachment.state.get("eni", ""))
        if not eni_id:
            # Not recorded (no state): the ENI behind the NIC, if there is anything to do.
            addresses = ipv4_addresses(attachment)
            if not addresses:
                return
            eni_id = self.ec2.eni_of_mac(settings, host.mac_address(attachment.nic)).id
        if addresses:
            self.ec2.unassign(settings, eni_id, addresses)
