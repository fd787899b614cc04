"""Benchmark of the operator: a burst of joining hosts, N NICs each, against both API servers.

Run: ``.venv/bin/python bench/operator_scale.py`` (1,000 hosts x 3 NICs, the
double then the real kube-apiserver), ``--quick`` (100 hosts), or sized:
``--hosts 10000 --nics 8 --server double``.  Everything runs on this machine:

* the API server: the project's double (multinic-sim) in this process, with a
  middleware that counts requests by User-Agent and verb; or the real
  kube-apiserver + etcd (built by ``scripts/build-counterparts``), counted
  from its audit log (same verbs: get, list, watch, create, patch, ...);
* the operator as a separate process (``multinic-operator --standalone``), so
  its RSS is its own;
* one ipvlan-l3 network whose subnet, hostBlock and interfaceBlock are picked
  to fit the hosts and NICs asked for, created before the burst;
* the burst: the bench creates N Nodes and N HostInterfaces as fast as 8
  client threads can, as agents starting on new nodes would.

Measured: time from the start of the burst until the network's status says
every host is planned on every NIC and all hosts*NICs IPPools exist; the
operator's API requests by verb and its writes per joining host (target <=
NICs + 1); its peak RSS (target <= 400 MB, ``--rss-target``).

Baseline, measured in the same run against a fresh server of the same kind:
a bare client creating the same objects the operator ended up writing (the
IPPools, the CIDR, and one status write) one request each - the minimal API
work for the result.  The ratios compare the operator's writes and time with
that.

Results are printed and written to ``bench/results/operator_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from multinic_operator.kube import KubeApi, load_client_configuration
from multinic_sim.background import ApiServerThread
from multinic_sim.crds import NETWORK_ATTACHMENT_DEFINITION_CRD
from multinic_sim.errors import SimError
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.realapi import RealApiServer, RealApiServerThread, find_programs
from multinic_sim.server import ApiServer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "operator_scale.json"
API = "multinic.fms.io/v1"
BENCH_AGENT = "multinic-bench"
POD_BITS = 6
"""Addresses per host per NIC in the bench's network: 64 (the subnet is sized from it)."""


def master_net(nic: int) -> str:
    return f"172.{16 + nic}.0.0/16"


def bench_network(hosts: int, nics: int) -> dict[str, Any]:
    """An ipvlan-l3 network whose hostBlock and interfaceBlock fit ``hosts`` x ``nics``."""
    host_bits = max(1, (hosts - 1).bit_length())
    interface_bits = max(1, (nics - 1).bit_length())
    prefix = 32 - POD_BITS - host_bits - interface_bits
    if prefix < 8 or nics > 16 or hosts > 60_000:
        raise SystemExit(
            f"{hosts} hosts x {nics} NICs: the bench's network takes at most 16 NICs, "
            f"60,000 hosts and a /8 subnet (/{32 - POD_BITS} per host per NIC)"
        )
    return {
        "apiVersion": API,
        "kind": "MultiNicNetwork",
        "metadata": {"name": "bench"},
        "spec": {
            "subnet": f"10.0.0.0/{prefix}",
            "ipam": json.dumps(
                {
                    "type": "multi-nic-ipam",
                    "hostBlock": host_bits,
                    "interfaceBlock": interface_bits,
                    "vlanMode": "l3",
                }
            ),
            "multiNICIPAM": True,
            "masterNets": [master_net(n) for n in range(nics)],
            "plugin": {"cniVersion": "1.0.0", "type": "ipvlan", "args": {"mode": "l3"}},
        },
    }


WRITE_VERBS = frozenset({"create", "update", "patch", "delete", "deletecollection"})
VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")


def family_of(user_agent: str) -> str:
    if user_agent.startswith(("multinic-operator", "kopf")):
        return "operator"
    if user_agent.startswith(BENCH_AGENT):
        return "bench"
    return "other"


class RequestCounter:
    """API requests by (client family, verb), and the operator's plan and status writes.

    Fed by the double's middleware or by the real kube-apiserver's audit log;
    both give the verb (``list`` vs ``get`` vs ``watch``) the same way.
    """

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()

    def record(self, family: str, verb: str, resource: str, name: str, subresource: str) -> None:
        with self._lock:
            self.counts[(family, verb)] += 1
            if family == "operator" and verb == "patch" and name == "bench":
                # Plan and status writes: what batching keeps to a handful.
                if resource == "cidrs" and not subresource:
                    self.kinds["plan-write"] += 1
                elif resource == "multinicnetworks" and subresource == "status":
                    self.kinds["status-write"] += 1

    def refresh(self) -> None:
        """Bring the counts up to date (the audit log is read on demand)."""

    def count(self, what: str) -> int:
        """Operator writes of one kind (``plan-write``, ``status-write``)."""
        self.refresh()
        with self._lock:
            return self.kinds[what]

    def writes(self, family: str) -> int:
        self.refresh()
        with self._lock:
            return sum(n for (f, v), n in self.counts.items() if f == family and v in WRITE_VERBS)

    def requests(self, family: str) -> int:
        self.refresh()
        with self._lock:
            return sum(n for (f, _), n in self.counts.items() if f == family)

    def by_verb(self, family: str) -> dict[str, int]:
        self.refresh()
        with self._lock:
            return {v: self.counts[(family, v)] for v in VERBS if self.counts[(family, v)]}


