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
import dataclasses
import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import netaddr

from multinic_core.hooktypes import DependentObject
from multinic_core.models import (
    API_VERSION,
    POOL_RETIRED_ACK,
    POOL_RETIRED_LABEL,
    CIDREntry,
    CIDRSpec,
    HostInterfaceInfo,
    MultiNicNetwork,
    ippool_name,
)
from multinic_core.nad import RESOURCE_NAME_ANNOTATION, owner_reference
from multinic_core.planner import Stranded

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
    return dict(DesiredPools(network_name, spec, excludes).items())


class DesiredPools(Mapping[str, dict[str, Any]]):
    """``desired_pools`` as a mapping that builds each body when it is asked for.

    The reconciler walks 80,000 desired pools at 10,000 hosts x 8 NICs; holding
    every body at once would be ~100 MB for a moment.  ``exclude`` adds
    addresses to one pool's excludes (held by retired pools).  No ``spec``:
    no pools.
    """

    def __init__(
        self, network_name: str, spec: CIDRSpec | None, excludes: Mapping[str, Sequence[str]]
    ) -> None:
        self.network_name = network_name
        self._excludes = excludes
        self._extra: dict[str, list[str]] = {}
        self._where: dict[str, tuple[CIDREntry, HostInterfaceInfo]] = {}
        for entry in spec.cidr if spec is not None else []:
            for host in entry.hosts:
                self._where[host.ippool or ippool_name(network_name, host.pod_cidr)] = (
                    entry,
                    host,
                )

    def __getitem__(self, name: str) -> dict[str, Any]:
        entry, host = self._where[name]
        return {
            "apiVersion": API_VERSION,
            "kind": "IPPool",
            "metadata": {
                "name": name,
                "labels": {
                    POOL_HOST_LABEL: host.host_name,
                    POOL_NETWORK_LABEL: self.network_name,
                },
            },
            "spec": {
                "podCIDR": host.pod_cidr,
                "vlanCIDR": entry.vlan_cidr,
                "netAttachDef": self.network_name,
                "hostName": host.host_name,
                "interfaceName": host.interface_name,
                "excludes": [*self._excludes.get(host.pod_cidr, []), *self._extra.get(name, [])],
                "allocations": [],
            },
        }

    def __iter__(self) -> Iterator[str]:
        return iter(self._where)

    def __len__(self) -> int:
        return len(self._where)

    def __contains__(self, name: object) -> bool:
        return name in self._where

    def exclude(self, name: str, addresses: Sequence[str]) -> None:
        self._extra.setdefault(name, []).extend(addresses)

    def block(self, name: str) -> HostInterfaceInfo | None:
        """The plan's block a pool is made from: the same object while the plan keeps it.

        None when the pool's body also depends on something else (addresses
        held by retired pools, ``exclude``).
        """
        if name in self._extra:
            return None
        return self._where[name][1]


def _same_cidrs(a: Iterable[str], b: Iterable[str]) -> bool:
    """Whether two CIDR lists name the same blocks, whatever their order or spelling."""
    a, b = list(a), list(b)
    if a == b:  # the common case, without parsing
        return True
    try:
        return {netaddr.IPNetwork(x) for x in a} == {netaddr.IPNetwork(x) for x in b}
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return sorted(a) == sorted(b)


