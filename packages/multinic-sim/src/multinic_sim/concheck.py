"""concheck: can a pod on every host reach a pod on every other host, on every NIC?

Through the Kubernetes API only, so it runs the same against the simulated
cluster and a real one. For each network (a MultiNicNetwork), the hosts are
those of its CIDR plan; on each, a Running pod attached to the network is
used (the first by name), else concheck creates one (``spec.nodeName`` pinned,
the network in ``k8s.v1.cni.cncf.io/networks``, image ``--image`` with ``ping``
and, optionally, ``iperf3``) and deletes it afterwards. Addresses come from
Multus' ``k8s.v1.cni.cncf.io/network-status`` annotation. For every ordered
pair of hosts FROM != TO and every NIC index k, the FROM pod pings the TO
pod's address on NIC k out of its own NIC k (``pods/exec``); with iperf3 in
the pods, a one-second iperf3 run between the same two addresses gives the
bandwidth. A pair is CONNECTED on as many NICs as answered.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from multinic_sim.cluster_builder import MULTINIC_GROUP, MULTINIC_VERSION
from multinic_sim.errors import SimError
from multinic_sim.kubelet import NETWORKS_ANNOTATION, read_nad
from multinic_sim.pods import (
    PodInterface,
    PodView,
    delete_and_wait,
    view_of,
    wait_running,
)
from multinic_sim.tables import render_table

log = logging.getLogger(__name__)

PING_WAIT_S = 2
IPERF_PORT = 5201
IPERF_SECONDS = 1
IPERF_START_S = 5.0
EXEC_TIMEOUT_S = 30.0
DEFAULT_IMAGE = "docker.io/nicolaka/netshoot:v0.13"
CREATED_BY = "multinic-concheck"
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
_NOT_DNS = re.compile(r"[^a-z0-9-]+")


@dataclass
class LinkCheck:
    """One NIC of one host pair."""

    nic: int
    interface: str
    source: str
    target: str
    connected: bool
    rtt_ms: float | None = None
    bandwidth_gbps: float | None = None
    error: str = ""


@dataclass
class PairCheck:
    """All NICs of one ordered host pair of one network."""

    network: str
    source_host: str
    target_host: str
    source_pod: str
    target_pod: str
    links: list[LinkCheck] = field(default_factory=list)

    @property
    def connected(self) -> int:
        return sum(link.connected for link in self.links)

    @property
    def total(self) -> int:
        return len(self.links)


@dataclass
class ExecResult:
    """What a command run in a pod through ``pods/exec`` gave; returncode None: no end seen."""

    returncode: int | None
    stdout: str
    stderr: str


class PodExec:
    """Runs commands in pods through the API's ``pods/exec`` (WebSocket streams)."""

    def __init__(self, api_client: Any) -> None:
        from kubernetes import client  # noqa: PLC0415

        # A client of its own: kubernetes.stream swaps the client's request method.
        self.core = client.CoreV1Api(api_client)

    def start(self, pod: PodView, argv: list[str]) -> Any:
        """Start ``argv`` in ``pod``; the open stream (close it to stop the command)."""
        from kubernetes.stream import stream  # noqa: PLC0415

        return stream(
            self.core.connect_get_namespaced_pod_exec,
            pod.name,
            pod.namespace,
            command=argv,
            stdout=True,
            stderr=True,
            stdin=False,
            tty=False,
            _preload_content=False,
        )

    def run(self, pod: PodView, argv: list[str], timeout: float = EXEC_TIMEOUT_S) -> ExecResult:
        from kubernetes.client import ApiException  # noqa: PLC0415
        from websocket import WebSocketException  # noqa: PLC0415

        try:
            ws = self.start(pod, argv)
        except (ApiException, WebSocketException, OSError) as e:
            return ExecResult(None, "", f"exec in pod {pod.namespace}/{pod.name} failed: {e}")
        try:
            ws.run_forever(timeout=timeout)
            stdout = ws.read_channel(1, timeout=0) or ""
            stderr = ws.read_channel(2, timeout=0) or ""
            status = ws.read_channel(3, timeout=0) or ""
        finally:
            ws.close()
        return ExecResult(_exit_code(status), stdout, stderr)


