"""Conformance: the Kubernetes API semantics multinic relies on.

Every test here asserts real Kubernetes behaviour, through the real
``kubernetes`` client and kubectl (marked ``kubectl``; kopf is in test_kopf.py). They run against
the local API server by default and against a real cluster when
``MULTINIC_TEST_KUBECONFIG`` is set; tests that need to control the server
(compaction) skip there with a reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import watch
from kubernetes.client import ApiException

from multinic_sim.testing import KubeTestApi, wait_for

from .conftest import DATA, GROUP, PLURAL, VERSION, WidgetClient, status_of

# -- helpers -----------------------------------------------------------------


def raw_get(
    api: KubeTestApi,
    path: str,
    query: dict[str, Any] | None = None,
    accept: str = "application/json",
) -> tuple[int, Any]:
    """GET *path* over the client's HTTP stack; (status, decoded JSON body)."""
    response = api.api_client.rest_client.pool_manager.request(
        "GET",
        api.server_url + path,
        fields=query,
        headers=_headers(api, accept),
        preload_content=True,
        timeout=10,
    )
    return response.status, json.loads(response.data or b"null")


def raw_request(
    api: KubeTestApi,
    method: str,
    path: str,
    body: bytes | None,
    content_type: str,
    *,
    accept: str = "application/json",
) -> tuple[int, Any]:
    headers = _headers(api, accept)
    headers["Content-Type"] = content_type
    response = api.api_client.rest_client.pool_manager.request(
        method, api.server_url + path, body=body, headers=headers, timeout=10
    )
    return response.status, json.loads(response.data or b"null")


def _headers(api: KubeTestApi, accept: str) -> dict[str, str]:
    headers = {"Accept": accept}
    api_key = api.api_client.configuration.api_key
    # A kubeconfig's token is under "BearerToken" (the kubernetes client's name for it).
    auth = api_key.get("authorization") or api_key.get("BearerToken")
    if auth:
        headers["Authorization"] = auth
    return headers


def watch_lines(
    api: KubeTestApi,
    path: str,
    query: dict[str, Any],
    during: Any = None,
    accept: str = "application/json",
) -> list[dict[str, Any]]:
    """Open a watch (bounded by its timeoutSeconds), run *during*, return all events."""
    response = api.api_client.rest_client.pool_manager.request(
        "GET",
        api.server_url + path,
        fields={"watch": "true", **query},
        headers=_headers(api, accept),
        preload_content=False,
        timeout=30,
    )
    events: list[dict[str, Any]] = []

    def read() -> None:
        buffer = b""
        for chunk in response.stream(1024, decode_content=True):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    events.append(json.loads(line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if during is not None:
        time.sleep(0.3)
        during()
    reader.join(40)
    response.release_conn()
    return events


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


# -- discovery ---------------------------------------------------------------


def test_discovery_lists_core_groups_and_established_crd(
    kube_api: KubeTestApi, widget_crd: dict[str, Any]
) -> None:
    status, version = raw_get(kube_api, "/version")
    assert status == 200
    assert version["major"] == "1"
    status, api = raw_get(kube_api, "/api")
    assert "v1" in api["versions"]
    status, groups = raw_get(kube_api, "/apis")
    by_name = {g["name"]: g for g in groups["groups"]}
    for group in (
        "apps",
        "apiextensions.k8s.io",
        "coordination.k8s.io",
        "rbac.authorization.k8s.io",
        "events.k8s.io",
        GROUP,
    ):
        assert group in by_name, group
    assert by_name[GROUP]["preferredVersion"]["version"] == VERSION
    status, resources = raw_get(kube_api, f"/apis/{GROUP}/{VERSION}")
    entries = {r["name"]: r for r in resources["resources"]}
    assert entries[PLURAL]["kind"] == "Widget"
    assert entries[PLURAL]["namespaced"] is False
    assert "watch" in entries[PLURAL]["verbs"]
    assert "wdg" in entries[PLURAL]["shortNames"]
    assert f"{PLURAL}/status" in entries
    status, core = raw_get(kube_api, "/api/v1")
    core_names = {r["name"] for r in core["resources"]}
    assert {
        "namespaces",
        "nodes",
        "pods",
        "pods/status",
        "events",
        "configmaps",
        "secrets",
        "serviceaccounts",
    } <= core_names


def test_crd_is_established_with_accepted_names(
    kube_api: KubeTestApi, widget_crd: dict[str, Any]
) -> None:
    crd = kube_api.apiextensions_v1.read_custom_resource_definition(f"{PLURAL}.{GROUP}")
    conditions = {c.type: c.status for c in crd.status.conditions}
    assert conditions["Established"] == "True"
    assert conditions["NamesAccepted"] == "True"
    assert crd.status.accepted_names.kind == "Widget"
    assert crd.status.stored_versions == [VERSION]


# -- create / get / update ---------------------------------------------------


def test_create_sets_server_fields_and_generate_name(widgets: WidgetClient) -> None:
    body = widgets.body("", 2)
    body["metadata"] = {"generateName": "gen-"}
    obj = widgets.create(body)
    meta = obj["metadata"]
    assert meta["name"].startswith("gen-")
    assert len(meta["name"]) == len("gen-") + 5
    assert meta["uid"]
    assert meta["creationTimestamp"]
    assert meta["generation"] == 1
    assert int(meta["resourceVersion"]) > 0
    assert widgets.get(meta["name"])["metadata"]["uid"] == meta["uid"]


def test_create_existing_name_is_already_exists(widgets: WidgetClient) -> None:
    widgets.create(widgets.body("dup"))
    status = status_of(lambda: widgets.create(widgets.body("dup")))
    assert status["code"] == 409
    assert status["reason"] == "AlreadyExists"
    assert status["details"]["name"] == "dup"


def test_get_missing_is_not_found(widgets: WidgetClient) -> None:
    status = status_of(lambda: widgets.get("does-not-exist"))
    assert (status["code"], status["reason"]) == (404, "NotFound")


def test_update_with_stale_resource_version_is_conflict(widgets: WidgetClient) -> None:
    first = widgets.create(widgets.body("stale", 1))
    fresh = dict(first, spec={"size": 2})
    second = widgets.replace("stale", fresh)
    assert int(second["metadata"]["resourceVersion"]) > int(first["metadata"]["resourceVersion"])
    status = status_of(lambda: widgets.replace("stale", dict(first, spec={"size": 3})))
    assert (status["code"], status["reason"]) == (409, "Conflict")
    assert widgets.get("stale")["spec"]["size"] == 2


def test_resource_versions_increase_across_kinds(
    kube_api: KubeTestApi, kube_namespace: str, widgets: WidgetClient
) -> None:
    cm = kube_api.core_v1.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "rv"}})
    widget = widgets.create(widgets.body("rv"))
    assert int(widget["metadata"]["resourceVersion"]) > int(cm.metadata.resource_version)


def test_custom_resource_update_needs_a_resource_version(widgets: WidgetClient) -> None:
    obj = widgets.create(widgets.body("unconditional", 1))
    blind = {**obj, "metadata": {"name": "unconditional"}, "spec": {"size": 2}}
    status = status_of(lambda: widgets.replace("unconditional", blind))
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert [c["field"] for c in status["details"]["causes"]] == ["metadata.resourceVersion"]


def test_built_in_update_without_resource_version_is_unconditional(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    kube_api.core_v1.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "u"}})
    replaced = kube_api.core_v1.replace_namespaced_config_map(
        "u", kube_namespace, {"metadata": {"name": "u"}, "data": {"k": "v"}}
    )
    assert replaced.data == {"k": "v"}


def test_update_of_a_recreated_object_is_conflict(widgets: WidgetClient) -> None:
    first = widgets.create(widgets.body("again", 1))
    widgets.delete("again")
    wait_for(lambda: not widgets.exists("again"), 30, "the widget to be deleted")
    second = widgets.create(widgets.body("again", 1))
    stale = {
        **first,
        "metadata": {**first["metadata"], "resourceVersion": second["metadata"]["resourceVersion"]},
    }
    status = status_of(lambda: widgets.replace("again", stale))
    assert (status["code"], status["reason"]) == (409, "Conflict")


def test_update_without_change_keeps_resource_version(widgets: WidgetClient) -> None:
    obj = widgets.create(widgets.body("noop", 4))
    again = widgets.replace("noop", obj)
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_name_mismatch_on_update_is_bad_request(widgets: WidgetClient) -> None:
    obj = widgets.create(widgets.body("named"))
    wrong = dict(obj, metadata={**obj["metadata"], "name": "other"})
    status = status_of(lambda: widgets.replace("named", wrong))
    assert (status["code"], status["reason"]) == (400, "BadRequest")


