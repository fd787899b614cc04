"""Simulated pods: a Pod object plus a network namespace attached through the CNI shim.

The simulation has no kubelet and no Multus, so ``pod add`` does their part
exactly as they would: it creates the Pod object (``spec.nodeName``), a pod
network namespace ``<prefix>-pod-<name>``, reads the network's
NetworkAttachmentDefinition, and execs the ``multi-nic`` shim with the CNI
environment (``CNI_COMMAND=ADD``, ``CNI_NETNS``, ``CNI_IFNAME=net1``,
``CNI_ARGS=K8S_POD_*``...) and the NAD's config on stdin, with ``args.cni``
holding the pod's cni-args (``{"nics": N}``) as Multus passes them. The
shim talks to the agent of the pod's host over that host's unix socket.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from multinic_sim.cluster_builder import DELEGATE_DIR, SimCluster
from multinic_sim.errors import SimError
from multinic_sim.fabric import FabricError, run_ip

log = logging.getLogger(__name__)

POD_IFNAME = "net1"
NAD_GROUP, NAD_VERSION, NAD_PLURAL = "k8s.cni.cncf.io", "v1", "network-attachment-definitions"
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"
CODE_TRY_AGAIN = 11
CNI_TIMEOUT_S = 120.0
_POD_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?\Z")


class CniCallError(SimError):
    """The CNI shim answered with an error; ``code`` is the CNI error code."""

    def __init__(self, command: str, pod: str, code: int, msg: str, details: str = "") -> None:
        text = f"CNI {command} of pod {pod} failed with code {code}: {msg}"
        super().__init__(f"{text} ({details})" if details else text)
        self.code = code


@dataclass
class PodRecord:
    """A simulated pod as ``pod add`` made it (``<state>/pods/<name>.json``)."""

    name: str
    namespace: str
    uid: str
    node: str
    network: str
    netns: str
    container_id: str
    nics: int | None = None
    result: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class PodInterface:
    """An interface of a pod, read live from its namespace."""

    name: str
    address: str  # with prefix length
    mac: str

    @property
    def ip(self) -> str:
        return self.address.split("/", 1)[0]

    @property
    def nic_index(self) -> int:
        """``net1-<k>`` carries the pod's k-th selected NIC."""
        return int(self.name.rsplit("-", 1)[1])