def _exit_code(status: str) -> int | None:
    """The exit code in the error channel's Status; None when there is none."""
    try:
        document = json.loads(status)
    except ValueError:
        return None
    if document.get("status") == "Success":
        return 0
    for cause in (document.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", 1))
    return 1 if document.get("status") == "Failure" else None


@dataclass
class CheckOptions:
    """How concheck runs (``multinic-sim concheck --help``)."""

    namespace: str = "default"
    bandwidth: bool = True
    image: str = DEFAULT_IMAGE
    timeout: float = 120.0
    keep_pods: bool = False


def run_concheck(
    api_client: Any,
    network: str | None = None,
    options: CheckOptions | None = None,
    say: Callable[[str], None] | None = None,
) -> list[PairCheck]:
    """Check every pair of hosts of every network (or of ``network``)."""
    options = options or CheckOptions()
    say = say or log.info
    networks = _networks(api_client, network)
    executor = PodExec(api_client)
    results: list[PairCheck] = []
    for name in networks:
        hosts = _hosts(api_client, name)
        if len(hosts) < 2:
            raise SimError(
                f"concheck needs network {name!r} planned on at least two hosts; "
                f"its CIDR plan has: {', '.join(hosts) or 'none'}"
            )
        pods, created, failed = _pods_for(api_client, name, hosts, options, say)
        try:
            results += _check_network(
                executor, name, hosts, pods=pods, failed=failed, bandwidth=options.bandwidth
            )
        finally:
            if created and not options.keep_pods:
                say(f"deleting {len(created)} concheck pods of {name}")
                _delete(api_client, options, created)
    return results


def _networks(api_client: Any, network: str | None) -> list[str]:
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client import ApiException  # noqa: PLC0415

    custom: Any = client.CustomObjectsApi(api_client)
    if network is not None:
        try:
            custom.get_cluster_custom_object(
                MULTINIC_GROUP, MULTINIC_VERSION, "multinicnetworks", network
            )
        except ApiException as e:
            if e.status == 404:
                raise SimError(f"no MultiNicNetwork {network!r} in the cluster") from e
            raise
        return [network]
    listed = custom.list_cluster_custom_object(MULTINIC_GROUP, MULTINIC_VERSION, "multinicnetworks")
    names = sorted(item["metadata"]["name"] for item in listed["items"])
    if not names:
        raise SimError("no MultiNicNetwork in the cluster: apply one first")
    return names


def _hosts(api_client: Any, network: str) -> list[str]:
    """The hosts of the network's CIDR plan."""
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client import ApiException  # noqa: PLC0415

    try:
        plans = plan_objects(client.CustomObjectsApi(api_client), network)
    except ApiException as e:
        if e.status == 404:
            raise SimError(
                f"network {network!r} has no CIDR plan (yet): is the operator running, and "
                f"have the agents reported the hosts' NICs?"
            ) from e
        raise
    return sorted(
        {
            str(host.get("hostName"))
            for plan in plans
            for entry in plan.get("spec", {}).get("cidr") or []
            for host in entry.get("hosts") or []
            if host.get("hostName")
        }
    )


def plan_objects(custom: Any, network: str) -> list[dict[str, Any]]:
    """The CIDR objects holding ``network``'s plan: the CIDR, then its shards
    (``multinic_core.shards``); ApiException 404 when the CIDR does not exist."""
    from multinic_core.shards import NETWORK_LABEL, SHARD_LABEL, shard_of  # noqa: PLC0415

    base: dict[str, Any] = custom.get_cluster_custom_object(
        MULTINIC_GROUP, MULTINIC_VERSION, "cidrs", network
    )
    listed = custom.list_cluster_custom_object(
        MULTINIC_GROUP,
        MULTINIC_VERSION,
        "cidrs",
        label_selector=f"{NETWORK_LABEL}={network},{SHARD_LABEL}",
    )
    shards = sorted(
        (shard_of(item["metadata"]), item)
        for item in listed.get("items") or []
        if shard_of(item["metadata"])[0] == network
    )
    return [base, *(item for _, item in shards)]


def _pods_for(
    api_client: Any,
    network: str,
    hosts: list[str],
    options: CheckOptions,
    say: Callable[[str], None],
) -> tuple[dict[str, PodView], list[PodView], dict[str, str]]:
    """A running pod of ``network`` per host: (pods by host, the ones created, failures by host)."""
    from kubernetes import client  # noqa: PLC0415

    core: Any = client.CoreV1Api(api_client)
    pods: dict[str, PodView] = {}
    for pod in sorted(
        core.list_namespaced_pod(options.namespace).items, key=lambda p: p.metadata.name
    ):
        view = view_of(pod)
        if (
            view.node in hosts
            and view.node not in pods
            and view.phase == "Running"
            and pod.metadata.deletion_timestamp is None
            and any(i.network == network for i in view.interfaces)
        ):
            pods[view.node] = view
    missing = [h for h in hosts if h not in pods]
    created: list[PodView] = []
    failed: dict[str, str] = {}
    if missing:
        say(f"creating concheck pods of {network} on {', '.join(missing)}")
        resources = _resource_requests(api_client, network, options.namespace)
        for host in missing:
            body = _concheck_pod(network, host, options.image, resources)
            pod = core.create_namespaced_pod(options.namespace, body)
            created.append(view_of(pod))
        for view in created:
            try:
                pods[view.node] = view_of(
                    wait_running(core, view.namespace, view.name, options.timeout)
                )
            except SimError as e:
                failed[view.node] = str(e)
    return pods, created, failed


def concheck_pod_name(network: str, host: str) -> str:
    """``multinic-concheck-<network>-<host>``, made a valid pod name (<= 63 characters)."""
    name = _NOT_DNS.sub("-", f"{CREATED_BY}-{network}-{host}".lower()).strip("-")
    return name[:63].rstrip("-")


def _concheck_pod(network: str, host: str, image: str, resources: dict[str, str]) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "concheck",
        "image": image,
        "command": ["sleep", "infinity"],
    }
    if resources:
        container["resources"] = {"requests": resources, "limits": resources}
    return {
        "metadata": {
            "name": concheck_pod_name(network, host),
            "labels": {"app.kubernetes.io/created-by": CREATED_BY, "multinic.dev/network": network},
            "annotations": {NETWORKS_ANNOTATION: json.dumps([{"name": network}])},
        },
        "spec": {
            "nodeName": host,
            "terminationGracePeriodSeconds": 1,
            "restartPolicy": "Never",
            "containers": [container],
        },
    }


