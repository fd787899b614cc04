"""The pure building blocks: patches, selectors, schemas, printing, the store.

These pin details that are awkward to reach over HTTP (strategic-merge
directives kubectl sends, selector parse errors, the AGE column format).
"""

from __future__ import annotations

from typing import Any

import pytest

from multinic_sim.errors import ApiError
from multinic_sim.patching import json_patch, merge_patch, strategic_merge_patch
from multinic_sim.printing import human_duration, json_path
from multinic_sim.protobuf import ProtobufError, decode
from multinic_sim.schema import CustomResourceSchema, to_jsonschema
from multinic_sim.selectors import FieldSelector, LabelSelector
from multinic_sim.store import ObjectStore


def test_merge_patch_does_not_modify_its_input() -> None:
    target = {"a": {"b": 1, "c": [1]}, "d": 1}
    result = merge_patch(target, {"a": {"b": None, "e": 2}})
    assert result == {"a": {"c": [1], "e": 2}, "d": 1}
    assert target == {"a": {"b": 1, "c": [1]}, "d": 1}


def test_json_patch_move_copy_and_errors() -> None:
    doc = {"a": [1, 2], "b": {}}
    out = json_patch(
        doc,
        [
            {"op": "copy", "from": "/a/0", "path": "/b/x"},
            {"op": "move", "from": "/a/1", "path": "/c"},
            {"op": "remove", "path": "/a/0"},
        ],
    )
    assert out == {"a": [], "b": {"x": 1}, "c": 2}
    assert doc == {"a": [1, 2], "b": {}}
    with pytest.raises(ApiError) as info:
        json_patch(doc, [{"op": "remove", "path": "/nope"}])
    assert info.value.code == 422
    with pytest.raises(ApiError) as info:
        json_patch(doc, {"op": "add"})
    assert info.value.code == 400


def test_strategic_merge_patch_directives_kubectl_sends() -> None:
    spec = {
        "containers": [
            {"name": "a", "image": "1", "env": [{"name": "X", "value": "1"}]},
            {"name": "b", "image": "1"},
        ],
        "volumes": [{"name": "v", "emptyDir": {}}],
        "finalizers": ["f1"],
    }
    patch: dict[str, Any] = {
        "$setElementOrder/containers": [{"name": "b"}, {"name": "a"}],
        "containers": [
            {
                "name": "a",
                "image": "2",
                "$setElementOrder/env": [{"name": "X"}],
                "env": [{"name": "Y", "$patch": "delete"}],
            },
            {"name": "c", "image": "3"},
        ],
        "volumes": [{"name": "v", "$patch": "delete"}],
        "$deleteFromPrimitiveList/finalizers": ["f1"],
    }
    out = strategic_merge_patch(spec, patch)
    assert [c["name"] for c in out["containers"]] == ["b", "a", "c"]
    assert out["containers"][1] == {"name": "a", "image": "2", "env": [{"name": "X", "value": "1"}]}
    assert out["volumes"] == []
    assert out["finalizers"] == []
    replaced = strategic_merge_patch({"m": {"a": 1, "b": 2}}, {"m": {"$patch": "replace", "c": 3}})
    assert replaced == {"m": {"c": 3}}
    retained = strategic_merge_patch(
        {"s": {"type": "A", "a": 1}}, {"s": {"$retainKeys": ["type"], "type": "B"}}
    )
    assert retained == {"s": {"type": "B"}}


@pytest.mark.parametrize("text", ["a in (b", "a=b,", "=b", "a notin b", "a > x", "a b"])
def test_label_selector_parse_errors(text: str) -> None:
    with pytest.raises(ApiError) as info:
        LabelSelector.parse(text)
    assert info.value.code == 400


def test_label_selector_numeric_and_empty_value() -> None:
    assert LabelSelector.parse("n>3").matches({"n": "4"})
    assert not LabelSelector.parse("n<3").matches({"n": "4"})
    assert LabelSelector.parse("a=").matches({"a": ""})
    assert not LabelSelector.parse("a=").matches({})


