"""Decoding of the few protobuf request bodies kubectl sends.

kubectl's generator commands (``kubectl create namespace|configmap|secret|
serviceaccount``) send their object as Kubernetes protobuf
(``application/vnd.kubernetes.protobuf``). This module decodes exactly those
kinds (a ``runtime.Unknown`` envelope around the object, field numbers from
``k8s.io/api/core/v1/generated.proto``) into the JSON form. Other kinds are
refused with 415 by the caller; responses are always JSON.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
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


def decode(body: bytes) -> dict[str, Any]:
    """The JSON form of a protobuf-encoded object of a supported kind."""
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
    table = KINDS.get((api_version, kind))
    if table is None:
        raise ProtobufError(f"protobuf bodies of {api_version}/{kind} are not supported")
    obj = _object(raw, table)
    obj["apiVersion"], obj["kind"] = api_version, kind
    return obj