def test_post_to_an_object_path_is_method_not_allowed(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    kube_api.core_v1.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "m"}})
    status, body = raw_request(
        kube_api,
        "POST",
        f"/api/v1/namespaces/{kube_namespace}/configmaps/m",
        json.dumps({"metadata": {"name": "m"}}).encode(),
        "application/json",
    )
    assert status == 405
    assert body["reason"] == "MethodNotAllowed"


def test_post_to_a_custom_object_path_creates_the_body(
    kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    # kube-apiserver's custom resource handler: a create, the name in the path unused.
    widgets.create(widgets.body("m"))
    path = f"/apis/{GROUP}/{VERSION}/{PLURAL}/m"
    status, body = raw_request(
        kube_api, "POST", path, json.dumps(widgets.body("m")).encode(), "application/json"
    )
    assert (status, body["reason"]) == (409, "AlreadyExists")
    status, body = raw_request(
        kube_api, "POST", path, json.dumps(widgets.body("m-other")).encode(), "application/json"
    )
    widgets.names.add("m-other")
    assert status == 201
    assert body["metadata"]["name"] == "m-other"
    assert widgets.exists("m-other")


def test_an_unknown_api_group_is_a_plain_text_404(kube_api: KubeTestApi) -> None:
    # kube-apiserver's mux answers, not an API handler: no Status (so does a CRD's group
    # once its last CRD is gone). A known group's unknown version is a Status.
    response = kube_api.api_client.rest_client.pool_manager.request(
        "GET",
        kube_api.server_url + "/apis/no-such-group.multinic.dev/v1/things",
        headers=_headers(kube_api, "application/json"),
        timeout=10,
    )
    assert response.status == 404
    assert response.data == b"404 page not found\n"
    status, body = raw_get(kube_api, "/apis/apps/v9/deployments")
    assert (status, body["kind"], body["reason"]) == (404, "Status", "NotFound")


def test_annotation_keys_are_qualified_names(kube_api: KubeTestApi, kube_namespace: str) -> None:
    # kopf names a handler's progress annotation after the handler: the default id of a
    # nested function ("_register.<locals>.changed") gave a key a real server refuses.
    core = kube_api.core_v1
    bad = {"multinic.fms.io/_register._locals_.changed": "{}"}
    status = status_of(
        lambda: core.create_namespaced_config_map(
            kube_namespace, {"metadata": {"name": "a", "annotations": bad}}
        )
    )
    assert (status["code"], status["reason"]) == (422, "Invalid")
    assert [c["field"] for c in status["details"]["causes"]] == ["metadata.annotations"]
    good = {"multinic.fms.io/network-changed": "{}", "Example.COM/Mixed_Case.ok": ""}
    made = core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "a", "annotations": good}}
    )
    assert made.metadata.annotations == good


LEASES = "/apis/coordination.k8s.io/v1/namespaces/{}/leases"


def _lease(renew_time: str) -> bytes:
    return json.dumps(
        {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "l"},
            "spec": {"holderIdentity": "a", "renewTime": renew_time},
        }
    ).encode()


@pytest.mark.parametrize(
    "stamp", ["2026-01-01T00:00:00Z", "2026-01-01T00:00:00.123Z", "2026-01-01T00:00:00+00:00"]
)
def test_micro_times_need_six_fractional_digits(
    kube_api: KubeTestApi, kube_namespace: str, stamp: str
) -> None:
    # MicroTime (Lease renewTime, Event eventTime) is parsed with exactly this layout;
    # datetime.isoformat() of a whole second has no fraction at all.
    path = LEASES.format(kube_namespace)
    status, body = raw_request(kube_api, "POST", path, _lease(stamp), "application/json")
    assert (status, body["reason"]) == (400, "BadRequest")
    assert "2006-01-02T15:04:05.000000Z07:00" in body["message"]


def test_micro_times_are_stored_in_utc(kube_api: KubeTestApi, kube_namespace: str) -> None:
    path = LEASES.format(kube_namespace)
    stamp = "2026-01-01T02:00:00.123456+02:00"
    status, body = raw_request(kube_api, "POST", path, _lease(stamp), "application/json")
    assert status == 201
    assert body["spec"]["renewTime"] == "2026-01-01T00:00:00.123456Z"


def test_a_patch_removing_the_resource_version_needs_one_for_custom_resources(
    kube_api: KubeTestApi, kube_namespace: str, widgets: WidgetClient
) -> None:
    # The patched object is an unconditional update: custom resources (and CRDs) refuse
    # it, built-ins take it. kubectl apply sends such a patch when the last-applied
    # configuration had a resourceVersion (an apply after `kubectl replace` of -o yaml).
    widgets.create(widgets.body("rv"))
    unset = json.dumps({"metadata": {"resourceVersion": None}, "spec": {"size": 2}}).encode()
    path = f"/apis/{GROUP}/{VERSION}/{PLURAL}/rv"
    status, body = raw_request(kube_api, "PATCH", path, unset, "application/merge-patch+json")
    assert (status, body["reason"]) == (422, "Invalid")
    assert [c["field"] for c in body["details"]["causes"]] == ["metadata.resourceVersion"]
    assert widgets.get("rv")["spec"]["size"] == 1
    kube_api.core_v1.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "rv"}})
    unset = json.dumps({"metadata": {"resourceVersion": None}, "data": {"a": "1"}}).encode()
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps/rv"
    status, body = raw_request(kube_api, "PATCH", path, unset, "application/merge-patch+json")
    assert status == 200
    assert body["data"] == {"a": "1"}


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'"a string"', b""])
def test_garbage_bodies_are_bad_requests(
    kube_api: KubeTestApi, kube_namespace: str, body: bytes
) -> None:
    status, answer = raw_request(
        kube_api,
        "POST",
        f"/api/v1/namespaces/{kube_namespace}/configmaps",
        body,
        "application/json",
    )
    assert status == 400
    assert answer["reason"] == "BadRequest"


def test_create_across_all_namespaces_is_method_not_allowed(kube_api: KubeTestApi) -> None:
    status, body = raw_request(
        kube_api,
        "POST",
        "/api/v1/configmaps",
        b'{"metadata":{"name":"x","namespace":"default"}}',
        "application/json",
    )
    assert status == 405
    assert body["reason"] == "MethodNotAllowed"


def test_namespaced_object_in_missing_namespace_is_not_found(kube_api: KubeTestApi) -> None:
    status = status_of(
        lambda: kube_api.core_v1.create_namespaced_config_map(
            "no-such-namespace-x", {"metadata": {"name": "a"}}
        )
    )
    assert (status["code"], status["reason"]) == (404, "NotFound")


# -- patch -------------------------------------------------------------------


def test_merge_patch_merges_maps_and_null_deletes(widgets: WidgetClient) -> None:
    widgets.create(widgets.body("mp", 1, color="green", tags=["a"]))
    patched = widgets.patch(
        "mp", {"metadata": {"labels": {"team": "x"}}, "spec": {"tags": None, "size": 9}}
    )
    assert patched["spec"] == {"size": 9, "color": "green"}
    assert patched["metadata"]["labels"] == {"team": "x"}


def test_json_patch_and_failed_test_op(widgets: WidgetClient) -> None:
    widgets.create(widgets.body("jp", 1, tags=["a"]))
    ops = [
        {"op": "test", "path": "/spec/size", "value": 1},
        {"op": "add", "path": "/spec/tags/-", "value": "b"},
        {"op": "replace", "path": "/spec/size", "value": 2},
    ]
    patched = widgets.co.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, "jp", ops, _content_type="application/json-patch+json"
    )
    assert patched["spec"]["tags"] == ["a", "b"]
    assert patched["spec"]["size"] == 2
    status = status_of(
        lambda: widgets.co.patch_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            "jp",
            [{"op": "test", "path": "/spec/size", "value": 1}],
            _content_type="application/json-patch+json",
        )
    )
    assert status["code"] == 422
    assert widgets.get("jp")["spec"]["size"] == 2


def test_patch_with_stale_resource_version_is_conflict(widgets: WidgetClient) -> None:
    obj = widgets.create(widgets.body("prv"))
    widgets.patch("prv", {"spec": {"size": 5}})
    status = status_of(
        lambda: widgets.patch(
            "prv",
            {
                "metadata": {"resourceVersion": obj["metadata"]["resourceVersion"]},
                "spec": {"size": 6},
            },
        )
    )
    assert (status["code"], status["reason"]) == (409, "Conflict")


def test_unsupported_patch_content_type(kube_api: KubeTestApi, widgets: WidgetClient) -> None:
    widgets.create(widgets.body("ct"))
    status, body = raw_request(
        kube_api,
        "PATCH",
        f"/apis/{GROUP}/{VERSION}/{PLURAL}/ct",
        b'{"spec":{"size":3}}',
        "text/plain",
    )
    assert status == 415
    assert body["reason"] == "UnsupportedMediaType"