def test_field_selector_names_allowed_fields() -> None:
    selector = FieldSelector.parse(
        "spec.nodeName=n1,status.phase!=Failed", ("spec.nodeName", "status.phase"), "Pod"
    )
    assert selector.matches({"spec": {"nodeName": "n1"}, "status": {"phase": "Running"}})
    assert not selector.matches({"spec": {"nodeName": "n2"}, "status": {}})
    with pytest.raises(ApiError):
        FieldSelector.parse("spec.other=1", (), "ConfigMap")


def test_schema_translation_for_openapi_extensions() -> None:
    translated = to_jsonschema(
        {
            "type": "object",
            "properties": {
                "n": {"type": "string", "nullable": True, "format": "ipv4"},
                "p": {"x-kubernetes-int-or-string": True},
            },
        }
    )
    assert translated["properties"]["n"]["anyOf"][0] == {"type": "null"}
    assert "format" not in translated["properties"]["n"]["anyOf"][1]
    schema = CustomResourceSchema(
        {
            "type": "object",
            "properties": {
                "spec": {
                    "type": "object",
                    "properties": {
                        "items": {
                            "type": "array",
                            "items": {
                                "type": "object",
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "n": {"type": "integer", "default": 1},
                                },
                            },
                        }
                    },
                }
            },
        }
    )
    unknown: list[str] = []
    admitted, causes = schema.admit(
        {
            "apiVersion": "x/v1",
            "kind": "X",
            "metadata": {"name": "x", "bogus": 1},
            "spec": {"items": [{"name": "a", "junk": True}, {}]},
        },
        unknown=unknown,
    )
    assert admitted["spec"]["items"][0] == {"name": "a", "n": 1}
    assert "bogus" not in admitted["metadata"]
    assert unknown == ["spec.items[0].junk"]
    assert [c["field"] for c in causes] == ["spec.items[1].name"]


def test_age_column_format() -> None:
    assert [
        human_duration(s)
        for s in (5, 119, 150, 600, 3 * 3600 + 60, 30 * 3600, 3 * 86400 + 3600, 400 * 86400)
    ] == ["5s", "119s", "2m30s", "10m", "3h1m", "30h", "3d1h", "400d"]


def test_printer_column_json_paths() -> None:
    obj = {
        "status": {
            "conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]
        },
        "spec": {"items": [{"x": 1}, {"x": 2}]},
    }
    assert json_path(obj, '.status.conditions[?(@.type=="Ready")].status') == ["True"]
    assert json_path(obj, ".spec.items[1].x") == [2]
    assert json_path(obj, ".spec.missing") == []


def test_store_history_reconstructs_past_states_until_compaction() -> None:
    store = ObjectStore(history_limit=3)
    gr = ("", "configmaps")

    def put(name: str, value: str, prev: dict[str, Any] | None) -> dict[str, Any]:
        rv = store.next_revision()
        obj = {
            "metadata": {"name": name, "namespace": "d", "resourceVersion": str(rv)},
            "data": {"v": value},
        }
        store.put(gr, obj, prev)
        return obj

    a1 = put("a", "1", None)
    put("a", "2", a1)
    assert store.state_at(gr, 1)[("d", "a")]["data"] == {"v": "1"}
    put("b", "1", None)
    put("c", "1", None)  # the history now starts after rv 1
    with pytest.raises(ApiError) as info:
        store.events_since(0, gr)
    assert info.value.code == 410
    assert [e.rv for e in store.events_since(1, gr)] == [2, 3, 4]
    store.compact()
    with pytest.raises(ApiError):
        store.state_at(gr, 3)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"k8s\x00\xff\xff",
        b"k8s\x00\x0a\x05\x0a\x02v1",
        b"\x0a\x02hi",
        b"k8s\x00" + b"\x0a\x10" + b"\x0a\x02v1",
    ],
)
def test_protobuf_garbage_is_refused(body: bytes) -> None:
    with pytest.raises(ProtobufError):
        decode(body)
