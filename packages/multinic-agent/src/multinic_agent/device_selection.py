"""Device-plugin allocations as the NIC selection (SPEC section 4, ADD step 1).

When Multus passes ``runtimeConfig.deviceID`` (the NAD names a device-plugin
resource and the pod holds devices of it), those PCI devices are the
selection, in allocation order; no attach policy runs.  A device is either
one of the node's NICs itself (host-device) or a virtual function whose
physical function is one (SR-IOV); the NIC decides the IPPool.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from multinic_core.errors import NicMissingError
from multinic_core.hooktypes import SelectedNic
from multinic_core.models import InterfaceInfo
from multinic_core.policies import normalise_pci_address

SYSFS_PCI_DEVICES = Path("/sys/bus/pci/devices")


def physical_function(pci: str, sysfs: Path = SYSFS_PCI_DEVICES) -> str:
    """The PF of virtual function ``pci`` (sysfs ``physfn``); "" when it is not a VF."""
    try:
        target = os.readlink(sysfs / pci / "physfn")
    except OSError:
        return ""
    return normalise_pci_address(os.path.basename(target))


def select_devices(
    device_ids: Sequence[str], nics: Sequence[InterfaceInfo], sysfs: Path = SYSFS_PCI_DEVICES
) -> list[SelectedNic]:
    """One SelectedNic per allocated device, in allocation order.

    Raises NicMissingError naming a device that is neither a NIC of this node
    nor a VF of one.
    """
    by_pci = {normalise_pci_address(n.pci_address): n for n in nics if n.pci_address}
    chosen = []
    for raw in device_ids:
        pci = normalise_pci_address(raw)
        nic = by_pci.get(pci)
        if nic is not None:
            chosen.append(
                SelectedNic(
                    name=nic.interface_name,
                    net_address=nic.net_address,
                    device_id=pci,
                    host_ip=nic.host_ip,
                )
            )
            continue
        parent = by_pci.get(physical_function(pci, sysfs))
        if parent is None:
            known = ", ".join(f"{n.interface_name}={p}" for p, n in by_pci.items()) or "none"
            raise NicMissingError(
                f"allocated device {raw!r} is neither a NIC of this node nor a VF of one "
                f"(NICs with PCI addresses: {known})"
            )
        # A VF has no host address of its own: only the PF's network applies.
        chosen.append(
            SelectedNic(name=parent.interface_name, net_address=parent.net_address, device_id=pci)
        )
    return chosen