def test_strategic_merge_patch_merges_containers_by_name(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    deployment = {
        "metadata": {"name": "smp"},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": {"app": "smp"}},
            "template": {
                "metadata": {"labels": {"app": "smp"}},
                "spec": {
                    "containers": [
                        {"name": "a", "image": "busybox", "env": [{"name": "X", "value": "1"}]},
                        {"name": "b", "image": "busybox"},
                    ]
                },
            },
        },
    }
    created = kube_api.apps_v1.create_namespaced_deployment(kube_namespace, deployment)
    patch = {
        "spec": {
            "template": {
                "spec": {"containers": [{"name": "a", "env": [{"name": "Y", "value": "2"}]}]}
            }
        }
    }
    patched = kube_api.apps_v1.patch_namespaced_deployment(
        "smp", kube_namespace, patch, _content_type="application/strategic-merge-patch+json"
    )
    containers = {c.name: c for c in patched.spec.template.spec.containers}
    assert set(containers) == {"a", "b"}
    assert {e.name: e.value for e in containers["a"].env} == {"X": "1", "Y": "2"}
    assert containers["a"].image == "busybox"
    assert patched.metadata.generation == created.metadata.generation + 1


# -- generation and status subresource ---------------------------------------


def test_generation_counts_spec_changes_only(widgets: WidgetClient) -> None:
    widgets.create(widgets.body("gen", 1))
    assert widgets.patch("gen", {"spec": {"size": 2}})["metadata"]["generation"] == 2
    assert widgets.patch("gen", {"metadata": {"labels": {"a": "b"}}})["metadata"]["generation"] == 2
    assert (
        widgets.patch_status("gen", {"status": {"phase": "Ready"}})["metadata"]["generation"] == 2
    )


def test_status_subresource_separates_spec_and_status(widgets: WidgetClient) -> None:
    created = widgets.create({**widgets.body("st", 1), "status": {"phase": "Ignored"}})
    assert "status" not in created or created["status"].get("phase") != "Ignored"
    after_main = widgets.patch("st", {"spec": {"size": 2}, "status": {"phase": "Main"}})
    assert (after_main.get("status") or {}).get("phase") != "Main"
    after_status = widgets.patch_status("st", {"spec": {"size": 99}, "status": {"phase": "Ready"}})
    assert after_status["status"]["phase"] == "Ready"
    assert after_status["spec"]["size"] == 2
    current = widgets.get("st")
    current["status"] = {"phase": "Done", "observedGeneration": 2}
    replaced = widgets.replace_status("st", current)
    assert replaced["status"] == {"phase": "Done", "observedGeneration": 2}
    replaced["status"] = {"phase": "Lost"}
    replaced["spec"]["size"] = 3
    main = widgets.replace("st", replaced)
    assert main["spec"]["size"] == 3
    assert main["status"]["phase"] == "Done"


def test_status_of_a_missing_object_is_not_found(widgets: WidgetClient) -> None:
    status = status_of(lambda: widgets.patch_status("nope", {"status": {"phase": "x"}}))
    assert status["code"] == 404


# -- schema ------------------------------------------------------------------


def test_schema_violation_is_invalid_naming_the_field(widgets: WidgetClient) -> None:
    status = status_of(lambda: widgets.create(widgets.body("bad", "three")))  # type: ignore[arg-type]
    assert (status["code"], status["reason"]) == (422, "Invalid")
    fields = [c["field"] for c in status["details"]["causes"]]
    assert "spec.size" in fields
    assert not widgets.exists("bad")


def test_schema_required_enum_and_minimum(widgets: WidgetClient) -> None:
    body = widgets.body("req", 1, color="pink")
    del body["spec"]["size"]
    status = status_of(lambda: widgets.create(body))
    causes = {c["field"]: c for c in status["details"]["causes"]}
    assert causes["spec.size"]["reason"] == "FieldValueRequired"
    assert causes["spec.color"]["reason"] == "FieldValueNotSupported"
    status = status_of(lambda: widgets.create(widgets.body("neg", -1)))
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.size"]


def test_schema_update_is_validated_too(widgets: WidgetClient) -> None:
    widgets.create(widgets.body("upd", 1))
    status = status_of(lambda: widgets.patch("upd", {"spec": {"size": "big"}}))
    assert status["code"] == 422
    assert widgets.get("upd")["spec"]["size"] == 1


def test_schema_defaults_pruning_and_extensions(widgets: WidgetClient) -> None:
    obj = widgets.create(
        widgets.body(
            "prune",
            1,
            port="http",
            note=None,
            unknown="dropped",
            extra={"anything": {"goes": [1, 2]}},
            limits={"cpu": 2},
        )
    )
    spec = obj["spec"]
    assert spec["color"] == "red"  # default
    assert spec["port"] == "http"  # int-or-string: a string
    assert "unknown" not in spec  # pruned
    assert spec["extra"] == {"anything": {"goes": [1, 2]}}  # preserve-unknown-fields
    assert spec["limits"] == {"cpu": 2}
    assert spec["note"] is None  # nullable keeps null
    assert widgets.patch("prune", {"spec": {"port": 8080}})["spec"]["port"] == 8080
    status = status_of(lambda: widgets.patch("prune", {"spec": {"port": [1]}}))
    assert [c["field"] for c in status["details"]["causes"]] == ["spec.port"]


def test_strict_field_validation_rejects_unknown_fields(
    kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    body = widgets.body("strict", 1, bogus=True)
    status = status_of(
        lambda: widgets.co.create_cluster_custom_object(
            GROUP, VERSION, PLURAL, body, field_validation="Strict"
        )
    )
    assert (status["code"], status["reason"]) == (400, "BadRequest")
    assert "bogus" in status["message"]


# -- delete, finalizers, garbage collection ---------------------------------


@pytest.mark.slow
def test_finalizer_keeps_object_until_removed(widgets: WidgetClient) -> None:
    body = widgets.body("fin")
    body["metadata"]["finalizers"] = ["test.multinic.dev/hold"]
    created = widgets.create(body)
    deleted = widgets.delete("fin")
    assert deleted["metadata"]["deletionTimestamp"]
    current = widgets.get("fin")
    assert current["metadata"]["deletionTimestamp"]
    assert current["metadata"]["finalizers"] == ["test.multinic.dev/hold"]
    status = status_of(
        lambda: widgets.patch(
            "fin", {"metadata": {"finalizers": ["test.multinic.dev/hold", "test.multinic.dev/new"]}}
        )
    )
    assert status["code"] == 422
    events = watch_lines(
        widgets.api,
        f"/apis/{GROUP}/{VERSION}/{PLURAL}",
        {
            "fieldSelector": "metadata.name=fin",
            "timeoutSeconds": "2",
            "resourceVersion": created["metadata"]["resourceVersion"],
        },
        during=lambda: widgets.patch("fin", {"metadata": {"finalizers": None}}),
    )
    assert [e["type"] for e in events][-1] == "DELETED"
    assert not widgets.exists("fin")


def test_delete_missing_is_not_found(widgets: WidgetClient) -> None:
    assert status_of(lambda: widgets.delete("never"))["code"] == 404


def test_delete_precondition_mismatch_is_conflict(widgets: WidgetClient) -> None:
    widgets.create(widgets.body("pre"))
    status = status_of(
        lambda: widgets.delete(
            "pre", body={"preconditions": {"uid": "00000000-0000-0000-0000-000000000000"}}
        )
    )
    assert (status["code"], status["reason"]) == (409, "Conflict")
    assert widgets.exists("pre")


def test_delete_options_in_a_body_win_over_the_query(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    # kube-apiserver reads DeleteOptions from the body when there is one, else from the query.
    core = kube_api.core_v1
    spec = {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "no-such-node"}
    pod = core.create_namespaced_pod(kube_namespace, {"metadata": {"name": "b"}, "spec": spec})
    core.delete_namespaced_pod(
        "b",
        kube_namespace,
        grace_period_seconds=0,
        body={"preconditions": {"uid": pod.metadata.uid}},
    )
    terminating = core.read_namespaced_pod("b", kube_namespace)
    assert terminating.metadata.deletion_grace_period_seconds == 30  # the query's 0 was ignored
    core.delete_namespaced_pod(
        "b",
        kube_namespace,
        body={"gracePeriodSeconds": 0, "preconditions": {"uid": pod.metadata.uid}},
    )
    wait_for(
        lambda: (
            "b" not in [p.metadata.name for p in core.list_namespaced_pod(kube_namespace).items]
        ),
        what="pod b gone",
    )


def _owned_configmap(api: KubeTestApi, namespace: str, name: str, owner: Any) -> None:
    api.core_v1.create_namespaced_config_map(
        namespace,
        {
            "metadata": {
                "name": name,
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": owner.metadata.name,
                        "uid": owner.metadata.uid,
                        "blockOwnerDeletion": True,
                    }
                ],
            }
        },
    )


