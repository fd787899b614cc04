"""Admission of multinic objects: what the CRDs refuse when an object is written.

CRD CEL rules (``x-kubernetes-validations``) refuse a bad CIDR or address, and
a hostIP outside its netAddress, with the rule's message, as ``kubectl apply``
would show it; strict field validation (kubectl's default) refuses an unknown
field such as a ``masterNet:`` typo. The double evaluates no CEL: those tests
run against the real kube-apiserver (``MULTINIC_TEST_KUBECONFIG``, as
scripts/test-real-cluster does in CI); the unknown-field test runs on both.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from multinic_core.crds import all_crds
from multinic_sim.testing import KubeTestApi

GROUP, VERSION = "multinic.fms.io", "v1"


@pytest.fixture(scope="module")
def multinic_crds(kube_api: KubeTestApi) -> Iterator[None]:
    crds = all_crds()
    for crd in crds:
        kube_api.apply_crd(crd)
    yield
    for crd in crds:
        kube_api.delete_crd(crd["metadata"]["name"])


def network(name: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "subnet": "192.168.0.0/16",
        "ipam": json.dumps({"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2}),
        "multiNICIPAM": True,
        "masterNets": ["10.0.1.0/24"],
        "plugin": {"cniVersion": "1.0.0", "type": "macvlan"},
        **spec,
    }
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "MultiNicNetwork",
            "metadata": {"name": name}, "spec": body}  # fmt: skip


def host(name: str, net_address: str, host_ip: str) -> dict[str, Any]:
    nic = {"interfaceName": "eth1", "netAddress": net_address, "hostIP": host_ip}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "HostInterface",
            "metadata": {"name": name, "labels": {"multi-nic-unmanaged": "true"}},
            "spec": {"hostName": name, "interfaces": [nic]}}  # fmt: skip


def create(kube_api: KubeTestApi, body: dict[str, Any], **options: Any) -> dict[str, Any]:
    plural = {"MultiNicNetwork": "multinicnetworks", "HostInterface": "hostinterfaces"}
    created: dict[str, Any] = kube_api.custom_objects.create_cluster_custom_object(
        GROUP, VERSION, plural[body["kind"]], body, **options
    )
    return created


def refusal(kube_api: KubeTestApi, body: dict[str, Any], **options: Any) -> str:
    with pytest.raises(ApiException) as caught:
        create(kube_api, body, **options)
    assert caught.value.status in (400, 422), caught.value.body
    return str(json.loads(caught.value.body)["message"])


def delete(kube_api: KubeTestApi, plural: str, name: str) -> None:
    kube_api.custom_objects.delete_cluster_custom_object(GROUP, VERSION, plural, name)


@pytest.mark.usefixtures("multinic_crds")
def test_a_typo_field_is_refused_by_strict_field_validation(kube_api: KubeTestApi) -> None:
    body = network("typo")
    body["spec"]["masterNet"] = body["spec"].pop("masterNets")
    message = refusal(kube_api, body, field_validation="Strict")
    assert 'unknown field "spec.masterNet"' in message, message


@pytest.mark.usefixtures("multinic_crds")
def test_bad_cidrs_and_a_host_ip_outside_its_network_are_refused_with_the_rule(
    kube_api: KubeTestApi,
) -> None:
    if not kube_api.is_real_cluster:
        pytest.skip(
            "the API server double evaluates no CEL rules; run with MULTINIC_TEST_KUBECONFIG "
            "pointing at a real kube-apiserver (scripts/test-real-cluster does in CI)"
        )
    message = refusal(kube_api, network("bad-subnet", subnet="10.0.0.0/33"))
    assert "spec.subnet" in message
    assert "must be empty or a CIDR" in message
    message = refusal(kube_api, network("bad-master", masterNets=["eth1"]))
    assert "spec.masterNets[0]" in message
    assert "must be a CIDR" in message
    message = refusal(kube_api, host("outside", "10.0.1.0/24", "10.0.2.11"))
    assert "hostIP must be an address inside netAddress" in message
    # What is right is accepted (no-subnet mode included).
    create(kube_api, network("good", subnet=""))
    create(kube_api, host("inside", "10.0.1.0/24", "10.0.1.11"))
    delete(kube_api, "multinicnetworks", "good")
    delete(kube_api, "hostinterfaces", "inside")
