"""A network's status (SPEC section 1), computed from the current state.

Every value is derived from what the reconciler just read (the plan, the
hosts, the agents' route reports), never incremented, so a late or repeated
event cannot move a counter backwards.  ``status_patch`` returns None when
nothing but the timestamps would change, so an idle operator writes nothing.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from multinic_core.models import (
    Condition,
    DiscoveryStatus,
    HostInterface,
    MultiNicNetwork,
    MultiNicNetworkStatus,
    NetworkResult,
)
from multinic_core.planner import Stranded

RouteState = Literal["N/A", "WaitForRoutes", "Unknown", "Success", "Failed"]
MAX_NAMED_HOSTS = 5


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class RouteSummary:
    """The network's ``routeStatus`` and the sentence that explains it."""

    state: RouteState
    message: str = ""


def _named(hosts: Sequence[str]) -> str:
    shown = ", ".join(sorted(hosts)[:MAX_NAMED_HOSTS])
    more = len(hosts) - MAX_NAMED_HOSTS
    return f"{shown} and {more} more" if more > 0 else shown


def route_summary(
    network: MultiNicNetwork,
    planned_hosts: Iterable[str],
    hosts: Mapping[str, HostInterface],
    cidr_generation: int | None,
) -> RouteSummary:
    """Aggregate the agents' per-node route reports for ``network``.

    ``N/A`` when the network manages no routes; ``Unknown`` when no host is
    planned; ``Failed`` when any planned host reports a failure; else
    ``WaitForRoutes`` until every planned host reports ``Success`` for the
    current CIDR generation (an older generation means the agent has not
    caught up with the plan yet).
    """
    if not network.spec.manages_routes:
        return RouteSummary("N/A")
    planned = sorted(set(planned_hosts))
    if not planned:
        return RouteSummary("Unknown", "no host is in the plan yet, so no routes to program")
    failed: list[str] = []
    failures: list[str] = []
    waiting: list[str] = []
    for name in planned:
        host = hosts.get(name)
        report = None
        if host is not None and host.status is not None:
            report = next((r for r in host.status.routes if r.network == network.name), None)
        if report is None:
            waiting.append(name)
        elif report.status == "Failed":
            failed.append(name)
            failures.append(f"{name}: {report.message or 'no message'}")
        elif report.status != "Success" or (
            cidr_generation is not None
            and report.cidr_generation is not None
            and report.cidr_generation < cidr_generation
        ):
            waiting.append(name)
    if failed:
        return RouteSummary(
            "Failed",
            f"routes failed on {len(failed)} host(s) ({'; '.join(failures[:MAX_NAMED_HOSTS])}); "
            "see the multinic-agent log on those nodes",
        )
    if waiting:
        return RouteSummary(
            "WaitForRoutes",
            f"waiting for the agents of {len(waiting)} of {len(planned)} host(s) to program "
            f"routes of CIDR generation {cidr_generation} ({_named(waiting)}); check that "
            "multinic-agent runs on them",
        )
    return RouteSummary("Success")


@dataclass
class StatusInputs:
    """What the status of one network is computed from."""

    network: MultiNicNetwork
    compute_results: list[NetworkResult] = field(default_factory=list)
    exist_daemon: int = 0
    info_available: int = 0
    cidr_processed: int = 0
    routes: RouteSummary = field(default_factory=lambda: RouteSummary("N/A"))
    problems: list[str] = field(default_factory=list)
    """Things that did not go as asked (unplaced hosts, missing namespaces...)."""
    stranded: Sequence[Stranded] = ()
    """Allocations a plan edit left outside the current pools (kept until their pods go)."""
    retiring: Sequence[str] = ()
    """Replaced pools whose agent has not yet acknowledged that it allocates nothing from them."""


