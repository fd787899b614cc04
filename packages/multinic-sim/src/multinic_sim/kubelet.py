"""The simulated cluster's kubelet (and Multus' part, or the real Multus): runs the hosts' pods.

``multinic-sim up`` starts one ``multinic-sim kubelet`` for all simulated
hosts. Through the API only, as a real kubelet and Multus do, it:

* watches Pods whose ``spec.nodeName`` is a simulated host;
* for a new pod, makes its sandbox, a network namespace ``<prefix>-pod-<ns>-<name>``,
  then, for every network in the ``k8s.v1.cni.cncf.io/networks`` annotation,
  reads the NetworkAttachmentDefinition and execs its CNI plugin (for
  multinic, the ``multi-nic`` shim) inside the host's network namespace with the
  CNI environment (``CNI_COMMAND=ADD``, ``CNI_NETNS``, ``CNI_IFNAME=net<i>``,
  ``CNI_ARGS=K8S_POD_*``) and the NAD's config on stdin (``cni-args`` in
  ``args.cni``); writes Multus' ``k8s.v1.cni.cncf.io/network-status``
  annotation and sets the pod Running. A failure becomes a
  ``FailedCreatePodSandBox`` Event and is retried with back-off, as a kubelet does;
* for a pod being deleted (``deletionTimestamp``) or gone, runs CNI DEL for
  each attachment, removes the namespace and then deletes the pod object
  (grace period 0), so ``kubectl delete pod`` returns once it is detached;
* with ``--multus real`` (:mod:`multinic_sim.multus`) it does not do Multus'
  part: per pod it execs the real Multus thin plugin once (``CNI_IFNAME=eth0``,
  the host's Multus config on stdin), as a container runtime does, and Multus
  reads the annotation and the NADs from the API, execs the shim per network
  and writes the network-status annotation itself; DEL goes through Multus too;
* serves ``pods/exec`` for the API server (which finds it through the Node's
  ``status.daemonEndpoints.kubeletEndpoint.Port``): the command runs in the
  pod's network namespace on this machine's root filesystem (there are no
  container images in the simulation).

What it made for each pod is kept in ``<state>/kubelet/<uid>.json`` before
it acts, so after a restart (or ``kill -9``) it finishes or undoes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from multinic_sim import multus, remote_command
from multinic_sim.cluster_builder import DELEGATE_DIR, SimCluster
from multinic_sim.errors import SimError
from multinic_sim.fabric import FabricError, run_ip

log = logging.getLogger(__name__)

NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
NETNS_ANNOTATION = "sim.multinic.dev/netns"
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
SANDBOX_FAILED = "FailedCreatePodSandBox"
CNI_TIMEOUT_S = 120.0
MAX_BACKOFF_S = 10.0
WORKERS = 4
_NETWORK_ITEM = re.compile(r"^(?:([a-z0-9][-a-z0-9.]*)/)?([a-z0-9][-a-z0-9.]*)(?:@([^\s@/]+))?\Z")
_PR_SET_PDEATHSIG = 1

Key = tuple[str, str]  # (namespace, name)


class SandboxError(SimError):
    """Making a pod's sandbox failed; the message is what the pod's Event says."""


@dataclass(frozen=True)
class NetworkSelection:
    """One entry of a pod's ``k8s.v1.cni.cncf.io/networks`` annotation."""

    name: str
    namespace: str
    interface: str
    cni_args: dict[str, Any] | None = None


