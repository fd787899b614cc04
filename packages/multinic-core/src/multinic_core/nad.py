"""The NetworkAttachmentDefinitions of a network (SPEC section 3).

The operator writes one NAD per target namespace.  ``nad_config`` builds the
``spec.config`` content; ``nad_object`` the whole object.  Serialisation is
deterministic (fixed top-level order as in the predecessor, nested keys
sorted), so the operator can compare the desired NAD with the existing one
and update only when something changed.
"""

from __future__ import annotations

import json
from typing import Any

from multinic_core.delegates import canonical_json
from multinic_core.hooktypes import NetworkAttachment
from multinic_core.models import API_VERSION, Config, ConfigSpec, MultiNicNetwork

NAD_API_VERSION = "k8s.cni.cncf.io/v1"
NAD_KIND = "NetworkAttachmentDefinition"
GENERATED_LABEL = "multi-nic-cni-generated"
RESOURCE_NAME_ANNOTATION = "k8s.v1.cni.cncf.io/resourceName"
"""Annotation naming the device-plugin resource a pod of this NAD must request."""

RUNTIME_CAPABILITIES = {"ips": True, "mac": True}
"""The CNI capabilities the agent honours (CNI conventions): with them declared,
Multus (libcni) passes a pod's requested addresses and MAC as
``runtimeConfig.ips`` / ``runtimeConfig.mac``.  Multus' ``deviceID`` needs no
capability (it writes the top-level ``deviceID`` itself)."""

# The defaults of the Config object, so that rendering without one agrees with it.
DEFAULT_CNI_TYPE: str = ConfigSpec().cni_type
DEFAULT_DAEMON_PORT: int = ConfigSpec().daemon.port


def nad_config(
    network: MultiNicNetwork,
    attachment: NetworkAttachment,
    cni_type: str = DEFAULT_CNI_TYPE,
    daemon_port: int = DEFAULT_DAEMON_PORT,
) -> dict[str, Any]:
    """The content of a NAD's ``spec.config`` for ``network``.

    Called by the operator whenever the network or its driver's answer
    changes.  ``attachment`` is the driver's ``multinic_network_attachment``.

    :returns: ``cniVersion`` (the plugin's), ``name``, ``type`` (the CNI shim),
        ``ipam`` (the parsed ipam JSON), ``dns`` (the plugin's, or ``{}``),
        ``plugin`` (the driver's block), ``subnet``, ``masterNets``,
        ``multiNICIPAM``, the predecessor's ``daemonIP``/``daemonPort``
        (kept for compatibility; the shim uses the agent's unix socket), and
        ``capabilities`` (:data:`RUNTIME_CAPABILITIES`).
    """
    plugin = canonical_json(attachment.plugin)
    dns = network.spec.plugin.dns
    return {
        "cniVersion": plugin.get("cniVersion") or network.spec.plugin.cni_version,
        "name": network.name,
        "type": cni_type,
        "ipam": canonical_json(json.loads(network.spec.ipam)),
        "dns": canonical_json(
            dns.model_dump(mode="json", by_alias=True, exclude_defaults=True) if dns else {}
        ),
        "plugin": plugin,
        "subnet": network.spec.subnet,
        "masterNets": list(network.spec.master_nets),
        "multiNICIPAM": network.spec.multi_nic_ipam,
        "daemonIP": "",
        "daemonPort": daemon_port,
        "capabilities": dict(RUNTIME_CAPABILITIES),
    }


def nad_config_json(config: dict[str, Any]) -> str:
    """``config`` as the compact, stable JSON string stored in ``spec.config``."""
    return json.dumps(config, separators=(",", ":"), ensure_ascii=False)


def owner_reference(network: MultiNicNetwork) -> dict[str, Any]:
    """The owner reference that makes a dependent object go with ``network``.

    ``uid`` is left out when the network has none (offline rendering); the API
    server requires it, so objects for a real cluster come from a stored network.
    """
    reference: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "MultiNicNetwork",
        "name": network.name,
    }
    if network.metadata.uid:
        reference["uid"] = network.metadata.uid
    reference["controller"] = True
    reference["blockOwnerDeletion"] = True
    return reference


def nad_object(
    network: MultiNicNetwork,
    attachment: NetworkAttachment,
    namespace: str,
    config: Config | None = None,
) -> dict[str, Any]:
    """The NetworkAttachmentDefinition of ``network`` in ``namespace``.

    :param config: the operator's ``Config`` (``cniType``, ``daemon.port``);
        its defaults when ``None``.
    :returns: the object with name = network name, label
        ``multi-nic-cni-generated: "true"``, the driver's annotations, an owner
        reference to the network, and ``spec.config`` as a JSON string.
    """
    spec = config.spec if config is not None else ConfigSpec()
    content = nad_config(network, attachment, spec.cni_type, spec.daemon.port)
    return {
        "apiVersion": NAD_API_VERSION,
        "kind": NAD_KIND,
        "metadata": {
            "name": network.name,
            "namespace": namespace,
            "labels": {GENERATED_LABEL: "true"},
            "annotations": dict(sorted(attachment.annotations.items())),
            "ownerReferences": [owner_reference(network)],
        },
        "spec": {"config": nad_config_json(content)},
    }
