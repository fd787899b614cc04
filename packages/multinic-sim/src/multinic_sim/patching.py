"""PATCH bodies: JSON merge patch (RFC 7386), JSON patch (RFC 6902) and the
subset of Kubernetes strategic merge patch that kubectl sends for built-in kinds.

All functions return new values and never modify their inputs: stored objects
are shared between the store, the watch history and open watches.
"""

from __future__ import annotations

import copy
from typing import Any

from multinic_sim.errors import ApiError, bad_request

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge recursively, ``null`` deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _unprocessable(message: str) -> ApiError:
    return ApiError(422, "Invalid", message)


def _pointer(path: str) -> list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise _unprocessable(f"invalid JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _resolve(doc: Any, parts: list[str], path: str) -> Any:
    for part in parts:
        if isinstance(doc, dict):
            if part not in doc:
                raise _unprocessable(f'doc is missing path: "{path}": missing value')
            doc = doc[part]
        elif isinstance(doc, list):
            try:
                doc = doc[int(part)]
            except (ValueError, IndexError) as e:
                raise _unprocessable(f'doc is missing path: "{path}": missing value') from e
        else:
            raise _unprocessable(f'doc is missing path: "{path}": missing value')
    return doc


def _list_index(container: list[Any], part: str, path: str, *, for_add: bool) -> int:
    if for_add and part == "-":
        return len(container)
    try:
        index = int(part)
    except ValueError as e:
        raise _unprocessable(f"invalid array index {part!r} in {path!r}") from e
    limit = len(container) if for_add else len(container) - 1
    if index < 0 or index > limit:
        raise _unprocessable(f"unable to access invalid index: {index} in {path!r}")
    return index


def json_patch(target: Any, operations: Any) -> Any:
    """RFC 6902 operations applied to a copy of *target*."""
    if not isinstance(operations, list):
        raise bad_request("json patch must be a list of operations")
    doc = copy.deepcopy(target)
    for op in operations:
        if not isinstance(op, dict) or "op" not in op or "path" not in op:
            raise bad_request(f"invalid json patch operation: {op!r}")
        kind, path = op["op"], op["path"]
        parts = _pointer(path)
        if kind == "test":
            if _tested(doc, parts, path) != op.get("value"):
                raise _unprocessable(f"testing value {path} failed: test failed")
            continue
        if kind in ("move", "copy"):
            src_parts = _pointer(op.get("from", ""))
            value = copy.deepcopy(_resolve(doc, src_parts, op.get("from", "")))
            if kind == "move":
                doc = _remove(doc, src_parts, op.get("from", ""))
            doc = _add(doc, parts, path, value)
        elif kind == "add":
            doc = _add(doc, parts, path, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts, path)
        elif kind == "replace":
            _resolve(doc, parts, path)
            doc = _remove(doc, parts, path)
            doc = _add(doc, parts, path, copy.deepcopy(op.get("value")))
        else:
            raise bad_request(f"unexpected json patch operation {kind!r}")
    return doc


def _tested(doc: Any, parts: list[str], path: str) -> Any:
    """The value a ``test`` op compares, as the kube-apiserver's json-patch (v4) finds it.

    Unlike RFC 6902, a missing key of an existing object is ``null`` there, so
    ``{"op": "test", "path": "/spec/map/k", "value": null}`` passes when ``k``
    is absent (whereabouts guards each of its ``add`` ops with one).  A
    missing parent or list index still fails.
    """
    if parts:
        parent = _resolve(doc, parts[:-1], path)
        if isinstance(parent, dict):
            return parent.get(parts[-1])
    return _resolve(doc, parts, path)


def _add(doc: Any, parts: list[str], path: str, value: Any) -> Any:
    if not parts:
        return value
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        parent.insert(_list_index(parent, last, path, for_add=True), value)
    else:
        raise _unprocessable(f'doc is missing path: "{path}": missing value')
    return doc


def _remove(doc: Any, parts: list[str], path: str) -> Any:
    if not parts:
        return None
    parent = _resolve(doc, parts[:-1], path)
    last = parts[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise _unprocessable(f"Unable to remove nonexistent key: {last}: missing value")
        del parent[last]
    elif isinstance(parent, list):
        del parent[_list_index(parent, last, path, for_add=False)]
    else:
        raise _unprocessable(f'doc is missing path: "{path}": missing value')
    return doc


# Strategic merge patch: the merge keys of list fields in built-in kinds, by field
# name. Lists not named here are replaced, as for lists without a patch strategy.
MERGE_KEYS: dict[str, str] = {
    "containers": "name",
    "initContainers": "name",
    "ephemeralContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "volumeDevices": "devicePath",
    "imagePullSecrets": "name",
    "ports": "containerPort",
    "hostAliases": "ip",
    "ownerReferences": "uid",
    "conditions": "type",
    "addresses": "type",
    "taints": "key",
    "topologySpreadConstraints": "topologyKey",
    "resourceClaims": "name",
}
# Lists of scalars merged as sets.
SET_LISTS = frozenset({"finalizers"})


def strategic_merge_patch(target: Any, patch: Any) -> Any:
    """Kubernetes strategic merge patch for built-in kinds (as kubectl sends it).

    Supports merge keys for the common list fields, ``$patch: replace|delete``,
    ``$retainKeys``, ``$deleteFromPrimitiveList/<field>`` and
    ``$setElementOrder/<field>``.
    """
    if not isinstance(patch, dict):
        raise bad_request("strategic merge patch must be a JSON object")
    return _smp_map(target if isinstance(target, dict) else {}, patch)


def _smp_map(target: dict[str, Any], patch: dict[str, Any]) -> Any:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return None
    result = dict(target)
    retain = patch.get("$retainKeys")
    orders: dict[str, list[Any]] = {}
    for key, value in patch.items():
        if key in ("$patch", "$retainKeys"):
            continue
        if key.startswith("$setElementOrder/"):
            orders[key.split("/", 1)[1]] = value
            continue
        if key.startswith("$deleteFromPrimitiveList/"):
            field = key.split("/", 1)[1]
            current = result.get(field)
            if isinstance(current, list):
                result[field] = [v for v in current if v not in value]
            continue
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            existing = result.get(key)
            merged = _smp_map(existing if isinstance(existing, dict) else {}, value)
            if merged is None:
                result.pop(key, None)
            else:
                result[key] = merged
        elif isinstance(value, list):
            result[key] = _smp_list(key, result.get(key), value)
        else:
            result[key] = value
    for field, order in orders.items():
        if isinstance(result.get(field), list):
            result[field] = _apply_order(field, result[field], order)
    if isinstance(retain, list):
        result = {k: v for k, v in result.items() if k in retain}
    return result


def _smp_list(field: str, current: Any, patch: list[Any]) -> list[Any]:
    current_list = current if isinstance(current, list) else []
    if field in SET_LISTS:
        merged = list(current_list)
        for item in patch:
            if item not in merged:
                merged.append(item)
        return merged
    key = MERGE_KEYS.get(field)
    if key is None or not all(isinstance(i, dict) for i in patch):
        return [p for p in copy.deepcopy(patch) if not _is_directive(p)]
    if any(isinstance(p, dict) and p.get("$patch") == "replace" for p in patch):
        return [p for p in copy.deepcopy(patch) if not _is_directive(p)]
    result = list(current_list)
    for item in patch:
        index = next(
            (
                i
                for i, c in enumerate(result)
                if isinstance(c, dict) and c.get(key) == item.get(key)
            ),
            None,
        )
        if item.get("$patch") == "delete":
            if index is not None:
                del result[index]
            continue
        if index is None:
            result.append(copy.deepcopy({k: v for k, v in item.items() if k != "$patch"}))
        else:
            merged = _smp_map(result[index], item)
            result[index] = merged
    return result


def _is_directive(item: Any) -> bool:
    return isinstance(item, dict) and set(item) == {"$patch"}


def _apply_order(field: str, items: list[Any], order: list[Any]) -> list[Any]:
    key = MERGE_KEYS.get(field)

    def identity(item: Any) -> Any:
        if key is not None and isinstance(item, dict):
            return item.get(key)
        return item

    wanted = [identity(o) for o in order]
    ranked = sorted(
        enumerate(items),
        key=lambda pair: (
            wanted.index(identity(pair[1])) if identity(pair[1]) in wanted else len(wanted),
            pair[0],
        ),
    )
    return [item for _, item in ranked]