def parse_networks(value: str, pod_namespace: str) -> list[NetworkSelection]:
    """Multus' two forms: a JSON list of selections, or ``[ns/]name[@ifname]`` comma-separated."""
    value = value.strip()
    if not value:
        return []
    selections: list[NetworkSelection] = []
    if value.startswith("["):
        try:
            items = json.loads(value)
        except ValueError as e:
            raise SandboxError(f"{NETWORKS_ANNOTATION} is not valid JSON: {e}") from e
        if not isinstance(items, list):
            raise SandboxError(f"{NETWORKS_ANNOTATION} must be a JSON list")
        for index, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("name"), str):
                raise SandboxError(f"{NETWORKS_ANNOTATION}[{index}] has no string 'name'")
            cni_args = item.get("cni-args")
            if cni_args is not None and not isinstance(cni_args, dict):
                raise SandboxError(f"{NETWORKS_ANNOTATION}[{index}].cni-args must be an object")
            selections.append(
                NetworkSelection(
                    name=item["name"],
                    namespace=str(item.get("namespace") or pod_namespace),
                    interface=str(item.get("interface") or f"net{index + 1}"),
                    cni_args=cni_args,
                )
            )
        return selections
    for index, text in enumerate(part.strip() for part in value.split(",")):
        match = _NETWORK_ITEM.match(text)
        if match is None:
            raise SandboxError(f"{NETWORKS_ANNOTATION}: {text!r} is not [namespace/]name[@ifname]")
        namespace, name, interface = match.groups()
        selections.append(
            NetworkSelection(name, namespace or pod_namespace, interface or f"net{index + 1}")
        )
    return selections


@dataclass
class Attachment:
    """One network of a sandbox: the config CNI ADD got (DEL gets it again) and the result."""

    network: str
    namespace: str
    ifname: str
    config: dict[str, Any]
    result: dict[str, Any] = field(default_factory=dict)


@dataclass
class Sandbox:
    """What the kubelet made for one pod (``<state>/kubelet/<uid>.json``)."""

    namespace: str
    name: str
    uid: str
    node: str
    netns: str
    container_id: str
    attachments: list[Attachment] = field(default_factory=list)
    ready: bool = False

    @classmethod
    def from_json(cls, document: dict[str, Any]) -> Sandbox:
        attachments = [Attachment(**a) for a in document.pop("attachments", [])]
        return cls(**document, attachments=attachments)


def network_status(sandbox: Sandbox) -> list[dict[str, Any]]:
    """Multus' network-status: one entry per pod interface a CNI result names."""
    entries: list[dict[str, Any]] = []
    for attachment in sandbox.attachments:
        interfaces = attachment.result.get("interfaces") or []
        per_interface: dict[int, dict[str, Any]] = {}
        for ip in attachment.result.get("ips") or []:
            index = ip.get("interface")
            if not isinstance(index, int) or not 0 <= index < len(interfaces):
                continue
            if not interfaces[index].get("sandbox"):
                continue
            entry = per_interface.setdefault(
                index,
                {
                    "name": f"{attachment.namespace}/{attachment.network}",
                    "interface": interfaces[index].get("name", ""),
                    "ips": [],
                    "mac": interfaces[index].get("mac", ""),
                    "dns": {},
                },
            )
            entry["ips"].append(str(ip.get("address", "")).split("/", 1)[0])
        entries.extend(per_interface[i] for i in sorted(per_interface))
    return entries


