"""What the agent knows about its node: its NICs and its IPPools.

:class:`NodeState` is the interface the CNI server reads.  Two sources
implement it:

* :class:`FileNodeState` (now): ``<state dir>/node-state.json``, written by
  tests and by the simulated cluster, re-read when it changes;
* the Kubernetes-backed one (next step): ``HostInterface`` of this node and
  the ``IPPool`` objects labelled ``hostname=<node>``, kept by watches.

``node-state.json``::

    {"nics": [<HostInterface spec.interfaces item>, ...],
     "ippools": [<IPPool spec>, ...],
     "networks": [<MultiNicNetwork object>, ...],
     "deviceClasses": {"<name>": <DeviceClass spec>}}

``networks`` is optional: it gives the attach policy of a network (the NAD
config does not carry it); without it the policy is ``none``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pydantic import ValidationError

from multinic_core.errors import ConfigError
from multinic_core.models import (
    DeviceClassSpec,
    InterfaceInfo,
    IPPoolSpec,
    MultiNicNetwork,
    load_resource,
)

log = logging.getLogger(__name__)

NODE_STATE_FILE = "node-state.json"


class NodeState(Protocol):
    """The node's NICs, pools, networks and device classes, as the CNI server needs them."""

    def nics(self) -> list[InterfaceInfo]:
        """The node's discovered secondary NICs."""
        ...

    def pools_for(self, network: str) -> list[IPPoolSpec]:
        """This node's current IPPools of ``network`` (one per NIC); empty until planned.

        Pools a plan edit retired are not among them (nothing is allocated from them).
        """
        ...

    def all_pools(self) -> list[IPPoolSpec]:
        """Every IPPool of this node, retired ones too (their allocations are live)."""
        ...

    def network(self, name: str) -> MultiNicNetwork | None:
        """The MultiNicNetwork object, when known (attach policy)."""
        ...

    def device_class(self, name: str) -> DeviceClassSpec | None:
        """A DeviceClass spec by name, ``None`` when it does not exist."""
        ...


@dataclass
class _Snapshot:
    nics: list[InterfaceInfo] = field(default_factory=list)
    pools: list[IPPoolSpec] = field(default_factory=list)
    networks: dict[str, MultiNicNetwork] = field(default_factory=dict)
    device_classes: dict[str, DeviceClassSpec] = field(default_factory=dict)


class FileNodeState:
    """NodeState read from ``node-state.json``, reloaded when its mtime changes.

    A file that does not parse keeps the last good state (and logs why), so a
    half-written update never empties the node's pools.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._stamp: tuple[int, int] | None = None
        self._snapshot = _Snapshot()

    def nics(self) -> list[InterfaceInfo]:
        return list(self._current().nics)

    def pools_for(self, network: str) -> list[IPPoolSpec]:
        return [p for p in self._current().pools if p.net_attach_def == network]

    def all_pools(self) -> list[IPPoolSpec]:
        return list(self._current().pools)

    def network(self, name: str) -> MultiNicNetwork | None:
        return self._current().networks.get(name)

    def device_class(self, name: str) -> DeviceClassSpec | None:
        return self._current().device_classes.get(name)

    def _current(self) -> _Snapshot:
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return self._snapshot
        stamp = (info.st_mtime_ns, info.st_size)
        if stamp != self._stamp:
            try:
                self._snapshot = self.parse(self.path.read_text(encoding="utf-8"))
                log.info(
                    "node state %s loaded: %d NICs, %d IPPools",
                    self.path,
                    len(self._snapshot.nics),
                    len(self._snapshot.pools),
                )
            except (OSError, ConfigError) as e:
                log.error("node state %s not loaded, keeping the last one: %s", self.path, e)
            self._stamp = stamp
        return self._snapshot

    @staticmethod
    def parse(text: str) -> _Snapshot:
        """Validate the file's content; raises ConfigError naming the bad entry."""
        try:
            data = json.loads(text)
        except ValueError as e:
            raise ConfigError(f"{NODE_STATE_FILE} is not JSON: {e}") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{NODE_STATE_FILE} must be a JSON object")
        snapshot = _Snapshot()
        try:
            snapshot.nics = [InterfaceInfo.model_validate(n) for n in data.get("nics", [])]
            snapshot.pools = [IPPoolSpec.model_validate(p) for p in data.get("ippools", [])]
            for name, spec in (data.get("deviceClasses") or {}).items():
                snapshot.device_classes[name] = DeviceClassSpec.model_validate(spec)
        except ValidationError as e:
            raise ConfigError(f"{NODE_STATE_FILE}: {e}") from e
        for raw in data.get("networks", []):
            network = load_resource(MultiNicNetwork, raw, f"{NODE_STATE_FILE} networks")
            snapshot.networks[network.name] = network
        return snapshot
