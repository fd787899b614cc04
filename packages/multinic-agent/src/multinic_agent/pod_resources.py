"""Device allocations of a pod, from the kubelet's PodResources API (SPEC sections 4 and 6).

The kubelet serves ``v1.PodResourcesLister`` (gRPC) on a unix socket, by
default ``/var/lib/kubelet/pod-resources/kubelet.sock``.  ``List`` returns,
for every pod on the node, the devices that device plugins allocated to each
container: the resource name (``nvidia.com/gpu``, ``openshift.io/mlnxnics``),
the device ids (PCI addresses for NICs and most GPUs) and the NUMA nodes of
the allocation.  ADD uses it twice: the devices of the resource the NAD names
are the NIC selection, and every other device of the pod (GPUs) feeds the
``topology`` attach policy.

The messages are those of ``k8s.io/kubelet/pkg/apis/podresources/v1/api.proto``,
declared here as a ``FileDescriptorProto`` and built into message classes at
import (no generated code, no ``protoc`` at build time).  Field names and
numbers are the proto's; messages the client never reads (memory, DRA) are
declared too so that the descriptor is the kubelet's.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc  # type: ignore[import-untyped]
from google.protobuf import (  # type: ignore[import-untyped]
    descriptor_pb2,
    descriptor_pool,
    message_factory,
)

from multinic_core.errors import TryAgainError
from multinic_core.policies import normalise_pci_address

log = logging.getLogger(__name__)

DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
SERVICE = "v1.PodResourcesLister"
LIST_METHOD = f"/{SERVICE}/List"
DEFAULT_TIMEOUT_S = 10.0
# The kubelet's own podresources client allows 16 MiB; a node with many pods
# exceeds gRPC's 4 MiB default.
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
SYSFS_PCI_DEVICES = Path("/sys/bus/pci/devices")

_STRING = descriptor_pb2.FieldDescriptorProto.TYPE_STRING
_INT64 = descriptor_pb2.FieldDescriptorProto.TYPE_INT64
_UINT64 = descriptor_pb2.FieldDescriptorProto.TYPE_UINT64
_MESSAGE = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED

# (message, [(field, number, type, repeated, message type)]) as in api.proto (v1).
_MESSAGES: list[tuple[str, list[tuple[str, int, int, bool, str]]]] = [
    ("AllocatableResourcesRequest", []),
    (
        "AllocatableResourcesResponse",
        [
            ("devices", 1, _MESSAGE, True, "ContainerDevices"),
            ("cpu_ids", 2, _INT64, True, ""),
            ("memory", 3, _MESSAGE, True, "ContainerMemory"),
        ],
    ),
    ("ListPodResourcesRequest", []),
    ("ListPodResourcesResponse", [("pod_resources", 1, _MESSAGE, True, "PodResources")]),
    (
        "PodResources",
        [
            ("name", 1, _STRING, False, ""),
            ("namespace", 2, _STRING, False, ""),
            ("containers", 3, _MESSAGE, True, "ContainerResources"),
        ],
    ),
    (
        "ContainerResources",
        [
            ("name", 1, _STRING, False, ""),
            ("devices", 2, _MESSAGE, True, "ContainerDevices"),
            ("cpu_ids", 3, _INT64, True, ""),
            ("memory", 4, _MESSAGE, True, "ContainerMemory"),
            ("dynamic_resources", 5, _MESSAGE, True, "DynamicResource"),
        ],
    ),
    (
        "ContainerMemory",
        [
            ("memory_type", 1, _STRING, False, ""),
            ("size", 2, _UINT64, False, ""),
            ("topology", 3, _MESSAGE, False, "TopologyInfo"),
        ],
    ),
    (
        "ContainerDevices",
        [
            ("resource_name", 1, _STRING, False, ""),
            ("device_ids", 2, _STRING, True, ""),
            ("topology", 3, _MESSAGE, False, "TopologyInfo"),
        ],
    ),
    ("TopologyInfo", [("nodes", 1, _MESSAGE, True, "NUMANode")]),
    ("NUMANode", [("ID", 1, _INT64, False, "")]),
    (
        "DynamicResource",
        [
            ("claim_name", 2, _STRING, False, ""),
            ("claim_namespace", 3, _STRING, False, ""),
            ("claim_resources", 4, _MESSAGE, True, "ClaimResource"),
        ],
    ),
    (
        "ClaimResource",
        [
            ("cdi_devices", 1, _MESSAGE, True, "CDIDevice"),
            ("driver_name", 2, _STRING, False, ""),
            ("pool_name", 3, _STRING, False, ""),
            ("device_name", 4, _STRING, False, ""),
        ],
    ),
    ("CDIDevice", [("name", 1, _STRING, False, "")]),
    ("GetPodResourcesRequest", [("pod_name", 1, _STRING, False, ""), ("pod_namespace", 2, _STRING, False, "")]),
    ("GetPodResourcesResponse", [("pod_resources", 1, _MESSAGE, False, "PodResources")]),
]  # fmt: skip
_METHODS = [
    ("List", "ListPodResourcesRequest", "ListPodResourcesResponse"),
    ("GetAllocatableResources", "AllocatableResourcesRequest", "AllocatableResourcesResponse"),
    ("Get", "GetPodResourcesRequest", "GetPodResourcesResponse"),
]


def file_descriptor() -> Any:
    """``api.proto`` of ``k8s.io/kubelet/pkg/apis/podresources/v1`` as a FileDescriptorProto."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="k8s.io/kubelet/pkg/apis/podresources/v1/api.proto", package="v1", syntax="proto3"
    )
    proto.options.go_package = "k8s.io/kubelet/pkg/apis/podresources/v1"
    for message_name, fields in _MESSAGES:
        message = proto.message_type.add(name=message_name)
        for field_name, number, kind, repeated, type_name in fields:
            field = message.field.add(
                name=field_name,
                number=number,
                type=kind,
                label=_REPEATED if repeated else _OPTIONAL,
            )
            if type_name:
                field.type_name = f".v1.{type_name}"
    service = proto.service.add(name="PodResourcesLister")
    for method, request, response in _METHODS:
        service.method.add(name=method, input_type=f".v1.{request}", output_type=f".v1.{response}")
    return proto