def _cm_exists(api: KubeTestApi, namespace: str, name: str) -> bool:
    try:
        api.core_v1.read_namespaced_config_map(name, namespace)
    except ApiException as e:
        if e.status == 404:
            return False
        raise
    return True


def test_background_deletion_collects_dependents(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    owner = kube_api.core_v1.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "owner"}}
    )
    _owned_configmap(kube_api, kube_namespace, "dependent", owner)
    kube_api.core_v1.delete_namespaced_config_map(
        "owner", kube_namespace, propagation_policy="Background"
    )
    wait_for(
        lambda: not _cm_exists(kube_api, kube_namespace, "dependent"),
        30,
        "the dependent to be garbage-collected",
    )


def test_orphan_deletion_keeps_dependents(kube_api: KubeTestApi, kube_namespace: str) -> None:
    owner = kube_api.core_v1.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "owner"}}
    )
    _owned_configmap(kube_api, kube_namespace, "orphan", owner)
    kube_api.core_v1.delete_namespaced_config_map(
        "owner", kube_namespace, propagation_policy="Orphan"
    )
    wait_for(lambda: not _cm_exists(kube_api, kube_namespace, "owner"), 30, "owner deleted")
    dependent = kube_api.core_v1.read_namespaced_config_map("orphan", kube_namespace)
    assert not dependent.metadata.owner_references


def test_foreground_deletion_waits_for_dependents(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    owner = kube_api.core_v1.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "owner"}}
    )
    dep = {
        "metadata": {
            "name": "held",
            "finalizers": ["test.multinic.dev/hold"],
            "ownerReferences": [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "name": "owner",
                    "uid": owner.metadata.uid,
                    "blockOwnerDeletion": True,
                }
            ],
        }
    }
    kube_api.core_v1.create_namespaced_config_map(kube_namespace, dep)
    kube_api.core_v1.delete_namespaced_config_map(
        "owner", kube_namespace, propagation_policy="Foreground"
    )
    wait_for(
        lambda: bool(
            kube_api.core_v1.read_namespaced_config_map(
                "held", kube_namespace
            ).metadata.deletion_timestamp
        ),
        30,
        "dependent being deleted",
    )
    current = kube_api.core_v1.read_namespaced_config_map("owner", kube_namespace)
    assert current.metadata.deletion_timestamp
    assert "foregroundDeletion" in current.metadata.finalizers
    held = kube_api.core_v1.read_namespaced_config_map("held", kube_namespace)
    assert held.metadata.finalizers == ["test.multinic.dev/hold"]
    kube_api.core_v1.patch_namespaced_config_map(
        "held",
        kube_namespace,
        {"metadata": {"finalizers": None}},
        _content_type="application/merge-patch+json",
    )
    wait_for(lambda: not _cm_exists(kube_api, kube_namespace, "owner"), 30, "owner deleted")


def test_deletecollection_with_label_selector(kube_api: KubeTestApi, kube_namespace: str) -> None:
    for name, team in (("a", "x"), ("b", "x"), ("c", "y")):
        kube_api.core_v1.create_namespaced_config_map(
            kube_namespace, {"metadata": {"name": name, "labels": {"team": team}}}
        )
    kube_api.core_v1.delete_collection_namespaced_config_map(
        kube_namespace, label_selector="team=x"
    )
    wait_for(
        lambda: (
            names(
                [
                    c.to_dict()
                    for c in kube_api.core_v1.list_namespaced_config_map(
                        kube_namespace, label_selector="team"
                    ).items
                ]
            )
            == ["c"]
        ),
        30,
        "collection deleted",
    )


def test_deleting_a_namespace_deletes_its_content(kube_api: KubeTestApi) -> None:
    ns = kube_api.new_namespace()
    kube_api.core_v1.create_namespaced_config_map(ns, {"metadata": {"name": "inside"}})
    kube_api.delete_namespace(ns)

    def gone() -> bool:
        try:
            kube_api.core_v1.read_namespace(ns)
        except ApiException as e:
            return e.status == 404
        return False

    wait_for(gone, 60, f"namespace {ns} deleted")
    assert not _cm_exists(kube_api, ns, "inside")


def test_terminating_namespace_refuses_new_content(kube_api: KubeTestApi) -> None:
    core = kube_api.core_v1
    ns = kube_api.new_namespace()
    core.create_namespaced_config_map(
        ns, {"metadata": {"name": "held", "finalizers": ["test.multinic.dev/hold"]}}
    )
    core.delete_namespace(ns)
    wait_for(
        lambda: core.read_namespace(ns).status.phase == "Terminating",
        30,
        "the namespace to terminate",
    )
    wait_for(
        lambda: bool(core.read_namespaced_config_map("held", ns).metadata.deletion_timestamp),
        30,
        "its content to be deleted",
    )
    status = status_of(
        lambda: core.create_namespaced_config_map(ns, {"metadata": {"name": "late"}})
    )
    assert (status["code"], status["reason"]) == (403, "Forbidden")
    core.patch_namespaced_config_map(
        "held", ns, {"metadata": {"finalizers": None}}, _content_type="application/merge-patch+json"
    )

    def gone() -> bool:
        try:
            core.read_namespace(ns)
        except ApiException as e:
            return bool(e.status == 404)
        return False

    wait_for(gone, 60, f"namespace {ns} to go")


def test_dry_run_create_stores_nothing(widgets: WidgetClient) -> None:
    obj = widgets.co.create_cluster_custom_object(
        GROUP, VERSION, PLURAL, widgets.body("dry", 1), dry_run="All"
    )
    assert obj["metadata"]["name"] == "dry"
    assert obj["spec"]["color"] == "red"  # defaulted like a real create
    assert not widgets.exists("dry")


# -- object size limits (etcd's 1.5 MiB request limit, the 3 MiB body limit) ---

MB = 1_000_000


