"""Shared fixtures of the multinic-sim tests: the test CRD and error helpers."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes.client import ApiException

from multinic_sim.cluster_builder import SimCluster
from multinic_sim.testing import KubeTestApi

DATA = Path(__file__).parent / "data"
GROUP, VERSION, PLURAL = "test.multinic.dev", "v1", "widgets"
CRD_NAME = f"{PLURAL}.{GROUP}"


SIM = str(Path(sys.executable).parent / "multinic-sim")


@contextmanager
def simulated_cluster(
    tmp_path_factory: pytest.TempPathFactory, tag: str, *, hosts: int, nics: int
) -> Iterator[SimCluster]:
    """``multinic-sim up`` a cluster (root only), ``down`` it afterwards."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, netlink)")
    state_dir = tmp_path_factory.mktemp(tag) / "state"
    prefix = f"{tag[0]}{secrets.token_hex(3)}"
    try:
        up = subprocess.run(
            [SIM, "up", "--hosts", str(hosts), "--nics", str(nics), "--prefix", prefix,
             "--state-dir", str(state_dir)],
            capture_output=True, text=True, check=False, timeout=300,
        )  # fmt: skip
        assert up.returncode == 0, up.stdout + up.stderr
        assert "cluster up: KUBECONFIG=" in up.stdout
        yield SimCluster.load(state_dir)
    finally:
        subprocess.run(
            [SIM, "down", "--state-dir", str(state_dir), "--prefix", prefix],
            capture_output=True, check=False, timeout=300,
        )  # fmt: skip


def load_yaml(name: str) -> Any:
    return yaml.safe_load((DATA / name).read_text())


def status_of(call: Callable[[], Any]) -> dict[str, Any]:
    """Run *call*, expect an ApiException, return its Status body."""
    with pytest.raises(ApiException) as info:
        call()
    body = json.loads(info.value.body)
    assert body["kind"] == "Status"
    assert body["code"] == info.value.status
    return body


@pytest.fixture(scope="session")
def widget_crd(kube_api: KubeTestApi) -> Iterator[dict[str, Any]]:
    """The cluster-scoped test CRD ``widgets.test.multinic.dev`` (status subresource)."""
    crd = load_yaml("widgets-crd.yaml")
    kube_api.apply_crd(crd)
    yield crd
    kube_api.delete_crd(CRD_NAME)


@pytest.fixture
def widgets(kube_api: KubeTestApi, widget_crd: dict[str, Any]) -> Iterator[WidgetClient]:
    client = WidgetClient(kube_api)
    yield client
    client.cleanup()


class WidgetClient:
    """Widget custom objects through the kubernetes client; deletes what it made."""

    def __init__(self, api: KubeTestApi) -> None:
        self.api = api
        self.co = api.custom_objects
        self.names: set[str] = set()

    def body(self, name: str, size: int = 1, **spec: Any) -> dict[str, Any]:
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"size": size, **spec},
        }

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        self.names.add(obj["metadata"]["name"])
        return obj

    def get(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.get_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        return obj

    def replace(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.replace_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, body
        )
        return obj

    def patch(self, name: str, patch: Any) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.patch_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, patch
        )
        return obj

    def patch_status(self, name: str, patch: Any) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.patch_cluster_custom_object_status(
            GROUP, VERSION, PLURAL, name, patch
        )
        return obj

    def replace_status(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.replace_cluster_custom_object_status(
            GROUP, VERSION, PLURAL, name, body
        )
        return obj

    def delete(self, name: str, **kwargs: Any) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.delete_cluster_custom_object(
            GROUP, VERSION, PLURAL, name, **kwargs
        )
        return obj

    def list(self, **kwargs: Any) -> dict[str, Any]:
        obj: dict[str, Any] = self.co.list_cluster_custom_object(GROUP, VERSION, PLURAL, **kwargs)
        return obj

    def exists(self, name: str) -> bool:
        try:
            self.get(name)
        except ApiException as e:
            if e.status == 404:
                return False
            raise
        return True

    def cleanup(self) -> None:
        for name in self.names:
            try:
                obj = self.get(name)
            except ApiException:
                continue
            if obj["metadata"].get("finalizers"):
                self.patch(name, {"metadata": {"finalizers": None}})
            try:
                self.delete(name)
            except ApiException as e:
                if e.status != 404:
                    raise
