"""``multinic-sim demo``: the whole project on one machine, in one command.

up (3 hosts x 2 NICs) -> apply a macvlan network (L2) and an L3 one (ipvlan
L3 where the kernel has ipvlan, else the routed ptp driver) -> wait for the operator's CIDR plan, IPPools and NAD
and the agents' HostInterfaces -> one pod per host -> concheck -> the
network's status, the CIDR plan and each host's routes -> pods deleted ->
everything torn down (unless ``--keep``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from multinic_sim.cluster_builder import (
    MULTINIC_GROUP,
    MULTINIC_VERSION,
    SimCluster,
    down,
    up,
)
from multinic_sim.concheck import (
    CheckOptions,
    all_connected,
    plan_objects,
    render,
    run_concheck,
)
from multinic_sim.fabric import FabricError, FabricLayout, run_ip
from multinic_sim.kubelet import NAD_GROUP, NAD_PLURAL, NAD_VERSION
from multinic_sim.pods import PodRuntime, PodView
from multinic_sim.progress import ProgressLog
from multinic_sim.tables import render_table

log = logging.getLogger(__name__)

NO_IPVLAN = "this kernel has no ipvlan: the L3 network uses the routed ptp driver"


@dataclass(frozen=True)
class DemoNetwork:
    """A network the demo applies, and the prefix of its pods' names."""

    name: str
    pod_prefix: str
    body: dict[str, Any]


def demo_networks(layout: FabricLayout, *, ipvlan: bool) -> list[DemoNetwork]:
    """macvlan bridge (L2: pods of one NIC index share its vlanCIDR), and an L3 network:
    ipvlan L3 where the kernel has ipvlan, else ptp (a routed veth pair per NIC).
    Both L3 kinds carry pod traffic between hosts over the per-network host routes."""
    master_nets = [layout.nic_network(n) for n in range(layout.nics)]
    networks = [
        DemoNetwork(
            "demo-macvlan",
            "macvlan",
            network_body(
                "demo-macvlan",
                "192.168.0.0/16",
                "l2",
                master_nets,
                {"cniVersion": "1.0.0", "type": "macvlan", "args": {"mode": "bridge"}},
            ),
        )
    ]
    l3_name, l3_plugin = (
        ("demo-ipvlan-l3", {"cniVersion": "1.0.0", "type": "ipvlan", "args": {"mode": "l3"}})
        if ipvlan
        else ("demo-ptp-l3", {"cniVersion": "1.0.0", "type": "ptp"})
    )
    networks.append(
        DemoNetwork(
            l3_name,
            str(l3_plugin["type"]),
            network_body(l3_name, "172.30.0.0/16", "l3", master_nets, l3_plugin),
        )
    )
    return networks


