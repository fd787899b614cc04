"""The agent DaemonSet, rendered from the ``Config`` object (default ``multi-nicd``).

``agent_daemonset`` is pure: Config in, DaemonSet out.  ``AgentDeployer``
creates the default Config when it is missing, and creates or updates the
agent's ServiceAccount and DaemonSet.  The rendered DaemonSet carries a hash
of itself in an annotation; it is rewritten only when that hash changes (a
real API server adds defaults to a DaemonSet, so comparing specs would see a
difference every time).
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from multinic_core.errors import ConfigError
from multinic_core.models import (
    API_VERSION,
    Config,
    ConfigSpec,
    HostPathMount,
    ObjectMeta,
    load_resource,
)
from multinic_operator.kube import KubeApi, KubeApiError

log = logging.getLogger(__name__)

AGENT_NAME = "multinic-agent"
DEFAULT_AGENT_IMAGE = "ghcr.io/multinic/multinic-agent:0.1.0"
HASH_ANNOTATION = "multinic.fms.io/config-hash"
APP_LABELS = {
    "app.kubernetes.io/name": AGENT_NAME,
    "app.kubernetes.io/part-of": "multinic",
}
CNI_BIN_POD_PATH = "/host/opt/cni/bin"

# Host paths the agent needs whatever the Config says: where the CNI shim is
# installed, its unix socket, its durable journal, the pods' network
# namespaces, sysfs for NIC discovery, and the kubelet's device allocations.
REQUIRED_MOUNTS = (
    HostPathMount(name="cni-bin", podpath=CNI_BIN_POD_PATH, hostpath="/opt/cni/bin"),
    HostPathMount(name="run-multinic", podpath="/run/multinic", hostpath="/run/multinic"),
    HostPathMount(name="state", podpath="/var/lib/multinic", hostpath="/var/lib/multinic"),
    HostPathMount(name="netns", podpath="/var/run/netns", hostpath="/var/run/netns"),
    HostPathMount(name="sys", podpath="/sys", hostpath="/sys"),
    # The kubelet's PodResources socket: which devices (VFs, GPUs) a pod holds.
    HostPathMount(
        name="pod-resources",
        podpath="/var/lib/kubelet/pod-resources",
        hostpath="/var/lib/kubelet/pod-resources",
    ),
)
OPTIONAL_POD_KEYS = ("nodeSelector", "imagePullSecrets")
# Network namespaces are mounted by the runtime after the agent starts.
PROPAGATED_MOUNTS = frozenset({"/var/run/netns"})
HEALTH_PORT_NAME = "health"


def agent_probes(port: int) -> dict[str, Any]:
    """The agent container's port and probes: the Config's ``daemon.port`` serves
    ``/healthz``, ``/readyz`` and ``/metrics`` (host network, so on the node's addresses).

    The startup probe gives a long journal replay five minutes before liveness
    counts; readiness gates the DaemonSet's rolling update node by node.
    """
    # scheme stated as kube-apiserver defaults it, so the stored DaemonSet equals the rendered one.
    probe = {
        "httpGet": {"path": "/healthz", "port": HEALTH_PORT_NAME, "scheme": "HTTP"},
        "timeoutSeconds": 5,
    }
    return {
        "ports": [{"name": HEALTH_PORT_NAME, "containerPort": port, "protocol": "TCP"}],
        "startupProbe": {**probe, "periodSeconds": 2, "failureThreshold": 150},
        "livenessProbe": {**probe, "periodSeconds": 10, "failureThreshold": 6},
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": HEALTH_PORT_NAME, "scheme": "HTTP"},
            "timeoutSeconds": 5,
            "periodSeconds": 5,
            "failureThreshold": 3,
        },
    }


def default_config(image: str = DEFAULT_AGENT_IMAGE) -> dict[str, Any]:
    """The ``multi-nicd`` Config created when none exists."""
    config = Config(metadata=ObjectMeta(name=Config.DEFAULT_NAME))
    config.spec.daemon.image = image
    config.spec.daemon.mounts = list(REQUIRED_MOUNTS)
    return config.to_dict()


def _mounts(spec: ConfigSpec) -> list[HostPathMount]:
    """The Config's mounts, then every required one the Config does not cover."""
    mounts = list(spec.daemon.mounts)
    names = {m.name for m in mounts}
    paths = {m.podpath for m in mounts}
    for required in REQUIRED_MOUNTS:
        if required.podpath not in paths and required.name not in names:
            mounts.append(required)
    return mounts


def agent_daemonset(
    config: Config, namespace: str, image: str = DEFAULT_AGENT_IMAGE
) -> dict[str, Any]:
    """The agent DaemonSet for ``config`` in ``namespace``.

    hostNetwork, hostPID, privileged (unless the Config gives a securityContext),
    its own ServiceAccount, ``multinic-agent --node $(NODE_NAME) --health-address
    :<daemon.port>`` with NODE_NAME from the downward API and probes of that
    port, and ``multinic-agent install-cni --shim compiled`` as an init
    container that copies the CNI shim into the host's CNI bin dir.  Raises
    ConfigError when ``daemon.port`` is not a TCP port.
    """
    daemon = config.spec.daemon
    if not 1 <= daemon.port <= 65535:
        raise ConfigError(
            f"Config {config.name}: daemon.port {daemon.port} is not a TCP port (1-65535); "
            "it is the agent's health and metrics port"
        )
    image = daemon.image or image
    mounts = _mounts(config.spec)
    volume_mounts = []
    for mount in mounts:
        entry: dict[str, Any] = {"name": mount.name, "mountPath": mount.podpath}
        if mount.podpath in PROPAGATED_MOUNTS:
            entry["mountPropagation"] = "HostToContainer"
        volume_mounts.append(entry)
    volumes = [
        {"name": m.name, "hostPath": {"path": m.hostpath, "type": "DirectoryOrCreate"}}
        for m in mounts
    ]
    security = daemon.security_context or {"privileged": True}
    env: list[dict[str, Any]] = [
        {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}},
        {"name": "MULTINIC_LOG_LEVEL", "value": str(config.spec.log_level)},
        *[e for e in daemon.env if e.get("name") not in ("NODE_NAME", "MULTINIC_LOG_LEVEL")],
    ]
    container: dict[str, Any] = {
        "name": "agent",
        "image": image,
        "command": [
            "multinic-agent",
            "--node",
            "$(NODE_NAME)",
            "--health-address",
            f":{daemon.port}",
        ],
        "env": env,
        "securityContext": security,
        "volumeMounts": volume_mounts,
        **agent_probes(daemon.port),
    }
    if daemon.env_from:
        container["envFrom"] = daemon.env_from
    if daemon.resources:
        container["resources"] = daemon.resources
    if daemon.image_pull_policy:
        container["imagePullPolicy"] = daemon.image_pull_policy
    cni_bin = next(m for m in mounts if m.podpath == CNI_BIN_POD_PATH or m.name == "cni-bin")
    init: dict[str, Any] = {
        "name": "install-cni",
        "image": image,
        # The compiled shim only: a Python shim written from inside the image
        # would name an interpreter the host does not have.
        "command": [
            "multinic-agent",
            "install-cni",
            "--bin-dir",
            CNI_BIN_POD_PATH,
            "--shim",
            "compiled",
        ],
        "securityContext": security,
        "volumeMounts": [{"name": cni_bin.name, "mountPath": CNI_BIN_POD_PATH}],
    }
    if daemon.image_pull_policy:
        init["imagePullPolicy"] = daemon.image_pull_policy
    pod_spec: dict[str, Any] = {
        "serviceAccountName": AGENT_NAME,
        "hostNetwork": True,
        "hostPID": True,
        "dnsPolicy": "ClusterFirstWithHostNet",
        "priorityClassName": "system-node-critical",
        # The agent must run on every node, tainted or not, or pods there cannot start.
        "tolerations": daemon.tolerations or [{"operator": "Exists"}],
        "initContainers": [init],
        "containers": [container],
        "volumes": volumes,
    }
    if daemon.node_selector:
        pod_spec["nodeSelector"] = daemon.node_selector
    if daemon.image_pull_secret_name:
        pod_spec["imagePullSecrets"] = [{"name": daemon.image_pull_secret_name}]
    body: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "DaemonSet",
        "metadata": {
            "name": AGENT_NAME,
            "namespace": namespace,
            "labels": dict(APP_LABELS),
        },
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {
                    "labels": dict(APP_LABELS),
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(daemon.port),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": pod_spec,
            },
        },
    }
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    body["metadata"]["annotations"] = {HASH_ANNOTATION: digest}
    return body