class MiddlewareCounter(RequestCounter):
    """Counts at the double: the verb from the method, the path and ``?watch``."""

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        resource, name, subresource = _parse_path(request.path)
        method = request.method
        if method == "GET":
            verb = (
                "watch"
                if request.query.get("watch") in ("1", "true")
                else "get"
                if name
                else "list"
            )
        else:
            verb = {"POST": "create", "PUT": "update", "PATCH": "patch"}.get(
                method, "delete" if name else "deletecollection"
            )
        family = family_of(request.headers.get("User-Agent", ""))
        self.record(family, verb, resource, name, subresource)
        return await handler(request)


def _parse_path(path: str) -> tuple[str, str, str]:
    """(resource, name, subresource) of an API path."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"]:
        parts = parts[2:]
    elif parts[:1] == ["apis"]:
        parts = parts[3:]
    else:
        return "", "", ""
    if len(parts) >= 3 and parts[0] == "namespaces":
        parts = parts[2:]
    parts += ["", "", ""]
    return parts[0], parts[1], parts[2]


class AuditCounter(RequestCounter):
    """Counts from kube-apiserver's audit log (one JSON line per request stage)."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        self.path = path
        self._offset = 0
        self._seen: set[str] = set()
        self._read_lock = threading.Lock()

    def refresh(self) -> None:
        with self._read_lock:
            try:
                with self.path.open("rb") as f:
                    f.seek(self._offset)
                    data = f.read()
            except FileNotFoundError:
                return
            end = data.rfind(b"\n") + 1
            self._offset += end
            for line in data[:end].splitlines():
                event = json.loads(line)
                audit_id = event["auditID"]
                if audit_id in self._seen:  # a watch logs ResponseStarted and ResponseComplete
                    continue
                self._seen.add(audit_id)
                ref = event.get("objectRef") or {}
                self.record(
                    family_of(event.get("userAgent", "")),
                    event["verb"],
                    ref.get("resource", ""),
                    ref.get("name", ""),
                    ref.get("subresource", ""),
                )


class Server:
    """One API server for one run: the double in this process or the real control plane."""

    def __init__(self, kind: str, workdir: Path, *, counting: bool) -> None:
        self.kind = kind
        self.counter: RequestCounter | None = None
        self._thread: ApiServerThread | RealApiServerThread
        if kind == "double":
            server = ApiServer(bookmark_interval=5.0, history_limit=1_000_000)
            if counting:
                self.counter = counter = MiddlewareCounter()
                server.app.middlewares.append(counter.middleware)
            self._thread = ApiServerThread(server)
            self._thread.start()
            self.kubeconfig = write_kubeconfig(workdir / "kubeconfig", self._thread.url)
        else:
            audit = workdir / "audit.log" if counting else None
            real = RealApiServer(workdir / "real", audit_log=audit)
            self._thread = RealApiServerThread(real)
            self._thread.start()
            if audit is not None:
                self.counter = AuditCounter(audit)
            self.kubeconfig = real.write_kubeconfig(workdir / "kubeconfig")

    def stop(self) -> None:
        self._thread.stop()


def client_for(kubeconfig: Path) -> KubeApi:
    api = KubeApi(load_client_configuration(str(kubeconfig)), timeout=60)
    api.api_client.user_agent = BENCH_AGENT
    return api