def network_body(
    name: str, subnet: str, vlan_mode: str, master_nets: list[str], plugin: dict[str, Any]
) -> dict[str, Any]:
    """A MultiNicNetwork for namespace default, with /24 host and /18 NIC blocks."""
    ipam = {"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "vlanMode": vlan_mode}
    return {
        "apiVersion": f"{MULTINIC_GROUP}/{MULTINIC_VERSION}",
        "kind": "MultiNicNetwork",
        "metadata": {"name": name},
        "spec": {
            "subnet": subnet,
            "ipam": json.dumps(ipam),
            "multiNICIPAM": True,
            "masterNets": master_nets,
            "plugin": plugin,
            "namespaces": ["default"],
        },
    }


def kernel_has_ipvlan(cluster: SimCluster) -> bool:
    """Probe once: can an ipvlan link be made on host 0's first NIC?"""
    netns = cluster.layout.host_netns(0)
    probe = f"{cluster.layout.prefix}probe"
    try:
        run_ip("-n", netns, "link", "add", probe, "link", cluster.layout.nic_name(0),
               "type", "ipvlan", "mode", "l3")  # fmt: skip
    except FabricError as e:
        log.info("no ipvlan: %s", e)
        return False
    run_ip("-n", netns, "link", "del", probe)
    return True


# -- waiting for the control plane -------------------------------------------------


def wait_for_network(
    cluster: SimCluster, network: str, progress: ProgressLog, timeout: float
) -> None:
    """Until the agents have reported their NICs and the operator has planned ``network``."""
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client import ApiException  # noqa: PLC0415

    layout = cluster.layout
    wanted = {layout.nic_network(n) for n in range(layout.nics)}
    with cluster.api() as api:
        custom: Any = client.CustomObjectsApi(api)

        def list_of(plural: str, **kwargs: Any) -> list[dict[str, Any]]:
            answer = custom.list_cluster_custom_object(
                MULTINIC_GROUP, MULTINIC_VERSION, plural, **kwargs
            )
            return list(answer["items"])

        def host_interfaces() -> tuple[int, int]:
            ready = 0
            for item in list_of("hostinterfaces"):
                nets = {i.get("netAddress") for i in item["spec"].get("interfaces") or []}
                ready += int(wanted <= nets)
            return ready, layout.hosts

        def planned_hosts() -> tuple[int, int]:
            try:
                plans = plan_objects(custom, network)
            except ApiException as e:
                if e.status == 404:
                    return 0, layout.hosts * layout.nics
                raise
            hosts = sum(
                len(entry.get("hosts") or [])
                for plan in plans
                for entry in plan["spec"].get("cidr") or []
            )
            return hosts, layout.hosts * layout.nics

        def pools() -> tuple[int, int]:
            made = list_of("ippools", label_selector=f"netname={network}")
            return len(made), layout.hosts * layout.nics

        def nad() -> tuple[int, int]:
            custom.get_namespaced_custom_object(
                NAD_GROUP, NAD_VERSION, "default", NAD_PLURAL, network
            )
            return 1, 1

        def checked(check: Any) -> Any:
            def run() -> tuple[int, int]:
                cluster.check_daemons()
                result: tuple[int, int] = check()
                return result

            return run

        progress.wait("agents' HostInterfaces (NIC discovery)", checked(host_interfaces), timeout)
        progress.wait(f"CIDR plan of {network} (operator)", checked(planned_hosts), timeout)
        progress.wait(f"IPPools of {network} (operator)", checked(pools), timeout)
        progress.wait(f"NetworkAttachmentDefinition default/{network}", checked(nad), timeout)


# -- showing the result ------------------------------------------------------------


def network_status(cluster: SimCluster, network: str) -> str:
    """The operator's view of the network: status fields and conditions."""
    from kubernetes import client  # noqa: PLC0415

    with cluster.api() as api:
        custom: Any = client.CustomObjectsApi(api)
        obj = custom.get_cluster_custom_object(
            MULTINIC_GROUP, MULTINIC_VERSION, "multinicnetworks", network
        )
    status = obj.get("status") or {}
    discovery = status.get("discovery") or {}
    lines = [
        f"network {network}: configStatus={status.get('configStatus', '-')} "
        f"routeStatus={status.get('routeStatus', '-')}",
        "  computeResults: "
        + ", ".join(
            f"{r.get('netAddress')} ({r.get('numOfHosts')} hosts)"
            for r in status.get("computeResults") or []
        ),
        f"  discovery: existDaemon={discovery.get('existDaemon')} "
        f"infoAvailable={discovery.get('infoAvailable')} "
        f"cidrProcessed={discovery.get('cidrProcessed')}",
    ]
    for condition in status.get("conditions") or []:
        lines.append(
            f"  condition {condition.get('type')}={condition.get('status')} "
            f"({condition.get('reason')}) {condition.get('message') or ''}".rstrip()
        )
    if status.get("message"):
        lines.append(f"  message: {status['message']}")
    return "\n".join(lines)


def cidr_table(cluster: SimCluster, network: str) -> str:
    """The CIDR plan as a table: one row per (interface, host)."""
    from kubernetes import client  # noqa: PLC0415

    with cluster.api() as api:
        custom: Any = client.CustomObjectsApi(api)
        plans = plan_objects(custom, network)
    blocks = [
        (entry, host)
        for plan in plans
        for entry in plan["spec"].get("cidr") or []
        for host in entry.get("hosts") or []
    ]
    blocks.sort(key=lambda pair: (pair[0].get("interfaceIndex", 0), pair[1].get("hostIndex", 0)))
    rows = []
    for entry, host in blocks:
        rows.append(
            [
                str(entry.get("netAddress")),
                str(entry.get("interfaceIndex")),
                str(entry.get("vlanCIDR")),
                str(host.get("hostName")),
                str(host.get("hostIndex")),
                f"{host.get('interfaceName')} {host.get('hostIP')}",
                str(host.get("podCIDR")),
                str(host.get("ippool")),
            ]
        )
    return render_table(
        ["MASTER NET", "IF INDEX", "VLAN CIDR", "HOST", "HOST INDEX", "NIC", "POD CIDR", "IPPOOL"],
        rows,
    )


def host_routes(cluster: SimCluster, host: int) -> str:
    """The host's IPv4 unicast routes in every table (multinic's tables included) and rules."""
    netns = cluster.layout.host_netns(host)
    routes = [
        line
        for line in run_ip("-n", netns, "-4", "route", "show", "table", "all").splitlines()
        if line and not line.startswith(("local ", "broadcast ", "multicast "))
    ]
    rules = [
        line
        for line in run_ip("-n", netns, "-4", "rule", "show").splitlines()
        if "lookup local" not in line and "lookup main" not in line and "lookup default" not in line
    ]
    return "\n".join(f"  {line.rstrip()}" for line in [*routes, *(f"rule {r}" for r in rules)])


def pod_table(pods: list[PodView]) -> str:
    rows = []
    for pod in pods:
        addresses = ", ".join(f"{i.name} {i.ip}" for i in pod.interfaces)
        rows.append(
            [pod.name, pod.namespace, pod.node, pod.phase, ",".join(pod.networks), addresses or "-"]
        )
    return render_table(["POD", "NAMESPACE", "HOST", "STATUS", "NETWORKS", "INTERFACES"], rows)


# -- the demo --------------------------------------------------------------------


def run_demo(
    state_dir: Path,
    layout: FabricLayout,
    *,
    keep: bool = False,
    bandwidth: bool = True,
    timeout: float = 120.0,
    out: TextIO | None = None,
    apiserver: str = "double",
    multus: str = "sim",
) -> int:
    """Run the demo; 0 when every pair is connected on every NIC, else 1."""
    progress = ProgressLog(out)
    write = progress.out.write
    cluster = up(state_dir, layout, progress, timeout, apiserver=apiserver, multus=multus)
    try:
        return _demo(cluster, progress, write, bandwidth=bandwidth, timeout=timeout)
    finally:
        if keep:
            progress.say(
                f"kept the cluster: `multinic-sim pod list --state-dir {cluster.state_dir}`, "
                f"KUBECONFIG={cluster.kubeconfig}, `multinic-sim down --state-dir "
                f"{cluster.state_dir}` when done"
            )
        else:
            _delete_pods(cluster, progress, timeout)
            with progress.step("tearing down: processes, namespaces, files"):
                removed = down(cluster.state_dir)
            progress.say(
                f"removed {len(removed.processes)} processes, "
                f"{len(removed.namespaces)} namespaces and {cluster.state_dir}"
            )


def _delete_pods(cluster: SimCluster, progress: ProgressLog, timeout: float) -> None:
    """Delete every pod (the kubelet detaches each through the shim) before tearing down."""
    runtime = PodRuntime(cluster)
    try:
        pods = runtime.list()
        if pods:
            with progress.step(f"deleting {len(pods)} pods (CNI DEL through the shim)"):
                for pod in pods:
                    runtime.delete(pod.name, pod.namespace, timeout)
    except Exception as e:
        progress.say(f"deleting the pods failed ({e}); tearing down without CNI DEL")


def _demo(
    cluster: SimCluster,
    progress: ProgressLog,
    write: Any,
    *,
    bandwidth: bool,
    timeout: float,
) -> int:
    layout = cluster.layout
    ipvlan = kernel_has_ipvlan(cluster)
    if not ipvlan:
        progress.say(NO_IPVLAN)
    networks = demo_networks(layout, ipvlan=ipvlan)
    from kubernetes import client  # noqa: PLC0415

    with progress.step("applying " + ", ".join(n.name for n in networks)), cluster.api() as api:
        for network in networks:
            client.CustomObjectsApi(api).create_cluster_custom_object(
                MULTINIC_GROUP, MULTINIC_VERSION, "multinicnetworks", network.body
            )
    runtime = PodRuntime(cluster)
    for network in networks:
        wait_for_network(cluster, network.name, progress, timeout)
        for host in range(layout.hosts):
            name = f"{network.pod_prefix}-{host}"
            with progress.step(f"pod {name} on {layout.host_name(host)} ({network.name})"):
                runtime.add(name, layout.host_name(host), network.name, timeout=timeout)
    write("\npods:\n" + pod_table(runtime.list()) + "\n\n")
    with (
        progress.step("concheck: every host pair, every NIC" + (" + iperf3" if bandwidth else "")),
        cluster.api() as api,
    ):
        results = run_concheck(
            api, options=CheckOptions(bandwidth=bandwidth, timeout=timeout), say=progress.say
        )
    write("\n" + render(results) + "\n\n")
    for network in networks:
        write(network_status(cluster, network.name) + "\n\n")
        write(f"CIDR plan of {network.name}:\n{cidr_table(cluster, network.name)}\n\n")
    for host in range(layout.hosts):
        write(f"routes of {layout.host_name(host)} ({layout.host_netns(host)}):\n")
        write(host_routes(cluster, host) + "\n")
    write("\n")
    if all_connected(results):
        progress.say(
            f"every pair of {layout.hosts} hosts CONNECTED on all {layout.nics} NICs "
            f"({len(results)} pairs)"
        )
        return 0
    failed = sum(p.connected != p.total for p in results)
    progress.say(f"{failed} of {len(results)} host pairs NOT fully connected")
    return 1
