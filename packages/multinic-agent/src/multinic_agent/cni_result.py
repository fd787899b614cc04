"""CNI results: reading a delegate's, merging several, and writing one in any spec version.

Versions 0.3.0, 0.3.1 and 0.4.0 write ``ips[].version`` ("4"/"6"); 1.0.0 and
1.1.0 do not.  Both write ``ips[].interface`` as an index into
``interfaces``.  A merged result lists the interfaces of every delegate in
NIC order, with each address's ``interface`` index shifted accordingly.

CNI results cannot express a multipath route: a destination reached through
several gateways is listed once per gateway (same ``dst``); the agent
programs the real multipath route in the pod's namespace itself.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from multinic_agent.shim import CODE_OTHER, SUPPORTED_VERSIONS

LEGACY_VERSIONS = frozenset({"0.3.0", "0.3.1", "0.4.0"})
"""Versions whose ``ips`` entries carry ``version``."""


class CniError(Exception):
    """A CNI error to return to the runtime: ``{"cniVersion","code","msg","details"}``."""

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_dict(self, version: str) -> dict[str, Any]:
        return {"cniVersion": version, "code": self.code, "msg": self.msg, "details": self.details}


def version_key(version: str) -> tuple[int, ...]:
    """A sortable form of a CNI spec version ("0.4.0" -> (0, 4, 0))."""
    try:
        return tuple(int(part) for part in version.split("."))
    except ValueError:
        return (0,)


def best_common_version(requested: str, supported: Sequence[str]) -> str | None:
    """The highest of ``supported`` not newer than ``requested`` (what a delegate gets)."""
    candidates = [v for v in supported if version_key(v) <= version_key(requested)]
    return max(candidates, key=version_key) if candidates else None


@dataclass
class AttachResult:
    """A CNI result in version-neutral form."""

    interfaces: list[dict[str, Any]] = field(default_factory=list)
    ips: list[dict[str, Any]] = field(default_factory=list)
    """``address`` (CIDR), optional ``gateway``, optional ``interface`` index."""
    routes: list[dict[str, Any]] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, data: Mapping[str, Any], source: str = "delegate") -> AttachResult:
        """Read a result of any supported version; raises CniError naming ``source``."""
        try:
            interfaces = [dict(i) for i in data.get("interfaces") or []]
            ips = []
            for ip in data.get("ips") or []:
                entry = {k: v for k, v in dict(ip).items() if k != "version"}
                if not isinstance(entry.get("address"), str):
                    raise TypeError(f"ips entry without an address: {ip!r}")
                ips.append(entry)
            routes = [dict(r) for r in data.get("routes") or []]
            dns = dict(data.get("dns") or {})
        except (TypeError, ValueError, AttributeError) as e:
            raise CniError(CODE_OTHER, f"{source} returned a malformed CNI result: {e}") from e
        return cls(interfaces=interfaces, ips=ips, routes=routes, dns=dns)

    def pod_interface_indexes(self) -> list[int]:
        """Indexes of the interfaces that live in the pod (those with a ``sandbox``)."""
        return [i for i, iface in enumerate(self.interfaces) if iface.get("sandbox")]

    def render(self, version: str) -> dict[str, Any]:
        """The result as the runtime expects it in spec ``version``."""
        if version not in SUPPORTED_VERSIONS:
            raise ValueError(f"cniVersion {version!r} is not supported")
        ips = []
        for ip in self.ips:
            entry = copy.deepcopy(ip)
            if version in LEGACY_VERSIONS:
                entry = {"version": "6" if ":" in entry["address"] else "4", **entry}
            ips.append(entry)
        result: dict[str, Any] = {"cniVersion": version}
        if self.interfaces:
            result["interfaces"] = copy.deepcopy(self.interfaces)
        if ips:
            result["ips"] = ips
        if self.routes:
            result["routes"] = copy.deepcopy(self.routes)
        result["dns"] = copy.deepcopy(self.dns)
        return result


def merge_results(
    results: Sequence[AttachResult], extra_routes: Sequence[Mapping[str, Any]] = (), dns: Any = None
) -> AttachResult:
    """One result for the pod from the delegates' results, in NIC order.

    ``interface`` indexes of each delegate's addresses are shifted by the
    number of interfaces listed before it; routes are kept in order, with
    ``extra_routes`` (the agent's multipath routes, one per gateway) after them.
    """
    merged = AttachResult()
    for result in results:
        offset = len(merged.interfaces)
        merged.interfaces.extend(copy.deepcopy(result.interfaces))
        for ip in result.ips:
            entry = copy.deepcopy(ip)
            if isinstance(entry.get("interface"), int):
                entry["interface"] += offset
            merged.ips.append(entry)
        for route in result.routes:
            if route not in merged.routes:
                merged.routes.append(copy.deepcopy(route))
        if not merged.dns and result.dns:
            merged.dns = copy.deepcopy(result.dns)
    for extra in extra_routes:
        if extra not in merged.routes:
            merged.routes.append(dict(extra))
    if isinstance(dns, Mapping) and dns:
        merged.dns = copy.deepcopy(dict(dns))
    return merged