def test_an_object_of_1_2_mb_is_stored_and_read_back_whole(widgets: WidgetClient) -> None:
    note = "n" * (12 * MB // 10)
    widgets.create(widgets.body("big", 1, note=note))
    assert widgets.get("big")["spec"]["note"] == note


@pytest.mark.parametrize(
    ("size", "message"),
    [
        (18 * MB // 10, "etcdserver: request is too large"),
        # Over 2 MiB the API server's etcd client refuses to send the request at all.
        (24 * MB // 10, "trying to send message larger than max"),
    ],
)
def test_an_object_too_large_for_etcd_is_not_created(
    widgets: WidgetClient, size: int, message: str
) -> None:
    status = status_of(lambda: widgets.create(widgets.body("huge", 1, note="n" * size)))
    assert status["code"] == 500
    assert message in status["message"]
    assert not widgets.exists("huge")


def test_writes_making_an_object_too_large_leave_it_unchanged(widgets: WidgetClient) -> None:
    stored = widgets.create(widgets.body("grow", 1, note="small"))
    note = "n" * (18 * MB // 10)
    grown = {**stored, "spec": {**stored["spec"], "note": note}}
    writes = {
        "merge patch": lambda: widgets.patch("grow", {"spec": {"note": note}}),
        "json patch": lambda: widgets.co.patch_cluster_custom_object(
            GROUP,
            VERSION,
            PLURAL,
            "grow",
            [{"op": "replace", "path": "/spec/note", "value": note}],
            _content_type="application/json-patch+json",
        ),
        "update": lambda: widgets.replace("grow", grown),
        "status patch": lambda: widgets.patch_status("grow", {"status": {"phase": note}}),
    }
    for write, call in writes.items():
        status = status_of(call)
        assert status["code"] == 500, write
        assert "etcdserver: request is too large" in status["message"], write
        assert widgets.get("grow") == stored, write
    # Nothing was stored, so nothing was announced either.
    stream = watch.Watch().stream(
        widgets.co.list_cluster_custom_object,
        GROUP,
        VERSION,
        PLURAL,
        resource_version=stored["metadata"]["resourceVersion"],
        timeout_seconds=1,
    )
    assert [e["type"] for e in stream if e["object"]["metadata"]["name"] == "grow"] == []


def test_a_request_body_over_3_mib_is_request_entity_too_large(
    kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    body = json.dumps(widgets.body("oversize", 1, note="n" * (3 * 1024 * 1024))).encode()
    status, answer = raw_request(
        kube_api, "POST", f"/apis/{GROUP}/{VERSION}/{PLURAL}", body, "application/json"
    )
    assert (status, answer["reason"]) == (413, "RequestEntityTooLarge")
    assert answer["message"] == "Request entity too large: limit is 3145728"
    assert not widgets.exists("oversize")


# -- list --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=web", ["w1", "w2"]),
        ("tier==web", ["w1", "w2"]),
        ("tier!=web", ["w3", "w4"]),
        ("tier in (db, cache)", ["w3"]),
        ("tier notin (web)", ["w3", "w4"]),
        ("tier", ["w1", "w2", "w3"]),
        ("!tier", ["w4"]),
        ("tier=web,zone=a", ["w1"]),
    ],
)
def test_label_selectors(
    kube_api: KubeTestApi, kube_namespace: str, selector: str, expected: list[str]
) -> None:
    labels = {
        "w1": {"tier": "web", "zone": "a"},
        "w2": {"tier": "web"},
        "w3": {"tier": "db"},
        "w4": {"zone": "b"},
    }
    for name, value in labels.items():
        kube_api.core_v1.create_namespaced_config_map(
            kube_namespace, {"metadata": {"name": name, "labels": value}}
        )
    found = kube_api.core_v1.list_namespaced_config_map(kube_namespace, label_selector=selector)
    assert sorted(c.metadata.name for c in found.items) == expected


def test_invalid_label_selector_is_bad_request(kube_api: KubeTestApi, kube_namespace: str) -> None:
    status = status_of(
        lambda: kube_api.core_v1.list_namespaced_config_map(
            kube_namespace, label_selector="a in (b"
        )
    )
    assert (status["code"], status["reason"]) == (400, "BadRequest")


def test_field_selectors_on_pods(kube_api: KubeTestApi, kube_namespace: str) -> None:
    for name, node in (("p1", "node-a"), ("p2", "node-b"), ("p3", None)):
        spec: dict[str, Any] = {"containers": [{"name": "c", "image": "busybox"}]}
        if node:
            spec["nodeName"] = node
        kube_api.core_v1.create_namespaced_pod(
            kube_namespace, {"metadata": {"name": name}, "spec": spec}
        )
    on_a = kube_api.core_v1.list_namespaced_pod(
        kube_namespace, field_selector="spec.nodeName=node-a"
    )
    assert [p.metadata.name for p in on_a.items] == ["p1"]
    unscheduled = kube_api.core_v1.list_namespaced_pod(
        kube_namespace, field_selector="spec.nodeName="
    )
    assert [p.metadata.name for p in unscheduled.items] == ["p3"]
    by_name = kube_api.core_v1.list_namespaced_pod(
        kube_namespace, field_selector=f"metadata.name=p2,metadata.namespace={kube_namespace}"
    )
    assert [p.metadata.name for p in by_name.items] == ["p2"]
    not_a = kube_api.core_v1.list_namespaced_pod(
        kube_namespace, field_selector="spec.nodeName!=node-a"
    )
    assert sorted(p.metadata.name for p in not_a.items) == ["p2", "p3"]
    pending = kube_api.core_v1.list_pod_for_all_namespaces(
        field_selector=f"status.phase=Pending,metadata.namespace={kube_namespace}"
    )
    assert {p.metadata.name for p in pending.items} <= {"p1", "p2", "p3"}


def test_unknown_field_selector_is_bad_request(kube_api: KubeTestApi, kube_namespace: str) -> None:
    status = status_of(
        lambda: kube_api.core_v1.list_namespaced_config_map(
            kube_namespace, field_selector="data.x=1"
        )
    )
    assert (status["code"], status["reason"]) == (400, "BadRequest")


def test_limit_and_continue_page_through_everything(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    for i in range(7):
        kube_api.core_v1.create_namespaced_config_map(
            kube_namespace, {"metadata": {"name": f"page-{i}"}}
        )
    seen: list[str] = []
    first = kube_api.core_v1.list_namespaced_config_map(kube_namespace, limit=3)
    assert len(first.items) == 3
    assert first.metadata._continue
    assert first.metadata.remaining_item_count == 4
    seen += [c.metadata.name for c in first.items]
    token = first.metadata._continue
    kube_api.core_v1.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "page-late"}}
    )
    while token:
        page = kube_api.core_v1.list_namespaced_config_map(kube_namespace, limit=3, _continue=token)
        seen += [c.metadata.name for c in page.items]
        token = page.metadata._continue
    # Pages are a consistent snapshot: the object created meanwhile is not in them.
    assert sorted(seen) == [f"page-{i}" for i in range(7)]


def test_list_resource_version_is_current(kube_api: KubeTestApi, kube_namespace: str) -> None:
    cm = kube_api.core_v1.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "lrv"}}
    )
    listed = kube_api.core_v1.list_namespaced_config_map(kube_namespace)
    assert int(listed.metadata.resource_version) >= int(cm.metadata.resource_version)
    exact = kube_api.core_v1.list_namespaced_config_map(
        kube_namespace,
        resource_version=listed.metadata.resource_version,
        resource_version_match="NotOlderThan",
    )
    assert [c.metadata.name for c in exact.items] == ["lrv"]


# -- watch -------------------------------------------------------------------


def test_watch_from_resource_version_sees_changes_in_order(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    start = kube_api.core_v1.list_namespaced_config_map(kube_namespace).metadata.resource_version
    core = kube_api.core_v1

    def changes() -> None:
        core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "w"}})
        core.patch_namespaced_config_map("w", kube_namespace, {"data": {"k": "v"}})
        core.delete_namespaced_config_map("w", kube_namespace)

    changes()
    stream = watch.Watch().stream(
        core.list_namespaced_config_map, kube_namespace, resource_version=start, timeout_seconds=1
    )
    seen = [(e["type"], e["object"].metadata.name) for e in stream]
    assert seen == [("ADDED", "w"), ("MODIFIED", "w"), ("DELETED", "w")]


@pytest.mark.slow
def test_watch_without_resource_version_starts_with_current_state(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    kube_api.core_v1.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "pre"}})
    events = watch_lines(
        kube_api,
        f"/api/v1/namespaces/{kube_namespace}/configmaps",
        {"timeoutSeconds": "2"},
        during=lambda: kube_api.core_v1.create_namespaced_config_map(
            kube_namespace, {"metadata": {"name": "post"}}
        ),
    )
    seen = [(e["type"], e["object"]["metadata"]["name"]) for e in events if e["type"] != "BOOKMARK"]
    assert seen == [("ADDED", "pre"), ("ADDED", "post")]


