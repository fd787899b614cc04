"""multinic operator: turns MultiNicNetworks into CIDR plans, IPPools, NADs and driver
objects, deploys the agent DaemonSet from the Config, and aggregates status.

The kopf handlers (:mod:`multinic_operator.handlers`) validate and delegate to
plain service objects (:class:`~multinic_operator.reconciler.NetworkReconciler`,
:class:`~multinic_operator.agent.AgentDeployer`) that are testable without kopf.
"""

from __future__ import annotations

__version__ = "0.1.0"
