"""multinic main plugin ``ptp``: routed pods, a veth pair to the host per NIC."""

from __future__ import annotations

from multinic_ptp.driver import PtpDriver, routed_ipam

__all__ = ["PtpDriver", "routed_ipam"]