def _resource_requests(api_client: Any, network: str, namespace: str) -> dict[str, str]:
    """One device of the NAD's resource (SR-IOV, host-device networks), as Multus expects."""
    nad = read_nad(api_client, namespace, network)
    if nad is None:
        raise SimError(
            f"no NetworkAttachmentDefinition {namespace}/{network}: does the "
            f"MultiNicNetwork {network!r} list namespace {namespace!r}?"
        )
    resource = (nad.get("metadata", {}).get("annotations") or {}).get(RESOURCE_NAME_ANNOTATION)
    return {resource: "1"} if resource else {}


def _delete(api_client: Any, options: CheckOptions, pods: list[PodView]) -> None:
    from kubernetes import client  # noqa: PLC0415

    core: Any = client.CoreV1Api(api_client)
    for pod in pods:
        try:
            delete_and_wait(core, pod.namespace, pod.name, options.timeout, grace_period_seconds=1)
        except SimError as e:
            log.warning("%s", e)


def _check_network(
    executor: PodExec,
    network: str,
    hosts: list[str],
    *,
    pods: dict[str, PodView],
    failed: dict[str, str],
    bandwidth: bool,
) -> list[PairCheck]:
    interfaces = {
        host: [i for i in pod.interfaces if i.network == network] for host, pod in pods.items()
    }
    # One probe: the pods of a check share an image.
    probe = next(iter(pods.values()), None)
    iperf = (
        bandwidth
        and probe is not None
        and executor.run(probe, ["iperf3", "--version"]).returncode == 0
    )
    results = []
    for source_host in hosts:
        for target_host in hosts:
            if source_host == target_host:
                continue
            source_pod, target_pod = pods.get(source_host), pods.get(target_host)
            pair = PairCheck(
                network,
                source_host,
                target_host,
                source_pod.name if source_pod else "-",
                target_pod.name if target_pod else "-",
            )
            if source_pod is None or target_pod is None:
                why = failed.get(source_host) or failed.get(target_host) or "no pod"
                pair.links = [LinkCheck(0, "-", "-", "-", connected=False, error=why)]
            else:
                pair.links = _check_links(
                    executor,
                    source_pod,
                    interfaces[source_host],
                    target_pod,
                    interfaces[target_host],
                    iperf=iperf,
                )
            results.append(pair)
    return results


