"""``multinic-sim up`` / ``down``: a whole simulated cluster on this machine.

``up`` builds the fabric (host namespaces with veth NICs into one bridge per
secondary network), starts the local API server (listening on 127.0.0.1 in the
root namespace and inside every host namespace), installs the CRDs and one
Node per host, installs the ``multi-nic`` CNI shim, and starts the operator
(root namespace), one agent per host *inside* that host's namespace, so
discovery, routes and delegates act on that host's links, and the simulated
kubelet (:mod:`multinic_sim.kubelet`), which runs the pods bound to the hosts.

Everything the cluster owns is named: namespaces start with the layout's
prefix, files live in the state directory, and every daemon carries a path of
the state directory on its command line. ``down`` removes all of it, from the
record in ``cluster.json`` when there is one, and by prefix and ``/proc`` scan
when there is not (after a ``kill -9``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from multinic_sim.crds import NETWORK_ATTACHMENT_DEFINITION_CRD
from multinic_sim.errors import SimError
from multinic_sim.fabric import DEFAULT_PREFIX, FabricLayout, build, leftovers, teardown
from multinic_sim.kubeconfig import read_credentials, write_kubeconfig
from multinic_sim.processes import (
    alive,
    owned_by,
    processes_of,
    program,
    start_daemon,
    stop_processes,
)
from multinic_sim.progress import ProgressLog

log = logging.getLogger(__name__)

RECORD_FILE = "cluster.json"
OPERATOR_NAMESPACE = "multinic-system"
DELEGATE_DIR = "/usr/lib/cni"
DEFAULT_CONFIG_NAME = "multi-nicd"
STATE_DIR_ENV = "MULTINIC_SIM_STATE_DIR"
SIMULATED_NODE = "multinic.dev/simulated=true"
MULTINIC_GROUP, MULTINIC_VERSION = "multinic.fms.io", "v1"


def default_state_dir() -> Path:
    """``$MULTINIC_SIM_STATE_DIR``, else ``/run/multinic-sim`` (root) or ``/tmp/multinic-sim``."""
    configured = os.environ.get(STATE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path("/run/multinic-sim") if os.geteuid() == 0 else Path("/tmp/multinic-sim")  # noqa: S108


@dataclass
class SimCluster:
    """The record of one simulated cluster, kept in ``<state_dir>/cluster.json``."""

    state_dir: Path
    layout: FabricLayout
    server_url: str = ""
    pids: dict[str, int] = field(default_factory=dict)
    apiserver: str = "double"
    """``double``: the project's API server double; ``real``: kube-apiserver + etcd."""
    multus: str = "sim"
    """``sim``: the simulated kubelet does Multus' part; ``real``: it execs the real Multus."""
    removed: list[int] = field(default_factory=list)
    """Host indexes below ``layout.hosts`` that ``multinic-sim host remove`` took out."""

    @property
    def hosts(self) -> list[int]:
        """The indexes of the hosts in the cluster now."""
        return [h for h in range(self.layout.hosts) if h not in self.removed]

    # -- where things are ---------------------------------------------------

    @property
    def record_path(self) -> Path:
        return self.state_dir / RECORD_FILE

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def cni_bin_dir(self) -> Path:
        return self.state_dir / "cni-bin"

    @property
    def shim(self) -> Path:
        return self.cni_bin_dir / "multi-nic"

    def host_dir(self, host: int) -> Path:
        return self.state_dir / self.layout.host_name(host)

    def agent_socket(self, host: int) -> Path:
        return self.host_dir(host) / "agent.sock"

    def host_kubeconfig(self, host: int) -> Path:
        return self.host_dir(host) / "kubeconfig"

    def host_index(self, node: str) -> int:
        """The host index of node name ``host-<i>`` (or of a bare index)."""
        for host in self.hosts:
            if node in (self.layout.host_name(host), str(host)):
                return host
        names = ", ".join(self.layout.host_name(h) for h in self.hosts)
        raise SimError(f"no host {node!r} in this simulated cluster (hosts: {names})")

    # -- the record ---------------------------------------------------------

    def save(self) -> None:
        document = {
            "prefix": self.layout.prefix,
            "hosts": self.layout.hosts,
            "nics": self.layout.nics,
            "serverURL": self.server_url,
            "pids": self.pids,
            "apiserver": self.apiserver,
            "multus": self.multus,
            "removed": sorted(self.removed),
        }
        temporary = self.record_path.with_suffix(".tmp")
        temporary.write_text(json.dumps(document, indent=2) + "\n")
        temporary.replace(self.record_path)

    @classmethod
    def load(cls, state_dir: Path) -> SimCluster:
        """The cluster recorded in ``state_dir``; SimError when there is none."""
        path = state_dir / RECORD_FILE
        try:
            document = json.loads(path.read_text())
            layout = FabricLayout(
                hosts=int(document["hosts"]),
                nics=int(document["nics"]),
                prefix=str(document["prefix"]),
            )
        except FileNotFoundError as e:
            raise SimError(
                f"no simulated cluster in {state_dir}: run `multinic-sim up` first"
            ) from e
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise SimError(f"{path} is not a cluster record: {e}") from e
        return cls(
            state_dir=state_dir,
            layout=layout,
            server_url=str(document.get("serverURL", "")),
            pids={str(k): int(v) for k, v in dict(document.get("pids", {})).items()},
            apiserver=str(document.get("apiserver", "double")),
            multus=str(document.get("multus", "sim")),
            removed=[int(h) for h in document.get("removed", [])],
        )

    # -- API access ---------------------------------------------------------

    @contextmanager
    def api(self) -> Iterator[Any]:
        """A ``kubernetes.client.ApiClient`` for the cluster's API server."""
        from kubernetes import config  # noqa: PLC0415 - a second to import; not needed by down

        client = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(self.kubeconfig)
        )
        try:
            yield client
        finally:
            client.close()

    def log_tail(self, name: str, lines: int = 15) -> str:
        """The last lines of a daemon's log, for error messages."""
        try:
            text = (self.logs_dir / f"{name}.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_daemons(self) -> None:
        """Raise SimError naming the first recorded daemon that has exited."""
        for name, pid in self.pids.items():
            # Liveness, not ownership: during an exec the command line reads empty.
            if not alive(pid):
                raise SimError(
                    f"{name} (pid {pid}) exited; last lines of "
                    f"{self.logs_dir / (name + '.log')}:\n{self.log_tail(name)}"
                )


# -- up -------------------------------------------------------------------------


def up(
    state_dir: Path,
    layout: FabricLayout,
    progress: ProgressLog | None = None,
    timeout: float = 90.0,
    *,
    apiserver: str = "double",
    multus: str = "sim",
) -> SimCluster:
    """Build and start a simulated cluster; on any failure remove everything it made."""
    progress = progress or ProgressLog(quiet=True)
    state_dir = state_dir.resolve()
    if (state_dir / RECORD_FILE).exists():
        raise SimError(
            f"a simulated cluster is already recorded in {state_dir}: "
            f"run `multinic-sim down --state-dir {state_dir}` first"
        )
    if multus == "real":
        from multinic_sim.multus import find_binary  # noqa: PLC0415

        find_binary()  # before anything is made: SimError naming scripts/build-counterparts
    taken = leftovers(layout.prefix)
    if taken:
        # Checked before anything is made: the clean-up on failure below would
        # otherwise delete another cluster's namespaces.
        raise SimError(
            f"namespaces {', '.join(taken)} already exist: another simulated cluster uses "
            f"prefix {layout.prefix!r} (`multinic-sim down --prefix {layout.prefix} "
            f"--state-dir <its state dir>`), or choose another --prefix"
        )
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    cluster = SimCluster(state_dir=state_dir, layout=layout, apiserver=apiserver, multus=multus)
    cluster.save()
    try:
        _up(cluster, progress, timeout)
    except BaseException:
        progress.say(f"start-up failed: removing what was made (logs were in {cluster.logs_dir})")
        down(state_dir, layout.prefix)
        raise
    return cluster


def _up(cluster: SimCluster, progress: ProgressLog, timeout: float) -> None:
    layout = cluster.layout
    with progress.step(
        f"building the fabric: {layout.hosts} hosts x {layout.nics} NICs "
        f"(namespaces {layout.prefix}-*)"
    ):
        build(layout)
    server = "the local API server"
    if cluster.apiserver == "real":
        server = "etcd, kube-apiserver and kube-controller-manager"
    with progress.step(f"starting {server} (loopback of the root and host namespaces)"):
        _start_api_server(cluster, timeout)
    with progress.step("installing CRDs, namespaces and Node objects"):
        _install_cluster_objects(cluster)
    with progress.step("installing the multi-nic CNI shim"):
        subprocess.run(
            [program("multinic-agent"), "install-cni", "--bin-dir", str(cluster.cni_bin_dir)],
            check=True,
            capture_output=True,
            text=True,
        )
    with progress.step("starting the operator"):
        cluster.pids["operator"] = start_daemon(
            [
                program("multinic-operator"),
                "--kubeconfig",
                str(cluster.kubeconfig),
                "--namespace",
                OPERATOR_NAMESPACE,
                "--standalone",
                # The root namespace is shared with whatever else runs here: a
                # free port (the log names it); each agent has its host's.
                "--health-address",
                "127.0.0.1:0",
            ],
            cluster.logs_dir / "operator.log",
        )
        cluster.save()
    with progress.step(f"starting {layout.hosts} agents, each in its host namespace"):
        for host in range(layout.hosts):
            start_agent(cluster, host)
        cluster.save()

    def agents_serving() -> tuple[int, int]:
        cluster.check_daemons()
        return sum(accepts(cluster.agent_socket(h)) for h in range(layout.hosts)), layout.hosts

    progress.wait("agents serving their CNI sockets", agents_serving, timeout)
    part = "the real Multus as their CNI" if cluster.multus == "real" else "Multus' part"
    with progress.step(f"starting the kubelet (runs the hosts' pods, with {part})"):
        cluster.pids["kubelet"] = start_daemon(
            [program("multinic-sim"), "kubelet", "--state-dir", str(cluster.state_dir)],
            cluster.logs_dir / "kubelet.log",
        )
        cluster.save()

    def kubelet_ready() -> tuple[int, int]:
        cluster.check_daemons()
        with cluster.api() as api:
            from kubernetes import client  # noqa: PLC0415

            nodes: Any = client.CoreV1Api(api).list_node(label_selector=SIMULATED_NODE).items
        served = [
            n
            for n in nodes
            if n.status.daemon_endpoints and n.status.daemon_endpoints.kubelet_endpoint.port
        ]
        return len(served), layout.hosts

    progress.wait("kubelet serving the hosts", kubelet_ready, timeout)

    def operator_ready() -> tuple[int, int]:
        cluster.check_daemons()
        with cluster.api() as api:
            from kubernetes import client  # noqa: PLC0415

            client.CustomObjectsApi(api).get_cluster_custom_object(
                MULTINIC_GROUP, MULTINIC_VERSION, "configs", DEFAULT_CONFIG_NAME
            )
        return 1, 1

    progress.wait(f"operator ready (Config {DEFAULT_CONFIG_NAME} present)", operator_ready, timeout)


def _start_api_server(cluster: SimCluster, timeout: float) -> None:
    argv = [
        program("multinic-sim"),
        "apiserver",
        "--port",
        "0",
        "--kubeconfig",
        str(cluster.kubeconfig),
    ]
    for host in range(cluster.layout.hosts):
        argv += ["--netns", cluster.layout.host_netns(host)]
    if cluster.apiserver == "real":
        # etcd, kube-apiserver and kube-controller-manager: their certificates,
        # data and logs, and so their command lines, are under the state dir.
        argv += ["--real", "--data-dir", str(cluster.state_dir / "apiserver")]
    cluster.pids["apiserver"] = start_daemon(argv, cluster.logs_dir / "apiserver.log")
    cluster.save()
    deadline = time.monotonic() + timeout
    # The kubeconfig is written once the server listens in every namespace.
    while not cluster.kubeconfig.exists():
        cluster.check_daemons()
        if time.monotonic() > deadline:
            raise SimError(f"the API server wrote no kubeconfig within {timeout:.0f}s")
        time.sleep(0.05)
    cluster.server_url = read_credentials(cluster.kubeconfig).server_url
    for host in range(cluster.layout.hosts):
        write_host_kubeconfig(cluster, host)
    cluster.save()


def write_host_kubeconfig(cluster: SimCluster, host: int) -> None:
    """The same loopback address and port, served inside that host's namespace."""
    credentials = read_credentials(cluster.kubeconfig)
    cluster.host_dir(host).mkdir(parents=True, exist_ok=True, mode=0o700)
    write_kubeconfig(
        cluster.host_kubeconfig(host),
        credentials.server_url,
        credentials.token,
        certificate_authority_data=credentials.certificate_authority_data,
    )


def _install_cluster_objects(cluster: SimCluster) -> None:
    from kubernetes import client  # noqa: PLC0415

    from multinic_core.crds import all_crds  # noqa: PLC0415

    with cluster.api() as api:
        custom: Any = client.CustomObjectsApi(api)
        crds = [*all_crds(), NETWORK_ATTACHMENT_DEFINITION_CRD]
        for crd in crds:
            custom.create_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", crd
            )
        # The double establishes a CRD as it is created; kube-apiserver a moment later.
        _wait_established(client.ApiextensionsV1Api(api), [c["metadata"]["name"] for c in crds])
        core: Any = client.CoreV1Api(api)
        core.create_namespace({"metadata": {"name": OPERATOR_NAMESPACE}})
        for host in range(cluster.layout.hosts):
            create_node(core, cluster, host)


