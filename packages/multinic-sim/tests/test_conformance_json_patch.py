"""Conformance: JSON patch ``test`` ops as whereabouts sends them.

whereabouts (v0.9.2) updates an IPPool with one JSON patch: a ``test`` of
``/metadata/resourceVersion`` (its optimistic lock), then, before each
``add`` of ``/spec/allocations/<offset>``, a ``test`` of that path with
``"value": null`` ("the key is free"), then the ``add`` ops.  It retries when
the answer is 422 with reason Invalid (``errors.IsInvalid``) and gives up on
anything else.  The kube-apiserver's json-patch library (evanphx v4) treats a
missing key of an existing object as ``null``, unlike RFC 6902; the double
failed that test with "missing path", so every whereabouts allocation was
refused (packages/multinic-agent/tests/test_whereabouts.py).

Run against the local API server by default and against a real cluster
when ``MULTINIC_TEST_KUBECONFIG`` is set.
"""

from __future__ import annotations

from typing import Any

from .conftest import GROUP, PLURAL, VERSION, WidgetClient, status_of

JSON_PATCH = "application/json-patch+json"


def json_patch(widgets: WidgetClient, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = widgets.co.patch_cluster_custom_object(
        GROUP, VERSION, PLURAL, name, ops, _content_type=JSON_PATCH
    )
    return obj


def test_json_patch_test_of_a_missing_key_against_null_passes(widgets: WidgetClient) -> None:
    obj = widgets.create(widgets.body("wa", 1, extra={"a": 1}))
    rv = obj["metadata"]["resourceVersion"]
    patched = json_patch(
        widgets,
        "wa",
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": rv},
            {"op": "test", "path": "/spec/extra/b", "value": None},
            {"op": "add", "path": "/spec/extra/b", "value": 2},
        ],
    )
    assert patched["spec"]["extra"] == {"a": 1, "b": 2}
    # A test without a value is a test against null, too.
    json_patch(widgets, "wa", [{"op": "test", "path": "/spec/extra/c"}])


def test_json_patch_test_failures_are_invalid(widgets: WidgetClient) -> None:
    """The failures whereabouts retries on: 422 Invalid, and the object unchanged."""
    obj = widgets.create(widgets.body("wb", 1, extra={"a": 1}))
    stale = obj["metadata"]["resourceVersion"]
    json_patch(widgets, "wb", [{"op": "add", "path": "/spec/extra/b", "value": 2}])
    for ops in (
        # the lock: another writer came first
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": stale},
            {"op": "add", "path": "/spec/extra/c", "value": 3},
        ],
        # the key is taken
        [{"op": "test", "path": "/spec/extra/b", "value": None}],
        # a value where there is none
        [{"op": "test", "path": "/spec/extra/z", "value": 1}],
        # a missing parent is still a missing path
        [{"op": "test", "path": "/spec/nothing/b", "value": None}],
    ):
        status = status_of(lambda ops=ops: json_patch(widgets, "wb", ops))
        assert (status["code"], status["reason"]) == (422, "Invalid"), (ops, status)
    assert widgets.get("wb")["spec"]["extra"] == {"a": 1, "b": 2}
