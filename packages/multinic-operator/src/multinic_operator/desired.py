"""The objects a network should have, and the smallest patch from what exists.

Pure functions: the reconciler reads the cluster, asks these what should
exist, and writes only the difference.  Every ``*_patch`` returns ``None``
when nothing the operator owns differs, so a restart or a repeated event
writes nothing.

Field ownership: of an IPPool the operator owns ``podCIDR``, ``vlanCIDR``,
``netAttachDef``, ``hostName``, ``interfaceName``, ``excludes`` and its two
labels; ``allocations`` belong to the host's agent and never appear in a
patch.  Every update patch carries the ``resourceVersion`` it was computed
from, so a concurrent agent write makes it fail (409) instead of being lost.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import netaddr

from multinic_core.hooktypes import DependentObject
from multinic_core.models import API_VERSION, CIDRSpec, MultiNicNetwork, ippool_name
from multinic_core.nad import RESOURCE_NAME_ANNOTATION, owner_reference

POOL_HOST_LABEL = "hostname"
POOL_NETWORK_LABEL = "netname"
OWNED_POOL_FIELDS = ("podCIDR", "vlanCIDR", "netAttachDef", "hostName", "interfaceName")
DEPENDENT_LABEL = "multinic.fms.io/network"
"""Label on every driver-dependent object: the network it was created for."""
DEPENDENT_KINDS_ANNOTATION = "multinic.fms.io/dependent-kinds"
"""Annotation on a network: the kinds of dependent objects created for it (JSON list)."""
DRIVER_ANNOTATIONS = (RESOURCE_NAME_ANNOTATION,)
"""NAD annotations that only drivers set: removed when the driver stops returning them."""


# --------------------------------------------------------------------------- IPPools


def desired_pools(
    network_name: str, spec: CIDRSpec, excludes: Mapping[str, Sequence[str]]
) -> dict[str, dict[str, Any]]:
    """One IPPool body per planned (host, interface), keyed by pool name.

    ``excludes`` is ``multinic_core.planner.pool_excludes`` of the plan.
    """
    pools: dict[str, dict[str, Any]] = {}
    for entry in spec.cidr:
        for host in entry.hosts:
            name = host.ippool or ippool_name(network_name, host.pod_cidr)
            pools[name] = {
                "apiVersion": API_VERSION,
                "kind": "IPPool",
                "metadata": {
                    "name": name,
                    "labels": {
                        POOL_HOST_LABEL: host.host_name,
                        POOL_NETWORK_LABEL: network_name,
                    },
                },
                "spec": {
                    "podCIDR": host.pod_cidr,
                    "vlanCIDR": entry.vlan_cidr,
                    "netAttachDef": network_name,
                    "hostName": host.host_name,
                    "interfaceName": host.interface_name,
                    "excludes": list(excludes.get(host.pod_cidr, [])),
                    "allocations": [],
                },
            }
    return pools


def _same_cidrs(a: Iterable[str], b: Iterable[str]) -> bool:
    """Whether two CIDR lists name the same blocks, whatever their order or spelling."""
    try:
        return {netaddr.IPNetwork(x) for x in a} == {netaddr.IPNetwork(x) for x in b}
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return sorted(a) == sorted(b)


def _same_cidr(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and _same_cidrs([a], [b])


def pool_patch(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any] | None:
    """A merge patch of the operator-owned fields of an IPPool, or None when equal.

    ``allocations`` are never part of it.
    """
    have_spec = existing.get("spec") or {}
    want_spec = desired["spec"]
    spec: dict[str, Any] = {}
    for field in OWNED_POOL_FIELDS:
        have, want = have_spec.get(field), want_spec[field]
        same = _same_cidr(have, want) if field in ("podCIDR", "vlanCIDR") else have == want
        if not same:
            spec[field] = want
    if not _same_cidrs(have_spec.get("excludes") or [], want_spec["excludes"]):
        spec["excludes"] = want_spec["excludes"]
    labels = _missing_labels(existing, desired)
    if not spec and not labels:
        return None
    patch: dict[str, Any] = {"metadata": {"resourceVersion": _rv(existing)}}
    if labels:
        patch["metadata"]["labels"] = labels
    if spec:
        patch["spec"] = spec
    return patch


# --------------------------------------------------------------------------- CIDR


def cidr_spec_patch(existing: Mapping[str, Any], desired: CIDRSpec) -> dict[str, Any] | None:
    """A merge patch replacing the CIDR's spec, or None when the plan is unchanged."""
    want = desired.to_dict()
    have = existing.get("spec") or {}
    with contextlib.suppress(ValueError):
        have = CIDRSpec.model_validate(have).to_dict()
    if have == want:
        return None
    return {"metadata": {"resourceVersion": _rv(existing)}, "spec": want}


# --------------------------------------------------------------------------- NADs


