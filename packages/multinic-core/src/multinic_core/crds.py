"""CustomResourceDefinitions generated from the pydantic models.

``deploy/crds/*.yaml`` is the output of ``multinic crds``; a test fails when the
committed files differ from what this module generates, so the models stay the
single source of truth.  The schemas are *structural* (every node typed, no
``$ref``, no ``additionalProperties`` beside ``properties``), as
apiextensions.k8s.io/v1 requires.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from multinic_core.models import GROUP, RESOURCES, VERSION, Resource

# (name, type, jsonPath) of the columns `kubectl get` shows; Age is appended.
PRINTER_COLUMNS: dict[str, list[tuple[str, str, str]]] = {
    "MultiNicNetwork": [
        ("Subnet", "string", ".spec.subnet"),
        ("Plugin", "string", ".spec.plugin.type"),
        ("Config", "string", ".status.configStatus"),
        ("Routes", "string", ".status.routeStatus"),
        ("Hosts", "integer", ".status.discovery.cidrProcessed"),
    ],
    "CIDR": [
        ("Subnet", "string", ".spec.config.subnet"),
        ("HostBlock", "integer", ".spec.config.hostBlock"),
        ("InterfaceBlock", "integer", ".spec.config.interfaceBlock"),
    ],
    "IPPool": [
        ("PodCIDR", "string", ".spec.podCIDR"),
        ("Host", "string", ".spec.hostName"),
        ("Interface", "string", ".spec.interfaceName"),
    ],
    "HostInterface": [
        ("Host", "string", ".spec.hostName"),
    ],
    "Config": [
        ("CNI", "string", ".spec.cniType"),
        ("IPAM", "string", ".spec.ipamType"),
        ("Image", "string", ".spec.daemon.image"),
    ],
    "DeviceClass": [],
}

# JSON-schema keywords a structural CRD schema may not carry, or that add
# nothing to the API server's validation.
_DROPPED_KEYWORDS = {"title", "default", "$defs", "discriminator", "examples"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Turn a pydantic JSON schema node into a structural OpenAPI v3 schema node."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _structural(merged, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        nullable = len(options) < len(node["anyOf"])
        if len(options) == 1:
            rest = {k: v for k, v in node.items() if k != "anyOf"}
            single: dict[str, Any] = _structural({**options[0], **rest}, defs)
            if nullable:
                single["nullable"] = True
            return single
        raise ValueError(f"cannot express a union of {len(options)} types structurally: {node}")
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYWORDS:
            continue
        if key == "properties":
            out[key] = {name: _structural(sub, defs) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "const":
            out["enum"] = [value]
        else:
            out[key] = value
    if "const" in node and "type" not in out:
        out["type"] = "string"
    if "properties" in out:
        out.setdefault("type", "object")
        # Structural schemas forbid additionalProperties next to properties;
        # unknown fields are pruned by the API server, as for built-in kinds.
        out.pop("additionalProperties", None)
        if "required" in out:
            out["required"] = sorted(out["required"])
    elif out.get("type") == "object" and out.get("additionalProperties") in (True, {}):
        # dict[str, Any]: free-form, e.g. a securityContext or resources.
        out.pop("additionalProperties")
        out["x-kubernetes-preserve-unknown-fields"] = True
    elif "type" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        # Any: free-form value.
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def openapi_schema(resource: type[Resource]) -> dict[str, Any]:
    """The structural ``openAPIV3Schema`` of one resource."""
    raw = resource.model_json_schema(by_alias=True, mode="validation")
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    props = schema["properties"]
    props["apiVersion"] = {"type": "string"}
    props["kind"] = {"type": "string"}
    # The API server owns metadata validation; CRDs may only say it is an object.
    props["metadata"] = {"type": "object"}
    schema["required"] = [r for r in schema.get("required", []) if r in ("spec",)]
    if not schema["required"]:
        del schema["required"]
    schema["description"] = resource.description
    return schema


def crd(resource: type[Resource]) -> dict[str, Any]:
    """The apiextensions.k8s.io/v1 CustomResourceDefinition of one resource."""
    names: dict[str, Any] = {
        "kind": resource.kind_name,
        "listKind": f"{resource.kind_name}List",
        "plural": resource.plural,
        "singular": resource.kind_name.lower(),
    }
    if resource.short_names:
        names["shortNames"] = list(resource.short_names)
    columns = [
        {"name": name, "type": type_, "jsonPath": path}
        for name, type_, path in PRINTER_COLUMNS[resource.kind_name]
    ]
    columns.append({"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"})
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{resource.plural}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "names": names,
            "scope": "Cluster",
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": openapi_schema(resource)},
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": columns,
                }
            ],
        },
    }


def all_crds() -> list[dict[str, Any]]:
    return [crd(r) for r in RESOURCES]


def crd_filename(resource: type[Resource]) -> str:
    return f"{GROUP}_{resource.plural}.yaml"


def render_crd(resource: type[Resource]) -> str:
    header = "# Generated by `multinic crds` from multinic_core.models; do not edit.\n"
    return header + yaml.safe_dump(crd(resource), sort_keys=False, width=100)


def write_crds(out_dir: Path) -> list[Path]:
    """Write one YAML file per CRD into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for resource in RESOURCES:
        path = out_dir / crd_filename(resource)
        path.write_text(render_crd(resource))
        written.append(path)
    return written