def install_crds(api: KubeApi) -> None:
    docs = [NETWORK_ATTACHMENT_DEFINITION_CRD]
    for path in sorted((REPO / "deploy" / "crds").glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for doc in docs:
        api.create(doc)
    for doc in docs:
        spec = doc["spec"]
        api_version = f"{spec['group']}/{spec['versions'][0]['name']}"
        wait(
            lambda api_version=api_version, kind=spec["names"]["kind"]: _served(
                api, api_version, kind
            ),
            30,
            f"CRD {doc['metadata']['name']}",
        )


def _served(api: KubeApi, api_version: str, kind: str) -> bool:
    try:
        api.list(api_version, kind)
    except Exception:  # not served yet
        return False
    return True


def wait(predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def host_objects(index: int, nics: int) -> tuple[dict[str, Any], dict[str, Any]]:
    name = f"node-{index:05d}"
    high, low = divmod(index + 10, 250)
    interfaces = [
        {
            "interfaceName": f"eth{n + 1}",
            "netAddress": master_net(n),
            "hostIP": f"172.{16 + n}.{high}.{low + 1}",
            "vendor": "15b3",
            "product": "1017",
        }
        for n in range(nics)
    ]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    host = {
        "apiVersion": API,
        "kind": "HostInterface",
        "metadata": {"name": name},
        "spec": {"hostName": name, "interfaces": interfaces},
    }
    return node, host


def converged(api: KubeApi, hosts: int, nics: int) -> bool:
    network = api.get(API, "MultiNicNetwork", "bench") or {}
    status = network.get("status") or {}
    results = status.get("computeResults") or []
    return (
        status.get("discovery", {}).get("cidrProcessed") == hosts
        and len(results) == nics
        and all(r["numOfHosts"] == hosts for r in results)
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def start_operator(kubeconfig: Path, log_path: Path) -> subprocess.Popen[bytes]:
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [
                str(Path(sys.executable).parent / "multinic-operator"),
                "--kubeconfig",
                str(kubeconfig),
                "--namespace",
                "default",
                "--standalone",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def wait_started(api: KubeApi) -> None:
    """The operator has written the network's empty plan and the agent DaemonSet."""
    wait(
        lambda: (
            api.get(API, "CIDR", "bench") is not None
            and (api.get(API, "MultiNicNetwork", "bench") or {}).get("status")
        ),
        60,
        "the empty plan",
    )
    wait(
        lambda: api.get("apps/v1", "DaemonSet", "multinic-agent", "default") is not None,
        60,
        "the agent DaemonSet",
    )


def join_burst(api: KubeApi, hosts: int, nics: int) -> None:
    with ThreadPoolExecutor(max_workers=8) as pool:
        futures = []
        for index in range(hosts):
            node, host = host_objects(index, nics)
            futures.append(pool.submit(lambda n=node, h=host: (api.create(n), api.create(h))))
        for future in futures:
            future.result()


def wait_converged(api: KubeApi, hosts: int, nics: int) -> None:
    wait(lambda: converged(api, hosts, nics), 600, f"{hosts} hosts planned", interval=0.1)
    wait(
        lambda: len(api.list(API, "IPPool", label_selector="netname=bench")) == hosts * nics,
        300,
        "every IPPool",
        interval=0.2,
    )


def run_operator_burst(kind: str, hosts: int, nics: int, workdir: Path) -> dict[str, Any]:
    server = Server(kind, workdir, counting=True)
    counter = server.counter
    assert counter is not None
    api = client_for(server.kubeconfig)
    network_body = bench_network(hosts, nics)
    log_path = workdir / "operator.log"
    operator: subprocess.Popen[bytes] | None = None
    try:
        install_crds(api)
        operator = start_operator(server.kubeconfig, log_path)
        api.create(network_body)
        wait_started(api)
        time.sleep(1.0)  # let the startup batch settle before counting
        before = counter.by_verb("operator")
        plans_before = counter.count("plan-write")
        statuses_before = counter.count("status-write")
        started = time.monotonic()
        join_burst(api, hosts, nics)
        burst_seconds = time.monotonic() - started
        wait_converged(api, hosts, nics)
        converge_seconds = time.monotonic() - started
        time.sleep(1.0)  # late writes (status) count too
        after = counter.by_verb("operator")
        verbs = {v: after.get(v, 0) - before.get(v, 0) for v in VERBS}
        verbs = {v: n for v, n in verbs.items() if n}
        writes = sum(n for v, n in verbs.items() if v in WRITE_VERBS)
        plan_writes = counter.count("plan-write") - plans_before
        status_writes = counter.count("status-write") - statuses_before
        assert operator is not None
        rss = peak_rss_mb(operator.pid)
        pools = api.list(API, "IPPool", label_selector="netname=bench")
        cidr = api.get(API, "CIDR", "bench")
        network = api.get(API, "MultiNicNetwork", "bench")
    except BaseException:
        if log_path.exists():
            tail = log_path.read_text(errors="replace").splitlines()[-20:]
            print("operator log (last lines):\n  " + "\n  ".join(tail), file=sys.stderr)
        raise
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(10)
            except subprocess.TimeoutExpired:
                operator.kill()
        api.close()
        server.stop()
    return {
        "burst_seconds": round(burst_seconds, 3),
        "converge_seconds": round(converge_seconds, 3),
        "operator_writes": writes,
        "operator_requests": sum(verbs.values()),
        "operator_requests_by_verb": verbs,
        "writes_per_host": round(writes / hosts, 3),
        "plan_writes": plan_writes,
        "status_writes": status_writes,
        "peak_rss_mb": round(rss, 1),
        "objects": {
            "network": network_body,
            "pools": pools,
            "cidr": cidr,
            "status": (network or {}).get("status"),
        },
    }


def run_baseline(kind: str, objects: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A bare client writes the operator's result: one create per object, one status write."""
    server = Server(kind, workdir, counting=False)
    api = client_for(server.kubeconfig)
    try:
        install_crds(api)
        network = api.create(objects["network"])
        bodies = []
        for item in [*objects["pools"], objects["cidr"]]:
            body = {k: v for k, v in item.items() if k != "status"}
            meta = item["metadata"]
            body["metadata"] = {"name": meta["name"], "labels": meta.get("labels", {})}
            bodies.append(body)
        writes_before = api.writes
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(api.create, bodies))
        api.patch(
            API,
            "MultiNicNetwork",
            network["metadata"]["name"],
            {"status": objects["status"]},
            status=True,
        )
        seconds = time.monotonic() - started
        writes = api.writes - writes_before
    finally:
        api.close()
        server.stop()
    return {"seconds": round(seconds, 3), "writes": writes}


def run(kind: str, hosts: int, nics: int, workdir: Path, rss_target: float) -> dict[str, Any]:
    (workdir / kind).mkdir()
    operator = run_operator_burst(kind, hosts, nics, workdir / kind)
    (workdir / f"{kind}-baseline").mkdir()
    baseline = run_baseline(kind, operator.pop("objects"), workdir / f"{kind}-baseline")
    return {
        "operator": operator,
        "baseline": baseline,
        "ratios": {
            "writes_vs_baseline": round(operator["operator_writes"] / baseline["writes"], 3),
            "time_vs_baseline": round(operator["converge_seconds"] / baseline["seconds"], 2),
        },
        "targets": {
            "writes_per_host <= NICs + 1": operator["writes_per_host"] <= nics + 1,
            f"peak_rss_mb <= {rss_target:g}": operator["peak_rss_mb"] <= rss_target,
        },
    }


def report(kind: str, hosts: int, nics: int, result: dict[str, Any], rss_target: float) -> None:
    operator, baseline, ratios = result["operator"], result["baseline"], result["ratios"]
    label = "the double (multinic-sim)" if kind == "double" else "the real kube-apiserver + etcd"
    print(f"operator_scale: {hosts} hosts x {nics} NICs against {label}")
    print(f"  burst of joins written in  {operator['burst_seconds']:8.2f} s")
    print(
        f"  network status converged  {operator['converge_seconds']:8.2f} s after the burst "
        f"started (baseline: bare creates {baseline['seconds']:.2f} s, "
        f"ratio {ratios['time_vs_baseline']})"
    )
    print(
        f"  operator writes            {operator['operator_writes']:8d} "
        f"({operator['writes_per_host']} per host; target <= {nics + 1}; baseline "
        f"{baseline['writes']}, ratio {ratios['writes_vs_baseline']})"
    )
    print(
        f"  of which plan (CIDR) writes {operator['plan_writes']:7d}, status writes "
        f"{operator['status_writes']}"
    )
    verbs = ", ".join(f"{v} {n}" for v, n in operator["operator_requests_by_verb"].items())
    print(f"  operator requests          {operator['operator_requests']:8d} ({verbs})")
    print(
        f"  operator peak RSS          {operator['peak_rss_mb']:8.1f} MB (target <= {rss_target:g})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="100 hosts (unless --hosts)")
    parser.add_argument("--hosts", type=int, help="joining hosts (default 1,000; 100 with --quick)")
    parser.add_argument("--nics", type=int, default=3, help="NICs per host (1-16)")
    parser.add_argument(
        "--server",
        choices=("double", "real", "both"),
        default="both",
        help="the API server: the project's double, the real kube-apiserver + etcd "
        "(scripts/build-counterparts), or both one after the other",
    )
    parser.add_argument("--rss-target", type=float, default=400.0, help="operator peak RSS, MB")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    hosts = args.hosts or (100 if args.quick else 1000)
    if hosts < 1 or not 1 <= args.nics <= 16:
        parser.error("--hosts must be >= 1 and --nics between 1 and 16")
    bench_network(hosts, args.nics)  # refuses sizes the bench's network cannot take
    kinds = ("double", "real") if args.server == "both" else (args.server,)
    if "real" in kinds:
        try:
            find_programs()
        except SimError as e:
            parser.exit(2, f"operator_scale: {e}\n")
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="multinic-bench-") as tmp:
        for kind in kinds:
            results[kind] = run(kind, hosts, args.nics, Path(tmp), args.rss_target)
            report(kind, hosts, args.nics, results[kind], args.rss_target)
    if len(kinds) == 2:
        double, real = (results[k]["operator"]["converge_seconds"] for k in kinds)
        print(f"  real / double converge time: {real / double:.2f}")
    result = {
        "benchmark": "operator_scale",
        "hosts": hosts,
        "nics_per_host": args.nics,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "servers": results,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(all(r["targets"].values()) for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
