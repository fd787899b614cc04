"""Decoding of the few protobuf request bodies kubectl sends.

kubectl's generator commands (``kubectl create namespace|configmap|secret|
serviceaccount``) send their object as Kubernetes protobuf
(``application/vnd.kubernetes.protobuf``). This module decodes exactly those
kinds (a ``runtime.Unknown`` envelope around the object, field numbers from
``k8s.io/api/core/v1/generated.proto``) into the JSON form. Other kinds are
refused with 415 by the caller; responses are always JSON.

Multus (client-go with ``ContentType: application/vnd.kubernetes.protobuf``)
sends two more: the Pod it PUTs to ``pods/status`` to write its
network-status annotation, and the Events it records (``AddedInterface``).
Those are decoded from :data:`MESSAGES`, a table of every message they can
contain (the Pod's metadata and status; its spec, which ``pods/status``
ignores, is skipped, so a protobuf Pod is accepted for ``pods/status`` only).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

MAGIC = b"k8s\x00"


class ProtobufError(ValueError):
    """The body is not a protobuf message this module can decode."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data):
            raise ProtobufError("truncated varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 63:
            raise ProtobufError("varint too long")


def _fields(data: bytes) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) pairs: ints for varints, bytes for everything else."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
            yield number, value
        elif wire == 2:
            length, pos = _varint(data, pos)
            if pos + length > len(data):
                raise ProtobufError("truncated field")
            yield number, data[pos : pos + length]
            pos += length
        elif wire == 1:
            yield number, data[pos : pos + 8]
            pos += 8
        elif wire == 5:
            yield number, data[pos : pos + 4]
            pos += 4
        else:
            raise ProtobufError(f"unsupported wire type {wire}")


def _text(value: int | bytes) -> str:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a string field")
    return value.decode()