class PodRuntime:
    """Adds, deletes and lists the simulated pods of one cluster."""

    def __init__(self, cluster: SimCluster) -> None:
        self.cluster = cluster

    # -- records ------------------------------------------------------------

    def _record_path(self, name: str) -> Path:
        return self.cluster.pods_dir / f"{name}.json"

    def records(self) -> list[PodRecord]:
        """Every recorded pod, by name."""
        if not self.cluster.pods_dir.is_dir():
            return []
        found = []
        for path in sorted(self.cluster.pods_dir.glob("*.json")):
            found.append(PodRecord(**json.loads(path.read_text())))
        return found

    def record(self, name: str) -> PodRecord:
        try:
            return PodRecord(**json.loads(self._record_path(name).read_text()))
        except FileNotFoundError as e:
            raise SimError(f"no simulated pod {name!r} (see `multinic-sim pod list`)") from e

    def _save(self, record: PodRecord) -> None:
        self.cluster.pods_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._record_path(record.name)
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(asdict(record), indent=2) + "\n")
        temporary.replace(path)

    # -- add ----------------------------------------------------------------

    def add(
        self,
        name: str,
        host: str,
        network: str,
        *,
        nics: int | None = None,
        namespace: str = "default",
        timeout: float = 60.0,
    ) -> PodRecord:
        """Create the pod and attach it; retries while the agent says "try again" (code 11).

        On failure nothing is left: the attachment is deleted, then the
        namespace and the Pod object.
        """
        if not _POD_NAME.match(name):
            raise SimError(f"pod name {name!r}: 1-32 lowercase letters, digits and '-'")
        if nics is not None and nics < 1:
            raise SimError(f"--nics must be at least 1, not {nics}")
        if self._record_path(name).exists():
            raise SimError(f"pod {name!r} already exists")
        host_index = self.cluster.host_index(host)
        node = self.cluster.layout.host_name(host_index)
        config = self._network_config(network, namespace, nics)
        record = PodRecord(
            name=name,
            namespace=namespace,
            uid="",
            node=node,
            network=network,
            netns=f"{self.cluster.layout.prefix}-pod-{name}",
            container_id=secrets.token_hex(32),
            nics=nics,
        )
        with self.cluster.api() as api:
            from kubernetes import client  # noqa: PLC0415

            core: Any = client.CoreV1Api(api)
            pod = core.create_namespaced_pod(
                namespace,
                {
                    "metadata": {
                        "name": name,
                        "annotations": {
                            "k8s.v1.cni.cncf.io/networks": json.dumps(
                                [
                                    {
                                        "name": network,
                                        **({"cni-args": {"nics": nics}} if nics else {}),
                                    }
                                ]
                            )
                        },
                    },
                    "spec": {
                        "nodeName": node,
                        "containers": [{"name": "main", "image": "multinic-sim/none"}],
                    },
                },
            )
            record.uid = pod.metadata.uid
            self._save(record)
            try:
                run_ip("netns", "add", record.netns)
                run_ip("-n", record.netns, "link", "set", "lo", "up")
                record.result = self._add_with_retry(record, config, timeout)
                self._save(record)
                core.patch_namespaced_pod(
                    name,
                    namespace,
                    {
                        "metadata": {
                            "annotations": {NETWORK_STATUS_ANNOTATION: self._status(record)}
                        }
                    },
                )
            except BaseException:
                self._remove(record, config, core)
                raise
        log.info("pod %s/%s on %s attached to %s", namespace, name, node, network)
        return record

    def _network_config(self, network: str, namespace: str, nics: int | None) -> dict[str, Any]:
        from kubernetes import client  # noqa: PLC0415
        from kubernetes.client import ApiException  # noqa: PLC0415

        with self.cluster.api() as api:
            try:
                custom: Any = client.CustomObjectsApi(api)
                nad = custom.get_namespaced_custom_object(
                    NAD_GROUP, NAD_VERSION, namespace, NAD_PLURAL, network
                )
            except ApiException as e:
                if e.status == 404:
                    raise SimError(
                        f"no NetworkAttachmentDefinition {namespace}/{network}: is the "
                        f"MultiNicNetwork {network!r} applied and does it target {namespace}?"
                    ) from e
                raise
        try:
            config: dict[str, Any] = json.loads(nad["spec"]["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise SimError(f"NAD {namespace}/{network} has no JSON spec.config: {e}") from e
        if nics is not None:
            # What Multus does with the selection annotation's "cni-args".
            config["args"] = {**config.get("args", {}), "cni": {"nics": nics}}
        return config

    def _add_with_retry(
        self, record: PodRecord, config: dict[str, Any], timeout: float
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                return self.call_cni("ADD", record, config)
            except CniCallError as e:
                # Code 11 is the agent saying "not ready yet" (no pool, no routes):
                # a kubelet retries the sandbox, and so do we.
                if e.code != CODE_TRY_AGAIN or time.monotonic() > deadline:
                    raise
                log.info("%s; retrying", e)
                time.sleep(1.0)

    # -- CNI ------------------------------------------------------------------

    def call_cni(self, command: str, record: PodRecord, config: dict[str, Any]) -> dict[str, Any]:
        """Exec the shim as a runtime would; the parsed result, or CniCallError."""
        host = self.cluster.host_index(record.node)
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": record.container_id,
            "CNI_NETNS": f"/var/run/netns/{record.netns}",
            "CNI_IFNAME": POD_IFNAME,
            "CNI_PATH": f"{self.cluster.cni_bin_dir}{os.pathsep}{DELEGATE_DIR}",
            # As Multus and the container runtimes pass them: IgnoreUnknown lets
            # delegates that know no K8S_* keys accept the arguments.
            "CNI_ARGS": (
                f"IgnoreUnknown=true;K8S_POD_NAMESPACE={record.namespace};"
                f"K8S_POD_NAME={record.name};K8S_POD_INFRA_CONTAINER_ID={record.container_id};"
                f"K8S_POD_UID={record.uid}"
            ),
            "MULTINIC_AGENT_SOCKET": str(self.cluster.agent_socket(host)),
        }
        try:
            done = subprocess.run(
                [str(self.cluster.shim)],
                input=json.dumps(config),
                env=env,
                capture_output=True,
                text=True,
                timeout=CNI_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as e:
            raise CniCallError(command, record.name, 999, f"no answer in {CNI_TIMEOUT_S}s") from e
        try:
            answer = json.loads(done.stdout) if done.stdout.strip() else {}
        except ValueError:
            answer = {"code": 999, "msg": f"shim printed no JSON: {done.stdout[:200]!r}"}
        if done.returncode != 0:
            raise CniCallError(
                command,
                record.name,
                int(answer.get("code", 999)),
                str(answer.get("msg", done.stderr.strip() or "no message")),
                str(answer.get("details", "")),
            )
        return dict(answer)

    def _status(self, record: PodRecord) -> str:
        """Multus' network-status annotation for the attachment."""
        interfaces = record.result.get("interfaces", [])
        per_interface: dict[int, dict[str, Any]] = {}
        for ip in record.result.get("ips", []):
            index = ip.get("interface")
            if index is None or index >= len(interfaces):
                continue
            entry = per_interface.setdefault(
                index,
                {
                    "name": f"{record.namespace}/{record.network}",
                    "interface": interfaces[index].get("name", ""),
                    "mac": interfaces[index].get("mac", ""),
                    "ips": [],
                },
            )
            entry["ips"].append(str(ip.get("address", "")).split("/", 1)[0])
        return json.dumps([per_interface[i] for i in sorted(per_interface)])

    # -- delete ---------------------------------------------------------------

    def delete(self, name: str) -> PodRecord:
        """Detach (CNI DEL), then remove the namespace, the Pod object and the record."""
        record = self.record(name)
        config = self._network_config_or_empty(record)
        with self.cluster.api() as api:
            from kubernetes import client  # noqa: PLC0415

            self._remove(record, config, client.CoreV1Api(api), strict=True)
        log.info("pod %s/%s deleted", record.namespace, name)
        return record

    def _network_config_or_empty(self, record: PodRecord) -> dict[str, Any]:
        try:
            return self._network_config(record.network, record.namespace, record.nics)
        except SimError:
            # The NAD may be gone already; DEL works from the agent's attachment record.
            return {"cniVersion": "1.0.0", "name": record.network, "type": "multi-nic"}

    def _remove(
        self, record: PodRecord, config: dict[str, Any], core: Any, *, strict: bool = False
    ) -> None:
        from kubernetes.client import ApiException  # noqa: PLC0415

        try:
            self.call_cni("DEL", record, config)
        except CniCallError:
            if strict:
                raise
            log.warning("CNI DEL of pod %s failed while undoing its ADD", record.name)
        try:
            run_ip("netns", "del", record.netns)
        except FabricError as e:
            if "No such file" not in str(e):
                raise
        try:
            core.delete_namespaced_pod(record.name, record.namespace)
        except ApiException as e:
            if e.status != 404:
                raise
        self._record_path(record.name).unlink(missing_ok=True)

    # -- list -------------------------------------------------------------------

    def interfaces(self, record: PodRecord) -> list[PodInterface]:
        """The pod's ``net1-<k>`` interfaces with their IPv4 addresses, from its namespace."""
        try:
            links = json.loads(run_ip("-j", "-n", record.netns, "-4", "addr", "show"))
        except FabricError:
            return []
        found = []
        for link in links:
            ifname = str(link.get("ifname", ""))
            if not ifname.startswith(f"{POD_IFNAME}-"):
                continue
            for address in link.get("addr_info", []):
                found.append(
                    PodInterface(
                        name=ifname,
                        address=f"{address['local']}/{address['prefixlen']}",
                        mac=str(link.get("address", "")),
                    )
                )
        return sorted(found, key=lambda i: i.nic_index)