# A pool of our own: the default pool may already hold another "v1" package.
_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(file_descriptor())


def message_class(name: str) -> Any:
    """The message class of ``v1.<name>`` (e.g. ``ListPodResourcesResponse``)."""
    return message_factory.GetMessageClass(_POOL.FindMessageTypeByName(f"v1.{name}"))


ListPodResourcesRequest = message_class("ListPodResourcesRequest")
ListPodResourcesResponse = message_class("ListPodResourcesResponse")


def sysfs_numa_node(pci: str, sysfs: Path = SYSFS_PCI_DEVICES) -> int | None:
    """NUMA node of a PCI device from sysfs ``numa_node``; ``None`` when unknown (-1 or absent)."""
    try:
        text = (sysfs / normalise_pci_address(pci) / "numa_node").read_text().strip()
    except OSError:
        return None
    if text.lstrip("-").isdigit() and int(text) >= 0:
        return int(text)
    return None


@dataclass(frozen=True)
class AllocatedDevices:
    """The devices of one resource allocated to one container of a pod."""

    container: str
    resource_name: str
    device_ids: tuple[str, ...]
    numa_nodes: tuple[int, ...] = ()


@dataclass(frozen=True)
class PodDevices:
    """Every device-plugin allocation of one pod, in the kubelet's order."""

    allocations: tuple[AllocatedDevices, ...] = ()
    sysfs: Path = SYSFS_PCI_DEVICES

    def device_ids(self, resources: Iterable[str]) -> list[str]:
        """Ids of the devices of ``resources``, in allocation order, each once."""
        wanted = set(resources)
        return _unique(
            d for a in self.allocations if a.resource_name in wanted for d in a.device_ids
        )

    def other_device_ids(self, resources: Iterable[str]) -> list[str]:
        """Ids of every device not of ``resources`` (the pod's GPUs, ...), each once."""
        skipped = set(resources)
        return _unique(
            d for a in self.allocations if a.resource_name not in skipped for d in a.device_ids
        )

    def numa_node_of(self, device: str) -> int | None:
        """NUMA node of a device: the kubelet's topology when it gives exactly one, else sysfs."""
        key = normalise_pci_address(device)
        for allocation in self.allocations:
            if len(allocation.numa_nodes) != 1:
                # Several nodes for one allocation do not say which device is where.
                continue
            if any(normalise_pci_address(d) == key for d in allocation.device_ids):
                return allocation.numa_nodes[0]
        return sysfs_numa_node(key, self.sysfs)


