"""Device allocations from the kubelet's PodResources API, against a real gRPC peer.

The fake kubelet is a ``grpc.server`` serving ``v1.PodResourcesLister/List``
on a unix socket, exactly what the kubelet serves on
``/var/lib/kubelet/pod-resources/kubelet.sock``.  The CNI server tests run the
agent's request handling in-process (as in test_cni_errors.py) and observe
the selection through the error of the first delegate that cannot run.
"""

from __future__ import annotations

import asyncio
import copy
import json
import logging
import shutil
import socket
import tempfile
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest

from multinic_agent.cni_server import CniServer
from multinic_agent.pod_resources import (
    SERVICE,
    ListPodResourcesRequest,
    ListPodResourcesResponse,
    PodResourcesClient,
)
from multinic_core.errors import TryAgainError

from . import conftest
from .conftest import CNI_ENV, SERVER_NETCONF

# (container, resource, device ids, NUMA nodes)
Allocation = tuple[str, str, list[str], list[int]]


@dataclass
class Kubelet:
    """A PodResourcesLister peer: answers List with the pods it is given."""

    socket: Path
    pods: dict[tuple[str, str], list[Allocation]] = field(default_factory=dict)
    failure: grpc.StatusCode | None = None
    calls: int = 0

    def list(self, _request: Any, context: grpc.ServicerContext) -> Any:
        self.calls += 1
        if self.failure is not None:
            context.abort(self.failure, "kubelet is restarting")
        response = ListPodResourcesResponse()
        for (namespace, name), allocations in self.pods.items():
            pod = response.pod_resources.add(name=name, namespace=namespace)
            containers: dict[str, Any] = {}
            for container, resource, ids, numa in allocations:
                if container not in containers:
                    containers[container] = pod.containers.add(name=container)
                devices = containers[container].devices.add(resource_name=resource, device_ids=ids)
                for node in numa:
                    devices.topology.nodes.add(ID=node)
        return response


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # A unix socket path has at most 107 bytes; pytest's tmp_path can be longer.
    path = Path(tempfile.mkdtemp(prefix="podres-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def kubelet(short_dir: Path) -> Iterator[Kubelet]:
    kubelet = Kubelet(short_dir / "kubelet.sock")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    handler = grpc.unary_unary_rpc_method_handler(
        kubelet.list,
        request_deserializer=ListPodResourcesRequest.FromString,
        response_serializer=ListPodResourcesResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler(SERVICE, {"List": handler}),)
    )
    server.add_insecure_port(f"unix://{kubelet.socket}")
    server.start()
    try:
        yield kubelet
    finally:
        server.stop(grace=None).wait()


def sysfs_numa(root: Path, numa: dict[str, int]) -> Path:
    """A /sys/bus/pci/devices with a ``numa_node`` file per device."""
    devices = root / "sys" / "bus" / "pci" / "devices"
    for pci, node in numa.items():
        (devices / pci).mkdir(parents=True)
        (devices / pci / "numa_node").write_text(f"{node}\n")
    return devices


# --------------------------------------------------------------------------- the client


def test_client_returns_the_pods_devices_with_their_numa_nodes(kubelet: Kubelet) -> None:
    kubelet.pods[("team", "trainer")] = [
        ("main", "nvidia.com/gpu", ["GPU-1", "GPU-2"], [1]),
        ("main", "openshift.io/mlnxnics", ["0000:5e:00.2", "0000:3b:00.2"], [0, 1]),
        ("sidecar", "nvidia.com/gpu", ["GPU-3"], []),
    ]
    kubelet.pods[("team", "other")] = [("main", "nvidia.com/gpu", ["GPU-9"], [0])]
    devices = PodResourcesClient(kubelet.socket).pod_devices("team", "trainer")
    assert devices is not None
    assert [
        (a.container, a.resource_name, a.device_ids, a.numa_nodes) for a in devices.allocations
    ] == [
        ("main", "nvidia.com/gpu", ("GPU-1", "GPU-2"), (1,)),
        ("main", "openshift.io/mlnxnics", ("0000:5e:00.2", "0000:3b:00.2"), (0, 1)),
        ("sidecar", "nvidia.com/gpu", ("GPU-3",), ()),
    ]
    assert devices.device_ids(["openshift.io/mlnxnics"]) == ["0000:5e:00.2", "0000:3b:00.2"]
    assert devices.other_device_ids(["openshift.io/mlnxnics"]) == ["GPU-1", "GPU-2", "GPU-3"]
    assert devices.numa_node_of("GPU-2") == 1
    # two NUMA nodes for one allocation say nothing about one device; no sysfs entry either
    assert devices.numa_node_of("0000:5e:00.2") is None
    assert devices.numa_node_of("GPU-9") is None  # another pod's device
    assert kubelet.calls == 1


def test_a_pod_without_devices_has_none(kubelet: Kubelet) -> None:
    devices = PodResourcesClient(kubelet.socket).pod_devices("team", "plain")
    assert devices is not None
    assert devices.allocations == ()
    assert devices.device_ids(["nvidia.com/gpu"]) == []


def test_numa_node_falls_back_to_sysfs_for_pci_addresses(kubelet: Kubelet, tmp_path: Path) -> None:
    sysfs = sysfs_numa(tmp_path, {"0000:af:00.0": 1})
    kubelet.pods[("team", "trainer")] = [("main", "nvidia.com/gpu", ["AF:00.0"], [])]
    devices = PodResourcesClient(kubelet.socket, sysfs=sysfs).pod_devices("team", "trainer")
    assert devices is not None
    assert devices.numa_node_of("AF:00.0") == 1  # short and upper-case: normalised


def test_wire_format_is_the_kubelets() -> None:
    """Bytes laid out by api.proto's field numbers decode to the right fields."""

    def field_bytes(number: int, payload: bytes) -> bytes:
        return bytes([number << 3 | 2, len(payload)]) + payload

    numa = field_bytes(1, b"\x08\x03")  # TopologyInfo.nodes[0] = NUMANode{ID: 3}
    devices = field_bytes(1, b"nvidia.com/gpu") + field_bytes(2, b"GPU-7") + field_bytes(3, numa)
    container = field_bytes(1, b"main") + field_bytes(2, devices)
    pod = field_bytes(1, b"trainer") + field_bytes(2, b"team") + field_bytes(3, container)
    response = ListPodResourcesResponse.FromString(field_bytes(1, pod))
    got = response.pod_resources[0].containers[0].devices[0]
    assert (response.pod_resources[0].namespace, got.resource_name, list(got.device_ids)) == (
        "team",
        "nvidia.com/gpu",
        ["GPU-7"],
    )
    assert got.topology.nodes[0].ID == 3


def test_absent_socket_means_no_allocations_logged_once(
    short_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    client = PodResourcesClient(short_dir / "missing.sock")
    with caplog.at_level(logging.INFO, logger="multinic_agent.pod_resources"):
        assert client.pod_devices("team", "a") is None
        assert client.pod_devices("team", "b") is None
    assert [r.getMessage() for r in caplog.records].count(
        f"no kubelet PodResources socket at {short_dir / 'missing.sock'}: pods get no device "
        "allocations from the kubelet (runtimeConfig.deviceID still applies)"
    ) == 1


def test_a_kubelet_that_does_not_answer_is_try_again(kubelet: Kubelet, short_dir: Path) -> None:
    kubelet.failure = grpc.StatusCode.UNAVAILABLE
    with pytest.raises(TryAgainError, match=r"v1\.PodResourcesLister/List .* UNAVAILABLE"):
        PodResourcesClient(kubelet.socket).pod_devices("team", "a")
    # a socket file nobody listens on (kubelet gone) is the same
    stale = short_dir / "stale.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))
    with pytest.raises(TryAgainError, match=r"stale\.sock"):
        PodResourcesClient(stale, timeout=2).pod_devices("team", "a")


# --------------------------------------------------------------------------- through ADD

NETCONF = SERVER_NETCONF
NICS = [
    {**nic, "pciAddress": pci, "numaNode": numa}
    for nic, pci, numa in zip(conftest.NICS, ("0000:3b:00.0", "0000:5e:00.0"), (0, 1), strict=True)
]
POOLS = [{k: v for k, v in pool.items() if k != "excludes"} for pool in conftest.POOLS]
ENV = {**CNI_ENV, "CNI_ARGS": "K8S_POD_NAMESPACE=team;K8S_POD_NAME=trainer"}


def network(plugin: dict[str, Any], strategy: str = "none") -> dict[str, Any]:
    return {
        "apiVersion": "multinic.fms.io/v1",
        "kind": "MultiNicNetwork",
        "metadata": {"name": "demo"},
        "spec": {
            "subnet": NETCONF["subnet"],
            "ipam": json.dumps(NETCONF["ipam"]),
            "multiNICIPAM": True,
            "masterNets": NETCONF["masterNets"],
            "plugin": plugin,
            "attachPolicy": {"strategy": strategy},
        },
    }


def cni_server(
    state_dir: Path, kubelet_socket: Path, net: dict[str, Any], sysfs: Path
) -> CniServer:
    return conftest.cni_server(
        state_dir,
        {"nics": NICS, "ippools": POOLS, "networks": [net]},
        pod_resources=PodResourcesClient(kubelet_socket, timeout=5, sysfs=sysfs),
    )


def add(server: CniServer, config: dict[str, Any], args: dict[str, Any] | None = None) -> Any:
    config = copy.deepcopy(config)
    if args:
        config["args"] = {"cni": args}
    status, stdout, _ = asyncio.run(server.handle(ENV, json.dumps(config)))
    assert status == 1, stdout  # the delegates cannot run: no such netns
    assert server.journal.attachments() == []  # rolled back
    assert server.records.all() == []
    return json.loads(stdout)


TOPOLOGY = network({"type": "macvlan", "args": {"mode": "bridge"}}, "topology")


@pytest.mark.root
def test_topology_prefers_the_nic_on_the_numa_node_of_the_gpus(
    kubelet: Kubelet, tmp_path: Path
) -> None:
    kubelet.pods[("team", "trainer")] = [("main", "nvidia.com/gpu", ["GPU-1", "GPU-2"], [1])]
    server = cni_server(tmp_path, kubelet.socket, TOPOLOGY, tmp_path)
    error = add(server, NETCONF, {"nics": 1})
    # masterNets order would give eth1; the GPUs are on eth2's NUMA node 1
    assert "delegate macvlan ADD for net1-0 (NIC eth2)" in error["msg"]
    assert kubelet.calls == 1


@pytest.mark.root
def test_topology_reads_sysfs_for_gpus_the_kubelet_gives_no_numa_for(
    kubelet: Kubelet, tmp_path: Path
) -> None:
    kubelet.pods[("team", "trainer")] = [("main", "nvidia.com/gpu", ["0000:af:00.0"], [])]
    sysfs = sysfs_numa(tmp_path, {"0000:af:00.0": 1})
    server = cni_server(tmp_path, kubelet.socket, TOPOLOGY, sysfs)
    assert "(NIC eth2)" in add(server, NETCONF, {"nics": 1})["msg"]


@pytest.mark.root
def test_without_the_socket_topology_keeps_masternets_order(
    short_dir: Path, tmp_path: Path
) -> None:
    server = cni_server(tmp_path, short_dir / "missing.sock", TOPOLOGY, tmp_path)
    assert "delegate macvlan ADD for net1-0 (NIC eth1)" in add(server, NETCONF, {"nics": 1})["msg"]


@pytest.mark.root
def test_a_failing_kubelet_does_not_fail_add_without_a_network_resource(
    kubelet: Kubelet, tmp_path: Path
) -> None:
    kubelet.failure = grpc.StatusCode.UNAVAILABLE
    server = cni_server(tmp_path, kubelet.socket, TOPOLOGY, tmp_path)
    error = add(server, NETCONF, {"nics": 1})
    assert "delegate macvlan ADD for net1-0 (NIC eth1)" in error["msg"]
    assert kubelet.calls == 1


def test_a_device_blind_policy_does_not_ask_the_kubelet(kubelet: Kubelet, tmp_path: Path) -> None:
    kubelet.failure = grpc.StatusCode.UNAVAILABLE
    plain = network({"type": "macvlan", "args": {"mode": "bridge"}})
    server = cni_server(tmp_path, kubelet.socket, plain, tmp_path)
    config = {**NETCONF, "ipam": {**NETCONF["ipam"], "type": "nosuch"}}
    status, stdout, _ = asyncio.run(server.handle(ENV, json.dumps(config)))
    assert (status, json.loads(stdout)["code"]) == (1, 7)  # got as far as the IPAM plugin
    assert kubelet.calls == 0


SRIOV = network({"type": "sriov", "args": {"resourceName": "mlnxnics"}})
SRIOV_NETCONF = {**NETCONF, "plugin": {"cniVersion": "1.0.0", "type": "sriov"}}


def test_network_resource_devices_are_the_selection(kubelet: Kubelet, tmp_path: Path) -> None:
    """The sriov driver names openshift.io/mlnxnics; the pod's device of it picks the NIC.

    Without an allocation the sriov driver refuses eth1 (no VF); with one it
    builds the delegate config and the ADD only fails on the missing sriov
    CNI binary (Debian has none).
    """
    server = cni_server(tmp_path, kubelet.socket, SRIOV, tmp_path)
    error = add(server, SRIOV_NETCONF)
    assert error["code"] == 7
    assert "no SR-IOV VF allocated for NIC 'eth1'" in error["msg"]

    kubelet.pods[("team", "trainer")] = [
        ("main", "nvidia.com/gpu", ["GPU-1"], [0]),
        ("main", "openshift.io/mlnxnics", ["5e:00.0"], [1]),
    ]
    error = add(server, SRIOV_NETCONF)
    assert error["code"] == 999
    assert "delegate plugin 'sriov' not found" in error["msg"]


def test_a_network_resource_device_of_no_nic_is_refused(kubelet: Kubelet, tmp_path: Path) -> None:
    kubelet.pods[("team", "trainer")] = [("main", "openshift.io/mlnxnics", ["0000:99:00.1"], [])]
    server = cni_server(tmp_path, kubelet.socket, SRIOV, tmp_path)
    error = add(server, SRIOV_NETCONF)
    assert error["code"] == 999
    assert "'0000:99:00.1' is neither a NIC of this node nor a VF" in error["msg"]


def test_network_resource_and_no_kubelet_answer_is_try_again(
    kubelet: Kubelet, tmp_path: Path
) -> None:
    kubelet.failure = grpc.StatusCode.UNAVAILABLE
    server = cni_server(tmp_path, kubelet.socket, SRIOV, tmp_path)
    error = add(server, SRIOV_NETCONF)
    assert error["code"] == 11
    assert "needs the pod's openshift.io/mlnxnics devices" in error["msg"]
    assert "UNAVAILABLE" in error["msg"]


def test_runtime_config_device_id_wins_without_asking_the_kubelet(
    kubelet: Kubelet, tmp_path: Path
) -> None:
    kubelet.failure = grpc.StatusCode.UNAVAILABLE
    server = cni_server(tmp_path, kubelet.socket, SRIOV, tmp_path)
    error = add(server, {**SRIOV_NETCONF, "runtimeConfig": {"deviceID": "0000:5e:00.0"}})
    assert "delegate plugin 'sriov' not found" in error["msg"]
    assert kubelet.calls == 0
