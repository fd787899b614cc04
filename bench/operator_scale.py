"""Benchmark of the operator: a burst of joining hosts, 3 NICs each.

Run: ``.venv/bin/python bench/operator_scale.py`` (1,000 hosts) or ``--quick``
(100 hosts).  Everything runs on this machine:

* the local API server (multinic-sim) in this process, with a middleware that
  counts requests by User-Agent (the operator's own client, kopf, the bench);
* the operator as a separate process (``multinic-operator --standalone``), so
  its RSS is its own;
* one ipvlan-l3 network over three host networks, created before the burst;
* the burst: the bench creates N Nodes and N HostInterfaces (3 NICs each) as
  fast as 8 client threads can, as agents starting on new nodes would.

Measured: time from the start of the burst until the network's status says
every host is planned on every NIC and all 3*N IPPools exist; the operator's
API writes per joining host (target <= NICs + 1); its peak RSS (target <= 200
MB).

Baseline, measured in the same run against a fresh API server: a bare client
creating the same objects the operator ended up writing (3*N IPPools, the
CIDR, and one status write) one request each - the minimal API work for the
result.  The ratios compare the operator's writes and time with that.

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
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.server import ApiServer

REPO = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "operator_scale.json"
API = "multinic.fms.io/v1"
NICS = 3
BENCH_AGENT = "multinic-bench"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
NETWORK = {
    "apiVersion": API,
    "kind": "MultiNicNetwork",
    "metadata": {"name": "bench"},
    "spec": {
        "subnet": "172.16.0.0/12",
        "ipam": json.dumps(
            {"type": "multi-nic-ipam", "hostBlock": 10, "interfaceBlock": 2, "vlanMode": "l3"}
        ),
        "multiNICIPAM": True,
        "masterNets": [f"10.{i + 1}.0.0/16" for i in range(NICS)],
        "plugin": {"cniVersion": "1.0.0", "type": "ipvlan", "args": {"mode": "l3"}},
    },
}


class RequestCounter:
    """Counts requests per (User-Agent family, method) at the API server."""

    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.kinds: Counter[str] = Counter()
        self._lock = threading.Lock()

    @web.middleware
    async def middleware(
        self,
        request: web.Request,
        handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
    ) -> web.StreamResponse:
        agent = request.headers.get("User-Agent", "")
        family = (
            "operator"
            if agent.startswith(("multinic-operator", "kopf"))
            else "bench"
            if agent.startswith(BENCH_AGENT)
            else "other"
        )
        with self._lock:
            self.counts[(family, request.method)] += 1
            if family == "operator" and request.method == "PATCH":
                # Plan and status writes: what batching keeps to a handful.
                if request.path == f"/apis/{API}/cidrs/bench":
                    self.kinds["plan-write"] += 1
                elif request.path == f"/apis/{API}/multinicnetworks/bench/status":
                    self.kinds["status-write"] += 1
        return await handler(request)

    def count(self, what: str) -> int:
        """Operator writes of one kind (``plan-write``, ``status-write``)."""
        with self._lock:
            return self.kinds[what]

    def writes(self, family: str) -> int:
        with self._lock:
            return sum(n for (f, m), n in self.counts.items() if f == family and m in WRITE_METHODS)

    def requests(self, family: str) -> int:
        with self._lock:
            return sum(n for (f, _), n in self.counts.items() if f == family)


def start_server(counter: RequestCounter | None = None) -> ApiServerThread:
    server = ApiServer(bookmark_interval=5.0, history_limit=200_000)
    if counter is not None:
        server.app.middlewares.append(counter.middleware)
    return ApiServerThread(server).start()


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


def host_objects(index: int) -> tuple[dict[str, Any], dict[str, Any]]:
    name = f"node-{index:05d}"
    high, low = divmod(index + 10, 250)
    interfaces = [
        {
            "interfaceName": f"eth{n + 1}",
            "netAddress": f"10.{n + 1}.0.0/16",
            "hostIP": f"10.{n + 1}.{high}.{low + 1}",
            "vendor": "15b3",
            "product": "1017",
        }
        for n in range(NICS)
    ]
    node = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}}
    host = {
        "apiVersion": API,
        "kind": "HostInterface",
        "metadata": {"name": name},
        "spec": {"hostName": name, "interfaces": interfaces},
    }
    return node, host


def converged(api: KubeApi, hosts: int) -> bool:
    network = api.get(API, "MultiNicNetwork", "bench") or {}
    status = network.get("status") or {}
    results = status.get("computeResults") or []
    return (
        status.get("discovery", {}).get("cidrProcessed") == hosts
        and len(results) == NICS
        and all(r["numOfHosts"] == hosts for r in results)
    )


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run_operator_burst(hosts: int, workdir: Path) -> dict[str, Any]:
    counter = RequestCounter()
    sim = start_server(counter)
    kubeconfig = write_kubeconfig(workdir / "kubeconfig", sim.url)
    api = client_for(kubeconfig)
    log_path = workdir / "operator.log"
    operator: subprocess.Popen[bytes] | None = None
    try:
        install_crds(api)
        with log_path.open("wb") as log:
            operator = subprocess.Popen(
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
        api.create(NETWORK)
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
        time.sleep(1.0)  # let the startup batch settle before counting
        writes_before = counter.writes("operator")
        requests_before = counter.requests("operator")
        plans_before = counter.count("plan-write")
        statuses_before = counter.count("status-write")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=8) as pool:
            futures = []
            for index in range(hosts):
                node, host = host_objects(index)
                futures.append(pool.submit(lambda n=node, h=host: (api.create(n), api.create(h))))
            for future in futures:
                future.result()
        burst_seconds = time.monotonic() - started
        wait(lambda: converged(api, hosts), 600, f"{hosts} hosts planned", interval=0.1)
        wait(
            lambda: len(api.list(API, "IPPool", label_selector="netname=bench")) == hosts * NICS,
            120,
            "every IPPool",
            interval=0.2,
        )
        converge_seconds = time.monotonic() - started
        time.sleep(1.0)  # late writes (status) count too
        writes = counter.writes("operator") - writes_before
        requests = counter.requests("operator") - requests_before
        plan_writes = counter.count("plan-write") - plans_before
        status_writes = counter.count("status-write") - statuses_before
        assert operator is not None
        rss = peak_rss_mb(operator.pid)
        pools = api.list(API, "IPPool", label_selector="netname=bench")
        cidr = api.get(API, "CIDR", "bench")
        network = api.get(API, "MultiNicNetwork", "bench")
    finally:
        if operator is not None:
            operator.terminate()
            try:
                operator.wait(10)
            except subprocess.TimeoutExpired:
                operator.kill()
        api.close()
        sim.stop()
    return {
        "burst_seconds": round(burst_seconds, 3),
        "converge_seconds": round(converge_seconds, 3),
        "operator_writes": writes,
        "operator_requests": requests,
        "writes_per_host": round(writes / hosts, 3),
        "plan_writes": plan_writes,
        "status_writes": status_writes,
        "peak_rss_mb": round(rss, 1),
        "objects": {"pools": pools, "cidr": cidr, "status": (network or {}).get("status")},
    }


def run_baseline(objects: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """A bare client writes the operator's result: one create per object, one status write."""
    sim = start_server()
    kubeconfig = write_kubeconfig(workdir / "baseline-kubeconfig", sim.url)
    api = client_for(kubeconfig)
    try:
        install_crds(api)
        network = api.create(NETWORK)
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
        sim.stop()
    return {"seconds": round(seconds, 3), "writes": writes}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 hosts instead of 1,000")
    parser.add_argument("--hosts", type=int, help="number of joining hosts")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    hosts = args.hosts or (100 if args.quick else 1000)
    with tempfile.TemporaryDirectory(prefix="multinic-bench-") as tmp:
        workdir = Path(tmp)
        operator = run_operator_burst(hosts, workdir)
        baseline = run_baseline(operator.pop("objects"), workdir)
    result = {
        "benchmark": "operator_scale",
        "hosts": hosts,
        "nics_per_host": NICS,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "operator": operator,
        "baseline": baseline,
        "ratios": {
            "writes_vs_baseline": round(operator["operator_writes"] / baseline["writes"], 3),
            "time_vs_baseline": round(operator["converge_seconds"] / baseline["seconds"], 2),
        },
        "targets": {
            "writes_per_host <= NICs + 1": operator["writes_per_host"] <= NICS + 1,
            "peak_rss_mb <= 200": operator["peak_rss_mb"] <= 200,
        },
    }
    print(f"operator_scale: {hosts} hosts x {NICS} NICs")
    print(f"  burst of joins written in  {operator['burst_seconds']:8.2f} s")
    print(
        f"  network status converged  {operator['converge_seconds']:8.2f} s after the burst "
        f"started (baseline: bare creates {baseline['seconds']:.2f} s, "
        f"ratio {result['ratios']['time_vs_baseline']})"
    )
    print(
        f"  operator writes            {operator['operator_writes']:8d} "
        f"({operator['writes_per_host']} per host; target <= {NICS + 1}; baseline "
        f"{baseline['writes']}, ratio {result['ratios']['writes_vs_baseline']})"
    )
    print(
        f"  of which plan (CIDR) writes {operator['plan_writes']:7d}, status writes "
        f"{operator['status_writes']}"
    )
    print(f"  operator requests (all)    {operator['operator_requests']:8d}")
    print(f"  operator peak RSS          {operator['peak_rss_mb']:8.1f} MB (target <= 200)")
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    return 0 if all(result["targets"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
