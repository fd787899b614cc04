"""Device-plugin allocations become the selection: NICs by PCI address, VFs by their PF."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from multinic_agent.device_selection import select_devices
from multinic_core.errors import SelectionError
from multinic_core.models import InterfaceInfo

NICS = [
    InterfaceInfo.model_validate(
        {"interfaceName": "ens1f0", "netAddress": "10.0.1.0/24", "hostIP": "10.0.1.11",
         "pciAddress": "0000:3b:00.0"}
    ),
    InterfaceInfo.model_validate(
        {"interfaceName": "ens2f0", "netAddress": "10.0.2.0/24", "hostIP": "10.0.2.11",
         "pciAddress": "0000:5e:00.0"}
    ),
]  # fmt: skip


def sysfs_with_vf(root: Path, vf: str, pf: str) -> Path:
    """The layout of /sys/bus/pci/devices: each VF has a ``physfn`` link to its PF."""
    devices = root / "bus" / "pci" / "devices"
    (devices / pf).mkdir(parents=True)
    (devices / vf).mkdir(parents=True)
    os.symlink(f"../{pf}", devices / vf / "physfn")
    return devices


def test_devices_in_allocation_order(tmp_path: Path) -> None:
    sysfs = sysfs_with_vf(tmp_path, "0000:3b:02.1", "0000:3b:00.0")
    chosen = select_devices(["5e:00.0", "0000:3B:02.1"], NICS, sysfs)
    assert [(n.name, n.device_id, n.host_ip) for n in chosen] == [
        ("ens2f0", "0000:5e:00.0", "10.0.2.11"),
        ("ens1f0", "0000:3b:02.1", ""),  # a VF: the PF's network, no host address
    ]


def test_a_device_of_no_nic_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SelectionError, match=r"'0000:af:00\.0' is neither a NIC"):
        select_devices(["0000:af:00.0"], NICS, tmp_path)
