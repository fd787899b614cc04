"""The CRD manifests are generated from the models, structural, and valid for Kubernetes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from multinic_core.crds import all_crds, crd, crd_filename, render_crd
from multinic_core.models import RESOURCES, MultiNicNetwork, Resource

ROOT = Path(__file__).resolve().parents[3]
CRD_DIR = ROOT / "deploy" / "crds"
KUBERNETES_VERSION = "1.34.0"


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_committed_crd_is_what_the_models_generate(resource: type[Resource]) -> None:
    committed = CRD_DIR / crd_filename(resource)
    assert committed.exists(), "run `multinic crds` and commit deploy/crds/"
    assert committed.read_text() == render_crd(resource), (
        f"{committed.name} is stale: run `multinic crds` and commit the result"
    )


def test_no_other_files_in_the_crd_directory() -> None:
    expected = {crd_filename(r) for r in RESOURCES}
    assert {p.name for p in CRD_DIR.glob("*.yaml")} == expected


@pytest.mark.parametrize("manifest", all_crds(), ids=lambda c: c["metadata"]["name"])
def test_crd_is_a_valid_apiextensions_v1_object(manifest: dict[str, Any]) -> None:
    # kubernetes-validate carries the OpenAPI schemas of Kubernetes releases.
    kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)


def structural_violations(node: dict[str, Any], path: str) -> list[str]:
    """The rules of structural schemas (apiextensions.k8s.io/v1) that our schemas must keep."""
    problems = []
    free_form = node.get("x-kubernetes-preserve-unknown-fields") or node.get(
        "x-kubernetes-int-or-string"
    )
    if not node.get("type") and not free_form:
        problems.append(f"{path}: no type")
    for keyword in ("$ref", "$defs", "anyOf", "oneOf", "allOf", "not", "const"):
        if keyword in node:
            problems.append(f"{path}: uses {keyword}")
    if "properties" in node and "additionalProperties" in node:
        problems.append(f"{path}: both properties and additionalProperties")
    for name, sub in node.get("properties", {}).items():
        problems += structural_violations(sub, f"{path}.{name}")
    if isinstance(node.get("items"), dict):
        problems += structural_violations(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        problems += structural_violations(node["additionalProperties"], f"{path}{{}}")
    return problems


@pytest.mark.parametrize("resource", RESOURCES, ids=lambda r: r.kind_name)
def test_schema_is_structural(resource: type[Resource]) -> None:
    version = crd(resource)["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]
    assert structural_violations(schema, resource.kind_name) == []
    assert schema["properties"]["metadata"] == {"type": "object"}
    assert version["subresources"] == {"status": {}}
    assert crd(resource)["spec"]["scope"] == "Cluster"


def test_network_has_printer_columns_for_kubectl_get() -> None:
    columns = crd(MultiNicNetwork)["spec"]["versions"][0]["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Subnet", "Plugin", "Config", "Routes", "Hosts", "Age"]
    assert {c["jsonPath"] for c in columns} >= {".spec.subnet", ".status.routeStatus"}


def schema_of(kind: str) -> dict[str, Any]:
    manifest = next(c for c in all_crds() if c["spec"]["names"]["kind"] == kind)
    return dict(manifest["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_example_objects_validate_against_their_crd_schema() -> None:
    network = yaml.safe_load((ROOT / "examples/worked/network.yaml").read_text())
    jsonschema.validate(network, schema_of("MultiNicNetwork"))
    for host in yaml.safe_load_all((ROOT / "examples/worked/hosts.yaml").read_text()):
        jsonschema.validate(host, schema_of("HostInterface"))


def test_crd_schema_rejects_what_the_api_server_must_reject() -> None:
    network = yaml.safe_load((ROOT / "examples/worked/network.yaml").read_text())
    del network["spec"]["plugin"]
    with pytest.raises(jsonschema.ValidationError, match="'plugin' is a required property"):
        jsonschema.validate(network, schema_of("MultiNicNetwork"))


def test_multinic_crds_writes_the_files(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "multinic_core.cli", "crds", "--out", str(tmp_path / "crds")],
        capture_output=True,
        text=True,
        check=True,
    )
    written = sorted(p.name for p in (tmp_path / "crds").iterdir())
    assert written == sorted(crd_filename(r) for r in RESOURCES)
    assert len(result.stdout.splitlines()) == len(RESOURCES)