@pytest.mark.slow
def test_watch_with_label_selector_sees_objects_leave_and_enter(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    core = kube_api.core_v1
    core.create_namespaced_config_map(
        kube_namespace, {"metadata": {"name": "sel", "labels": {"app": "a"}}}
    )
    start = core.list_namespaced_config_map(kube_namespace).metadata.resource_version

    def relabel() -> None:
        core.patch_namespaced_config_map(
            "sel", kube_namespace, {"metadata": {"labels": {"app": "b"}}}
        )
        core.patch_namespaced_config_map(
            "sel", kube_namespace, {"metadata": {"labels": {"app": "a"}}}
        )

    events = watch_lines(
        kube_api,
        f"/api/v1/namespaces/{kube_namespace}/configmaps",
        {"labelSelector": "app=a", "resourceVersion": start, "timeoutSeconds": "2"},
        during=relabel,
    )
    assert [e["type"] for e in events] == ["DELETED", "ADDED"]


def test_watch_ends_after_timeout_seconds(kube_api: KubeTestApi, kube_namespace: str) -> None:
    started = time.monotonic()
    watch_lines(
        kube_api, f"/api/v1/namespaces/{kube_namespace}/configmaps", {"timeoutSeconds": "1"}
    )
    assert time.monotonic() - started < 15


@pytest.mark.slow
def test_watch_bookmarks_carry_a_resource_version(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    # Real servers send bookmarks about once a minute: only their shape is pinned here.
    start = kube_api.core_v1.list_namespaced_config_map(kube_namespace).metadata.resource_version
    events = watch_lines(
        kube_api,
        f"/api/v1/namespaces/{kube_namespace}/configmaps",
        {"allowWatchBookmarks": "true", "resourceVersion": start, "timeoutSeconds": "3"},
    )
    if kube_api.sim is not None:
        assert events, "the local server sends a bookmark every second to the test fixture"
    for event in events:
        assert event["type"] == "BOOKMARK"
        assert int(event["object"]["metadata"]["resourceVersion"]) >= int(start)
        assert event["object"]["kind"] == "ConfigMap"


METADATA = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"
METADATA_LIST = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"


def test_metadata_only_answers_for_get_list_patch_and_watch(
    kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    """client-go's metadata client (what the operator reads big CIDRs with): no spec, no status."""
    path = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
    made = widgets.create(widgets.body("meta-only", size=3))
    status, got = raw_get(kube_api, f"{path}/meta-only", accept=METADATA)
    assert status == 200
    assert (got["kind"], got["apiVersion"]) == ("PartialObjectMetadata", "meta.k8s.io/v1")
    assert got["metadata"]["name"] == "meta-only"
    assert got["metadata"]["resourceVersion"] == made["metadata"]["resourceVersion"]
    assert "spec" not in got
    assert "status" not in got
    status, listed = raw_get(kube_api, path, accept=METADATA_LIST)
    assert status == 200
    assert (listed["kind"], listed["apiVersion"]) == ("PartialObjectMetadataList", "meta.k8s.io/v1")
    assert listed["metadata"]["resourceVersion"]
    mine = [i for i in listed["items"] if i["metadata"]["name"] == "meta-only"]
    assert len(mine) == 1
    assert mine[0]["kind"] == "PartialObjectMetadata"
    assert "spec" not in mine[0]

    def change() -> None:
        code, answer = raw_request(
            kube_api,
            "PATCH",
            f"{path}/meta-only",
            json.dumps({"spec": {"size": 4}}).encode(),
            "application/merge-patch+json",
            accept=METADATA,
        )
        assert code == 200
        assert answer["kind"] == "PartialObjectMetadata"
        assert "spec" not in answer
        assert answer["metadata"]["generation"] == 2

    events = watch_lines(
        kube_api,
        path,
        {"resourceVersion": made["metadata"]["resourceVersion"], "timeoutSeconds": "2"},
        during=change,
        accept=METADATA,
    )
    modified = [e for e in events if e["type"] == "MODIFIED"]
    assert len(modified) == 1
    assert modified[0]["object"]["kind"] == "PartialObjectMetadata"
    assert modified[0]["object"]["metadata"]["generation"] == 2
    assert "spec" not in modified[0]["object"]
    assert widgets.get("meta-only")["spec"]["size"] == 4


def test_watch_from_compacted_resource_version_is_gone(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    core = kube_api.core_v1
    old = core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "c1"}})
    core.patch_namespaced_config_map("c1", kube_namespace, {"data": {"a": "b"}})
    kube_api.compact()
    events = watch_lines(
        kube_api,
        f"/api/v1/namespaces/{kube_namespace}/configmaps",
        {"resourceVersion": str(int(old.metadata.resource_version) - 1), "timeoutSeconds": "2"},
    )
    assert len(events) == 1
    assert events[0]["type"] == "ERROR"
    assert events[0]["object"]["kind"] == "Status"
    assert events[0]["object"]["code"] == 410
    assert events[0]["object"]["reason"] in ("Expired", "Gone")
    with pytest.raises(ApiException) as info:
        for _ in watch.Watch().stream(
            core.list_namespaced_config_map,
            kube_namespace,
            resource_version=old.metadata.resource_version,
            timeout_seconds=2,
        ):
            pass
    assert info.value.status == 410


def test_watch_of_custom_resources_cluster_wide(
    kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    start = widgets.list()["metadata"]["resourceVersion"]
    widgets.create(widgets.body("wcr", 1))
    widgets.patch_status("wcr", {"status": {"phase": "Ready"}})
    stream = watch.Watch().stream(
        widgets.co.list_cluster_custom_object,
        GROUP,
        VERSION,
        PLURAL,
        resource_version=start,
        timeout_seconds=1,
    )
    seen = [
        (e["type"], (e["object"].get("status") or {}).get("phase"))
        for e in stream
        if e["object"]["metadata"]["name"] == "wcr"
    ]
    assert seen == [("ADDED", None), ("MODIFIED", "Ready")]


# -- other built-in kinds ----------------------------------------------------


def test_leases_events_and_rbac_are_stored(kube_api: KubeTestApi, kube_namespace: str) -> None:
    from kubernetes import client

    coordination = client.CoordinationV1Api(kube_api.api_client)
    lease = coordination.create_namespaced_lease(
        kube_namespace,
        {
            "metadata": {"name": "leader"},
            "spec": {"holderIdentity": "a", "leaseDurationSeconds": 15},
        },
    )
    lease.spec.holder_identity = "b"
    assert (
        coordination.replace_namespaced_lease("leader", kube_namespace, lease).spec.holder_identity
        == "b"
    )
    events_v1 = client.EventsV1Api(kube_api.api_client)
    events_v1.create_namespaced_event(
        kube_namespace,
        {
            "metadata": {"name": "e1"},
            # Not a whole second: the client re-serialises it with isoformat(), which
            # then drops the fraction that a MicroTime must have.
            "eventTime": "2026-01-01T00:00:00.123456Z",
            "reportingController": "test",
            "reportingInstance": "test",
            "action": "Test",
            "reason": "Testing",
            "type": "Normal",
            "regarding": {"kind": "ConfigMap", "name": "x", "namespace": kube_namespace},
        },
    )
    assert [e.metadata.name for e in events_v1.list_namespaced_event(kube_namespace).items] == [
        "e1"
    ]
    core_event = kube_api.core_v1.create_namespaced_event(
        kube_namespace,
        {
            "metadata": {"name": "e2"},
            "reason": "Testing",
            "message": "hello",
            "involvedObject": {"kind": "ConfigMap", "name": "x", "namespace": kube_namespace},
        },
    )
    assert core_event.message == "hello"
    rbac = client.RbacAuthorizationV1Api(kube_api.api_client)
    rbac.create_namespaced_role(
        kube_namespace,
        {
            "metadata": {"name": "reader"},
            "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]}],
        },
    )
    assert rbac.read_namespaced_role("reader", kube_namespace).rules[0].verbs == ["get"]


def test_a_pod_bound_to_a_node_is_deleted_gracefully(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    """Its kubelet must stop it first: deletionTimestamp, then gone on a grace-0 delete."""
    core = kube_api.core_v1
    spec = {"containers": [{"name": "c", "image": "busybox"}], "nodeName": "no-such-node"}
    core.create_namespaced_pod(kube_namespace, {"metadata": {"name": "bound"}, "spec": spec})
    core.create_namespaced_pod(
        kube_namespace,
        {"metadata": {"name": "unbound"}, "spec": {"containers": spec["containers"]}},
    )
    core.delete_namespaced_pod("bound", kube_namespace)
    terminating = core.read_namespaced_pod("bound", kube_namespace)
    assert terminating.metadata.deletion_timestamp is not None
    assert terminating.metadata.deletion_grace_period_seconds == 30
    # A longer grace period never extends it; a shorter one shortens it.
    core.delete_namespaced_pod("bound", kube_namespace, grace_period_seconds=60)
    assert (
        core.read_namespaced_pod("bound", kube_namespace).metadata.deletion_grace_period_seconds
        == 30
    )
    core.delete_namespaced_pod("bound", kube_namespace, grace_period_seconds=5)
    assert (
        core.read_namespaced_pod("bound", kube_namespace).metadata.deletion_grace_period_seconds
        == 5
    )
    core.delete_namespaced_pod("bound", kube_namespace, grace_period_seconds=0)
    # A pod no node runs goes at once.
    core.delete_namespaced_pod("unbound", kube_namespace)
    for name in ("bound", "unbound"):
        wait_for(
            lambda name=name: (
                name
                not in [p.metadata.name for p in core.list_namespaced_pod(kube_namespace).items]
            ),
            what=f"pod {name} gone",
        )


def test_pod_status_subresource(kube_api: KubeTestApi, kube_namespace: str) -> None:
    core = kube_api.core_v1
    pod = core.create_namespaced_pod(
        kube_namespace,
        {
            "metadata": {"name": "ps"},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
            "status": {"phase": "Running"},
        },
    )
    assert pod.status.phase == "Pending"
    updated = core.patch_namespaced_pod_status(
        "ps", kube_namespace, {"status": {"phase": "Running", "podIP": "10.0.0.5"}}
    )
    assert (updated.status.phase, updated.status.pod_ip) == ("Running", "10.0.0.5")
    running = core.list_namespaced_pod(kube_namespace, field_selector="status.phase=Running")
    assert [p.metadata.name for p in running.items] == ["ps"]
    relabeled = core.patch_namespaced_pod(
        "ps", kube_namespace, {"metadata": {"labels": {"a": "b"}}, "status": {"phase": "Failed"}}
    )
    assert relabeled.status.phase == "Running"


def test_list_exact_resource_version_shows_the_past(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    core = kube_api.core_v1
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "a"}})
    then = core.list_namespaced_config_map(kube_namespace).metadata.resource_version
    core.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "b"}})
    core.delete_namespaced_config_map("a", kube_namespace)
    past = core.list_namespaced_config_map(
        kube_namespace, resource_version=then, resource_version_match="Exact"
    )
    assert [c.metadata.name for c in past.items] == ["a"]
    assert past.metadata.resource_version == then
    now = core.list_namespaced_config_map(kube_namespace)
    assert [c.metadata.name for c in now.items] == ["b"]


