"""A tiny kopf operator reacts to a custom resource over real HTTP."""

from __future__ import annotations

import threading
from typing import Any

import kopf
import pytest

from multinic_sim.testing import KubeTestApi, kopf_operator, wait_for

from .conftest import GROUP, PLURAL, VERSION, WidgetClient


@pytest.fixture
def widget_operator(kube_api: KubeTestApi, widgets: WidgetClient) -> Any:
    registry = kopf.OperatorRegistry()
    deleted: list[str] = []
    lock = threading.Lock()

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(body: kopf.Body, meta: kopf.Meta, patch: kopf.Patch, **_: Any) -> None:
        kopf.info(body, reason="Seen", message="the operator saw the widget")
        # Only fields the CRD's status schema declares survive (the server prunes).
        patch.status["phase"] = "Created"
        patch.status["observedGeneration"] = meta["generation"]

    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    def updated(spec: dict[str, Any], patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = f"Resized-{spec['size']}"

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry)
    def removed(name: str, **_: Any) -> None:
        with lock:
            deleted.append(name)

    settings = kopf.OperatorSettings()
    settings.watching.server_timeout = 10
    settings.persistence.finalizer = "test.multinic.dev/kopf-finalizer"
    with kopf_operator(registry, kube_api.kopf_login, settings=settings):
        yield deleted


@pytest.mark.slow
def test_kopf_operator_reacts_to_create_update_delete(
    widget_operator: list[str], kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    widgets.create(widgets.body("kopf-w", 3))

    wait_for(
        lambda: (widgets.get("kopf-w").get("status") or {}).get("phase") == "Created",
        30,
        "kopf to handle the creation",
    )
    obj = widgets.get("kopf-w")
    assert "test.multinic.dev/kopf-finalizer" in obj["metadata"]["finalizers"]
    assert obj["status"]["observedGeneration"] == 1

    widgets.patch("kopf-w", {"spec": {"size": 5}})
    wait_for(
        lambda: widgets.get("kopf-w")["status"].get("phase") == "Resized-5",
        30,
        "kopf to handle the update",
    )

    # kopf posts Events (for cluster-scoped objects: in namespace "default").
    def posted() -> bool:
        events = kube_api.core_v1.list_namespaced_event(
            "default", field_selector="involvedObject.name=kopf-w"
        )
        return any(e.reason == "Seen" for e in events.items)

    wait_for(posted, 30, "kopf to post its event")

    widgets.delete("kopf-w")
    wait_for(
        lambda: not widgets.exists("kopf-w"),
        30,
        "kopf to remove its finalizer after the delete handler",
    )
    assert widget_operator == ["kopf-w"]