def _same_cidr(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and (a == b or _same_cidrs([a], [b]))


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
    labels: dict[str, Any] = dict(_missing_labels(existing, desired))
    annotations: dict[str, Any] = {}
    if POOL_RETIRED_LABEL in _labels(existing):
        # Planned again (the edit was undone): allocate from it again.
        labels[POOL_RETIRED_LABEL] = None
        annotations[POOL_RETIRED_ACK] = None
    if not spec and not labels:
        return None
    patch: dict[str, Any] = {"metadata": {"resourceVersion": _rv(existing)}}
    if labels:
        patch["metadata"]["labels"] = labels
    if annotations:
        patch["metadata"]["annotations"] = annotations
    if spec:
        patch["spec"] = spec
    return patch


# --------------------------------------------------------------------------- plan edits


@dataclass
class RetiredPools:
    """What a plan edit does to the pools it replaces, and to the pools that replace them.

    ``retire``: stale pools whose addresses pods still hold, or whose agent has
    not yet acknowledged that nothing more is allocated from them: kept, with
    the retired label.  ``delete``: stale pools nothing holds any more.
    ``deferred``: new pools not created yet because they overlap a retired pool
    whose agent has not acknowledged it (its list may still grow); created once
    it has.  ``excludes``: per current pool, the addresses still held in
    retired pools inside its block, added to its ``excludes``.  (Which held
    addresses the new plan strands is ``multinic_core.planner.stranded_allocations``.)
    """

    retire: dict[str, str] = dataclasses.field(default_factory=dict)
    """Pool name -> the retired label value to set (unchanged if it has one)."""
    delete: list[str] = dataclasses.field(default_factory=list)
    deferred: list[str] = dataclasses.field(default_factory=list)
    excludes: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    stranded: list[Stranded] = dataclasses.field(default_factory=list)
    """Set by the reconciler: ``stranded_allocations`` of the new plan."""
    waiting: list[str] = dataclasses.field(default_factory=list)
    """Retired pools whose agent has not acknowledged the retirement yet."""


def _labels(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return (body.get("metadata") or {}).get("labels") or {}


def _annotations(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return (body.get("metadata") or {}).get("annotations") or {}


def retire_pools(
    existing: Mapping[str, Mapping[str, Any]],
    desired: Mapping[str, Mapping[str, Any]],
    generation: int | str | None,
    planned_hosts: Iterable[str],
    agent_hosts: Iterable[str],
) -> RetiredPools:
    """Decide the fate of the pools a plan no longer has (SPEC 2: allocations that no
    longer fit are reported, never renumbered or handed out twice).

    ``planned_hosts``: hosts in the new plan (a stale pool of a host that left
    is deleted: its pods went with it).  ``agent_hosts``: hosts with an agent
    (an unmanaged host's pools have no agent to acknowledge anything).
    """
    outcome = RetiredPools()
    planned, agents = set(planned_hosts), set(agent_hosts)
    held: list[tuple[netaddr.IPNetwork, netaddr.IPAddress | None]] = []
    for name in sorted(existing.keys() - desired.keys()):
        pool = existing[name]
        spec = pool.get("spec") or {}
        host = spec.get("hostName", "")
        allocations = spec.get("allocations") or []
        if host not in planned:
            outcome.delete.append(name)
            continue
        label = _labels(pool).get(POOL_RETIRED_LABEL)
        acked = label is not None and _annotations(pool).get(POOL_RETIRED_ACK) == str(label)
        if host not in agents:
            acked = True
        if not allocations and acked:
            outcome.delete.append(name)
            continue
        outcome.retire[name] = str(label if label is not None else generation or 0)
        try:
            block = netaddr.IPNetwork(spec["podCIDR"])
        except (KeyError, netaddr.AddrFormatError, ValueError, TypeError):
            continue
        if not acked:
            outcome.waiting.append(name)
            held.append((block, None))
        for allocation in allocations:
            with contextlib.suppress(KeyError, netaddr.AddrFormatError, ValueError, TypeError):
                if acked:
                    held.append((block, netaddr.IPAddress(allocation["address"])))
    _held_excludes(outcome, existing, desired, held)
    return outcome


def _held_excludes(
    outcome: RetiredPools,
    existing: Mapping[str, Mapping[str, Any]],
    desired: Mapping[str, Mapping[str, Any]],
    held: Sequence[tuple[netaddr.IPNetwork, netaddr.IPAddress | None]],
) -> None:
    """Per current pool, what retired pools still hold inside its block (or defer it)."""
    if not held:
        return
    for name, pool in desired.items():
        block = netaddr.IPNetwork(pool["spec"]["podCIDR"])
        extra: list[str] = []
        for retired_block, address in held:
            if retired_block.version != block.version:
                continue
            if address is not None:
                if address in block:
                    extra.append(f"{address}/{32 if address.version == 4 else 128}")
                continue
            if block.first > retired_block.last or retired_block.first > block.last:
                continue
            # Not acknowledged: any address of the overlap may be (about to be)
            # held, so the overlap is not handed out before the agent's list is final.
            if name not in existing:
                outcome.deferred.append(name)
                break
            extra.append(str(block if block.size <= retired_block.size else retired_block))
        if extra:
            outcome.excludes[name] = extra


# --------------------------------------------------------------------------- CIDR


def cidr_spec_patch(existing: Mapping[str, Any], desired: CIDRSpec) -> dict[str, Any] | None:
    """A merge patch replacing the CIDR's spec, or None when the plan is unchanged."""
    want = desired.to_dict()
    have = existing.get("spec") or {}
    if have == want:  # as the operator wrote it: no need to parse it
        return None
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
