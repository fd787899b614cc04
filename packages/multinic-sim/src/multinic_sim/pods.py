"""Pods of the simulated cluster, made and removed through the API as a user would.

``pod add`` creates a Pod bound to a simulated host (``spec.nodeName``) with
the network selection annotation ``k8s.v1.cni.cncf.io/networks`` and waits
until the simulated kubelet (:mod:`multinic_sim.kubelet`) has attached it
through the CNI shim and set it Running; ``pod del`` deletes it and waits
until the kubelet has detached it and removed the object; ``pod list`` reads
the pods and Multus' ``k8s.v1.cni.cncf.io/network-status`` annotations.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from multinic_sim.cluster_builder import SimCluster
from multinic_sim.errors import SimError
from multinic_sim.kubelet import (
    NETNS_ANNOTATION,
    NETWORK_STATUS_ANNOTATION,
    NETWORKS_ANNOTATION,
    SANDBOX_FAILED,
    SandboxError,
    parse_networks,
    read_nad,
)

log = logging.getLogger(__name__)

POD_IFNAME = "net1"
CODE_TRY_AGAIN = 11
SIM_IMAGE = "multinic-sim/none"
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")
_CNI_CODE = re.compile(r"CNI error code (\d+)")


@dataclass(frozen=True)
class PodInterface:
    """A secondary interface of a pod, from its network-status annotation."""

    name: str
    ip: str
    mac: str
    network: str
    nic_index: int


@dataclass
class PodView:
    """A pod as the API shows it: where it runs and what it is attached to."""

    name: str
    namespace: str
    node: str
    phase: str
    networks: list[str]
    netns: str
    interfaces: list[PodInterface] = field(default_factory=list)


def interfaces_of(annotations: dict[str, str]) -> list[PodInterface]:
    """The secondary interfaces Multus recorded in ``network-status`` (no default network).

    multinic names a pod's NICs ``<ifname>-<k>``: ``k`` is the NIC index; for
    other plugins the interfaces of one network are counted in order.
    """
    try:
        entries = json.loads(annotations.get(NETWORK_STATUS_ANNOTATION) or "[]")
    except ValueError:
        return []
    found: list[PodInterface] = []
    counted: dict[str, int] = {}
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, dict) or entry.get("default"):
            continue
        network = str(entry.get("name", "")).split("/")[-1]
        ifname = str(entry.get("interface", ""))
        ips = [ip for ip in entry.get("ips") or [] if ":" not in str(ip)] or entry.get("ips") or []
        if not ips:
            continue
        suffix = ifname.rsplit("-", 1)[-1]
        index = int(suffix) if "-" in ifname and suffix.isdigit() else counted.get(network, 0)
        counted[network] = counted.get(network, 0) + 1
        found.append(PodInterface(ifname, str(ips[0]), str(entry.get("mac", "")), network, index))
    return found


def view_of(pod: Any) -> PodView:
    """A :class:`PodView` of a ``V1Pod``."""
    annotations = dict(pod.metadata.annotations or {})
    try:
        selections = parse_networks(annotations.get(NETWORKS_ANNOTATION, ""), "")
    except SandboxError:
        selections = []  # the kubelet reports that one on the pod's events
    return PodView(
        name=pod.metadata.name,
        namespace=pod.metadata.namespace,
        node=pod.spec.node_name or "",
        phase=(pod.status.phase if pod.status else None) or "Pending",
        networks=[s.name for s in selections],
        netns=annotations.get(NETNS_ANNOTATION, ""),
        interfaces=interfaces_of(annotations),
    )


def sandbox_failure(core: Any, pod: Any) -> str | None:
    """The message of the newest FailedCreatePodSandBox Event of ``pod``, if any."""
    mine = core.list_namespaced_event(
        pod.metadata.namespace,
        field_selector=f"involvedObject.uid={pod.metadata.uid},reason={SANDBOX_FAILED}",
    ).items
    if not mine:
        return None
    newest = max(mine, key=lambda e: (e.last_timestamp or e.first_timestamp, e.count or 0))
    return str(newest.message)


def wait_running(
    core: Any,
    namespace: str,
    name: str,
    timeout: float,
    alive: Callable[[], None] | None = None,
) -> Any:
    """Poll until the pod is Running; SimError with the reason when it cannot be.

    A sandbox failure that names a CNI error code other than 11 ("try again":
    the agent not ready yet) fails at once, and so does a pod that ended.
    Anything else (a real kubelet's sandbox errors, an image still pulling)
    is waited out until ``timeout`` and then reported. ``alive`` is called on
    every poll and raises when waiting is pointless (a daemon died).
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None:
            alive()
        pod = core.read_namespaced_pod(name, namespace)
        phase = pod.status.phase if pod.status is not None else None
        if phase == "Running":
            return pod
        if phase in ("Succeeded", "Failed"):
            raise SimError(f"pod {namespace}/{name} ended ({phase}){_waiting_reason(pod)}")
        failure = sandbox_failure(core, pod)
        code = _CNI_CODE.search(failure or "")
        if failure and code is not None and int(code.group(1)) != CODE_TRY_AGAIN:
            raise SimError(f"pod {namespace}/{name} did not start: {failure}")
        if time.monotonic() > deadline:
            raise SimError(
                f"pod {namespace}/{name} not running after {timeout:.0f}s"
                + (f": {failure}" if failure else _waiting_reason(pod) or " (no kubelet runs it?)")
            )
        time.sleep(0.1 if time.monotonic() - deadline + timeout < 10 else 1.0)


def _waiting_reason(pod: Any) -> str:
    """``: <reason> <message>`` of the first container not running, if it says why."""
    statuses = (pod.status.container_statuses if pod.status is not None else None) or []
    for status in statuses:
        state = status.state
        detail = state and (state.waiting or state.terminated)
        if detail is not None and (detail.reason or detail.message):
            return f": {detail.reason or ''} {detail.message or ''}".rstrip()
    return ""


def delete_and_wait(core: Any, namespace: str, name: str, timeout: float, **options: Any) -> None:
    """Delete the pod and wait until the object is gone (its kubelet has detached it)."""
    from kubernetes.client import ApiException  # noqa: PLC0415

    try:
        core.delete_namespaced_pod(name, namespace, **options)
    except ApiException as e:
        if e.status == 404:
            return
        raise
    deadline = time.monotonic() + timeout
    while True:
        try:
            core.read_namespaced_pod(name, namespace)
        except ApiException as e:
            if e.status == 404:
                return
            raise
        if time.monotonic() > deadline:
            raise SimError(f"pod {namespace}/{name} still terminating after {timeout:.0f}s")
        time.sleep(0.1)


class PodRuntime:
    """Adds, deletes and lists the pods of one simulated cluster."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster

    def list(self) -> list[PodView]:
        """Pods on the simulated hosts (every namespace), by namespace and name."""
        from kubernetes import client  # noqa: PLC0415

        nodes = {self.cluster.layout.host_name(h) for h in self.cluster.hosts}
        with self.cluster.api() as api:
            pods: Any = client.CoreV1Api(api).list_pod_for_all_namespaces().items
        views = [view_of(p) for p in pods if p.spec.node_name in nodes]
        return sorted(views, key=lambda v: (v.namespace, v.name))

    def add(
        self,
        name: str,
        host: str,
        network: str,
        *,
        nics: int | None = None,
        namespace: str = "default",
        timeout: float = 60.0,
    ) -> PodView:
        """Create the pod and wait until it runs; on failure the pod is deleted again."""
        from kubernetes import client  # noqa: PLC0415
        from kubernetes.client import ApiException  # noqa: PLC0415

        if not _POD_NAME.match(name):
            raise SimError(f"pod name {name!r}: 1-32 lowercase letters, digits and '-'")
        # A dead kubelet or agent would only show as a timeout.
        self.cluster.check_daemons()
        if nics is not None and nics < 1:
            raise SimError(f"--nics must be at least 1, not {nics}")
        node = self.cluster.layout.host_name(self.cluster.host_index(host))
        selection: dict[str, Any] = {"name": network}
        if nics is not None:
            selection["cni-args"] = {"nics": nics}
        with self.cluster.api() as api:
            core: Any = client.CoreV1Api(api)
            if read_nad(api, namespace, network) is None:
                raise SimError(
                    f"no NetworkAttachmentDefinition {namespace}/{network}: is the "
                    f"MultiNicNetwork {network!r} applied and does it target {namespace}?"
                )
            try:
                core.create_namespaced_pod(
                    namespace,
                    {
                        "metadata": {
                            "name": name,
                            "annotations": {NETWORKS_ANNOTATION: json.dumps([selection])},
                        },
                        "spec": {
                            "nodeName": node,
                            "containers": [{"name": "main", "image": SIM_IMAGE}],
                        },
                    },
                )
            except ApiException as e:
                if e.status == 409:
                    raise SimError(f"pod {namespace}/{name} already exists") from e
                raise
            try:
                pod = wait_running(core, namespace, name, timeout, self.cluster.check_daemons)
            except BaseException:
                delete_and_wait(core, namespace, name, timeout)
                raise
        log.info("pod %s/%s on %s attached to %s", namespace, name, node, network)
        return view_of(pod)

    def delete(self, name: str, namespace: str = "default", timeout: float = 60.0) -> None:
        """Delete the pod; returns once the kubelet has detached it (CNI DEL) and it is gone."""
        from kubernetes import client  # noqa: PLC0415
        from kubernetes.client import ApiException  # noqa: PLC0415

        with self.cluster.api() as api:
            core: Any = client.CoreV1Api(api)
            try:
                core.read_namespaced_pod(name, namespace)
            except ApiException as e:
                if e.status == 404:
                    raise SimError(
                        f"no pod {namespace}/{name} (see `multinic-sim pod list`)"
                    ) from e
                raise
            delete_and_wait(core, namespace, name, timeout)
        log.info("pod %s/%s deleted", namespace, name)
