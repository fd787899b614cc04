"""Custom resources checked against their CRD's OpenAPI v3 schema.

The order follows the real API server: ``null`` values of non-nullable fields
are dropped, ``default`` values are applied, unknown fields are pruned (unless
``x-kubernetes-preserve-unknown-fields``), then the object is validated. The
validation itself is the jsonschema library's (Draft 4, which is what OpenAPI
3.0 schemas are based on), on a copy of the schema translated for the OpenAPI
extensions (``nullable``, ``x-kubernetes-int-or-string``).
"""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
from jsonschema import Draft4Validator
from jsonschema.exceptions import SchemaError, ValidationError

from multinic_sim.errors import cause

OBJECT_META_FIELDS = frozenset(
    {
        "name",
        "generateName",
        "namespace",
        "selfLink",
        "uid",
        "resourceVersion",
        "generation",
        "creationTimestamp",
        "deletionTimestamp",
        "deletionGracePeriodSeconds",
        "labels",
        "annotations",
        "ownerReferences",
        "finalizers",
        "managedFields",
    }
)


class SchemaProblem(Exception):
    """The CRD's schema itself cannot be used."""


def to_jsonschema(schema: Any) -> Any:
    """Translate an OpenAPI v3 (CRD) schema to a JSON-schema Draft 4 document."""
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            out[key] = to_jsonschema(value) if isinstance(value, dict) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            out[key] = [to_jsonschema(v) for v in value]
        elif key in ("format", "nullable", "default", "example", "externalDocs") or key.startswith(
            "x-kubernetes-"
        ):
            continue
        else:
            out[key] = value
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        int_or_string = [{"type": "integer"}, {"type": "string"}]
        out["allOf"] = [*out.get("allOf", []), {"anyOf": int_or_string}]
    if schema.get("nullable"):
        kind = out.get("type")
        if isinstance(kind, str):
            out["type"] = [kind, "null"]
        if "enum" in out and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        # An explicit null must not trip the other keywords either.
        return {"anyOf": [{"type": "null"}, out]}
    return out


def _is_object_schema(schema: dict[str, Any]) -> bool:
    return schema.get("type") == "object" or "properties" in schema


def apply_defaults(value: Any, schema: dict[str, Any]) -> Any:
    """Drop non-nullable nulls and fill in ``default`` values (returns a new value)."""
    if isinstance(value, dict) and _is_object_schema(schema):
        props: dict[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        for key, item in value.items():
            sub = props.get(key)
            if sub is None and isinstance(extra, dict):
                sub = extra
            if item is None and sub is not None and not sub.get("nullable"):
                continue
            result[key] = apply_defaults(item, sub) if sub is not None else item
        for key, sub in props.items():
            if key not in result and isinstance(sub, dict) and "default" in sub:
                result[key] = apply_defaults(copy.deepcopy(sub["default"]), sub)
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(item, schema["items"]) for item in value]
    return value


def prune(
    value: Any,
    schema: dict[str, Any],
    *,
    root: bool = False,
    path: str = "",
    unknown: list[str] | None = None,
) -> Any:
    """Drop fields the schema does not know (a new value); their paths go to *unknown*."""
    if isinstance(value, dict):
        preserve = bool(schema.get("x-kubernetes-preserve-unknown-fields"))
        embedded = bool(schema.get("x-kubernetes-embedded-resource"))
        props: dict[str, Any] = schema.get("properties") or {}
        extra = schema.get("additionalProperties")
        result: dict[str, Any] = {}
        for key, item in value.items():
            if (root or embedded) and key in ("apiVersion", "kind"):
                result[key] = item
            elif (root or embedded) and key == "metadata" and isinstance(item, dict):
                if root:
                    result[key] = {k: v for k, v in item.items() if k in OBJECT_META_FIELDS}
                else:
                    result[key] = item
            elif key in props:
                result[key] = prune(item, props[key], path=_join(path, key), unknown=unknown)
            elif isinstance(extra, dict):
                result[key] = prune(item, extra, path=_join(path, key), unknown=unknown)
            elif preserve or extra is True:
                result[key] = item
            elif unknown is not None:
                unknown.append(_join(path, key))
        return result
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [
            prune(item, schema["items"], path=f"{path}[{i}]", unknown=unknown)
            for i, item in enumerate(value)
        ]
    return value


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _field_path(error: ValidationError) -> str:
    path = ""
    for part in error.absolute_path:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += f".{part}" if path else str(part)
    return path


def _render(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict | list):
        return f'"{type(value).__name__}"'
    return str(value)


def _cause_for(error: ValidationError) -> dict[str, str]:
    field = _field_path(error)
    if error.validator == "required":
        missing = error.message.split("'")[1] if "'" in error.message else ""
        full = f"{field}.{missing}" if field else missing
        return cause(full, "FieldValueRequired", "Required value")
    if error.validator == "enum":
        allowed = ", ".join(_render(v) for v in error.validator_value)
        return cause(
            field,
            "FieldValueNotSupported",
            f"Unsupported value: {_render(error.instance)}: supported values: {allowed}",
        )
    if error.validator == "type":
        actual = _json_type(error.instance)
        return cause(
            field,
            "FieldValueTypeInvalid",
            f'Invalid value: "{actual}": {field} in body must be of type '
            f'{error.validator_value}: "{actual}"',
        )
    return cause(
        field,
        "FieldValueInvalid",
        f"Invalid value: {_render(error.instance)}: {field} in body {error.message}",
    )


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


class CustomResourceSchema:
    """The schema of one served version of a custom resource."""

    def __init__(self, openapi_schema: dict[str, Any] | None) -> None:
        self.openapi_schema = openapi_schema or {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": True,
        }
        translated = to_jsonschema(self.openapi_schema)
        # metadata is validated by the server's generic rules, never by the CRD schema.
        if isinstance(translated, dict) and isinstance(translated.get("properties"), dict):
            translated["properties"] = {
                k: v for k, v in translated["properties"].items() if k != "metadata"
            }
        try:
            Draft4Validator.check_schema(translated)
        except SchemaError as e:
            raise SchemaProblem(e.message) from e
        self._validator = Draft4Validator(translated)

    def admit(
        self, obj: dict[str, Any], *, unknown: list[str] | None = None
    ) -> tuple[dict[str, Any], list[dict[str, str]]]:
        """Default, prune and validate *obj*: the stored form and any causes for a 422.

        Paths of pruned unknown fields are appended to *unknown*.
        """
        defaulted = apply_defaults(obj, self.openapi_schema)
        pruned = prune(defaulted, self.openapi_schema, root=True, unknown=unknown)
        causes = [_cause_for(e) for e in self._validator.iter_errors(pruned)]
        causes.sort(key=lambda c: c["field"])
        return pruned, causes


def validate_schema_document(schema: Any) -> str | None:
    """An error message if *schema* cannot serve as a CRD schema, else None."""
    if schema is None:
        return None
    if not isinstance(schema, dict):
        return "must be an object"
    try:
        CustomResourceSchema(schema)
    except SchemaProblem as e:
        return str(e)
    except jsonschema.exceptions.SchemaError as e:  # pragma: no cover - defensive
        return str(e.message)
    return None