def _check_links(
    executor: PodExec,
    source_pod: PodView,
    source_interfaces: list[PodInterface],
    target_pod: PodView,
    target_interfaces: list[PodInterface],
    *,
    iperf: bool,
) -> list[LinkCheck]:
    sources = {i.nic_index: i for i in source_interfaces}
    targets = {i.nic_index: i for i in target_interfaces}
    links = []
    for nic in sorted(set(sources) | set(targets)):
        source, target = sources.get(nic), targets.get(nic)
        if source is None or target is None:
            missing = source_pod.name if source is None else target_pod.name
            links.append(
                LinkCheck(
                    nic=nic,
                    interface=(source.name if source else target.name if target else "-"),
                    source=source.ip if source else "-",
                    target=target.ip if target else "-",
                    connected=False,
                    error=f"pod {missing} has no interface for NIC {nic}",
                )
            )
            continue
        link = _ping(executor, source_pod, source, target)
        if link.connected and iperf:
            link.bandwidth_gbps = _bandwidth(executor, source_pod, source, target_pod, target)
        links.append(link)
    return links


def _ping(
    executor: PodExec, source_pod: PodView, source: PodInterface, target: PodInterface
) -> LinkCheck:
    done = executor.run(
        source_pod, ["ping", "-c", "1", "-W", str(PING_WAIT_S), "-I", source.name, target.ip]
    )
    link = LinkCheck(
        nic=source.nic_index,
        interface=source.name,
        source=source.ip,
        target=target.ip,
        connected=done.returncode == 0,
    )
    if done.returncode == 0:
        for token in done.stdout.split():
            if token.startswith("time="):
                link.rtt_ms = float(token.removeprefix("time="))
    else:
        lines = (done.stdout + done.stderr).strip().splitlines()
        link.error = lines[-1] if lines else f"ping exited {done.returncode}"
    return link


def _bandwidth(
    executor: PodExec,
    source_pod: PodView,
    source: PodInterface,
    target_pod: PodView,
    target: PodInterface,
) -> float | None:
    """Gbit/s received by an iperf3 server in the target pod; None when the run failed."""
    server = executor.start(
        target_pod,
        ["iperf3", "--server", "--one-off", "--bind", target.ip, "--port", str(IPERF_PORT)],
    )
    try:
        # The server needs a moment to listen: the client retries while refused.
        deadline = time.monotonic() + IPERF_START_S
        while True:
            client = executor.run(
                source_pod,
                ["iperf3", "--client", target.ip, "--bind", source.ip, "--port", str(IPERF_PORT),
                 "--time", str(IPERF_SECONDS), "--json"],
                timeout=IPERF_SECONDS + 15,
            )  # fmt: skip
            answer = client.stdout + client.stderr
            if "refused" not in answer or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        report = json.loads(client.stdout)
        if client.returncode != 0 or "error" in report:
            log.warning("iperf3 %s -> %s: %s", source.ip, target.ip, report.get("error"))
            return None
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (ValueError, KeyError) as e:
        log.warning("iperf3 %s -> %s gave no result: %s", source.ip, target.ip, e)
        return None
    finally:
        server.close()


# -- output -----------------------------------------------------------------------


def all_connected(results: list[PairCheck]) -> bool:
    return bool(results) and all(p.total > 0 and p.connected == p.total for p in results)


def render(results: list[PairCheck]) -> str:
    """The connectivity matrix: one row per network and ordered host pair."""
    rows = []
    for pair in results:
        state = "CONNECTED" if pair.total and pair.connected == pair.total else "FAILED"
        addresses = ", ".join(
            f"{link.interface} {link.source}->{link.target}" for link in pair.links
        )
        speeds = ", ".join(
            "-" if link.bandwidth_gbps is None else f"{link.bandwidth_gbps:.1f}"
            for link in pair.links
        )
        rows.append(
            [
                pair.network,
                pair.source_host,
                pair.target_host,
                f"{pair.connected}/{pair.total} {state}",
                addresses,
                speeds,
            ]
        )
    table = render_table(
        ["NETWORK", "FROM", "TO", "CONNECTED/TOTAL", "ADDRESSES", "BANDWIDTH (Gbit/s)"], rows
    )
    failures = [
        f"  {p.network} {p.source_host}->{p.target_host} {link.interface}: {link.error}"
        for p in results
        for link in p.links
        if not link.connected
    ]
    if failures:
        table += "\nfailed:\n" + "\n".join(failures)
    return table


def as_json(results: list[PairCheck]) -> dict[str, Any]:
    """Machine-readable results (``concheck --json``)."""
    by_network: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in results:
        by_network[pair.network].append(
            {
                "from": pair.source_host,
                "to": pair.target_host,
                "fromPod": pair.source_pod,
                "toPod": pair.target_pod,
                "connected": pair.connected,
                "total": pair.total,
                "links": [asdict(link) for link in pair.links],
            }
        )
    return {"allConnected": all_connected(results), "networks": dict(by_network)}