def nad_patch(
    existing: Mapping[str, Any], desired: Mapping[str, Any], network_uid: str
) -> dict[str, Any] | None:
    """A merge patch bringing a NAD to ``desired``, or None when it is equal.

    ``spec.config`` is compared as JSON (a predecessor's NAD with the same
    content but other spacing is left alone); labels and the driver's
    annotations are added; the owner reference to the network is ensured.
    """
    patch: dict[str, Any] = {}
    have_config = (existing.get("spec") or {}).get("config", "")
    want_config = desired["spec"]["config"]
    if _json_or_text(have_config) != _json_or_text(want_config):
        patch["spec"] = {"config": want_config}
    meta = _ownership_patch(existing, desired, network_uid)
    have_annotations = (existing.get("metadata") or {}).get("annotations") or {}
    want_annotations = desired["metadata"].get("annotations", {})
    annotations: dict[str, str | None] = {
        k: v for k, v in want_annotations.items() if have_annotations.get(k) != v
    }
    for key in DRIVER_ANNOTATIONS:
        # The driver no longer asks for it (e.g. a network moved off sriov).
        if key in have_annotations and key not in want_annotations:
            annotations[key] = None
    if annotations:
        meta["annotations"] = annotations
    return _with_metadata(patch, meta, existing)


def _ownership_patch(
    existing: Mapping[str, Any], desired: Mapping[str, Any], network_uid: str
) -> dict[str, Any]:
    """The metadata part of a patch: labels the object lacks, the owner reference."""
    meta: dict[str, Any] = {}
    labels = _missing_labels(existing, desired)
    if labels:
        meta["labels"] = labels
    owners = _owners_with(existing, desired["metadata"]["ownerReferences"], network_uid)
    if owners is not None:
        meta["ownerReferences"] = owners
    return meta


def _with_metadata(
    patch: dict[str, Any], meta: dict[str, Any], existing: Mapping[str, Any]
) -> dict[str, Any] | None:
    """None when nothing changes; else the patch, guarded by the resourceVersion read."""
    if not patch and not meta:
        return None
    meta["resourceVersion"] = _rv(existing)
    patch["metadata"] = meta
    return patch


def _json_or_text(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


def owned_by(obj: Mapping[str, Any], network: MultiNicNetwork) -> bool:
    """Whether ``obj`` was made for ``network`` (owner reference, or name and label)."""
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    for ref in refs:
        if ref.get("kind") == "MultiNicNetwork" and ref.get("name") == network.name:
            return True
    labels = (obj.get("metadata") or {}).get("labels") or {}
    return labels.get(DEPENDENT_LABEL) == network.name


# --------------------------------------------------------------------------- dependents


def dependent_body(network: MultiNicNetwork, dependent: DependentObject) -> dict[str, Any]:
    """The driver's object, labelled with and owned by the network."""
    body = json.loads(json.dumps(dependent.body))
    meta = body.setdefault("metadata", {})
    meta.setdefault("labels", {})[DEPENDENT_LABEL] = network.name
    meta["ownerReferences"] = [owner_reference(network)]
    return dict(body)


def dependent_patch(
    existing: Mapping[str, Any], desired: Mapping[str, Any], network_uid: str
) -> dict[str, Any] | None:
    """A merge patch of a dependent object's content (everything but metadata/status)."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        if key in ("apiVersion", "kind", "metadata", "status"):
            continue
        if existing.get(key) != value:
            # Whole top-level fields are replaced so that a key the driver
            # dropped does not linger (merge patch would keep it).
            patch[key] = value
            if isinstance(existing.get(key), dict) and isinstance(value, dict):
                patch[key] = {**dict.fromkeys(existing[key]), **value}
    return _with_metadata(patch, _ownership_patch(existing, desired, network_uid), existing)


def kind_key(api_version: str, kind: str) -> str:
    return f"{api_version} {kind}"


def recorded_kinds(network_body: Mapping[str, Any]) -> list[tuple[str, str]]:
    """The dependent kinds recorded on the network (``DEPENDENT_KINDS_ANNOTATION``)."""
    raw = ((network_body.get("metadata") or {}).get("annotations") or {}).get(
        DEPENDENT_KINDS_ANNOTATION, "[]"
    )
    try:
        values = json.loads(raw)
    except ValueError:
        return []
    kinds = []
    for value in values if isinstance(values, list) else []:
        if isinstance(value, str) and " " in value:
            api_version, _, kind = value.partition(" ")
            kinds.append((api_version, kind))
    return kinds


# --------------------------------------------------------------------------- shared


def _rv(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("resourceVersion", ""))


def _missing_labels(existing: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, str]:
    have = (existing.get("metadata") or {}).get("labels") or {}
    want = (desired.get("metadata") or {}).get("labels") or {}
    return {k: v for k, v in want.items() if have.get(k) != v}


def _owners_with(
    existing: Mapping[str, Any], wanted: Sequence[Mapping[str, Any]], network_uid: str
) -> list[dict[str, Any]] | None:
    """The owner references with the network's, or None when it is there already.

    A reference to an earlier network of the same name (another uid) is replaced.
    """
    have = list((existing.get("metadata") or {}).get("ownerReferences") or [])
    if any(ref.get("uid") == network_uid for ref in have):
        return None
    names = {(w.get("kind"), w.get("name")) for w in wanted}
    kept = [dict(r) for r in have if (r.get("kind"), r.get("name")) not in names]
    return kept + [dict(w) for w in wanted]