SPROCKETS = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"sprockets.{GROUP}"},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": "sprockets", "singular": "sprocket", "kind": "Sprocket"},
        "versions": [
            {
                "name": "v1beta1",
                "served": True,
                "storage": False,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            },
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {"type": "object", "properties": {"teeth": {"type": "integer"}}}
                        },
                    }
                },
            },
        ],
    },
}


def test_namespaced_custom_resources_and_crd_deletion(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    co = kube_api.custom_objects
    kube_api.apply_crd(SPROCKETS)
    try:
        body = {
            "apiVersion": f"{GROUP}/v1",
            "kind": "Sprocket",
            "metadata": {"name": "s1"},
            "spec": {"teeth": 12},
        }
        co.create_namespaced_custom_object(GROUP, "v1", kube_namespace, "sprockets", body)
        held = {**body, "metadata": {"name": "s2", "finalizers": ["test.multinic.dev/hold"]}}
        co.create_namespaced_custom_object(GROUP, "v1", kube_namespace, "sprockets", held)
        # Every served version shows the same objects, with its own apiVersion.
        old = co.get_namespaced_custom_object(GROUP, "v1beta1", kube_namespace, "sprockets", "s1")
        assert old["apiVersion"] == f"{GROUP}/v1beta1"
        assert old["spec"] == {"teeth": 12}
        everywhere = co.list_cluster_custom_object(GROUP, "v1", "sprockets")
        assert {i["metadata"]["name"] for i in everywhere["items"]} == {"s1", "s2"}
        status = status_of(
            lambda: co.create_namespaced_custom_object(
                GROUP, "v1", kube_namespace, "sprockets", body
            )
        )
        assert status["reason"] == "AlreadyExists"
        kube_api.apiextensions_v1.delete_custom_resource_definition(f"sprockets.{GROUP}")

        def s1_gone() -> bool:
            try:
                co.get_namespaced_custom_object(GROUP, "v1", kube_namespace, "sprockets", "s1")
            except ApiException as e:
                return bool(e.status == 404)
            return False

        wait_for(s1_gone, 30, "the CRD's instances to be deleted")
        s2 = co.get_namespaced_custom_object(GROUP, "v1", kube_namespace, "sprockets", "s2")
        assert s2["metadata"]["deletionTimestamp"]
        co.patch_namespaced_custom_object(
            GROUP, "v1", kube_namespace, "sprockets", "s2", {"metadata": {"finalizers": None}}
        )
    finally:
        kube_api.delete_crd(f"sprockets.{GROUP}")
    with pytest.raises(ApiException) as gone:
        co.list_namespaced_custom_object(GROUP, "v1", kube_namespace, "sprockets")
    assert gone.value.status == 404


def test_crd_with_a_broken_schema_is_invalid(kube_api: KubeTestApi) -> None:
    broken = json.loads(json.dumps(SPROCKETS))
    broken["metadata"]["name"] = f"brokens.{GROUP}"
    broken["spec"]["names"] = {"plural": "brokens", "kind": "Broken"}
    broken["spec"]["versions"] = [broken["spec"]["versions"][1]]
    broken["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["type"] = (
        "integr"
    )
    status = status_of(
        lambda: kube_api.custom_objects.create_cluster_custom_object(
            "apiextensions.k8s.io", "v1", "customresourcedefinitions", broken
        )
    )
    assert (status["code"], status["reason"]) == (422, "Invalid")


# -- kubectl -----------------------------------------------------------------
# kubectl with the printed kubeconfig: apply, get (printer columns), -o yaml,
# patch, replace, delete and get -w, with deploy/crds and a test CRD.


def needs_kubectl(test: Any) -> Any:
    test = pytest.mark.kubectl(test)
    return pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")(
        test
    )


REPO = Path(__file__).resolve().parents[3]
CRDS = REPO / "deploy" / "crds"
NETWORK = """\
apiVersion: multinic.fms.io/v1
kind: MultiNicNetwork
metadata:
  name: kubectl-net
spec:
  subnet: 192.168.0.0/16
  ipam: '{"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "vlanMode": "l3"}'
  multiNICIPAM: true
  plugin:
    cniVersion: 0.3.0
    type: ipvlan
    args:
      mode: l3
"""


class Kubectl:
    def __init__(self, api: KubeTestApi, cache_dir: Path) -> None:
        self.env = {**os.environ, "KUBECONFIG": str(api.kubeconfig)}
        self.cache_dir = cache_dir

    def argv(self, *args: str) -> list[str]:
        return ["kubectl", f"--cache-dir={self.cache_dir}", *args]

    def __call__(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self.argv(*args),
            input=stdin,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(
                f"kubectl {' '.join(args)} failed ({result.returncode}):\n"
                f"{result.stdout}\n{result.stderr}"
            )
        return result

    def watch(self, *args: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.argv(*args),
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )


@pytest.fixture(scope="module")
def kubectl(kube_api: KubeTestApi, tmp_path_factory: pytest.TempPathFactory) -> Kubectl:
    return Kubectl(kube_api, tmp_path_factory.mktemp("kubectl-cache"))


def _stop(proc: subprocess.Popen[str]) -> str:
    time.sleep(1.0)
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    return out


def _header(output: str) -> list[str]:
    return output.splitlines()[0].split()


def _wait_established(kubectl: Kubectl, *crds: str) -> None:
    kubectl("wait", "--for=condition=established", "--timeout=60s", *[f"crd/{c}" for c in crds])


def _gadget_crd(tmp_path: Path) -> Path:
    """The test CRD renamed to Gadget, so the session's Widget CRD is left alone."""
    text = (DATA / "widgets-crd.yaml").read_text()
    for old, new in (
        ("widgets", "gadgets"),
        ("widget", "gadget"),
        ("Widget", "Gadget"),
        ("wdg", "gdg"),
    ):
        text = text.replace(old, new)
    path = tmp_path / "gadgets-crd.yaml"
    path.write_text(text)
    return path


@needs_kubectl
@pytest.mark.slow
def test_kubectl_lifecycle_of_a_test_custom_resource(
    kubectl: Kubectl, kube_api: KubeTestApi, tmp_path: Path
) -> None:
    crd_file = _gadget_crd(tmp_path)
    kubectl("apply", "-f", str(crd_file))
    try:
        _wait_established(kubectl, "gadgets.test.multinic.dev")
        watcher = kubectl.watch("get", "gadgets", "-w", "--output-watch-events")
        widget = {
            "apiVersion": "test.multinic.dev/v1",
            "kind": "Gadget",
            "metadata": {"name": "kw"},
            "spec": {"size": 3},
        }
        assert "created" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(widget)).stdout
        widget["spec"]["size"] = 4
        assert "configured" in kubectl("apply", "-f", "-", stdin=yaml.safe_dump(widget)).stdout
        table = kubectl("get", "gdg", "kw").stdout
        assert _header(table) == ["NAME", "SIZE", "COLOR", "PHASE", "AGE"]
        assert table.splitlines()[1].split()[:3] == ["kw", "4", "red"]
        kubectl("patch", "gadget", "kw", "--type", "merge", "-p", '{"spec":{"color":"blue"}}')
        current = yaml.safe_load(kubectl("get", "gadget", "kw", "-o", "yaml").stdout)
        assert current["spec"] == {"size": 4, "color": "blue"}
        current["spec"]["size"] = 7
        replaced = tmp_path / "kw.yaml"
        replaced.write_text(yaml.safe_dump(current))
        assert "replaced" in kubectl("replace", "-f", str(replaced)).stdout
        stale = kubectl("replace", "-f", str(replaced), check=False)
        assert stale.returncode != 0
        assert "modified" in stale.stderr
        bad = kubectl(
            "apply",
            "-f",
            "-",
            check=False,
            stdin=yaml.safe_dump({**widget, "metadata": {"name": "bad"}, "spec": {"size": "x"}}),
        )
        assert bad.returncode != 0
        assert "spec.size" in bad.stderr
        assert "deleted" in kubectl("delete", "gadget", "kw").stdout
        events = [line.split()[:2] for line in _stop(watcher).splitlines()[1:]]
        assert ["ADDED", "kw"] in events
        assert ["MODIFIED", "kw"] in events
        assert events[-1] == ["DELETED", "kw"]
    finally:
        kubectl("delete", "-f", str(crd_file), "--ignore-not-found", "--wait=true")


@pytest.fixture
def multinic_crds(kubectl: Kubectl) -> Iterator[list[Path]]:
    files = sorted(CRDS.glob("*.yaml"))
    if not files:
        pytest.skip(f"no CRDs generated in {CRDS} yet")
    names = [yaml.safe_load(f.read_text())["metadata"]["name"] for f in files]
    existing = kubectl("get", "crd", "-o", "name", check=False).stdout
    preinstalled = [n for n in names if f"/{n}" in existing]
    kubectl("apply", "-f", str(CRDS))
    _wait_established(kubectl, *names)
    yield files
    for path, name in zip(files, names, strict=True):
        if name not in preinstalled:
            kubectl("delete", "-f", str(path), "--ignore-not-found", "--wait=true")


