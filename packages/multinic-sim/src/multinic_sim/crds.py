"""CRDs of other projects that a multinic cluster has, for installing into the
local API server (a real cluster gets them from Multus itself)."""

from __future__ import annotations

from typing import Any

# Multus' NetworkAttachmentDefinition, as k8snetworkplumbingwg/multus-cni ships it.
NETWORK_ATTACHMENT_DEFINITION_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "network-attachment-definitions.k8s.cni.cncf.io"},
    "spec": {
        "group": "k8s.cni.cncf.io",
        "scope": "Namespaced",
        "names": {
            "plural": "network-attachment-definitions",
            "singular": "network-attachment-definition",
            "kind": "NetworkAttachmentDefinition",
            "shortNames": ["net-attach-def"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "description": "NetworkAttachmentDefinition is a CRD schema specified by the "
                        "Network Plumbing Working Group to express the intent for "
                        "attaching pods to one or more logical or physical networks.",
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "description": "NetworkAttachmentDefinition spec defines the desired "
                                "state of a network attachment",
                                "type": "object",
                                "properties": {
                                    "config": {
                                        "description": "NetworkAttachmentDefinition config is a "
                                        "JSON-formatted CNI configuration",
                                        "type": "string",
                                    }
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}
