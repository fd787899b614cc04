"""``multinic-sim host add`` / ``host remove``: hosts joining and leaving a running cluster.

A join is what a new node of a real cluster goes through: its namespace is
plugged into every NIC rail of the fabric, the API server becomes reachable
on its loopback (a forwarder bound inside the namespace: the API server was
told its namespaces when it started), its Node object is created, its agent
starts (discovers the NICs, writes the HostInterface), and the kubelet is told
to run its pods. The operator then plans the host's blocks and the other
hosts' agents add their routes to them.

A leave drains the host (its pods deleted through the API, so the kubelet runs
CNI DEL and their addresses are released), stops its agent, deletes its Node
(the operator deletes its HostInterface, replans without it and the other
agents remove its routes), and unplugs and deletes its namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from multinic_sim import fabric
from multinic_sim.cluster_builder import (
    MULTINIC_GROUP,
    MULTINIC_VERSION,
    SimCluster,
    accepts,
    create_node,
    start_agent,
    write_host_kubeconfig,
)
from multinic_sim.errors import SimError
from multinic_sim.processes import owned_by, program, start_daemon, stop_processes
from multinic_sim.progress import ProgressLog

log = logging.getLogger(__name__)


def agent_name(cluster: SimCluster, host: int) -> str:
    return f"agent-{cluster.layout.host_name(host)}"


def forwarder_name(cluster: SimCluster, host: int) -> str:
    return f"api-forward-{cluster.layout.host_name(host)}"


def add_host(state_dir: Path, progress: ProgressLog, timeout: float) -> int:
    """Join one host (the lowest free index); returns its index. On failure it is removed."""
    cluster = SimCluster.load(state_dir)
    cluster.check_daemons()
    free = sorted(cluster.removed)
    host = free[0] if free else cluster.layout.hosts
    if host >= fabric.MAX_HOSTS:
        raise SimError(f"the simulated cluster has its maximum of {fabric.MAX_HOSTS} hosts")
    if host == cluster.layout.hosts:
        cluster.layout = replace(cluster.layout, hosts=host + 1)
    else:
        cluster.removed.remove(host)
    name = cluster.layout.host_name(host)
    cluster.save()  # first: `down` must find what follows even if this process dies
    try:
        _join(cluster, host, progress, timeout)
    except BaseException:
        progress.say(f"{name} did not join: removing it again")
        _leave(SimCluster.load(state_dir), host, ProgressLog(quiet=True), timeout, drain=False)
        raise
    return host


def _join(cluster: SimCluster, host: int, progress: ProgressLog, timeout: float) -> None:
    layout, name = cluster.layout, cluster.layout.host_name(host)
    with progress.step(f"plugging {name} ({layout.host_netns(host)}) into {layout.nics} NIC rails"):
        fabric.add_host(layout, host)
    with progress.step(f"starting the API server forwarder in {layout.host_netns(host)}"):
        cluster.pids[forwarder_name(cluster, host)] = start_daemon(
            [
                program("multinic-sim"),
                "api-forward",
                "--state-dir",
                str(cluster.state_dir),
                "--netns",
                layout.host_netns(host),
            ],
            cluster.logs_dir / f"{forwarder_name(cluster, host)}.log",
        )
        cluster.save()
        write_host_kubeconfig(cluster, host)
    _wait(progress, f"the API server on {name}'s loopback", timeout, cluster,
          lambda: _forwarding(cluster, host))  # fmt: skip
    with progress.step(f"Node {name}"), cluster.api() as api:
        from kubernetes import client  # noqa: PLC0415

        create_node(client.CoreV1Api(api), cluster, host)
    with progress.step(f"starting {name}'s agent"):
        start_agent(cluster, host)
        cluster.save()
    _wait(progress, f"{name}'s agent serving its CNI socket", timeout, cluster,
          lambda: accepts(cluster.agent_socket(host)))  # fmt: skip
    _wait(progress, f"{name}'s HostInterface", timeout, cluster,
          lambda: _host_interface(cluster, name) is not None)  # fmt: skip
    _signal_kubelet(cluster)
    _wait(progress, f"the kubelet serving {name}", timeout, cluster,
          lambda: _kubelet_port(cluster, name) > 0)  # fmt: skip


def remove_host(state_dir: Path, node: str, progress: ProgressLog, timeout: float) -> int:
    """Drain and remove one host; returns its index."""
    cluster = SimCluster.load(state_dir)
    host = cluster.host_index(node)
    if len(cluster.hosts) == 1:
        raise SimError(f"{node} is the cluster's last host: use `multinic-sim down`")
    _leave(cluster, host, progress, timeout, drain=True)
    return host


def _leave(
    cluster: SimCluster, host: int, progress: ProgressLog, timeout: float, *, drain: bool
) -> None:
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client import ApiException  # noqa: PLC0415

    from multinic_sim.pods import delete_and_wait  # noqa: PLC0415

    layout, name = cluster.layout, cluster.layout.host_name(host)
    if drain:
        with cluster.api() as api:
            core: Any = client.CoreV1Api(api)
            pods = core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={name}").items
            for pod in pods:
                ref = f"{pod.metadata.namespace}/{pod.metadata.name}"
                with progress.step(f"draining {name}: pod {ref}"):
                    delete_and_wait(core, pod.metadata.namespace, pod.metadata.name, timeout)
    agent = cluster.pids.pop(agent_name(cluster, host), None)
    if agent is not None and owned_by(agent, cluster.state_dir):
        with progress.step(f"stopping {name}'s agent"):
            stop_processes([agent])
    cluster.save()
    with (
        progress.step(f"deleting Node {name}"),
        cluster.api() as api,
        contextlib.suppress(ApiException),  # 404: never made, or already gone
    ):
        client.CoreV1Api(api).delete_node(name)
    if drain:
        # The operator deletes the HostInterface of a Node it saw go, then replans.
        _wait(progress, f"the operator removing {name}'s HostInterface", timeout, cluster,
              lambda: _host_interface(cluster, name) is None)  # fmt: skip
    forwarder = cluster.pids.pop(forwarder_name(cluster, host), None)
    if forwarder is not None and owned_by(forwarder, cluster.state_dir):
        stop_processes([forwarder])
    with progress.step(f"unplugging {name} and deleting {layout.host_netns(host)}"):
        fabric.remove_host(layout, host)
    if host not in cluster.removed:
        cluster.removed.append(host)
    cluster.save()
    _signal_kubelet(cluster)


# -- probes -------------------------------------------------------------------------


def _wait(
    progress: ProgressLog, what: str, timeout: float, cluster: SimCluster, ready: Any
) -> None:
    def probe() -> tuple[int, int]:
        cluster.check_daemons()
        return int(bool(ready())), 1

    progress.wait(what, probe, timeout)


def _host_interface(cluster: SimCluster, name: str) -> Any:
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client import ApiException  # noqa: PLC0415

    with cluster.api() as api:
        try:
            return client.CustomObjectsApi(api).get_cluster_custom_object(
                MULTINIC_GROUP, MULTINIC_VERSION, "hostinterfaces", name
            )
        except ApiException as e:
            if e.status == 404:
                return None
            raise


def _kubelet_port(cluster: SimCluster, name: str) -> int:
    from kubernetes import client  # noqa: PLC0415

    with cluster.api() as api:
        node: Any = client.CoreV1Api(api).read_node(name)
    endpoints = node.status.daemon_endpoints
    return int(endpoints.kubelet_endpoint.port) if endpoints else 0


def _forwarding(cluster: SimCluster, host: int) -> bool:
    """A TCP connect to the API server's port inside the host's namespace succeeds."""
    from multinic_sim.server import connects_in_netns  # noqa: PLC0415

    port = urlsplit(cluster.server_url).port or 443
    return connects_in_netns(cluster.layout.host_netns(host), "127.0.0.1", port)


def _signal_kubelet(cluster: SimCluster) -> None:
    pid = cluster.pids.get("kubelet")
    if pid is not None and owned_by(pid, cluster.state_dir):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGHUP)


# -- the forwarder --------------------------------------------------------------------


def run_forwarder(state_dir: Path, netns: str) -> int:
    """``multinic-sim api-forward``: the API server's port, inside ``netns``, until SIGTERM."""
    cluster = SimCluster.load(state_dir)
    port = urlsplit(cluster.server_url).port
    if port is None:
        raise SimError(f"the cluster record has no API server port ({cluster.server_url!r})")
    asyncio.run(_forward(netns, port))
    return 0


async def _forward(netns: str, port: int) -> None:
    from multinic_sim.realapi import splice  # noqa: PLC0415
    from multinic_sim.server import bind_in_netns  # noqa: PLC0415

    loop = asyncio.get_running_loop()
    sock = await loop.run_in_executor(None, bind_in_netns, netns, "127.0.0.1", port)

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            upstream = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            log.warning("cannot reach the API server on 127.0.0.1:%d: %s", port, e)
            writer.close()
            return
        await splice((reader, writer), upstream)

    server = await asyncio.start_server(forward, sock=sock, backlog=2048)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    log.info("forwarding 127.0.0.1:%d in %s to the API server", port, netns)
    async with server:
        await stop.wait()  # connections in flight end with the process
