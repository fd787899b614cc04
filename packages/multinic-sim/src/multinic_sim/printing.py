"""Server-side printing: ``meta.k8s.io/v1`` ``Table`` responses for kubectl.

kubectl asks for tables (``Accept: application/json;as=Table;v=v1;g=meta.k8s.io``)
and prints whatever columns the server sends, so a CRD's
``additionalPrinterColumns`` only show up if the server renders them.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

from multinic_sim.resources import ResourceType

NAME_COLUMN = {
    "name": "Name",
    "type": "string",
    "format": "name",
    "description": "Name must be unique within a namespace.",
    "priority": 0,
}
AGE_COLUMN = {
    "name": "Age",
    "type": "date",
    "format": "",
    "description": "CreationTimestamp is a timestamp representing the server time when this "
    "object was created.",
    "priority": 0,
}
_SEGMENT = re.compile(
    r"\.(?P<field>[A-Za-z0-9_\-/]+)"
    r"|\[(?P<index>-?\d+|\*)\]"
    r"|\[\?\(@\.(?P<fkey>[A-Za-z0-9_\-.]+)\s*==\s*[\"'](?P<fval>[^\"']*)[\"']\)\]"
    r"|\['(?P<quoted>[^']+)'\]"
)


def parse_time(text: str) -> datetime | None:
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    except (TypeError, ValueError):
        return None


def human_duration(seconds: float) -> str:
    """kube's ``duration.HumanDuration`` (the AGE column)."""
    s = int(seconds)
    if s < -1:
        return "<invalid>"
    if s < 0:
        return "0s"
    if s < 120:
        return f"{s}s"
    minutes = s // 60
    if minutes < 10:
        rest = s % 60
        return f"{minutes}m{rest}s" if rest else f"{minutes}m"
    if minutes < 180:
        return f"{minutes}m"
    hours = s // 3600
    if hours < 8:
        rest = minutes % 60
        return f"{hours}h{rest}m" if rest else f"{hours}h"
    if hours < 48:
        return f"{hours}h"
    if hours < 24 * 8:
        rest = hours % 24
        return f"{hours // 24}d{rest}h" if rest else f"{hours // 24}d"
    if hours < 24 * 365 * 2:
        return f"{hours // 24}d"
    if hours < 24 * 365 * 8:
        rest = (hours // 24) % 365
        return f"{hours // 24 // 365}y{rest}d" if rest else f"{hours // 24 // 365}y"
    return f"{hours // 24 // 365}y"


def age(timestamp: Any, now: datetime | None = None) -> str:
    when = parse_time(timestamp) if isinstance(timestamp, str) else None
    if when is None:
        return "<unknown>"
    return human_duration(((now or datetime.now(UTC)) - when).total_seconds())


def json_path(obj: Any, path: str) -> list[Any]:
    """Evaluate the simple JSONPath subset used by printer columns."""
    path = path.strip()
    if path.startswith("{") and path.endswith("}"):
        path = path[1:-1]
    if path.startswith("$"):
        path = path[1:]
    values = [obj]
    pos = 0
    while pos < len(path):
        match = _SEGMENT.match(path, pos)
        if not match:
            return []
        pos = match.end()
        nxt: list[Any] = []
        for value in values:
            if match.group("field") is not None or match.group("quoted") is not None:
                key = match.group("field") or match.group("quoted")
                if isinstance(value, dict) and key in value:
                    nxt.append(value[key])
            elif match.group("index") is not None:
                if isinstance(value, list):
                    if match.group("index") == "*":
                        nxt.extend(value)
                    else:
                        index = int(match.group("index"))
                        if -len(value) <= index < len(value):
                            nxt.append(value[index])
            elif isinstance(value, list):
                fkey, fval = match.group("fkey"), match.group("fval")
                for item in value:
                    found = json_path(item, "." + fkey)
                    if found and str(found[0]) == fval:
                        nxt.append(item)
        values = nxt
    return values


def _cell(column_type: str, value: Any) -> Any:
    if value is None:
        return None
    if column_type == "date":
        return age(value) if isinstance(value, str) else "<invalid>"
    if column_type == "integer":
        return value if isinstance(value, int) and not isinstance(value, bool) else None
    if column_type == "number":
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if column_type == "boolean":
        return value if isinstance(value, bool) else None
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def columns_for(rt: ResourceType) -> list[dict[str, Any]]:
    if rt.is_custom:
        columns = [dict(NAME_COLUMN)]
        for col in rt.printer_columns:
            columns.append(
                {
                    "name": col.get("name", ""),
                    "type": col.get("type", "string"),
                    "format": col.get("format", ""),
                    "description": col.get("description", ""),
                    "priority": col.get("priority", 0),
                }
            )
        return columns
    if rt.kind == "Namespace":
        status = {
            "name": "Status",
            "type": "string",
            "format": "",
            "priority": 0,
            "description": "The status of the namespace",
        }
        return [dict(NAME_COLUMN), status, dict(AGE_COLUMN)]
    if rt.kind == "Pod":
        extra = [
            {"name": "Status", "type": "string", "format": "", "priority": 0, "description": ""},
            {"name": "Node", "type": "string", "format": "", "priority": 1, "description": ""},
        ]
        return [dict(NAME_COLUMN), *extra, dict(AGE_COLUMN)]
    return [dict(NAME_COLUMN), dict(AGE_COLUMN)]


def row_cells(rt: ResourceType, obj: dict[str, Any]) -> list[Any]:
    meta = obj.get("metadata") or {}
    cells: list[Any] = [meta.get("name", "")]
    if rt.is_custom:
        for col in rt.printer_columns:
            found = json_path(obj, col.get("jsonPath", ""))
            cells.append(_cell(col.get("type", "string"), found[0] if found else None))
        return cells
    if rt.kind == "Namespace":
        phase = (obj.get("status") or {}).get("phase", "")
        cells.append("Terminating" if meta.get("deletionTimestamp") else phase)
    elif rt.kind == "Pod":
        cells.append((obj.get("status") or {}).get("phase", ""))
        cells.append((obj.get("spec") or {}).get("nodeName") or "<none>")
    cells.append(age(meta.get("creationTimestamp")))
    return cells


def row_object(obj: dict[str, Any], include: str) -> dict[str, Any] | None:
    if include == "None":
        return None
    if include == "Object":
        return obj
    return {
        "kind": "PartialObjectMetadata",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": obj.get("metadata") or {},
    }


def to_table(
    rt: ResourceType,
    objects: list[dict[str, Any]],
    *,
    list_meta: dict[str, Any],
    include_object: str = "Metadata",
    with_columns: bool = True,
) -> dict[str, Any]:
    rows = []
    for obj in objects:
        row: dict[str, Any] = {"cells": row_cells(rt, obj)}
        embedded = row_object(obj, include_object)
        if embedded is not None:
            row["object"] = embedded
        rows.append(row)
    return {
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": list_meta,
        "columnDefinitions": columns_for(rt) if with_columns else [],
        "rows": rows,
    }
