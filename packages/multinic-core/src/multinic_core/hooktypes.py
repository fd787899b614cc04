"""The data that crosses the hook boundary between multinic and its plugins.

Everything here is a plain frozen dataclass or a Protocol so that a third-party
plugin depends on nothing but ``multinic-core``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from multinic_core.models import DeviceClassSpec, InterfaceInfo, MultiNicNetwork


class ClusterReader(Protocol):
    """Read access to Kubernetes objects, for drivers that depend on other objects.

    ``get`` returns ``None`` when the object does not exist; any other failure
    raises (so that a transient API error is never mistaken for absence).
    """

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None: ...

    def list(
        self, api_version: str, kind: str, namespace: str | None = None
    ) -> list[dict[str, Any]]: ...


class StaticCluster:
    """A ClusterReader over a fixed set of objects (CLI planning, offline rendering)."""

    def __init__(self, objects: Sequence[Mapping[str, Any]] = ()) -> None:
        self._objects = [dict(o) for o in objects]

    def get(
        self, api_version: str, kind: str, name: str, namespace: str | None = None
    ) -> dict[str, Any] | None:
        for obj in self.list(api_version, kind, namespace):
            if obj.get("metadata", {}).get("name") == name:
                return obj
        return None

    def list(
        self, api_version: str, kind: str, namespace: str | None = None
    ) -> list[dict[str, Any]]:
        return [
            o
            for o in self._objects
            if o.get("apiVersion") == api_version
            and o.get("kind") == kind
            and (namespace is None or o.get("metadata", {}).get("namespace") == namespace)
        ]


@dataclass(frozen=True)
class NetworkAttachment:
    """What a main plugin contributes to a network's NADs (SPEC section 3)."""

    plugin: dict[str, Any]
    """The NAD config's ``plugin`` block (``type`` is the delegate CNI type)."""
    annotations: dict[str, str] = field(default_factory=dict)
    """Extra NAD annotations, e.g. ``k8s.v1.cni.cncf.io/resourceName``."""


@dataclass(frozen=True)
class DependentObject:
    """A Kubernetes object a network needs besides its NADs (e.g. SriovNetwork).

    The operator creates or updates it, labels it as owned by the network, and
    deletes it when the network is deleted or the driver stops returning it.
    """

    body: dict[str, Any]

    @property
    def key(self) -> tuple[str, str, str, str]:
        meta = self.body.get("metadata", {})
        return (
            self.body["apiVersion"],
            self.body["kind"],
            meta.get("namespace", ""),
            meta["name"],
        )


@dataclass(frozen=True)
class PodArgs:
    """Pod-level arguments from the NAD selection annotation's ``cni-args``."""

    nics: int = 0
    masters: tuple[str, ...] = ()
    device_class: str = ""

    @classmethod
    def from_cni_args(cls, args: Mapping[str, Any] | None) -> PodArgs:
        """Parse ``cni-args``; raises ValueError naming the bad key."""
        args = args or {}
        nics = args.get("nics", 0)
        if isinstance(nics, str) and nics.isdigit():
            nics = int(nics)
        if not isinstance(nics, int) or isinstance(nics, bool) or nics < 0:
            raise ValueError(f"cni-args nics must be a non-negative integer, not {nics!r}")
        masters = args.get("masters", [])
        if isinstance(masters, str):
            masters = [m for m in masters.split(",") if m]
        if not isinstance(masters, list) or not all(isinstance(m, str) for m in masters):
            raise ValueError(f"cni-args masters must be a list of interface names, not {masters!r}")
        device_class = args.get("class", "")
        if not isinstance(device_class, str):
            raise ValueError(f"cni-args class must be a string, not {device_class!r}")
        return cls(nics=nics, masters=tuple(masters), device_class=device_class)