def stranded_condition(inputs: StatusInputs, generation: int | None) -> Condition:
    """``AllocationsStranded``: True while pods hold addresses outside the current plan."""
    if not inputs.stranded:
        message = ""
        if inputs.retiring:
            message = (
                f"waiting for agents to acknowledge {len(inputs.retiring)} replaced IPPool(s) "
                f"({_named(list(inputs.retiring))}); new pools overlapping them start after that"
            )
        return Condition(
            type="AllocationsStranded",
            status="False",
            reason="NoneStranded",
            message=message,
            observed_generation=generation,
        )
    pods = sorted(
        {f"{s.namespace}/{s.pod}" if s.pod else f"(no pod) {s.address}" for s in inputs.stranded}
    )
    return Condition(
        type="AllocationsStranded",
        status="True",
        reason="PlanChanged",
        message=(
            f"{len(inputs.stranded)} allocation(s) of {len(pods)} pod(s) are outside the current "
            f"plan and kept until those pods are deleted (new pods use the new pools): "
            f"{_named(pods)}; addresses: "
            + ", ".join(str(s) for s in list(inputs.stranded)[:MAX_NAMED_HOSTS])
            + (" ..." if len(inputs.stranded) > MAX_NAMED_HOSTS else "")
        ),
        observed_generation=generation,
    )


def success_status(inputs: StatusInputs) -> MultiNicNetworkStatus:
    """The status after a reconcile that wrote every dependent object."""
    network = inputs.network
    generation = network.metadata.generation
    messages = []
    if not inputs.cidr_processed and network.spec.multi_nic_ipam_config is not None:
        messages.append(
            "no host is planned yet: check that multinic-agent runs on the nodes (Config "
            "multi-nicd) and that masterNets match the hosts' networks"
        )
    messages.extend(inputs.problems)
    if inputs.routes.message and inputs.routes.state != "Success":
        messages.append(inputs.routes.message)
    routes_ready = inputs.routes.state in ("Success", "N/A")
    stranded = stranded_condition(inputs, generation)
    conditions = [
        Condition(
            type="Ready",
            status="True",
            reason="Reconciled",
            message="NADs, CIDR plan, IPPools and driver objects are up to date",
            observed_generation=generation,
        ),
        Condition(
            type="RoutesReady",
            status="True" if routes_ready else "False",
            reason=inputs.routes.state.replace("/", ""),
            message=inputs.routes.message,
            observed_generation=generation,
        ),
        stranded,
    ]
    if inputs.stranded:
        messages.append(stranded.message)
    return MultiNicNetworkStatus(
        compute_results=inputs.compute_results,
        discovery=DiscoveryStatus(
            exist_daemon=inputs.exist_daemon,
            info_available=inputs.info_available,
            cidr_processed=inputs.cidr_processed,
        ),
        config_status="Success",
        route_status=inputs.routes.state,
        message="; ".join(messages),
        observed_generation=generation,
        conditions=conditions,
    )


def failed_status(
    current: Mapping[str, Any] | None, generation: int | None, message: str, reason: str
) -> dict[str, Any]:
    """``configStatus: Failed`` with ``message``; the other fields stay as they were.

    Used for an invalid network or a missing driver: nothing else is touched,
    so the counters keep describing what exists.
    """
    status = dict(current or {})
    status.update(
        {
            "configStatus": "Failed",
            "message": message,
            "observedGeneration": generation,
            "conditions": [
                Condition(
                    type="Ready",
                    status="False",
                    reason=reason,
                    message=message,
                    observed_generation=generation,
                ).to_dict()
            ],
        }
    )
    status.setdefault("routeStatus", "N/A")
    return status


_TIMESTAMPS = ("lastSyncTime", "lastTransitionTime")


def _without_timestamps(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timestamps(v) for k, v in value.items() if k not in _TIMESTAMPS}
    if isinstance(value, list):
        return [_without_timestamps(v) for v in value]
    return value


def status_patch(
    current: Mapping[str, Any] | None, desired: Mapping[str, Any], timestamp: str
) -> dict[str, Any] | None:
    """The new status to write, or None when only timestamps would differ.

    A condition keeps its ``lastTransitionTime`` while its status stays the same.
    """
    current = dict(current or {})
    if _without_timestamps(current) == _without_timestamps(dict(desired)):
        return None
    status = dict(desired)
    status["lastSyncTime"] = timestamp
    old = {c.get("type"): c for c in current.get("conditions") or []}
    conditions = []
    for given in status.get("conditions") or []:
        condition = dict(given)
        before = old.get(condition.get("type"))
        if before is not None and before.get("status") == condition.get("status"):
            condition["lastTransitionTime"] = before.get("lastTransitionTime") or timestamp
        else:
            condition["lastTransitionTime"] = timestamp
        conditions.append(condition)
    status["conditions"] = conditions
    return status