def create_node(core: Any, cluster: SimCluster, host: int) -> None:
    """The Node object of one simulated host (a ``kubernetes.client.CoreV1Api``)."""
    name = cluster.layout.host_name(host)
    core.create_node(
        {
            "metadata": {
                "name": name,
                "labels": {
                    "kubernetes.io/hostname": name,
                    SIMULATED_NODE.split("=", maxsplit=1)[0]: "true",
                },
            },
            "status": {
                "addresses": [
                    {"type": "Hostname", "address": name},
                    {"type": "InternalIP", "address": cluster.layout.nic_address(host, 0)},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
                # The kubelet takes the client's WebSocket exec stream as it
                # is (a real kube-apiserver would otherwise translate it to SPDY).
                "declaredFeatures": ["ExtendWebSocketsToKubelet"],
            },
        }
    )


def _wait_established(apiextensions: Any, names: list[str], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for name in names:
        while not any(
            c.type == "Established" and c.status == "True"
            for c in apiextensions.read_custom_resource_definition(name).status.conditions or []
        ):
            if time.monotonic() > deadline:
                raise SimError(f"CRD {name} not established within {timeout:.0f}s")
            time.sleep(0.05)


def start_agent(cluster: SimCluster, host: int) -> None:
    host_dir = cluster.host_dir(host)
    host_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    argv = [
        "ip",
        "netns",
        "exec",
        cluster.layout.host_netns(host),
        program("multinic-agent"),
        "--node",
        cluster.layout.host_name(host),
        "--socket",
        str(cluster.agent_socket(host)),
        "--state-dir",
        str(host_dir / "state"),
        "--kubeconfig",
        str(cluster.host_kubeconfig(host)),
        "--cni-path",
        DELEGATE_DIR,
        "run",
    ]
    name = f"agent-{cluster.layout.host_name(host)}"
    cluster.pids[name] = start_daemon(argv, cluster.logs_dir / f"{name}.log")


def accepts(path: Path) -> bool:
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


# -- down -----------------------------------------------------------------------


@dataclass
class Removed:
    """What ``down`` removed."""

    processes: list[int]
    namespaces: list[str]
    state_dir: Path | None


def down(state_dir: Path, prefix: str | None = None) -> Removed:
    """Remove every process, namespace and file of the simulated cluster.

    Works from the record when there is one; otherwise (or in addition) by the
    namespace ``prefix`` and by scanning ``/proc`` for processes naming a path
    in ``state_dir``. Idempotent: a second call removes nothing and succeeds.
    """
    state_dir = state_dir.resolve()
    pids: set[int] = set()
    try:
        cluster = SimCluster.load(state_dir)
    except SimError:
        cluster = None
    if cluster is not None:
        prefix = cluster.layout.prefix
        pids |= {pid for pid in cluster.pids.values() if owned_by(pid, state_dir)}
    pids |= set(processes_of(state_dir))
    stopped = stop_processes(pids)
    # A daemon may have been exec'ing a delegate or starting a child as it died.
    stragglers = processes_of(state_dir)
    if stragglers:
        stopped += stop_processes(stragglers, grace=1.0)
    namespaces = teardown(prefix or DEFAULT_PREFIX)
    removed_dir = None
    if state_dir.exists():
        shutil.rmtree(state_dir)
        removed_dir = state_dir
    log.info(
        "down: stopped %d processes, removed %d namespaces and %s",
        len(stopped),
        len(namespaces),
        removed_dir or "no state directory",
    )
    return Removed(processes=stopped, namespaces=namespaces, state_dir=removed_dir)