def _unique(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def pod_devices_of(response: Any, namespace: str, name: str, sysfs: Path) -> PodDevices:
    """The allocations of pod ``namespace/name`` in a ``ListPodResourcesResponse``."""
    allocations = [
        AllocatedDevices(
            container=container.name,
            resource_name=devices.resource_name,
            device_ids=tuple(devices.device_ids),
            numa_nodes=tuple(int(node.ID) for node in devices.topology.nodes),
        )
        for pod in response.pod_resources
        if pod.namespace == namespace and pod.name == name
        for container in pod.containers
        for devices in container.devices
    ]
    return PodDevices(tuple(allocations), sysfs)


class PodResourcesClient:
    """Asks the kubelet which devices a pod holds.

    One connection per question: ADD is rare next to the kubelet's life, and
    a cached channel would outlive a kubelet restart in a broken state.
    """

    def __init__(
        self,
        socket: Path = DEFAULT_SOCKET,
        timeout: float = DEFAULT_TIMEOUT_S,
        sysfs: Path = SYSFS_PCI_DEVICES,
    ) -> None:
        self.socket = socket
        self.timeout = timeout
        self.sysfs = sysfs
        self._absence_logged = False

    def pod_devices(self, namespace: str, name: str) -> PodDevices | None:
        """The pod's allocations; ``None`` when the node has no PodResources socket.

        Raises TryAgainError when the socket exists but the kubelet does not
        answer (restarting, overloaded, refused).
        """
        if not os.path.exists(self.socket):
            if not self._absence_logged:
                log.info(
                    "no kubelet PodResources socket at %s: pods get no device allocations "
                    "from the kubelet (runtimeConfig.deviceID still applies)",
                    self.socket,
                )
                self._absence_logged = True
            return None
        self._absence_logged = False
        response = self._list()
        devices = pod_devices_of(response, namespace, name, self.sysfs)
        log.debug(
            "pod %s/%s holds %s",
            namespace,
            name,
            ", ".join(f"{a.resource_name}={list(a.device_ids)}" for a in devices.allocations)
            or "no devices",
        )
        return devices

    async def pod_devices_async(self, namespace: str, name: str) -> PodDevices | None:
        """:meth:`pod_devices` in a worker thread, so that the event loop keeps serving."""
        return await asyncio.to_thread(self.pod_devices, namespace, name)

    def _list(self) -> Any:
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            # An http_proxy in the agent's environment must not catch a unix socket.
            ("grpc.enable_http_proxy", 0),
        ]
        try:
            with grpc.insecure_channel(f"unix://{self.socket.absolute()}", options) as channel:
                rpc: Callable[..., Any] = channel.unary_unary(
                    LIST_METHOD,
                    request_serializer=ListPodResourcesRequest.SerializeToString,
                    response_deserializer=ListPodResourcesResponse.FromString,
                )
                return rpc(ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            code = e.code() if hasattr(e, "code") else None
            details = e.details() if hasattr(e, "details") else str(e)
            raise TryAgainError(
                f"kubelet PodResources {LIST_METHOD} on {self.socket} failed: "
                f"{getattr(code, 'name', code)}: {details}"
            ) from e


def resource_names(annotation: str) -> tuple[str, ...]:
    """The resources a ``k8s.v1.cni.cncf.io/resourceName`` annotation names (comma-separated)."""
    return tuple(r.strip() for r in annotation.split(",") if r.strip())