def agent_service_account(namespace: str) -> dict[str, Any]:
    """The agent's own ServiceAccount (bound to its ClusterRole by deploy/operator)."""
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": AGENT_NAME, "namespace": namespace, "labels": dict(APP_LABELS)},
    }


class AgentDeployer:
    """Keeps the default Config, the agent ServiceAccount and DaemonSet in place."""

    def __init__(self, api: KubeApi, namespace: str, image: str = DEFAULT_AGENT_IMAGE) -> None:
        self.api = api
        self.namespace = namespace
        self.image = image

    def ensure_default_config(self) -> bool:
        """Create ``multi-nicd`` when it does not exist; True when it was created."""
        try:
            if self.api.get(API_VERSION, "Config", Config.DEFAULT_NAME) is not None:
                return False
            self.api.create(default_config(self.image))
        except KubeApiError as e:
            if e.status != 404:
                raise
            raise KubeApiError(
                e.verb,
                e.what,
                e.status,
                "the multinic CRDs are not installed: kubectl apply -f deploy/crds/",
            ) from e
        log.info("created the default Config %s", Config.DEFAULT_NAME)
        return True

    def apply(self, body: dict[str, Any]) -> bool:
        """Render the DaemonSet from Config ``body`` and write it if it changed.

        Raises ConfigError (naming the field) for an invalid Config.
        Returns True when something was written.
        """
        config = load_resource(Config, body)
        wrote = False
        if self.api.get("v1", "ServiceAccount", AGENT_NAME, self.namespace) is None:
            self.api.create(agent_service_account(self.namespace))
            wrote = True
        desired = agent_daemonset(config, self.namespace, self.image)
        existing = self.api.get("apps/v1", "DaemonSet", AGENT_NAME, self.namespace)
        if existing is None:
            self.api.create(desired)
            log.info("created DaemonSet %s/%s", self.namespace, AGENT_NAME)
            return True
        have = ((existing.get("metadata") or {}).get("annotations") or {}).get(HASH_ANNOTATION)
        if have == desired["metadata"]["annotations"][HASH_ANNOTATION]:
            return wrote
        patch = {
            "metadata": {
                "resourceVersion": existing["metadata"]["resourceVersion"],
                "labels": desired["metadata"]["labels"],
                "annotations": desired["metadata"]["annotations"],
            },
            "spec": desired["spec"],
        }
        # A merge patch keeps keys it does not mention: clear the optional
        # pod-level ones the Config no longer sets.
        pod_spec = patch["spec"]["template"]["spec"]
        for key in OPTIONAL_POD_KEYS:
            pod_spec.setdefault(key, None)
        self.api.patch("apps/v1", "DaemonSet", AGENT_NAME, patch, self.namespace)
        log.info("updated DaemonSet %s/%s from Config %s", self.namespace, AGENT_NAME, config.name)
        return True
