"""multinic main plugins for NICs a device plugin allocates to the pod.

* ``sriov`` -- SR-IOV virtual functions through the SR-IOV Network Operator.
* ``host-device`` (alias ``mellanox``) -- whole devices advertised by the
  NVIDIA Network Operator's SR-IOV device plugin (``NicClusterPolicy``).
"""

from __future__ import annotations

from multinic_sriov.driver import HostDeviceDriver, SriovDriver

__all__ = ["HostDeviceDriver", "SriovDriver"]