def _message(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise ProtobufError("expected a message field")
    return value


def _map_entry(value: int | bytes) -> tuple[str, bytes]:
    key, item = "", b""
    for number, field in _fields(_message(value)):
        if number == 1:
            key = _text(field)
        elif number == 2:
            item = _message(field)
    return key, item


def _owner_reference(data: bytes) -> dict[str, Any]:
    names = {1: "kind", 3: "name", 4: "uid", 5: "apiVersion"}
    flags = {6: "controller", 7: "blockOwnerDeletion"}
    ref: dict[str, Any] = {}
    for number, value in _fields(data):
        if number in names:
            ref[names[number]] = _text(value)
        elif number in flags:
            ref[flags[number]] = bool(value)
    return ref


def _object_meta(data: bytes) -> dict[str, Any]:
    strings = {1: "name", 2: "generateName", 3: "namespace", 5: "uid", 6: "resourceVersion"}
    meta: dict[str, Any] = {}
    for number, value in _fields(data):
        if number in strings:
            text = _text(value)
            if text:  # gogo-protobuf writes empty strings too
                meta[strings[number]] = text
        elif number in (11, 12):
            key, item = _map_entry(value)
            meta.setdefault("labels" if number == 11 else "annotations", {})[key] = item.decode()
        elif number == 13:
            meta.setdefault("ownerReferences", []).append(_owner_reference(_message(value)))
        elif number == 14:
            meta.setdefault("finalizers", []).append(_text(value))
    return meta


# For each kind: field number -> (JSON key, how its value is decoded).
KINDS: dict[tuple[str, str], dict[int, tuple[str, str]]] = {
    ("v1", "Namespace"): {1: ("metadata", "meta"), 2: ("spec", "namespace-spec")},
    ("v1", "ConfigMap"): {
        1: ("metadata", "meta"),
        2: ("data", "map-text"),
        3: ("binaryData", "map-base64"),
        4: ("immutable", "bool"),
    },
    ("v1", "Secret"): {
        1: ("metadata", "meta"),
        2: ("data", "map-base64"),
        3: ("type", "text"),
        4: ("stringData", "map-text"),
        5: ("immutable", "bool"),
    },
    ("v1", "ServiceAccount"): {
        1: ("metadata", "meta"),
        4: ("automountServiceAccountToken", "bool"),
    },
}


def _object(data: bytes, table: dict[int, tuple[str, str]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for number, value in _fields(data):
        if number not in table:
            continue
        key, how = table[number]
        if how == "meta":
            obj[key] = _object_meta(_message(value))
        elif how == "text":
            obj[key] = _text(value)
        elif how == "bool":
            obj[key] = bool(value)
        elif how == "namespace-spec":
            finalizers = [_text(v) for n, v in _fields(_message(value)) if n == 1]
            obj[key] = {"finalizers": finalizers} if finalizers else {}
        else:
            name, item = _map_entry(value)
            decoded = item.decode() if how == "map-text" else base64.b64encode(item).decode()
            obj.setdefault(key, {})[name] = decoded
    return obj


# -- Pod (for pods/status) and Event: decoded from a table of their messages ---------

# The kind of a field: one of these, a message name of MESSAGES, or (LIST|MAP, kind).
STR, INT, BOOL, TIME, MICROTIME, QUANTITY, FIELDS, SKIP = (
    "str",
    "int",
    "bool",
    "time",
    "microtime",
    "quantity",
    "fieldsV1",
    "skip",
)
LIST, MAP = "list", "map"
KEEP = True
"""A scalar whose zero value JSON shows too (a pointer, or a field without omitempty).

gogo-protobuf writes every non-pointer scalar, so a zero is dropped unless KEEP,
as JSON's omitempty would."""

FieldKind = str | tuple[str, str]
Field = tuple[str, FieldKind] | tuple[str, FieldKind, bool]

# Field number -> (JSON name, kind[, KEEP]), from the struct tags of k8s.io/api/core/v1
# and k8s.io/apimachinery/pkg/apis/meta/v1 types.go (v0.35).
MESSAGES: dict[str, dict[int, Field]] = {
    "ContainerExtendedResourceRequest": {
        1: ("containerName", STR, KEEP),
        2: ("resourceName", STR, KEEP),
        3: ("requestName", STR, KEEP),
    },
    "ContainerState": {
        1: ("waiting", "ContainerStateWaiting"),
        2: ("running", "ContainerStateRunning"),
        3: ("terminated", "ContainerStateTerminated"),
    },
    "ContainerStateRunning": {
        1: ("startedAt", TIME),
    },
    "ContainerStateTerminated": {
        1: ("exitCode", INT, KEEP),
        2: ("signal", INT),
        3: ("reason", STR),
        4: ("message", STR),
        5: ("startedAt", TIME),
        6: ("finishedAt", TIME),
        7: ("containerID", STR),
    },
    "ContainerStateWaiting": {
        1: ("reason", STR),
        2: ("message", STR),
    },
    "ContainerStatus": {
        1: ("name", STR, KEEP),
        2: ("state", "ContainerState"),
        3: ("lastState", "ContainerState"),
        4: ("ready", BOOL, KEEP),
        5: ("restartCount", INT, KEEP),
        6: ("image", STR, KEEP),
        7: ("imageID", STR, KEEP),
        8: ("containerID", STR),
        9: ("started", BOOL, KEEP),
        10: ("allocatedResources", (MAP, QUANTITY)),
        11: ("resources", "ResourceRequirements"),
        12: ("volumeMounts", (LIST, "VolumeMountStatus")),
        13: ("user", "ContainerUser"),
        14: ("allocatedResourcesStatus", (LIST, "ResourceStatus")),
        15: ("stopSignal", STR, KEEP),
    },
    "ContainerUser": {
        1: ("linux", "LinuxContainerUser"),
    },
    "Event": {
        1: ("metadata", "ObjectMeta"),
        2: ("involvedObject", "ObjectReference"),
        3: ("reason", STR),
        4: ("message", STR),
        5: ("source", "EventSource"),
        6: ("firstTimestamp", TIME),
        7: ("lastTimestamp", TIME),
        8: ("count", INT),
        9: ("type", STR),
        10: ("eventTime", MICROTIME),
        11: ("series", "EventSeries"),
        12: ("action", STR),
        13: ("related", "ObjectReference"),
        14: ("reportingComponent", STR, KEEP),
        15: ("reportingInstance", STR, KEEP),
    },
    "EventSeries": {
        1: ("count", INT),
        2: ("lastObservedTime", MICROTIME),
    },
    "EventSource": {
        1: ("component", STR),
        2: ("host", STR),
    },
    "HostIP": {
        1: ("ip", STR, KEEP),
    },
    "LinuxContainerUser": {
        1: ("uid", INT, KEEP),
        2: ("gid", INT, KEEP),
        3: ("supplementalGroups", (LIST, INT)),
    },
    "ManagedFieldsEntry": {
        1: ("manager", STR),
        2: ("operation", STR),
        3: ("apiVersion", STR),
        4: ("time", TIME, KEEP),
        6: ("fieldsType", STR),
        7: ("fieldsV1", FIELDS, KEEP),
        8: ("subresource", STR),
    },
    "ObjectMeta": {
        1: ("name", STR),
        2: ("generateName", STR),
        3: ("namespace", STR),
        4: ("selfLink", STR),
        5: ("uid", STR),
        6: ("resourceVersion", STR),
        7: ("generation", INT),
        8: ("creationTimestamp", TIME),
        9: ("deletionTimestamp", TIME, KEEP),
        10: ("deletionGracePeriodSeconds", INT, KEEP),
        11: ("labels", (MAP, STR)),
        12: ("annotations", (MAP, STR)),
        13: ("ownerReferences", (LIST, "OwnerReference")),
        14: ("finalizers", (LIST, STR)),
        17: ("managedFields", (LIST, "ManagedFieldsEntry")),
    },
    "ObjectReference": {
        1: ("kind", STR),
        2: ("namespace", STR),
        3: ("name", STR),
        4: ("uid", STR),
        5: ("apiVersion", STR),
        6: ("resourceVersion", STR),
        7: ("fieldPath", STR),
    },
    "OwnerReference": {
        1: ("kind", STR, KEEP),
        3: ("name", STR, KEEP),
        4: ("uid", STR, KEEP),
        5: ("apiVersion", STR, KEEP),
        6: ("controller", BOOL, KEEP),
        7: ("blockOwnerDeletion", BOOL, KEEP),
    },
    "Pod": {
        1: ("metadata", "ObjectMeta"),
        2: ("spec", SKIP),
        3: ("status", "PodStatus"),
    },
    "PodCondition": {
        1: ("type", STR, KEEP),
        2: ("status", STR, KEEP),
        3: ("lastProbeTime", TIME),
        4: ("lastTransitionTime", TIME),
        5: ("reason", STR),
        6: ("message", STR),
        7: ("observedGeneration", INT),
    },
    "PodExtendedResourceClaimStatus": {
        1: ("requestMappings", (LIST, "ContainerExtendedResourceRequest")),
        2: ("resourceClaimName", STR, KEEP),
    },
    "PodIP": {
        1: ("ip", STR, KEEP),
    },
    "PodResourceClaimStatus": {
        1: ("name", STR, KEEP),
        2: ("resourceClaimName", STR, KEEP),
    },
    "PodStatus": {
        1: ("phase", STR),
        2: ("conditions", (LIST, "PodCondition")),
        3: ("message", STR),
        4: ("reason", STR),
        5: ("hostIP", STR),
        6: ("podIP", STR),
        7: ("startTime", TIME, KEEP),
        8: ("containerStatuses", (LIST, "ContainerStatus")),
        9: ("qosClass", STR),
        10: ("initContainerStatuses", (LIST, "ContainerStatus")),
        11: ("nominatedNodeName", STR),
        12: ("podIPs", (LIST, "PodIP")),
        13: ("ephemeralContainerStatuses", (LIST, "ContainerStatus")),
        14: ("resize", STR),
        15: ("resourceClaimStatuses", (LIST, "PodResourceClaimStatus")),
        16: ("hostIPs", (LIST, "HostIP")),
        17: ("observedGeneration", INT),
        18: ("extendedResourceClaimStatus", "PodExtendedResourceClaimStatus"),
        19: ("allocatedResources", (MAP, QUANTITY)),
        20: ("resources", "ResourceRequirements"),
    },
    "ResourceClaim": {
        1: ("name", STR, KEEP),
        2: ("request", STR),
    },
    "ResourceHealth": {
        1: ("resourceID", STR, KEEP),
        2: ("health", STR),
    },
    "ResourceRequirements": {
        1: ("limits", (MAP, QUANTITY)),
        2: ("requests", (MAP, QUANTITY)),
        3: ("claims", (LIST, "ResourceClaim")),
    },
    "ResourceStatus": {
        1: ("name", STR, KEEP),
        2: ("resources", (LIST, "ResourceHealth")),
    },
    "VolumeMountStatus": {
        1: ("name", STR, KEEP),
        2: ("mountPath", STR, KEEP),
        3: ("readOnly", BOOL),
        4: ("recursiveReadOnly", STR, KEEP),
    },
}

MESSAGE_KINDS = {("v1", "Pod"): "Pod", ("v1", "Event"): "Event"}
SUBRESOURCE_ONLY = {("v1", "Pod"): "status"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _signed(value: int | bytes) -> int:
    if isinstance(value, bytes):
        raise ProtobufError("expected a varint field")
    return value - (1 << 64) if value >= 1 << 63 else value


def _timestamp(data: bytes, *, micro: bool) -> str | None:
    """``metav1.Time`` / ``MicroTime`` (seconds, nanos) in their JSON form; None when zero."""
    if not data:
        return None
    seconds = nanos = 0
    for number, value in _fields(data):
        if number == 1:
            seconds = _signed(value)
        elif number == 2:
            nanos = _signed(value)
    try:
        moment = _EPOCH + timedelta(seconds=seconds, microseconds=nanos // 1000)
    except OverflowError as e:
        raise ProtobufError(f"time out of range: {seconds}s") from e
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if micro else "%Y-%m-%dT%H:%M:%SZ")


def _first_bytes(data: bytes) -> bytes:
    return next((_message(v) for n, v in _fields(data) if n == 1), b"")


def _value(value: int | bytes, kind: str) -> Any:
    if kind == STR:
        return _text(value)
    if kind == INT:
        return _signed(value)
    if kind == BOOL:
        return bool(_signed(value))
    if kind in (TIME, MICROTIME):
        return _timestamp(_message(value), micro=kind == MICROTIME)
    if kind == QUANTITY:
        return _first_bytes(_message(value)).decode()
    if kind == FIELDS:
        try:
            return json.loads(_first_bytes(_message(value)) or b"{}")
        except ValueError as e:
            raise ProtobufError(f"fieldsV1 is not JSON: {e}") from e
    return _message_json(_message(value), kind)


def _packed(value: int | bytes) -> list[int | bytes]:
    if not isinstance(value, bytes):
        return [value]
    items: list[int | bytes] = []
    pos = 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        items.append(item)
    return items


def _message_json(data: bytes, name: str) -> dict[str, Any]:
    """The JSON form of message ``name`` of :data:`MESSAGES`; unknown fields are dropped."""
    table = MESSAGES[name]
    obj: dict[str, Any] = {}
    for number, value in _fields(data):
        entry = table.get(number)
        if entry is None or entry[1] == SKIP:
            continue
        key, kind = entry[0], entry[1]
        if isinstance(kind, tuple):
            how, item = kind
            if how == MAP:
                name_, raw = _map_entry(value)
                obj.setdefault(key, {})[name_] = _value(raw, item)
            else:
                values = _packed(value) if item == INT else [value]
                obj.setdefault(key, []).extend(_value(v, item) for v in values)
            continue
        decoded = _value(value, kind)
        if decoded is None or (decoded in ("", 0, False) and len(entry) < 3 and kind != FIELDS):
            continue
        obj[key] = decoded
    return obj


def decode(body: bytes, subresource: str | None = None) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of a supported kind.

    ``subresource`` is the request's (``status`` for ``pods/status``): a Pod is
    decoded without its spec, so it is refused for anything but ``status``.
    """
    if not body.startswith(MAGIC):
        raise ProtobufError("missing the k8s protobuf magic number")
    api_version = kind = ""
    raw = b""
    for number, value in _fields(body[len(MAGIC) :]):
        if number == 1:
            for n, v in _fields(_message(value)):
                if n == 1:
                    api_version = _text(v)
                elif n == 2:
                    kind = _text(v)
        elif number == 2:
            raw = _message(value)
    message = MESSAGE_KINDS.get((api_version, kind))
    if message is not None:
        wanted = SUBRESOURCE_ONLY.get((api_version, kind))
        if wanted is not None and subresource != wanted:
            raise ProtobufError(
                f"protobuf bodies of {api_version}/{kind} are decoded for its {wanted} "
                "subresource only"
            )
        obj = _message_json(raw, message)
        obj["apiVersion"], obj["kind"] = api_version, kind
        return obj
    table = KINDS.get((api_version, kind))
    if table is None:
        raise ProtobufError(f"protobuf bodies of {api_version}/{kind} are not supported")
    obj = _object(raw, table)
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
