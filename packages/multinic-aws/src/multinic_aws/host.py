"""What ``aws-ipvlan`` reads of the host: a NIC's MAC address (how its ENI is found)."""

from __future__ import annotations

from pathlib import Path

from multinic_core.errors import MultinicError

SYSFS_NET = Path("/sys/class/net")
"""Where the host's NICs are listed (the agent runs in the host's network namespace)."""


def mac_address(nic: str) -> str:
    """The MAC address of host NIC ``nic``, lower case; raises naming the NIC."""
    path = SYSFS_NET / nic / "address"
    try:
        mac = path.read_text(encoding="ascii").strip().lower()
    except OSError as e:
        raise MultinicError(
            f"host NIC {nic}: its MAC address is unreadable ({path}: {e.strerror})"
        ) from e
    if not mac:
        raise MultinicError(f"host NIC {nic} has no MAC address ({path} is empty)")
    return mac