@dataclass(frozen=True)
class PodRef:
    name: str = ""
    namespace: str = ""
    uid: str = ""
    annotations: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SelectionRequest:
    """Everything an attach policy may use to choose NICs for one pod."""

    network: MultiNicNetwork
    nics: Sequence[InterfaceInfo]
    """The node's discovered NICs that belong to the network (any order)."""
    pod: PodRef = field(default_factory=PodRef)
    args: PodArgs = field(default_factory=PodArgs)
    device_ids: Sequence[str] = ()
    """PCI addresses allocated to the pod by device plugins (e.g. GPUs), in order."""
    usage: Mapping[str, int] = field(default_factory=dict)
    """Current number of attachments per NIC name on this node (costOpt, perfOpt)."""
    device_classes: Callable[[str], DeviceClassSpec | None] = field(default=lambda _name: None)
    """Look up a DeviceClass spec by name; ``None`` when it does not exist."""
    numa_node_of: Callable[[str], int | None] = field(default=lambda _pci: None)
    """NUMA node of a PCI device (sysfs ``numa_node``), ``None`` when unknown."""


@dataclass(frozen=True)
class SelectedNic:
    """One NIC chosen for a pod, in attach order."""

    name: str
    """Host interface name, the delegate's ``master``."""
    net_address: str = ""
    """The host network of this NIC (which CIDR entry it uses)."""
    device_id: str = ""
    """PCI address of the device handed to the pod (SR-IOV VF, host device)."""
    host_ip: str = ""


@dataclass(frozen=True)
class NicAttachment:
    """One NIC a delegate attached to a pod, as the agent hands it to a main plugin's
    ``multinic_nics_attached`` (ADD) and ``multinic_nics_detached`` (DEL)."""

    network: str
    container_id: str
    ifname: str
    """The pod-side name, ``<CNI_IFNAME>-<i>``."""
    nic: str
    """The host NIC (the delegate's ``master``)."""
    config: Mapping[str, Any]
    """The delegate's CNI config exactly as it was exec'd (every ``plugin`` key)."""
    addresses: tuple[str, ...] = ()
    """The pod interface's addresses from the delegate's result, ``ADDRESS/PREFIX``."""
    device_id: str = ""
    state: Mapping[str, Any] = field(default_factory=dict)
    """What ``multinic_nics_attached`` returned for this NIC (recorded; empty on ADD)."""


@dataclass(frozen=True)
class IpamRequest:
    """An IPAM call for one attachment (all selected NICs at once)."""

    network: MultiNicNetwork
    ipam: Mapping[str, Any]
    """The parsed ``ipam`` section of the NAD config."""
    nics: Sequence[SelectedNic]
    container_id: str
    if_name: str
    pod: PodRef = field(default_factory=PodRef)
    static_ips: Sequence[str] = ()
    """Addresses requested with ``IP=`` in CNI_ARGS, in NIC order."""
    requested_ips: Sequence[str] = ()
    """Addresses the runtime asked for with the CNI ``ips`` capability
    (``runtimeConfig.ips``, from the pod's Multus annotation): ``ADDRESS`` or
    ``ADDRESS/PREFIX``.  A plugin gives exactly these or raises ``ConfigError``
    (never a silent other address)."""
    context: Mapping[str, Any] = field(default_factory=dict)
    """Services of the agent, by name: ``"node"`` (this node's name), ``"pools"``
    (interface name -> ``IPPoolSpec`` of this node for the network, on ADD) and
    ``"allocations"`` (the node's durable allocation journal of multinic-ipam)."""


class InProcessDelegate(Protocol):
    """A delegate CNI plugin run inside the agent instead of exec'd (``multinic_inprocess_delegate``).

    The contract is the exec'd plugin's: :meth:`run` takes the environment
    (``CNI_COMMAND``, ``CNI_NETNS``, ``CNI_IFNAME``, ``CNI_ARGS``...) and the
    config on stdin, and answers ``(exit status, stdout, stderr)`` exactly as
    the binary of the same type would, error JSON and codes included, so the
    agent treats both alike.  It runs in a worker thread of the agent, in the
    agent's network namespace, and must leave that thread there.
    ``multinic_core.inprocess.InProcessPlugin`` implements the CNI plumbing
    around a driver's ``add``/``delete``/``check``.
    """

    def accepts(self, env: Mapping[str, str], config: Mapping[str, Any]) -> bool:
        """Whether this call is one it does exactly as the binary; else the agent execs it.

        Decided from the config (and ``CNI_ARGS``) alone, so ADD, CHECK and DEL
        of one attachment go the same way.
        """
        ...

    def run(self, env: Mapping[str, str], stdin: str) -> tuple[int, str, str]:
        """One CNI call: ``(exit status, stdout, stderr)``; never raises."""
        ...
