"""NodeState kept from the Kubernetes API by watches (the agent's cluster mode).

* this node's ``IPPool`` objects (label ``hostname=<node>``): ``pools_for``
  (the current ones) and ``all_pools`` (retired ones too);
* every ``MultiNicNetwork``: ``network`` (its attach policy);
* every ``DeviceClass``: ``device_class``;
* this node's ``HostInterface``: ``nics``.

Reads come from the watch caches, so the CNI server never waits for the API.
Until the first list of a resource succeeded its answers are empty, which the
CNI server turns into "try again" (no IPPool yet).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kubernetes import client

from multinic_agent.kube_api import ResourceWatch
from multinic_core.errors import ConfigError, TryAgainError
from multinic_core.models import (
    POOL_RETIRED_LABEL,
    DeviceClass,
    DeviceClassSpec,
    HostInterface,
    InterfaceInfo,
    IPPool,
    IPPoolSpec,
    MultiNicNetwork,
    Resource,
    load_resource,
)

log = logging.getLogger(__name__)

POOL_HOST_LABEL = "hostname"
R = TypeVar("R", bound=Resource)


class KubeNodeState:
    """The node's NICs, pools, networks and device classes from list+watch caches."""

    def __init__(self, api: client.ApiClient, node: str) -> None:
        self.node = node
        self.pools = ResourceWatch(api, IPPool.plural, label_selector=f"{POOL_HOST_LABEL}={node}")
        self.networks = ResourceWatch(api, MultiNicNetwork.plural)
        self.device_classes = ResourceWatch(api, DeviceClass.plural)
        self.host_interface = ResourceWatch(
            api, HostInterface.plural, field_selector=f"metadata.name={node}"
        )
        self._parsed: dict[tuple[str, str, str], Any] = {}
        self.local_nics: Callable[[], Sequence[InterfaceInfo]] = list
        """Discovery's answer, used until the HostInterface exists (set by the agent)."""

    @property
    def watches(self) -> tuple[ResourceWatch, ...]:
        return (self.pools, self.networks, self.device_classes, self.host_interface)

    def start(self) -> KubeNodeState:
        for watch in self.watches:
            watch.start()
        return self

    def stop(self) -> None:
        for watch in self.watches:
            watch.stop()

    def wait_synced(self, timeout: float) -> bool:
        """Whether every watch listed once within ``timeout`` seconds."""
        return all(w.wait_synced(timeout) for w in self.watches)

    # ------------------------------------------------------------------ NodeState

    def nics(self) -> list[InterfaceInfo]:
        """The HostInterface's NICs; before it exists, what discovery found locally.

        :raises TryAgainError: when neither has answered yet (agent starting).
        """
        found = self._parse(HostInterface, self.host_interface.get(self.node))
        if found is not None:
            return list(found.spec.interfaces)
        local = list(self.local_nics())
        if not local:
            # Right after a (re)start neither discovery nor the watch has answered
            # yet: the NICs are unknown, not absent, so the runtime should retry.
            raise TryAgainError(
                f"node {self.node}: NICs not known yet (no HostInterface {self.node} "
                "and no discovery done)"
            )
        return local

    def pools_for(self, network: str) -> list[IPPoolSpec]:
        pools = []
        for obj in self.pools.items():
            pool = self._parse(IPPool, obj)
            if pool is None or pool.spec.net_attach_def != network:
                continue
            if POOL_RETIRED_LABEL in (obj["metadata"].get("labels") or {}):
                continue
            if pool.spec.host_name != self.node:
                log.warning(
                    "IPPool %s is labelled for node %s but its hostName is %s; not used",
                    pool.name,
                    self.node,
                    pool.spec.host_name,
                )
                continue
            pools.append(pool.spec)
        return sorted(pools, key=lambda p: p.interface_name)

    def all_pools(self) -> list[IPPoolSpec]:
        pools = []
        for obj in self.pools.items():
            pool = self._parse(IPPool, obj)
            if pool is not None and pool.spec.host_name == self.node:
                pools.append(pool.spec)
        return pools

    def network(self, name: str) -> MultiNicNetwork | None:
        return self._parse(MultiNicNetwork, self.networks.get(name))

    def device_class(self, name: str) -> DeviceClassSpec | None:
        found = self._parse(DeviceClass, self.device_classes.get(name))
        return found.spec if found else None

    # ------------------------------------------------------------------ internals

    def _parse(self, cls: type[R], obj: dict[str, Any] | None) -> R | None:
        """The object as a model, parsed once per resourceVersion; None if invalid."""
        if obj is None:
            return None
        meta = obj.get("metadata") or {}
        key = (cls.kind_name, str(meta.get("name")), str(meta.get("resourceVersion")))
        if key in self._parsed:
            cached = self._parsed[key]
            return cached if isinstance(cached, cls) else None
        if len(self._parsed) > 1000:
            self._parsed.clear()
        try:
            model = load_resource(cls, obj)
        except ConfigError as e:
            # Logged once per version of the object; None until it is fixed.
            log.error("ignoring an invalid object: %s", e)
            self._parsed[key] = None
            return None
        self._parsed[key] = model
        return model
