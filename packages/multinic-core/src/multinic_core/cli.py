"""The ``multinic`` command: plan a network offline, list plugins, write CRDs.

Every user error (a missing file, bad YAML, an invalid object) is one line on
stderr that names the file and the problem, and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn

import yaml

from multinic_core.crds import write_crds
from multinic_core.errors import ConfigError, MultinicError
from multinic_core.models import (
    CIDR,
    HostInterface,
    IPPool,
    MultiNicNetwork,
    R,
    Resource,
    load_resource,
)
from multinic_core.planner import PlanResult, cidr_object, plan_cidrs, stranded_allocations
from multinic_core.plugins import PluginRegistry
from multinic_core.routes import host_routes

EXIT_USAGE = 2
PROG = "multinic"


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def _read_documents(path: Path) -> list[Any]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise CliError(f"{path}: no such file") from None
    except OSError as e:
        raise CliError(f"{path}: cannot read: {e.strerror}") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        where = ""
        mark = getattr(e, "problem_mark", None)
        if mark is not None:
            where = f" at line {mark.line + 1}, column {mark.column + 1}"
        problem = getattr(e, "problem", None) or str(e)
        raise CliError(f"{path}: not valid YAML{where}: {problem}") from None
    if not docs:
        raise CliError(f"{path}: empty file")
    return docs


def _load_one(cls: type[R], path: Path) -> R:
    docs = _read_documents(path)
    if len(docs) != 1:
        raise CliError(f"{path}: expected one {cls.kind_name}, found {len(docs)} documents")
    return _validate(cls, docs[0], path)


def _load_many(cls: type[R], path: Path) -> list[R]:
    items: list[Any] = []
    for doc in _read_documents(path):
        if isinstance(doc, list):
            items.extend(doc)
        elif isinstance(doc, dict) and isinstance(doc.get("items"), list):
            items.extend(doc["items"])  # kubectl get -o yaml: a List
        else:
            items.append(doc)
    loaded = [_validate(cls, item, path) for item in items]
    names = [r.name for r in loaded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise CliError(f"{path}: {cls.kind_name} {', '.join(duplicates)} listed twice")
    return loaded


def _validate(cls: type[R], data: Any, path: Path) -> R:
    if not isinstance(data, dict):
        raise CliError(f"{path}: expected a {cls.kind_name} object, found {type(data).__name__}")
    kind = data.get("kind", cls.kind_name)
    if kind != cls.kind_name:
        raise CliError(f"{path}: expected kind {cls.kind_name}, found {kind}")
    try:
        return load_resource(cls, data)
    except ConfigError as e:
        raise CliError(f"{path}: {e}") from None


def _print_resource(resource: Resource | dict[str, Any], output: str) -> None:
    body = resource if isinstance(resource, dict) else resource.to_dict()
    if output == "json":
        print(json.dumps(body, indent=2))
    else:
        print(yaml.safe_dump(body, sort_keys=False), end="")


def _plan(args: argparse.Namespace) -> tuple[MultiNicNetwork, PlanResult]:
    network = _load_one(MultiNicNetwork, args.network)
    hosts = _load_many(HostInterface, args.hosts)
    previous = _load_one(CIDR, args.previous).spec if args.previous else None
    result = plan_cidrs(network, hosts, previous)
    for problem in result.problems:
        print(f"{PROG}: warning: {problem}", file=sys.stderr)
    return network, result


def cmd_plan(args: argparse.Namespace) -> int:
    network, result = _plan(args)
    _print_resource(cidr_object(network, result), args.output)
    if args.pools:
        pools = [p for p in _load_many(IPPool, args.pools) if p.spec.net_attach_def == network.name]
        stranded = stranded_allocations(result.spec, pools)
        held = sum(len(p.spec.allocations) for p in pools)
        if stranded:
            print(
                f"{PROG}: this plan strands {len(stranded)} of {held} allocation(s) of "
                f"{network.name}: they stay with their pods until those are deleted "
                "(never renumbered, never handed out again); new pods use the new pools:",
                file=sys.stderr,
            )
            for allocation in stranded:
                print(f"  {allocation}", file=sys.stderr)
        else:
            print(
                f"{PROG}: this plan strands none of the {held} allocation(s) of {network.name}",
                file=sys.stderr,
            )
    return 0


def cmd_routes(args: argparse.Namespace) -> int:
    network, result = _plan(args)
    known = sorted({h.host_name for e in result.spec.cidr for h in e.hosts})
    if args.host not in known:
        raise CliError(f"host {args.host!r} is not in the plan (hosts: {', '.join(known)})")
    if not network.spec.manages_routes:
        print(
            f"{PROG}: network {network.name} manages no host routes "
            "(only multiNICIPAM networks in vlanMode l3/l3s do)",
            file=sys.stderr,
        )
        return 0
    for route in host_routes(result.spec, args.host):
        print(route)
    return 0


def cmd_plugins(args: argparse.Namespace) -> int:
    found = PluginRegistry().discover()
    if args.output == "json":
        rows = [
            {
                "kind": p.kind,
                "group": p.group,
                "name": p.name,
                "distribution": p.distribution,
                "version": p.version,
                "hooks": list(p.hooks),
                "error": p.error,
            }
            for p in found
        ]
        print(json.dumps(rows, indent=2))
    else:
        table = [("KIND", "NAME", "DISTRIBUTION", "VERSION", "STATUS")]
        for p in found:
            table.append((p.kind, p.name, p.distribution, p.version, p.error or "ok"))
        widths = [max(len(row[i]) for row in table) for i in range(4)]
        for row in table:
            print("  ".join(c.ljust(w) for c, w in zip(row[:4], widths, strict=True)), row[4])
    return 1 if any(p.error for p in found) else 0


def cmd_crds(args: argparse.Namespace) -> int:
    try:
        for path in write_crds(args.out):
            print(path)
    except OSError as e:
        raise CliError(f"{args.out}: cannot write: {e.strerror}") from None
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="multinic: plan and inspect multi-NIC pod networks (multinic.fms.io/v1).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what is loaded")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def with_plan_inputs(p: argparse.ArgumentParser) -> None:
        p.add_argument("network", type=Path, metavar="NETWORK.yaml", help="a MultiNicNetwork")
        p.add_argument(
            "hosts",
            type=Path,
            metavar="HOSTS.yaml",
            help="HostInterface objects: a YAML list, a multi-document stream, or a List",
        )
        p.add_argument(
            "--previous",
            type=Path,
            metavar="CIDR.yaml",
            help="the current CIDR object; existing hosts keep their blocks",
        )

    plan = sub.add_parser(
        "plan",
        help="print the CIDR plan of a network for a set of hosts",
        description="Compute the CIDR object (one block per host per NIC) without a cluster.",
    )
    with_plan_inputs(plan)
    plan.add_argument("-o", "--output", choices=("yaml", "json"), default="yaml")
    plan.add_argument(
        "--pools",
        type=Path,
        metavar="IPPOOLS.yaml",
        help="the network's IPPools as they are (kubectl get ippools -o yaml): list on "
        "stderr the allocations this plan would strand",
    )
    plan.set_defaults(func=cmd_plan)

    routes = sub.add_parser(
        "routes",
        help="print one host's L3 routes (DST via GW dev IFACE)",
        description="The routes the agent of HOST programs for an l3/l3s network.",
    )
    with_plan_inputs(routes)
    routes.add_argument("--host", required=True, metavar="NAME", help="the host (node) name")
    routes.set_defaults(func=cmd_routes)

    plugins = sub.add_parser(
        "plugins",
        help="list installed main plugins, attach policies and IPAM plugins",
        description="Load every installed plugin; exit 1 if any fails to load.",
    )
    plugins.add_argument("-o", "--output", choices=("table", "json"), default="table")
    plugins.set_defaults(func=cmd_plugins)

    crds = sub.add_parser(
        "crds",
        help="write the CustomResourceDefinitions",
        description="Write deploy/crds/*.yaml generated from the models.",
    )
    crds.add_argument("--out", type=Path, default=Path("deploy/crds"), metavar="DIR")
    crds.set_defaults(func=cmd_crds)
    return parser


def _fail(message: str) -> NoReturn:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result: int = args.func(args)
    except CliError as e:
        _fail(str(e))
    except MultinicError as e:
        _fail(str(e))
    except BrokenPipeError:
        return 0
    return result


if __name__ == "__main__":
    sys.exit(main())
