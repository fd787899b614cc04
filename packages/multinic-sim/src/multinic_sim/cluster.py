"""Kubernetes API semantics over the object store.

:class:`ClusterState` implements what the API server does between decoding a
request and storing the result: server-set metadata, optimistic concurrency,
status subresources, generation, finalizers and deletion, CRD establishment,
custom-resource schemas, namespace lifecycle and owner-reference garbage
collection. The HTTP layer (:mod:`multinic_sim.server`) only parses requests
and renders answers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import secrets
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from multinic_sim import errors
from multinic_sim.errors import ApiError, cause
from multinic_sim.patching import (
    JSON_PATCH,
    MERGE_PATCH,
    STRATEGIC_MERGE_PATCH,
    json_patch,
    merge_patch,
    strategic_merge_patch,
)
from multinic_sim.resources import ResourceRegistry, ResourceType
from multinic_sim.schema import CustomResourceSchema, SchemaProblem
from multinic_sim.selectors import FieldSelector, LabelSelector
from multinic_sim.store import (
    GroupResource,
    Obj,
    ObjectStore,
    StoredEvent,
    check_storable,
    etcd_key,
    stored_size,
)
from multinic_sim.watch import WatchHub, dumps

log = logging.getLogger(__name__)

CRD_GR: GroupResource = ("apiextensions.k8s.io", "customresourcedefinitions")
NAMESPACE_GR: GroupResource = ("", "namespaces")
POD_GR: GroupResource = ("", "pods")
CRD_CLEANUP_FINALIZER = "customresourcecleanup.apiextensions.k8s.io"
FOREGROUND = "foregroundDeletion"
ORPHAN = "orphan"
INITIAL_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease")
PROTECTED_NAMESPACES = frozenset({"default", "kube-system", "kube-public"})
# Kinds whose strategy maintains metadata.generation (besides custom resources).
GENERATION_KINDS = frozenset({"Deployment", "DaemonSet", "CustomResourceDefinition"})
PATCH_TYPES = [JSON_PATCH, MERGE_PATCH, STRATEGIC_MERGE_PATCH]

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?\Z")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*\Z")
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?\Z")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?\Z")
ANNOTATIONS_SIZE_LIMIT = 256 * 1024
_NAME_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"


def now_timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _pod_grace_period(rt: ResourceType, obj: Obj, options: DeleteOptions) -> int:
    """Seconds a deleted pod may take to stop; 0 deletes at once (Kubernetes' pod strategy).

    Pods not bound to a node and pods that have finished go at once; otherwise
    the request's gracePeriodSeconds, else the pod's terminationGracePeriodSeconds
    (default 30). Every other resource: 0.
    """
    if rt.group_resource != POD_GR:
        return 0
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    if not spec.get("nodeName") or status.get("phase") in ("Succeeded", "Failed"):
        return 0
    grace = options.grace_period_seconds
    if grace is None:
        grace = int(spec.get("terminationGracePeriodSeconds", 30))
    return 1 if grace < 0 else grace


# metav1.MicroTime fields: kube-apiserver parses them with exactly this layout.
_MICRO_TIME_FIELDS: dict[GroupResource, tuple[tuple[str, ...], ...]] = {
    ("", "events"): (("eventTime",), ("series", "lastObservedTime")),
    ("events.k8s.io", "events"): (("eventTime",), ("series", "lastObservedTime")),
    ("coordination.k8s.io", "leases"): (("spec", "acquireTime"), ("spec", "renewTime")),
}
_MICRO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}(Z|[+-]\d{2}:\d{2})\Z")
RFC3339_MICRO = "2006-01-02T15:04:05.000000Z07:00"


def _check_micro_times(rt: ResourceType, obj: Obj) -> None:
    """MicroTime fields must have six fractional digits (``...05.000000Z``); stored in UTC.

    kube-apiserver refuses anything else with 400 (``2026-01-01T00:00:00Z`` too), which
    is what Python's ``datetime.isoformat()`` gives for a whole second.
    """
    for path in _MICRO_TIME_FIELDS.get(rt.group_resource, ()) if not rt.is_custom else ():
        parent: Any = obj
        for key in path[:-1]:
            parent = parent.get(key) if isinstance(parent, dict) else None
        if not isinstance(parent, dict) or parent.get(path[-1]) is None:
            continue
        value = parent[path[-1]]
        if not isinstance(value, str) or not _MICRO_TIME.match(value):
            raise errors.bad_request(
                f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                f'parsing time {json.dumps(value)} as "{RFC3339_MICRO}": cannot parse'
            )
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).astimezone(UTC)
        parent[path[-1]] = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _without(obj: Obj, *keys: str) -> Obj:
    return {k: v for k, v in obj.items() if k not in keys}


def _comparable(obj: Obj) -> Obj:
    """The object minus fields that change on every write."""
    out = dict(obj)
    out["metadata"] = _without(obj.get("metadata") or {}, "resourceVersion", "managedFields")
    return out


_SERVER_OWNED_META = (
    "uid",
    "creationTimestamp",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
    "generation",
    "name",
    "namespace",
)


def _updated_meta(old_meta: Obj, in_meta: Obj, also: tuple[str, ...] = ()) -> Obj:
    """The metadata an update stores: the body's, but the server's fields (and ``also``) kept."""
    meta = dict(in_meta)
    for owned in (*_SERVER_OWNED_META, *also):
        if owned in old_meta:
            meta[owned] = old_meta[owned]
        else:
            meta.pop(owned, None)
    meta.pop("managedFields", None)
    return meta


class ListResult:
    def __init__(
        self, items: list[Obj], rv: int, continue_token: str | None, remaining: int | None
    ) -> None:
        self.items = items
        self.rv = rv
        self.continue_token = continue_token
        self.remaining = remaining

    def list_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"resourceVersion": str(self.rv)}
        if self.continue_token:
            meta["continue"] = self.continue_token
        if self.remaining is not None:
            meta["remainingItemCount"] = self.remaining
        return meta


class DeleteOptions:
    def __init__(
        self,
        propagation: str | None = None,
        precondition_uid: str | None = None,
        precondition_rv: str | None = None,
        dry_run: bool = False,
        grace_period_seconds: int | None = None,
    ) -> None:
        self.propagation = propagation
        self.precondition_uid = precondition_uid
        self.precondition_rv = precondition_rv
        self.dry_run = dry_run
        self.grace_period_seconds = grace_period_seconds

    @classmethod
    def parse(cls, body: Any, query: dict[str, str]) -> DeleteOptions:
        """From the request body (DeleteOptions), else from the query (``body`` is None).

        As kube-apiserver's delete handler: with a body, the query's options
        (``gracePeriodSeconds``, ``propagationPolicy``, ``dryRun``, ...) are ignored.
        """
        if body is not None:
            query = {}
        body = body if isinstance(body, dict) else {}
        policy = body.get("propagationPolicy") or query.get("propagationPolicy")
        orphan = body.get("orphanDependents", query.get("orphanDependents"))
        if policy is None and orphan is not None:
            policy = "Orphan" if orphan in (True, "true") else "Background"
        if policy not in (None, "Orphan", "Background", "Foreground"):
            raise errors.invalid(
                "DeleteOptions",
                "",
                "",
                [
                    cause(
                        "propagationPolicy",
                        "FieldValueNotSupported",
                        f'Unsupported value: "{policy}": supported values: "Foreground", '
                        '"Background", "Orphan", "nil"',
                    )
                ],
            )
        pre = body.get("preconditions") or {}
        dry = body.get("dryRun") or ([query["dryRun"]] if "dryRun" in query else [])
        grace = body.get("gracePeriodSeconds", query.get("gracePeriodSeconds"))
        if grace is not None:
            try:
                grace = int(grace)
            except (TypeError, ValueError) as e:
                raise errors.bad_request(f"gracePeriodSeconds: invalid value {grace!r}") from e
        return cls(policy, pre.get("uid"), pre.get("resourceVersion"), "All" in dry, grace)


class ClusterState:
    """The simulated cluster: registry + store + watches + the built-in controllers."""

    def __init__(self, *, history_limit: int = 50_000) -> None:
        self.registry = ResourceRegistry()
        self.store = ObjectStore(history_limit)
        self.watches = WatchHub(self.store)
        self.store.listeners.append(self._on_event)
        self._wake: asyncio.Event | None = None
        # The last object written and its JSON: the size check encodes it, the
        # answer to the write reuses the bytes.
        self._last_encoded: tuple[Obj, bytes] | None = None
        self.bootstrap()

    # -- lifecycle ----------------------------------------------------------

    def bootstrap(self) -> None:
        ns_type = self._builtin("", "namespaces")
        for name in INITIAL_NAMESPACES:
            if self.store.get(NAMESPACE_GR, "", name) is None:
                self.create(ns_type, None, {"metadata": {"name": name}})

    def reset(self) -> None:
        """Back to a fresh cluster: every object and CRD gone, watches closed."""
        self.watches.drop()
        for rt in list(self.registry):
            if rt.crd_name:
                self.registry.remove_crd(rt.crd_name)
        self.store.clear()
        self.bootstrap()

    def load(self, state: dict[str, Any]) -> None:
        self.watches.drop()
        self.store.load(state)
        for crd in list(self.store.objects(CRD_GR)):
            try:
                self._register_crd(crd)
            except ApiError as e:
                log.warning(
                    "stored CRD %s cannot be served: %s", crd["metadata"]["name"], e.message
                )
        self.wake_controllers()

    def _builtin(self, group: str, plural: str) -> ResourceType:
        types = self.registry.by_group_resource(group, plural)
        assert types, f"built-in resource {group}/{plural} missing"
        return types[0]

    def any_type(self, gr: GroupResource) -> ResourceType | None:
        types = self.registry.by_group_resource(*gr)
        return types[0] if types else None

    # -- lookups ------------------------------------------------------------

    def resource(self, group: str, version: str, plural: str) -> ResourceType:
        rt = self.registry.get(group, version, plural)
        if rt is None:
            raise ApiError(
                404, "NotFound", "the server could not find the requested resource", details={}
            )
        return rt

    def view(self, rt: ResourceType, obj: Obj) -> Obj:
        """*obj* as seen through *rt*'s version (custom resources: apiVersion rewritten)."""
        if obj.get("apiVersion") == rt.api_version:
            return obj
        out = dict(obj)
        out["apiVersion"] = rt.api_version
        return out

    def _key_ns(self, rt: ResourceType, namespace: str | None) -> str:
        return (namespace or "") if rt.namespaced else ""

    def _stored(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        obj = self.store.get(rt.group_resource, self._key_ns(rt, namespace), name)
        if obj is None:
            raise errors.not_found(rt.plural, rt.group, name)
        return obj

    def get(self, rt: ResourceType, namespace: str | None, name: str) -> Obj:
        return self.view(rt, self._stored(rt, namespace, name))

    def list_objects(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector,
        fields: FieldSelector,
        limit: int | None = None,
        continue_token: str | None = None,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
    ) -> ListResult:
        gr = rt.group_resource
        start_after: tuple[str, str] | None = None
        at_rv: int | None = None
        if continue_token:
            at_rv, start_after = _decode_continue(continue_token)
        elif resource_version_match == "Exact":
            if not resource_version:
                raise errors.bad_request("resourceVersionMatch: Exact requires resourceVersion")
            at_rv = _parse_rv(resource_version)
        elif resource_version_match not in (None, "", "NotOlderThan"):
            raise errors.bad_request(
                f"resourceVersionMatch: Unsupported value: {resource_version_match!r}"
            )
        elif resource_version_match == "NotOlderThan" and not resource_version:
            raise errors.bad_request("resourceVersionMatch: NotOlderThan requires resourceVersion")
        elif resource_version not in (None, "", "0"):
            _parse_rv(resource_version)
        if at_rv is not None and at_rv != self.store.revision:
            candidates = list(self.store.state_at(gr, at_rv).values())
            list_rv = at_rv
        else:
            candidates = list(self.store.objects(gr))
            list_rv = self.store.revision
        if namespace is not None and rt.namespaced:
            candidates = [o for o in candidates if o["metadata"].get("namespace") == namespace]
        candidates.sort(key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))
        if start_after is not None:
            candidates = [
                o
                for o in candidates
                if (o["metadata"].get("namespace", ""), o["metadata"]["name"]) > start_after
            ]
        name = fields.exact_name()
        selected = [
            o
            for o in candidates
            if (name is None or o["metadata"]["name"] == name)
            and labels.matches(o["metadata"].get("labels"))
            and fields.matches(o)
        ]
        token: str | None = None
        remaining: int | None = None
        if limit and limit > 0 and len(selected) > limit:
            last = selected[limit - 1]["metadata"]
            token = _encode_continue(list_rv, (last.get("namespace", ""), last["name"]))
            if labels.empty and fields.empty:
                remaining = len(selected) - limit
            selected = selected[:limit]
        return ListResult([self.view(rt, o) for o in selected], list_rv, token, remaining)

    # -- create -------------------------------------------------------------

    def create(
        self,
        rt: ResourceType,
        namespace: str | None,
        body: Any,
        *,
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        obj = self._decode_body(rt, body)
        meta = dict(obj.get("metadata") or {})
        obj["metadata"] = meta
        if rt.namespaced:
            body_ns = meta.get("namespace")
            if body_ns and namespace and body_ns != namespace:
                raise errors.bad_request(
                    "the namespace of the provided object does not match the namespace sent "
                    "on the request"
                )
            meta["namespace"] = namespace or body_ns or "default"
        else:
            meta.pop("namespace", None)
        if meta.get("resourceVersion"):
            raise errors.internal("resourceVersion should not be set on objects to be created")
        for server_field in (
            "uid",
            "selfLink",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "managedFields",
        ):
            meta.pop(server_field, None)
        generated = not meta.get("name") and bool(meta.get("generateName"))
        if generated:
            meta["name"] = self._generate_name(rt, meta)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_timestamp()
        if rt.is_custom or rt.kind in GENERATION_KINDS:
            meta["generation"] = 1
        else:
            meta.pop("generation", None)
        obj = self._prepare_create(rt, obj)
        obj = self._admit_custom(rt, obj, strict=strict, warnings=warnings)
        self._validate_meta(rt, obj, None)
        meta = obj["metadata"]
        if rt.namespaced:
            self._check_namespace_open(rt, meta["namespace"], meta["name"])
        if rt.group_resource == CRD_GR:
            obj = self._establish(obj, None)
        if (
            self.store.get(rt.group_resource, self._key_ns(rt, meta.get("namespace")), meta["name"])
            is not None
        ):
            raise errors.already_exists(rt.plural, rt.group, meta["name"])
        if rt.is_custom:
            self._check_crd_accepting(rt, meta["name"])
        if dry_run:
            return self.view(rt, obj)
        self._put_if_storable(rt, obj, None)
        if rt.group_resource == CRD_GR:
            self._register_crd(obj)
        return self.view(rt, obj)

    def _put_if_storable(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        """Stamp *obj* with the next resourceVersion and store it, unless etcd would refuse it.

        *obj*'s metadata must be its own dict (it gets the resourceVersion).
        """
        meta = obj["metadata"]
        # The revision is taken only once the write is sure to succeed.
        meta["resourceVersion"] = str(self.store.revision + 1)
        encoded = dumps(obj)
        check_storable(
            etcd_key(
                rt.group_resource,
                meta.get("namespace") or "",
                meta["name"],
                custom=rt.is_custom,
            ),
            stored_size(encoded, obj),
            int(old["metadata"]["resourceVersion"]) if old is not None else 0,
        )
        self.store.next_revision()
        self.store.put(rt.group_resource, obj, old)
        self._last_encoded = (obj, encoded)

    def encoded(self, obj: Obj) -> bytes | None:
        """The JSON of *obj* if it is the object just written (stored objects never change)."""
        last = self._last_encoded
        return last[1] if last is not None and last[0] is obj else None

    def _generate_name(self, rt: ResourceType, meta: dict[str, Any]) -> str:
        ns = self._key_ns(rt, meta.get("namespace"))
        for _ in range(10):
            suffix = "".join(secrets.choice(_NAME_SUFFIX_ALPHABET) for _ in range(5))
            name = f"{meta['generateName']}{suffix}"
            if self.store.get(rt.group_resource, ns, name) is None:
                return name
        raise errors.already_exists(rt.plural, rt.group, meta["generateName"])

    def _decode_body(self, rt: ResourceType, body: Any) -> Obj:
        if not isinstance(body, dict):
            raise errors.bad_request("the request body must be a JSON object")
        obj = dict(body)
        api_version = obj.setdefault("apiVersion", rt.api_version)
        kind = obj.setdefault("kind", rt.kind)
        if kind != rt.kind:
            raise errors.bad_request(
                f"the kind in the data ({kind}) does not match the expected kind ({rt.kind})"
            )
        if api_version != rt.api_version:
            served = [t.api_version for t in self.registry.by_group_resource(*rt.group_resource)]
            if api_version not in served:
                raise errors.bad_request(
                    f"the API version in the data ({api_version}) does not match the expected "
                    f"API version ({rt.api_version})"
                )
            obj["apiVersion"] = rt.api_version
        if "metadata" in obj and not isinstance(obj["metadata"], dict):
            raise errors.bad_request("metadata must be an object")
        _check_micro_times(rt, obj)
        return obj

    def _prepare_create(self, rt: ResourceType, obj: Obj) -> Obj:
        """Per-kind create strategy: what the server resets on create."""
        resets_status = ("Deployment", "DaemonSet", "Service")
        if (rt.is_custom and rt.status_subresource) or (
            rt.kind in resets_status and not rt.is_custom
        ):
            obj.pop("status", None)
        elif rt.kind == "Pod" and not rt.is_custom:
            obj["status"] = {"phase": "Pending"}
        elif rt.group_resource == NAMESPACE_GR:
            obj["spec"] = {"finalizers": ["kubernetes"]}
            obj["status"] = {"phase": "Active"}
            _label_namespace(obj)
        return obj

    def _check_namespace_open(self, rt: ResourceType, namespace: str, name: str) -> None:
        ns = self.store.get(NAMESPACE_GR, "", namespace)
        if ns is None:
            raise errors.not_found("namespaces", "", namespace)
        if ns["metadata"].get("deletionTimestamp"):
            raise errors.forbidden(
                rt.plural,
                rt.group,
                name,
                f"unable to create new content in namespace {namespace} because it is being "
                "terminated",
            )

    def _check_crd_accepting(self, rt: ResourceType, name: str) -> None:
        crd = self.store.get(CRD_GR, "", rt.crd_name or "")
        if crd is not None and crd["metadata"].get("deletionTimestamp"):
            raise errors.method_not_allowed(
                "create not allowed while custom resource definition is terminating"
            )

    # -- update / patch -----------------------------------------------------

    def update(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        body: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        obj = self._decode_body(rt, body)
        meta = obj.get("metadata") or {}
        if meta.get("name") not in (None, name):
            raise errors.bad_request(
                f"the name of the object ({meta.get('name')}) does not match the name on the "
                f"URL ({name})"
            )
        if rt.namespaced and meta.get("namespace") not in (None, "", namespace):
            raise errors.bad_request(
                "the namespace of the provided object does not match the namespace sent on the "
                "request"
            )
        old = self._stored(rt, namespace, name)
        _require_resource_version(rt, name, meta)
        return self._write_update(
            rt, old, obj, subresource=subresource, dry_run=dry_run, strict=strict, warnings=warnings
        )

    def patch(
        self,
        rt: ResourceType,
        namespace: str | None,
        name: str,
        content_type: str,
        patch: Any,
        *,
        subresource: str | None = None,
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        old = self._stored(rt, namespace, name)
        current = self.view(rt, old)
        if content_type == MERGE_PATCH:
            if not isinstance(patch, dict):
                raise errors.bad_request("merge patch must be a JSON object")
            patched = merge_patch(current, patch)
        elif content_type == JSON_PATCH:
            patched = json_patch(current, patch)
        elif content_type == STRATEGIC_MERGE_PATCH:
            if rt.is_custom:
                raise errors.unsupported_media_type(content_type, [JSON_PATCH, MERGE_PATCH])
            patched = strategic_merge_patch(current, patch)
        else:
            raise errors.unsupported_media_type(content_type, PATCH_TYPES)
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not a JSON object")
        meta = patched.get("metadata")
        if not isinstance(meta, dict) or meta.get("name") != name:
            raise errors.bad_request("metadata.name cannot be changed by a patch")
        if rt.namespaced and meta.get("namespace") != old["metadata"].get("namespace"):
            raise errors.bad_request("metadata.namespace cannot be changed by a patch")
        # A patch that removes the resourceVersion (kubectl apply after a replace whose
        # last-applied configuration had one) makes an unconditional update.
        _require_resource_version(rt, name, meta)
        return self._write_update(
            rt,
            old,
            self._decode_body(rt, patched),
            subresource=subresource,
            dry_run=dry_run,
            strict=strict,
            warnings=warnings,
        )

    def _write_update(
        self,
        rt: ResourceType,
        old: Obj,
        incoming: Obj,
        *,
        subresource: str | None,
        dry_run: bool = False,
        strict: bool = False,
        warnings: list[str] | None = None,
    ) -> Obj:
        old_meta = old["metadata"]
        in_meta = incoming.get("metadata") or {}
        name = old_meta["name"]
        wanted_rv = in_meta.get("resourceVersion")
        if wanted_rv not in (None, "") and wanted_rv != old_meta["resourceVersion"]:
            raise errors.conflict(rt.plural, rt.group, name, errors.STALE_OBJECT)
        wanted_uid = in_meta.get("uid")
        if wanted_uid not in (None, "") and wanted_uid != old_meta.get("uid"):
            # A uid in the body is a precondition: the object was deleted and recreated.
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {wanted_uid}, UID in object meta: "
                f"{old_meta.get('uid')}",
            )
        if subresource == "status":
            new = dict(old)
            new["apiVersion"] = rt.api_version
            if "status" in incoming:
                new["status"] = incoming["status"]
            else:
                new.pop("status", None)
            if rt.group_resource == POD_GR:
                # pods/status (podStatusStrategy) resets only the spec, deletionTimestamp and
                # ownerReferences: labels and annotations come from the body. Multus writes
                # its network-status annotation this way (GET the pod, PUT pods/status).
                new["metadata"] = _updated_meta(old_meta, in_meta, also=("ownerReferences",))
        else:
            new = dict(incoming)
            new["apiVersion"] = rt.api_version
            if rt.status_subresource:
                if "status" in old:
                    new["status"] = old["status"]
                else:
                    new.pop("status", None)
            new["metadata"] = _updated_meta(old_meta, in_meta)
            if rt.group_resource == NAMESPACE_GR:
                new["spec"] = old.get("spec", {})
                _label_namespace(new)
        new = self._admit_custom(rt, new, strict=strict, warnings=warnings)
        self._validate_meta(rt, new, old)
        if rt.group_resource == CRD_GR:
            new = self._establish(new, old)
        if _comparable(new) == _comparable(self.view(rt, old)):
            return self.view(rt, old)
        meta = dict(new["metadata"])
        new["metadata"] = meta
        if "generation" in old_meta and self._spec_changed(rt, old, new):
            meta["generation"] = int(old_meta["generation"]) + 1
        if dry_run:
            return self.view(rt, new)
        self._put_if_storable(rt, new, old)
        if rt.group_resource == CRD_GR:
            self._register_crd(new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(rt.group_resource, new)
        return self.view(rt, new)

    def _spec_changed(self, rt: ResourceType, old: Obj, new: Obj) -> bool:
        ignored = ["metadata", "status"] if rt.status_subresource else ["metadata"]
        if not rt.is_custom:
            return old.get("spec") != new.get("spec")
        return _without(old, *ignored, "apiVersion") != _without(new, *ignored, "apiVersion")

    # -- validation ---------------------------------------------------------

    def _admit_custom(
        self, rt: ResourceType, obj: Obj, *, strict: bool = False, warnings: list[str] | None = None
    ) -> Obj:
        if rt.schema is None:
            return obj
        unknown: list[str] = []
        admitted, causes = rt.schema.admit(obj, unknown=unknown)
        name = (obj.get("metadata") or {}).get("name", "")
        if unknown:
            if strict:
                raise errors.bad_request(
                    f'{rt.kind} in version "{rt.version}" cannot be handled as a {rt.kind}: '
                    "strict decoding error: " + ", ".join(f'unknown field "{u}"' for u in unknown)
                )
            if warnings is not None:
                warnings.extend(f'unknown field "{u}"' for u in unknown)
        if causes:
            raise errors.invalid(rt.kind, rt.group, name, causes)
        return admitted

    def _validate_meta(self, rt: ResourceType, obj: Obj, old: Obj | None) -> None:
        meta = obj["metadata"]
        name = meta.get("name") or ""
        problems: list[dict[str, str]] = []
        if not name:
            problems.append(
                cause(
                    "metadata.name",
                    "FieldValueRequired",
                    "Required value: name or generateName is required",
                )
            )
        elif rt.group_resource == NAMESPACE_GR:
            if len(name) > 63 or not _DNS_LABEL.match(name):
                problems.append(
                    cause(
                        "metadata.name",
                        "FieldValueInvalid",
                        f'Invalid value: "{name}": a lowercase RFC 1123 label must consist of lower '
                        "case alphanumeric characters or '-', and must start and end with an "
                        "alphanumeric character",
                    )
                )
        elif rt.group == "rbac.authorization.k8s.io":
            if name in (".", "..") or "/" in name or "%" in name:
                problems.append(
                    cause(
                        "metadata.name",
                        "FieldValueInvalid",
                        f'Invalid value: "{name}": may not contain "/" or "%"',
                    )
                )
        elif len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
            problems.append(
                cause(
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must consist of lower '
                    "case alphanumeric characters, '-' or '.', and must start and end with an "
                    "alphanumeric character",
                )
            )
        for field in ("labels", "annotations"):
            value = meta.get(field)
            if value is None:
                continue
            if not isinstance(value, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()
            ):
                raise errors.bad_request(f"metadata.{field} must be a map of string to string")
        for key, value in (meta.get("labels") or {}).items():
            prefix, _, label_name = key.rpartition("/")
            if (
                len(label_name) > 63
                or not _LABEL_NAME.match(label_name)
                or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
            ):
                problems.append(
                    cause(
                        "metadata.labels",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": name part must consist of '
                        "alphanumeric characters, '-', '_' or '.'",
                    )
                )
            if len(value) > 63 or not _LABEL_VALUE.match(value):
                problems.append(
                    cause(
                        "metadata.labels",
                        "FieldValueInvalid",
                        f'Invalid value: "{value}": a valid label must be an '
                        "empty string or consist of alphanumeric characters, "
                        "'-', '_' or '.'",
                    )
                )
        annotations = meta.get("annotations") or {}
        for key in annotations:
            # Annotation keys are qualified names, like label keys (checked lowercased).
            prefix, _, key_name = key.lower().rpartition("/")
            if (
                len(key_name) > 63
                or not _LABEL_NAME.match(key_name)
                or (prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)))
            ):
                problems.append(
                    cause(
                        "metadata.annotations",
                        "FieldValueInvalid",
                        f'Invalid value: "{key}": name part must consist of alphanumeric '
                        "characters, '-', '_' or '.', and must start and end with an "
                        "alphanumeric character",
                    )
                )
        if sum(len(k) + len(v) for k, v in annotations.items()) > ANNOTATIONS_SIZE_LIMIT:
            problems.append(
                cause(
                    "metadata.annotations",
                    "FieldValueTooLong",
                    f"Too long: may not be more than {ANNOTATIONS_SIZE_LIMIT} bytes",
                )
            )
        finalizers = meta.get("finalizers")
        if finalizers is not None and (
            not isinstance(finalizers, list) or not all(isinstance(f, str) for f in finalizers)
        ):
            raise errors.bad_request("metadata.finalizers must be a list of strings")
        if old is not None and old["metadata"].get("deletionTimestamp"):
            added = [
                f for f in finalizers or [] if f not in (old["metadata"].get("finalizers") or [])
            ]
            if added:
                problems.append(
                    cause(
                        "metadata.finalizers",
                        "FieldValueForbidden",
                        f"Forbidden: no new finalizers can be added if the object is being deleted, "
                        f"found new finalizers {json.dumps(added)}",
                    )
                )
        owners = meta.get("ownerReferences")
        if owners is not None:
            if not isinstance(owners, list):
                raise errors.bad_request("metadata.ownerReferences must be a list")
            for i, ref in enumerate(owners):
                for required in ("apiVersion", "kind", "name", "uid"):
                    if not isinstance(ref, dict) or not ref.get(required):
                        problems.append(
                            cause(
                                f"metadata.ownerReferences[{i}].{required}",
                                "FieldValueInvalid",
                                f'Invalid value: "": {required} must not be empty',
                            )
                        )
            if sum(1 for r in owners if isinstance(r, dict) and r.get("controller")) > 1:
                problems.append(
                    cause(
                        "metadata.ownerReferences",
                        "FieldValueInvalid",
                        "Only one reference can have Controller set to true",
                    )
                )
        if problems:
            raise errors.invalid(rt.kind, rt.group, name, problems)

    # -- CRDs ---------------------------------------------------------------

    def _crd_resource_types(self, crd: Obj) -> list[ResourceType]:
        name = crd["metadata"]["name"]
        spec = crd.get("spec")
        problems: list[dict[str, str]] = []
        if not isinstance(spec, dict):
            raise errors.invalid(
                "CustomResourceDefinition",
                "apiextensions.k8s.io",
                name,
                [cause("spec", "FieldValueRequired", "Required value")],
            )
        group = spec.get("group") or ""
        names = spec.get("names") or {}
        plural, kind = names.get("plural") or "", names.get("kind") or ""
        if not group:
            problems.append(cause("spec.group", "FieldValueRequired", "Required value"))
        if not plural:
            problems.append(cause("spec.names.plural", "FieldValueRequired", "Required value"))
        if not kind:
            problems.append(cause("spec.names.kind", "FieldValueRequired", "Required value"))
        if group and plural and name != f"{plural}.{group}":
            problems.append(
                cause(
                    "metadata.name",
                    "FieldValueInvalid",
                    f'Invalid value: "{name}": must be spec.names.plural+"."+spec.group',
                )
            )
        scope = spec.get("scope")
        if scope not in ("Namespaced", "Cluster"):
            problems.append(
                cause(
                    "spec.scope",
                    "FieldValueNotSupported",
                    f'Unsupported value: "{scope}": supported values: "Cluster", "Namespaced"',
                )
            )
        versions = spec.get("versions") or []
        if not versions:
            problems.append(
                cause(
                    "spec.versions",
                    "FieldValueInvalid",
                    "Invalid value: must have at least one version",
                )
            )
        elif sum(1 for v in versions if v.get("storage")) != 1:
            problems.append(
                cause(
                    "spec.versions",
                    "FieldValueInvalid",
                    "Invalid value: must have exactly one version marked as storage version",
                )
            )
        types: list[ResourceType] = []
        for i, version in enumerate(versions):
            if not version.get("served", False):
                continue
            raw = (version.get("schema") or {}).get("openAPIV3Schema")
            try:
                schema = CustomResourceSchema(raw)
            except SchemaProblem as e:
                problems.append(
                    cause(
                        f"spec.versions[{i}].schema.openAPIV3Schema",
                        "FieldValueInvalid",
                        f"Invalid value: {e}",
                    )
                )
                continue
            columns = version.get("additionalPrinterColumns")
            if not columns:
                columns = [
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ]
            types.append(
                ResourceType(
                    group=group,
                    version=version.get("name", ""),
                    kind=kind,
                    plural=plural,
                    singular=names.get("singular") or kind.lower(),
                    namespaced=scope == "Namespaced",
                    short_names=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    status_subresource="status" in (version.get("subresources") or {}),
                    crd_name=name,
                    schema=schema,
                    printer_columns=columns,
                )
            )
        if problems:
            raise errors.invalid("CustomResourceDefinition", "apiextensions.k8s.io", name, problems)
        for rt in types:
            existing = self.registry.get(rt.group, rt.version, rt.plural)
            if existing is not None and existing.crd_name != name:
                raise errors.invalid(
                    "CustomResourceDefinition",
                    "apiextensions.k8s.io",
                    name,
                    [
                        cause(
                            "spec.names.plural",
                            "FieldValueInvalid",
                            f'Invalid value: "{plural}": resource already served',
                        )
                    ],
                )
        return types

    def _establish(self, crd: Obj, old: Obj | None) -> Obj:
        """Validate a CRD and fill in the status the apiextensions controller would."""
        self._crd_resource_types(crd)
        spec = crd["spec"]
        names = dict(spec.get("names") or {})
        names.setdefault("singular", names.get("kind", "").lower())
        names.setdefault("listKind", f"{names.get('kind', '')}List")
        storage = [v["name"] for v in spec.get("versions", []) if v.get("storage")]
        old_status = (old or {}).get("status") or {}
        stored_versions = list(old_status.get("storedVersions") or [])
        for version in storage:
            if version not in stored_versions:
                stored_versions.append(version)
        ts = now_timestamp()
        conditions = [
            {
                "type": "NamesAccepted",
                "status": "True",
                "lastTransitionTime": ts,
                "reason": "NoConflicts",
                "message": "no conflicts found",
            },
            {
                "type": "Established",
                "status": "True",
                "lastTransitionTime": ts,
                "reason": "InitialNamesAccepted",
                "message": "the initial names have been accepted",
            },
        ]
        if crd["metadata"].get("deletionTimestamp"):
            conditions.append(
                {
                    "type": "Terminating",
                    "status": "True",
                    "lastTransitionTime": ts,
                    "reason": "InstanceDeletionInProgress",
                    "message": "CustomResource deletion is in progress",
                }
            )
        old_conditions = {c.get("type"): c for c in old_status.get("conditions") or []}
        for c in conditions:
            previous = old_conditions.get(c["type"])
            if previous and previous.get("status") == c["status"]:
                c["lastTransitionTime"] = previous.get("lastTransitionTime", ts)
        out = dict(crd)
        out["status"] = {
            "conditions": conditions,
            "acceptedNames": names,
            "storedVersions": stored_versions,
        }
        return out

    def _register_crd(self, crd: Obj) -> None:
        name = crd["metadata"]["name"]
        types = self._crd_resource_types(crd)
        self.registry.remove_crd(name)
        for rt in types:
            self.registry.add(rt)
        log.info(
            "serving custom resource %s (versions %s)", name, ", ".join(rt.version for rt in types)
        )

    # -- delete -------------------------------------------------------------

    def delete(
        self, rt: ResourceType, namespace: str | None, name: str, options: DeleteOptions
    ) -> Obj:
        obj = self._stored(rt, namespace, name)
        meta = obj["metadata"]
        if rt.group_resource == NAMESPACE_GR and name in PROTECTED_NAMESPACES:
            raise errors.forbidden(rt.plural, rt.group, name, "this namespace may not be deleted")
        if options.precondition_uid and options.precondition_uid != meta.get("uid"):
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: UID in precondition: {options.precondition_uid}, "
                f"UID in object meta: {meta.get('uid')}",
            )
        if options.precondition_rv and options.precondition_rv != meta.get("resourceVersion"):
            raise errors.conflict(
                rt.plural,
                rt.group,
                name,
                f"Precondition failed: ResourceVersion in precondition: "
                f"{options.precondition_rv}, ResourceVersion in meta: "
                f"{meta.get('resourceVersion')}",
            )
        grace = _pod_grace_period(rt, obj, options)
        if grace:
            return self._delete_gracefully(rt, obj, grace, options)
        finalizers = list(meta.get("finalizers") or [])
        if options.propagation == "Foreground" and FOREGROUND not in finalizers:
            finalizers = [f for f in finalizers if f != ORPHAN] + [FOREGROUND]
        elif options.propagation == "Orphan" and ORPHAN not in finalizers:
            finalizers = [f for f in finalizers if f != FOREGROUND] + [ORPHAN]
        elif options.propagation == "Background":
            finalizers = [f for f in finalizers if f not in (FOREGROUND, ORPHAN)]
        if rt.group_resource == CRD_GR and CRD_CLEANUP_FINALIZER not in finalizers:
            finalizers.append(CRD_CLEANUP_FINALIZER)
        is_namespace = rt.group_resource == NAMESPACE_GR
        if not finalizers and not is_namespace:
            if options.dry_run:
                return self.view(rt, obj)
            return self.view(rt, self._remove(rt.group_resource, obj).obj)
        new = dict(obj)
        new_meta = dict(meta)
        new_meta["finalizers"] = finalizers
        if not finalizers:
            new_meta.pop("finalizers")
        if not meta.get("deletionTimestamp"):
            new_meta["deletionTimestamp"] = now_timestamp()
            new_meta["deletionGracePeriodSeconds"] = 0
            if meta.get("generation"):
                new_meta["generation"] = int(meta["generation"]) + 1
        new["metadata"] = new_meta
        if is_namespace:
            new["status"] = {**(obj.get("status") or {}), "phase": "Terminating"}
        if rt.group_resource == CRD_GR:
            new = self._establish(new, obj)
        if options.dry_run:
            return self.view(rt, new)
        if _comparable(new) == _comparable(obj):
            return self.view(rt, obj)
        new_meta["resourceVersion"] = str(self.store.next_revision())
        self.store.put(rt.group_resource, new, obj)
        return self.view(rt, new)

    def _delete_gracefully(
        self, rt: ResourceType, obj: Obj, grace: int, options: DeleteOptions
    ) -> Obj:
        """Mark a pod bound to a node as terminating; its kubelet deletes it when stopped.

        As in Kubernetes: ``deletionTimestamp`` is now + the grace period, and a
        later delete may only shorten it (a grace period of 0 removes the pod).
        """
        meta = obj["metadata"]
        current = meta.get("deletionGracePeriodSeconds")
        if current is not None and current <= grace:
            return self.view(rt, obj)
        new = dict(obj)
        new["metadata"] = {
            **meta,
            "deletionTimestamp": (datetime.now(UTC) + timedelta(seconds=grace)).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "deletionGracePeriodSeconds": grace,
        }
        if options.dry_run:
            return self.view(rt, new)
        new["metadata"]["resourceVersion"] = str(self.store.next_revision())
        self.store.put(rt.group_resource, new, obj)
        return self.view(rt, new)

    def delete_collection(
        self,
        rt: ResourceType,
        namespace: str | None,
        *,
        labels: LabelSelector,
        fields: FieldSelector,
        options: DeleteOptions,
    ) -> list[Obj]:
        listed = self.list_objects(rt, namespace, labels=labels, fields=fields)
        deleted = []
        for obj in listed.items:
            meta = obj["metadata"]
            try:
                deleted.append(self.delete(rt, meta.get("namespace"), meta["name"], options))
            except ApiError as e:
                if e.code != 404:
                    raise
        return deleted

    def _remove(self, gr: GroupResource, obj: Obj) -> StoredEvent:
        event = self.store.remove(gr, obj)
        if gr == CRD_GR:
            self.registry.remove_crd(obj["metadata"]["name"])
            log.info("stopped serving custom resource %s", obj["metadata"]["name"])
        return event

    # -- controllers: garbage collector, namespace and CRD cleanup ----------

    def _on_event(self, event: StoredEvent) -> None:
        meta = event.obj["metadata"]
        if event.type == "DELETED" or meta.get("ownerReferences") or meta.get("deletionTimestamp"):
            self.wake_controllers()

    def wake_controllers(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def run_controllers(self) -> None:
        """The garbage collector and the namespace/CRD cleanup, until cancelled."""
        self._wake = asyncio.Event()
        self._wake.set()
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                self.reconcile_once()
            except Exception:
                log.exception("built-in controllers failed; retrying on the next change")
            # Yield so API requests interleave with a long cleanup.
            await asyncio.sleep(0)

    def reconcile_once(self) -> None:
        for crd in list(self.store.objects(CRD_GR)):
            if crd["metadata"].get("deletionTimestamp"):
                self._cleanup_crd(crd)
        for ns in list(self.store.objects(NAMESPACE_GR)):
            if ns["metadata"].get("deletionTimestamp"):
                self._cleanup_namespace(ns)
        self._collect_garbage()

    def _system_delete(self, gr: GroupResource, obj: Obj, propagation: str = "Background") -> None:
        rt = self.any_type(gr)
        if rt is None:
            self.store.remove(gr, obj)
            return
        meta = obj["metadata"]
        if (
            meta.get("deletionTimestamp")
            and propagation == "Background"
            and not meta.get("deletionGracePeriodSeconds")
        ):
            return
        try:
            # At once, pods included: the simulation's namespace cleanup and garbage
            # collector do not wait for kubelets (most simulated nodes have none).
            self.delete(
                rt,
                meta.get("namespace"),
                meta["name"],
                DeleteOptions(propagation, grace_period_seconds=0),
            )
        except ApiError as e:
            if e.code != 404:
                raise

    def _drop_finalizer(self, gr: GroupResource, obj: Obj, finalizer: str) -> None:
        rt = self.any_type(gr)
        new = dict(obj)
        new["metadata"] = {
            **obj["metadata"],
            "finalizers": [f for f in obj["metadata"].get("finalizers") or [] if f != finalizer],
        }
        if rt is None:
            self._remove(gr, obj)
            return
        self._write_update(rt, obj, self.view(rt, new), subresource=None)

    def _cleanup_crd(self, crd: Obj) -> None:
        spec = crd.get("spec") or {}
        gr = (spec.get("group", ""), (spec.get("names") or {}).get("plural", ""))
        remaining = list(self.store.objects(gr))
        for obj in remaining:
            self._system_delete(gr, obj)
        if not any(True for _ in self.store.objects(gr)) and CRD_CLEANUP_FINALIZER in (
            crd["metadata"].get("finalizers") or []
        ):
            self._drop_finalizer(CRD_GR, crd, CRD_CLEANUP_FINALIZER)

    def _cleanup_namespace(self, ns: Obj) -> None:
        name = ns["metadata"]["name"]
        left = 0
        for gr in self.store.group_resources():
            if gr == NAMESPACE_GR:
                continue
            for obj in list(self.store.objects(gr, name)):
                left += 1
                self._system_delete(gr, obj)
        if (
            left == 0
            and not any(
                any(True for _ in self.store.objects(gr, name))
                for gr in self.store.group_resources()
                if gr != NAMESPACE_GR
            )
            and not ns["metadata"].get("finalizers")
        ):
            self._remove(NAMESPACE_GR, ns)

    def _collect_garbage(self) -> None:
        dependents: dict[str, list[tuple[GroupResource, Obj]]] = {}
        for gr, ns, name in list(self.store.with_owners):
            obj = self.store.get(gr, ns, name)
            if obj is None:
                continue
            for ref in obj["metadata"].get("ownerReferences") or []:
                dependents.setdefault(ref.get("uid", ""), []).append((gr, obj))
        # Owners being deleted in the foreground or with orphaning.
        deleting = [self.store.get(*key) for key in list(self.store.deleting)]
        for uid in list(dependents) + [
            o["metadata"]["uid"]
            for o in deleting
            if o is not None and {FOREGROUND, ORPHAN} & set(o["metadata"].get("finalizers") or [])
        ]:
            found = self.store.lookup_uid(uid)
            if found is None:
                continue
            owner_gr, owner = found
            meta = owner["metadata"]
            if not meta.get("deletionTimestamp"):
                continue
            finalizers = meta.get("finalizers") or []
            mine = [
                (gr, self.store.get(gr, o["metadata"].get("namespace", ""), o["metadata"]["name"]))
                for gr, o in dependents.get(uid, [])
            ]
            if ORPHAN in finalizers:
                for gr, dep in mine:
                    if dep is not None:
                        self._remove_owner_ref(gr, dep, uid)
                self._drop_finalizer(owner_gr, owner, ORPHAN)
            elif FOREGROUND in finalizers:
                live = [(gr, d) for gr, d in mine if d is not None]
                for gr, dep in live:
                    # Like the real collector: dependents that own objects themselves
                    # go in the foreground too, the others in the background.
                    nested = dep["metadata"].get("uid") in dependents
                    self._system_delete(gr, dep, "Foreground" if nested else "Background")
                if not live:
                    self._drop_finalizer(owner_gr, owner, FOREGROUND)
        # Dependents whose owners are gone.
        for gr, ns, name in list(self.store.with_owners):
            obj = self.store.get(gr, ns, name)
            if obj is None:
                continue
            refs = obj["metadata"].get("ownerReferences") or []
            dangling = [r for r in refs if not self._owner_alive(r, ns)]
            if not dangling:
                continue
            if len(dangling) == len(refs):
                self._system_delete(gr, obj)
            else:
                for ref in dangling:
                    self._remove_owner_ref(gr, obj, ref.get("uid", ""))
                    obj = self.store.get(gr, ns, name) or obj

    def _owner_alive(self, ref: dict[str, Any], dependent_ns: str) -> bool:
        found = self.store.lookup_uid(ref.get("uid", ""))
        if found is None:
            return False
        _gr, owner = found
        owner_ns = owner["metadata"].get("namespace", "")
        return not owner_ns or owner_ns == dependent_ns

    def _remove_owner_ref(self, gr: GroupResource, obj: Obj, uid: str) -> None:
        rt = self.any_type(gr)
        if rt is None:
            return
        refs = [r for r in obj["metadata"].get("ownerReferences") or [] if r.get("uid") != uid]
        new = dict(obj)
        meta = {**obj["metadata"], "ownerReferences": refs}
        if not refs:
            meta.pop("ownerReferences")
        new["metadata"] = meta
        self._write_update(rt, obj, self.view(rt, new), subresource=None)


def _require_resource_version(rt: ResourceType, name: str, meta: Obj) -> None:
    """Custom resources and CRDs allow no unconditional update (built-ins do)."""
    if (rt.is_custom or rt.group_resource == CRD_GR) and not meta.get("resourceVersion"):
        raise errors.invalid(
            rt.plural,
            rt.group,
            name,
            [
                cause(
                    "metadata.resourceVersion",
                    "FieldValueInvalid",
                    "Invalid value: 0: must be specified for an update",
                )
            ],
        )


def _label_namespace(ns: Obj) -> None:
    """The server keeps the label ``kubernetes.io/metadata.name`` on every namespace."""
    meta = ns["metadata"]
    labels = meta.get("labels")
    meta["labels"] = {
        **(labels if isinstance(labels, dict) else {}),
        "kubernetes.io/metadata.name": meta.get("name", ""),
    }


def _parse_rv(text: str) -> int:
    try:
        value = int(text)
    except ValueError as e:
        raise errors.bad_request(f"invalid resource version: {text!r}") from e
    if value < 0:
        raise errors.bad_request(f"invalid resource version: {text!r}")
    return value


def _encode_continue(rv: int, after: tuple[str, str]) -> str:
    raw = json.dumps({"v": "meta.k8s.io/v1", "rv": rv, "start": list(after)})
    return base64.urlsafe_b64encode(raw.encode()).decode()


def _decode_continue(token: str) -> tuple[int, tuple[str, str]]:
    try:
        data = json.loads(base64.urlsafe_b64decode(token.encode()))
        return int(data["rv"]), (str(data["start"][0]), str(data["start"][1]))
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise errors.bad_request(
            "continue key is not valid: incorrect encoded start "
            "resourceVersion (version meta.k8s.io/v1)"
        ) from e