def multus_network_status(pod: Any) -> list[dict[str, Any]]:
    """The network-status entries Multus wrote on ``pod`` (a ``V1Pod``); [] when none."""
    try:
        entries = json.loads(
            (pod.metadata.annotations or {}).get(NETWORK_STATUS_ANNOTATION) or "[]"
        )
    except ValueError:
        return []
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def read_nad(api_client: Any, namespace: str, name: str) -> dict[str, Any] | None:
    """The NetworkAttachmentDefinition ``namespace/name``; None when there is none."""
    from kubernetes import client  # noqa: PLC0415
    from kubernetes.client import ApiException  # noqa: PLC0415

    try:
        nad: Any = client.CustomObjectsApi(api_client).get_namespaced_custom_object(
            NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, name
        )
    except ApiException as e:
        if e.status == 404:
            return None
        raise
    return dict(nad)


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _die_with_parent() -> None:
    """In an exec'd child: be killed when the kubelet dies (no command outlives it)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class WorkQueue:
    """Pod keys to reconcile, each at most once at a time, some after a delay."""

    def __init__(self) -> None:
        self._due: dict[Key, float] = {}
        self._busy: set[Key] = set()
        self._cond = threading.Condition()

    def add(self, key: Key, delay: float = 0.0) -> None:
        due = time.monotonic() + delay
        with self._cond:
            self._due[key] = min(due, self._due.get(key, due))
            self._cond.notify_all()

    def get(self) -> Key:
        with self._cond:
            while True:
                now = time.monotonic()
                ready = [k for k, due in self._due.items() if due <= now and k not in self._busy]
                if ready:
                    key = min(ready, key=self._due.__getitem__)
                    del self._due[key]
                    self._busy.add(key)
                    return key
                waits = [due - now for k, due in self._due.items() if k not in self._busy]
                self._cond.wait(timeout=min(waits) if waits else None)

    def done(self, key: Key) -> None:
        with self._cond:
            self._busy.discard(key)
            self._cond.notify_all()


class SimKubelet:
    """Runs the pods of every host of one simulated cluster; see the module docstring."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster
        self.nodes = {cluster.layout.host_name(h): h for h in cluster.hosts}
        self.dir = cluster.state_dir / "kubelet"
        self.queue = WorkQueue()
        self.sandboxes: dict[Key, Sandbox] = {}
        self._lock = threading.Lock()
        self._failures: dict[Key, int] = {}
        self._events: dict[Key, tuple[str, str, int]] = {}  # (event name, message, count)
        self._local = threading.local()
        self.port = 0
        self.multus = cluster.multus == "real"
        # Where a plugin is looked up: the shim's (and Multus') dir, then the reference plugins.
        self.plugin_dirs = [cluster.cni_bin_dir, Path(DELEGATE_DIR)]

    # -- API access -----------------------------------------------------------

    def _core(self) -> Any:
        """A CoreV1Api for this thread (API clients are not shared between threads)."""
        core = getattr(self._local, "core", None)
        if core is None:
            from kubernetes import client, config  # noqa: PLC0415

            api = config.new_client_from_config(  # type: ignore[no-untyped-call]
                config_file=str(self.cluster.kubeconfig)
            )
            core = self._local.core = client.CoreV1Api(api)
        return core

    # -- sandbox records ---------------------------------------------------------

    def _path(self, uid: str) -> Path:
        return self.dir / f"{uid}.json"

    def _save(self, sandbox: Sandbox) -> None:
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(sandbox.uid)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(sandbox), indent=2) + "\n")
        temporary.replace(path)
        with self._lock:
            self.sandboxes[(sandbox.namespace, sandbox.name)] = sandbox

    def _forget(self, sandbox: Sandbox) -> None:
        self._path(sandbox.uid).unlink(missing_ok=True)
        with self._lock:
            key = (sandbox.namespace, sandbox.name)
            if self.sandboxes.get(key) is sandbox:
                del self.sandboxes[key]

    def _load(self) -> None:
        if not self.dir.is_dir():
            return
        for path in sorted(self.dir.glob("*.json")):
            try:
                sandbox = Sandbox.from_json(json.loads(path.read_text()))
            except (OSError, ValueError, TypeError) as e:
                log.error("ignoring unreadable sandbox record %s: %s", path, e)
                continue
            self.sandboxes[(sandbox.namespace, sandbox.name)] = sandbox

    # -- running ------------------------------------------------------------------

    def run(self) -> None:
        """Serve until killed (SIGTERM ends the process; sandboxes stay, like a kubelet's)."""
        self._load()
        if self.multus:
            multus.install(self.cluster, self.plugin_dirs)
            log.info("pods are attached by Multus (%s)", multus.find_binary())
        self.port = self._start_exec_server()
        for node in self.nodes:
            self._core().patch_node_status(
                node, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}}
            )
        log.info("kubelet for %s serving exec on 127.0.0.1:%d", ", ".join(self.nodes), self.port)
        # `multinic-sim host add/remove` changed the record: take the hosts it lists now.
        signal.signal(
            signal.SIGHUP,
            lambda *_: threading.Thread(target=self._reload, name="reload", daemon=True).start(),
        )
        for _ in range(WORKERS):
            threading.Thread(target=self._work, daemon=True).start()
        for key in list(self.sandboxes):
            self.queue.add(key)
        self._watch_pods()

    def _reload(self) -> None:
        """Serve the hosts the cluster record lists now (SIGHUP, from ``host add/remove``)."""
        try:
            cluster = SimCluster.load(self.cluster.state_dir)
            nodes = {cluster.layout.host_name(h): h for h in cluster.hosts}
            joined = [n for n in nodes if n not in self.nodes]
            left = [n for n in self.nodes if n not in nodes]
            self.cluster = cluster
            if self.multus:
                multus.install(cluster, self.plugin_dirs)
            self.nodes = nodes
            for node in joined:
                self._core().patch_node_status(
                    node, {"status": {"daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}}}}
                )
            for pod in self._core().list_pod_for_all_namespaces().items:
                self._offer(pod)
        except Exception as e:  # the next SIGHUP tries again; the old hosts keep running
            log.error("reloading the cluster record failed: %s", e)
            return
        log.info(
            "hosts now %s (joined: %s; left: %s)",
            ", ".join(nodes),
            ", ".join(joined) or "none",
            ", ".join(left) or "none",
        )

    def _watch_pods(self) -> None:
        from kubernetes import watch  # noqa: PLC0415
        from kubernetes.client import ApiException  # noqa: PLC0415
        from urllib3.exceptions import HTTPError  # noqa: PLC0415

        core = self._core()
        while True:
            try:
                listed = core.list_pod_for_all_namespaces()
                for pod in listed.items:
                    self._offer(pod)
                stream = watch.Watch().stream(  # type: ignore[no-untyped-call]
                    core.list_pod_for_all_namespaces,
                    resource_version=listed.metadata.resource_version,
                    timeout_seconds=300,
                    allow_watch_bookmarks=True,
                )
                for event in stream:
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._offer(event["object"])
            except (ApiException, HTTPError, OSError) as e:
                # 410 Gone, a dropped stream, the API server restarting: list again.
                log.info("pod watch ended (%s); listing again", e)
                time.sleep(1.0)

    def _offer(self, pod: Any) -> None:
        key = (pod.metadata.namespace, pod.metadata.name)
        if pod.spec.node_name in self.nodes or key in self.sandboxes:
            self.queue.add(key)

    def _work(self) -> None:
        while True:
            key = self.queue.get()
            try:
                self.reconcile(key)
            except Exception as e:
                failures = self._failures.get(key, 0) + 1
                self._failures[key] = failures
                delay = min(MAX_BACKOFF_S, 0.5 * 2 ** (failures - 1))
                log.warning("pod %s/%s: %s (retrying in %.1fs)", *key, e, delay)
                self.queue.add(key, delay)
            else:
                self._failures.pop(key, None)
            finally:
                self.queue.done(key)

    # -- reconciling one pod ----------------------------------------------------------

    def reconcile(self, key: Key) -> None:
        from kubernetes.client import ApiException  # noqa: PLC0415

        namespace, name = key
        core = self._core()
        try:
            pod = core.read_namespaced_pod(name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            pod = None
        sandbox = self.sandboxes.get(key)
        terminating = pod is not None and pod.metadata.deletion_timestamp is not None
        # A sandbox half made (the kubelet died during CNI ADD) is made again.
        unfinished = sandbox is not None and any(not a.result for a in sandbox.attachments)
        if sandbox is not None and (
            pod is None or pod.metadata.uid != sandbox.uid or terminating or unfinished
        ):
            self._teardown(sandbox)
            sandbox = None
        if pod is None or pod.spec.node_name not in self.nodes:
            self._events.pop(key, None)  # nothing more to say about this pod
            return
        if terminating:
            self._delete_object(pod)
            return
        if sandbox is None:
            try:
                sandbox = self._setup(pod)
            except SandboxError as e:
                self._event(pod, SANDBOX_FAILED, f"Failed to create pod sandbox: {e}")
                raise
        if pod.status.phase != "Running" or not sandbox.ready:
            self._report_running(pod, sandbox)

    def _setup(self, pod: Any) -> Sandbox:
        meta = pod.metadata
        if self.multus:
            # The pod's one CNI call: Multus reads the annotation and the NADs itself.
            config = multus.read_config(self.cluster, self.nodes[pod.spec.node_name])
            attachments = [Attachment(multus.NETWORK_NAME, "", multus.POD_IFNAME, config)]
        else:
            selections = parse_networks(
                (meta.annotations or {}).get(NETWORKS_ANNOTATION, ""), meta.namespace
            )
            attachments = [self._attachment(s) for s in selections]
        sandbox = Sandbox(
            namespace=meta.namespace,
            name=meta.name,
            uid=meta.uid,
            node=pod.spec.node_name,
            netns=f"{self.cluster.layout.prefix}-pod-{meta.namespace}-{meta.name}",
            container_id=secrets.token_hex(32),
            attachments=attachments,
        )
        # Recorded before anything is made: a crash from here on is undone on restart.
        self._save(sandbox)
        try:
            run_ip("netns", "add", sandbox.netns)
            run_ip("-n", sandbox.netns, "link", "set", "lo", "up")
            for attachment in sandbox.attachments:
                attachment.result = self.call_cni("ADD", sandbox, attachment)
                self._save(sandbox)
        except Exception as e:
            try:
                self._teardown(sandbox)
            except Exception as undo:  # the record stays: the next reconcile tries again
                log.error(
                    "undoing the failed sandbox of %s/%s: %s", meta.namespace, meta.name, undo
                )
            raise SandboxError(str(e)) from e
        return sandbox

    def _attachment(self, selection: NetworkSelection) -> Attachment:
        nad = read_nad(self._core().api_client, selection.namespace, selection.name)
        if nad is None:
            raise SandboxError(
                f"cannot find a network-attachment-definition ({selection.name}) in "
                f"namespace ({selection.namespace})"
            )
        try:
            config: dict[str, Any] = json.loads(nad["spec"]["config"])
            if not isinstance(config, dict) or not isinstance(config.get("type"), str):
                raise ValueError("no plugin 'type'")
        except (KeyError, TypeError, ValueError) as e:
            raise SandboxError(
                f"network-attachment-definition {selection.namespace}/{selection.name} has no "
                f"usable JSON spec.config: {e}"
            ) from e
        if selection.cni_args:
            config["args"] = {**(config.get("args") or {}), "cni": selection.cni_args}
        return Attachment(selection.name, selection.namespace, selection.interface, config)

    def _teardown(self, sandbox: Sandbox) -> None:
        """CNI DEL of every attachment (last first), then the namespace, then the record."""
        for attachment in reversed(sandbox.attachments):
            self.call_cni("DEL", sandbox, attachment)
        try:
            run_ip("netns", "del", sandbox.netns)
        except FabricError as e:
            if "No such file" not in str(e):
                raise
        self._forget(sandbox)
        log.info("pod %s/%s: sandbox removed", sandbox.namespace, sandbox.name)

    def _delete_object(self, pod: Any) -> None:
        from kubernetes.client import ApiException  # noqa: PLC0415

        try:
            # Options in the body: kube-apiserver ignores the query's when there is a body.
            self._core().delete_namespaced_pod(
                pod.metadata.name,
                pod.metadata.namespace,
                body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}},
            )
        except ApiException as e:
            if e.status not in (404, 409):
                raise

    def _report_running(self, pod: Any, sandbox: Sandbox) -> None:
        meta, core = pod.metadata, self._core()
        annotations = {NETNS_ANNOTATION: sandbox.netns}
        if self.multus:
            # Multus wrote network-status (PUT pods/status) during CNI ADD.
            status = multus_network_status(core.read_namespaced_pod(meta.name, meta.namespace))
        else:
            status = network_status(sandbox)
            annotations[NETWORK_STATUS_ANNOTATION] = json.dumps(status)
        core.patch_namespaced_pod(
            meta.name, meta.namespace, {"metadata": {"annotations": annotations}}
        )
        now = _now()
        containers = [c.name for c in pod.spec.containers or []]
        conditions = ["PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady"]
        core.patch_namespaced_pod_status(
            meta.name,
            meta.namespace,
            {
                "status": {
                    "phase": "Running",
                    "hostIP": self.cluster.layout.nic_address(self.nodes[sandbox.node], 0),
                    "startTime": now,
                    "conditions": [
                        {"type": c, "status": "True", "lastTransitionTime": now}
                        for c in [*conditions, "PodScheduled"]
                    ],
                    "containerStatuses": [
                        {
                            "name": c,
                            "ready": True,
                            "started": True,
                            "restartCount": 0,
                            "image": "multinic-sim/none",
                            "imageID": "",
                            "state": {"running": {"startedAt": now}},
                        }
                        for c in containers
                    ],
                }
            },
        )
        sandbox.ready = True
        self._save(sandbox)
        log.info(
            "pod %s/%s running on %s: %s%s",
            meta.namespace,
            meta.name,
            sandbox.node,
            ", ".join(
                f"{e.get('interface')} {','.join(e.get('ips') or [])}"
                for e in status
                if not e.get("default")
            )
            or "no secondary networks",
            " (network-status written by Multus)" if self.multus else "",
        )

    def _event(self, pod: Any, reason: str, message: str) -> None:
        """A Warning Event on the pod; repeats of one message raise its count."""
        from kubernetes.client import ApiException  # noqa: PLC0415

        meta, core = pod.metadata, self._core()
        key = (meta.namespace, meta.name)
        now = _now()
        previous = self._events.get(key)
        if previous is not None and previous[1] == message:
            name, count = previous[0], previous[2] + 1
            try:
                core.patch_namespaced_event(
                    name, meta.namespace, {"count": count, "lastTimestamp": now}
                )
                self._events[key] = (name, message, count)
                return
            except ApiException as e:
                if e.status != 404:
                    raise
        name = f"{meta.name}.{secrets.token_hex(8)}"
        core.create_namespaced_event(
            meta.namespace,
            {
                "metadata": {"name": name, "namespace": meta.namespace},
                "involvedObject": {
                    "kind": "Pod",
                    "apiVersion": "v1",
                    "namespace": meta.namespace,
                    "name": meta.name,
                    "uid": meta.uid,
                },
                "reason": reason,
                "message": message,
                "type": "Warning",
                "count": 1,
                "firstTimestamp": now,
                "lastTimestamp": now,
                "source": {"component": "kubelet", "host": pod.spec.node_name},
            },
        )
        self._events[key] = (name, message, 1)

    # -- CNI --------------------------------------------------------------------------

    def call_cni(self, command: str, sandbox: Sandbox, attachment: Attachment) -> dict[str, Any]:
        """Exec the attachment's plugin in the host's namespace, as a runtime (via Multus) does."""
        host = self.nodes[sandbox.node]
        plugin_type = str(attachment.config["type"])
        search = self.plugin_dirs
        plugin = next((d / plugin_type for d in search if (d / plugin_type).is_file()), None)
        if plugin is None or "/" in plugin_type:
            raise SandboxError(
                f"failed to find plugin {plugin_type!r} in path {[str(d) for d in search]}"
            )
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": sandbox.container_id,
            "CNI_NETNS": f"/var/run/netns/{sandbox.netns}",
            "CNI_IFNAME": attachment.ifname,
            "CNI_PATH": os.pathsep.join(str(d) for d in search),
            "CNI_ARGS": (
                f"IgnoreUnknown=true;K8S_POD_NAMESPACE={sandbox.namespace};"
                f"K8S_POD_NAME={sandbox.name};K8S_POD_INFRA_CONTAINER_ID={sandbox.container_id};"
                f"K8S_POD_UID={sandbox.uid}"
            ),
            "MULTINIC_AGENT_SOCKET": str(self.cluster.agent_socket(host)),
        }
        config = {"name": attachment.network, **attachment.config}
        argv = ["ip", "netns", "exec", self.cluster.layout.host_netns(host), str(plugin)]
        try:
            done = subprocess.run(
                argv,
                input=json.dumps(config),
                env=env,
                capture_output=True,
                text=True,
                timeout=CNI_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise SandboxError(
                f"plugin type={plugin_type!r} name={attachment.network!r} ({command.lower()}): "
                f"no answer in {CNI_TIMEOUT_S:.0f}s"
            ) from e
        try:
            answer = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            answer = {"code": 999, "msg": f"plugin printed no JSON: {done.stdout[:200]!r}"}
        if done.returncode != 0:
            details = f" ({answer['details']})" if answer.get("details") else ""
            if plugin_type == "multus":
                # Multus wraps its delegates' errors, so its code (999) says nothing; a real
                # kubelet's wording (containerd's) names no code and is waited out.
                raise SandboxError(
                    f'plugin type="multus" name="{attachment.network}" failed '
                    f"({command.lower()}): "
                    f"{answer.get('msg') or done.stderr.strip() or 'no message'}{details}"
                )
            raise SandboxError(
                f"plugin type={plugin_type!r} name={attachment.network!r} failed "
                f"({command.lower()}): CNI error code {answer.get('code', 999)}: "
                f"{answer.get('msg') or done.stderr.strip() or 'no message'}{details}"
            )
        return dict(answer) if isinstance(answer, dict) else {}

    # -- exec -------------------------------------------------------------------------

    def _start_exec_server(self) -> int:
        """Serve ``/exec/<namespace>/<pod>/<container>`` on 127.0.0.1 in a thread; its port."""
        ready: list[int] = []
        started = threading.Event()
        failed: list[BaseException] = []

        def serve() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            app = web.Application()
            app.router.add_get("/exec/{namespace}/{pod}/{container}", self._exec)
            runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
            try:
                loop.run_until_complete(runner.setup())
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                listener.bind(("127.0.0.1", 0))
                loop.run_until_complete(web.SockSite(runner, listener).start())
                ready.append(listener.getsockname()[1])
            except BaseException as e:
                failed.append(e)
                started.set()
                return
            started.set()
            loop.run_forever()

        threading.Thread(target=serve, name="exec-server", daemon=True).start()
        started.wait()
        if failed:
            raise SimError(f"the kubelet cannot serve exec: {failed[0]}")
        return ready[0]

    async def _exec(self, request: web.Request) -> web.StreamResponse:
        namespace, pod = request.match_info["namespace"], request.match_info["pod"]
        sandbox = self.sandboxes.get((namespace, pod))
        if sandbox is None or not sandbox.ready:
            return web.Response(status=404, text=f"pod {namespace}/{pod} is not running here")
        query = request.query
        command = query.getall("command", [])
        if not command:
            return web.Response(status=400, text="you must specify at least one command")
        # The kubelet API's names (kube-apiserver sends input/output/error=1), and the
        # pods/exec ones (stdin/stdout/stderr=true) of older multinic-sim API servers.
        if query.get("input") == "1" or query.get("stdin") in ("true", "1"):
            return web.Response(status=400, text="multinic-sim's kubelet has no stdin for exec")
        stream = web.WebSocketResponse(protocols=remote_command.PROTOCOLS)
        await stream.prepare(request)
        outputs = {
            remote_command.STDOUT: query.get("output") == "1"
            or query.get("stdout") in ("true", "1"),
            remote_command.STDERR: query.get("error") == "1"
            or query.get("stderr") in ("true", "1"),
        }
        try:
            process = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", sandbox.netns, *command,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if outputs[remote_command.STDOUT] else subprocess.DEVNULL,
                stderr=subprocess.PIPE if outputs[remote_command.STDERR] else subprocess.DEVNULL,
                preexec_fn=_die_with_parent,
            )  # fmt: skip
        except OSError as e:
            await stream.send_bytes(
                remote_command.frame(remote_command.ERROR, remote_command.failure(str(e)))
            )
            await stream.close()
            return stream

        async def pump(reader: asyncio.StreamReader | None, channel: int) -> None:
            if reader is None:
                return
            while chunk := await reader.read(65536):
                await stream.send_bytes(remote_command.frame(channel, chunk))

        async def finish() -> int:
            await asyncio.gather(
                pump(process.stdout, remote_command.STDOUT),
                pump(process.stderr, remote_command.STDERR),
            )
            return await process.wait()

        async def client_gone() -> None:
            async for _ in stream:
                pass

        running, closing = asyncio.create_task(finish()), asyncio.create_task(client_gone())
        try:
            await asyncio.wait({running, closing}, return_when=asyncio.FIRST_COMPLETED)
            if running.done() and not running.cancelled() and running.exception() is None:
                status = remote_command.exit_status(command, running.result())
                await stream.send_bytes(remote_command.frame(remote_command.ERROR, status))
        finally:
            closing.cancel()
            if process.returncode is None:
                # The client went away: the command goes too.
                with contextlib.suppress(ProcessLookupError):
                    process.kill()
                await process.wait()
            running.cancel()
            with contextlib.suppress(asyncio.CancelledError, ConnectionError):
                await running
            await stream.close()
        return stream


def run_kubelet(state_dir: Path) -> int:
    """``multinic-sim kubelet``: serve the recorded cluster's pods until killed."""
    cluster = SimCluster.load(state_dir)
    SimKubelet(cluster).run()
    return 0