@needs_kubectl
@pytest.mark.slow
def test_kubectl_with_the_multinic_crds(
    kubectl: Kubectl, multinic_crds: list[Path], tmp_path: Path
) -> None:
    served = kubectl("api-resources", "--api-group=multinic.fms.io", "-o", "name").stdout
    for path in multinic_crds:
        crd: dict[str, Any] = yaml.safe_load(path.read_text())
        assert crd["metadata"]["name"] in served.split()
    watcher = kubectl.watch("get", "multinicnetworks", "-w", "--output-watch-events")
    assert "created" in kubectl("apply", "-f", "-", stdin=NETWORK).stdout
    table = kubectl("get", "multinicnetwork", "kubectl-net").stdout
    assert _header(table) == ["NAME", "SUBNET", "PLUGIN", "CONFIG", "ROUTES", "HOSTS", "AGE"]
    assert table.splitlines()[1].split()[:3] == ["kubectl-net", "192.168.0.0/16", "ipvlan"]
    obj = yaml.safe_load(kubectl("get", "mnn", "kubectl-net", "-o", "yaml").stdout)
    assert obj["spec"]["plugin"]["args"] == {"mode": "l3"}
    assert obj["metadata"]["generation"] == 1
    kubectl(
        "patch",
        "multinicnetwork",
        "kubectl-net",
        "--type",
        "merge",
        "-p",
        '{"spec":{"subnet":"10.0.0.0/8"}}',
    )
    obj = yaml.safe_load(kubectl("get", "mnn", "kubectl-net", "-o", "yaml").stdout)
    assert obj["spec"]["subnet"] == "10.0.0.0/8"
    assert obj["metadata"]["generation"] == 2
    obj["spec"]["masterNets"] = ["10.1.0.0/16"]
    edited = tmp_path / "net.yaml"
    edited.write_text(yaml.safe_dump(obj))
    assert "replaced" in kubectl("replace", "-f", str(edited)).stdout
    # (Not kubectl-net: its last-applied configuration, rewritten by the replace,
    # now holds a resourceVersion, so an apply would remove it: 422 of its own.)
    invalid = kubectl(
        "apply",
        "-f",
        "-",
        check=False,
        stdin=NETWORK.replace("type: ipvlan", 'type: ""').replace("kubectl-net", "kubectl-bad"),
    )
    assert invalid.returncode != 0
    assert "spec.plugin.type" in invalid.stderr
    assert "deleted" in kubectl("delete", "mnn", "kubectl-net").stdout
    # Other tests of the session (or other users of a real cluster) may own networks too.
    lines = _stop(watcher).splitlines()[1:]
    events = [e for e in (line.split()[:2] for line in lines) if e[1:] == ["kubectl-net"]]
    assert events[0] == ["ADDED", "kubectl-net"]
    assert events.count(["MODIFIED", "kubectl-net"]) >= 2
    assert events[-1] == ["DELETED", "kubectl-net"]


@needs_kubectl
def test_kubectl_generator_commands(kubectl: Kubectl, kube_api: KubeTestApi) -> None:
    # These send protobuf bodies; the namespace gets the server's name label.
    ns = f"gen-{os.getpid()}"
    kubectl("create", "namespace", ns)
    try:
        kubectl("-n", ns, "create", "configmap", "c", "--from-literal=a=b")
        kubectl("-n", ns, "create", "secret", "generic", "s", "--from-literal=pw=x")
        kubectl("-n", ns, "create", "serviceaccount", "robot")
        namespace = kube_api.core_v1.read_namespace(ns)
        assert namespace.metadata.labels["kubernetes.io/metadata.name"] == ns
        assert kube_api.core_v1.read_namespaced_config_map("c", ns).data == {"a": "b"}
        assert kube_api.core_v1.read_namespaced_secret("s", ns).data == {"pw": "eA=="}
        assert kube_api.core_v1.read_namespaced_service_account("robot", ns).metadata.uid
    finally:
        kubectl("delete", "namespace", ns, "--wait=false")


# -- what Multus sends: pods/status with annotations, protobuf bodies ---------------


def _pb_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _pb(number: int, payload: bytes | str | int) -> bytes:
    """One protobuf field: a varint for an int, length-delimited otherwise."""
    if isinstance(payload, int):
        return _pb_varint(number << 3) + _pb_varint(payload)
    data = payload.encode() if isinstance(payload, str) else payload
    return _pb_varint(number << 3 | 2) + _pb_varint(len(data)) + data


def _pb_object(api_version: str, kind: str, raw: bytes) -> bytes:
    """A Kubernetes protobuf body: the magic number and a runtime.Unknown envelope."""
    return b"k8s\x00" + _pb(1, _pb(1, api_version) + _pb(2, kind)) + _pb(2, raw)


PROTOBUF = "application/vnd.kubernetes.protobuf"
NETWORK_STATUS = "k8s.v1.cni.cncf.io/network-status"


def test_pods_status_update_stores_annotations_and_labels_but_not_the_spec(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    # Multus writes network-status so: GET the pod, set the annotation, PUT pods/status.
    core = kube_api.core_v1
    core.create_namespaced_pod(
        kube_namespace,
        {
            "metadata": {"name": "st", "labels": {"a": "1"}},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )
    pod = core.read_namespaced_pod("st", kube_namespace)
    pod.metadata.annotations = {NETWORK_STATUS: '[{"name": "x"}]'}
    pod.metadata.labels["b"] = "2"
    pod.spec.active_deadline_seconds = 30  # the status subresource ignores spec changes
    updated = core.replace_namespaced_pod_status("st", kube_namespace, pod)
    assert updated.metadata.annotations[NETWORK_STATUS] == '[{"name": "x"}]'
    assert updated.metadata.labels == {"a": "1", "b": "2"}
    assert updated.spec.active_deadline_seconds is None
    stored = core.read_namespaced_pod("st", kube_namespace)
    assert stored.metadata.annotations[NETWORK_STATUS] == '[{"name": "x"}]'
    # A stale resourceVersion conflicts, as for any update (Multus retries on conflict).
    with pytest.raises(ApiException) as info:
        core.replace_namespaced_pod_status("st", kube_namespace, pod)
    assert info.value.status == 409


def test_protobuf_pods_status_update_and_event_as_multus_sends_them(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    core = kube_api.core_v1
    created = core.create_namespaced_pod(
        kube_namespace,
        {"metadata": {"name": "pb"}, "spec": {"containers": [{"name": "c", "image": "busybox"}]}},
    )
    annotation = _pb(1, NETWORK_STATUS) + _pb(2, '[{"name": "default/net"}]')
    meta = (
        _pb(1, "pb") + _pb(3, kube_namespace) + _pb(5, created.metadata.uid) + _pb(12, annotation)
    )
    pod = _pb(1, meta) + _pb(2, b"") + _pb(3, _pb(1, "Pending"))
    path = f"/api/v1/namespaces/{kube_namespace}/pods/pb"
    status, answer = raw_request(
        kube_api, "PUT", path + "/status", _pb_object("v1", "Pod", pod), PROTOBUF
    )
    assert status == 200, answer
    assert answer["metadata"]["annotations"][NETWORK_STATUS] == '[{"name": "default/net"}]'
    assert answer["spec"]["containers"][0]["name"] == "c"  # the spec stays
    stamp = _pb(1, 1_700_000_000)
    event = (
        _pb(1, _pb(1, "pb.multus") + _pb(3, kube_namespace))
        + _pb(
            2,
            _pb(1, "Pod")
            + _pb(2, kube_namespace)
            + _pb(3, "pb")
            + _pb(4, created.metadata.uid)
            + _pb(5, "v1"),
        )
        + _pb(3, "AddedInterface")
        + _pb(4, "Add net1 [10.0.0.2/24] from default/net")
        + _pb(5, _pb(1, "multus"))
        + _pb(6, stamp)
        + _pb(7, stamp)
        + _pb(8, 1)
        + _pb(9, "Normal")
        + _pb(14, "multus")
        + _pb(15, "")
    )
    status, answer = raw_request(
        kube_api, "POST", f"/api/v1/namespaces/{kube_namespace}/events",
        _pb_object("v1", "Event", event), PROTOBUF,
    )  # fmt: skip
    assert status == 201, answer
    recorded = core.read_namespaced_event("pb.multus", kube_namespace)
    assert (recorded.reason, recorded.type, recorded.count) == ("AddedInterface", "Normal", 1)
    assert recorded.source.component == "multus"
    assert recorded.involved_object.uid == created.metadata.uid
    assert recorded.first_timestamp.timestamp() == 1_700_000_000
