"""``roundRobin``: an example third-party attach policy for multinic.

Each new pod on a node starts at the next NIC: the network's NICs (in
masterNets order, or the pod's ``masters``) are rotated by the number of
attachments the node already has.  With ``nics: 1`` consecutive pods land on
eth1, eth2, eth3, eth1, ...; with more NICs per pod the first one still moves.

It reuses the built-in pipeline of ``multinic_core.policies`` (pool, DeviceClass
filter, masters, ``nics`` and the errors that go with them) and only supplies
``rank``.  See this package's README for writing a policy from scratch.
"""

from __future__ import annotations

import logging

from multinic_core.hooktypes import SelectionRequest
from multinic_core.models import InterfaceInfo
from multinic_core.policies import NicSelectionPolicy

__all__ = ["RoundRobinPolicy"]

log = logging.getLogger(__name__)


class RoundRobinPolicy(NicSelectionPolicy):
    """Rotate the NICs by the node's attachment count, so pods take turns."""

    strategy = "roundRobin"

    def rank(self, request: SelectionRequest, pool: list[InterfaceInfo]) -> list[InterfaceInfo]:
        """The pool rotated to start at NIC number (attachments on the node) mod len(pool)."""
        # Counting every attachment of the node (not only of this pool's NICs)
        # keeps the turn moving even when pods pick different masters.
        attachments = sum(request.usage.values())
        start = attachments % len(pool)
        log.debug(
            "roundRobin: %d attachment(s) on the node, starting at %s",
            attachments,
            pool[start].interface_name,
        )
        return pool[start:] + pool[:start]
