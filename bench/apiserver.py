"""Benchmark: the multinic-sim local API server against a bare aiohttp baseline.

Measures, for both servers in the same run and with the same client loop:

* creates per second and updates per second (ConfigMaps, N clients in parallel),
  with p50/p95 latency;
* watch fan-out: W watchers on one collection, E objects created one after the
  other; latency from each create to each watcher receiving it (p50/p95), the
  time until *all* watchers have an event (p50/p95), and deliveries per second.

The baseline is a bare aiohttp server that stores JSON blobs in a dict and
streams every write to every open watch, with no Kubernetes semantics (no
resourceVersions, validation, selectors or history). The ratio sim/baseline is
what to compare across machines; absolute numbers on shared machines are noise.

Each server runs in its own process so that the client loop does not compete
with it for the GIL. Results go to bench/results/apiserver.json.

    python bench/apiserver.py            # full run (a few minutes)
    python bench/apiserver.py --quick    # under a minute
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

RESULTS = Path(__file__).resolve().parent / "results" / "apiserver.json"
COLLECTION = "/api/v1/namespaces/default/configmaps"


# -- the servers (run with --serve NAME in a child process) -------------------


async def serve_sim() -> None:
    from multinic_sim.server import ApiServer

    server = ApiServer(port=0, bookmark_interval=3600)
    await server.start()
    print(server.port, flush=True)
    await asyncio.Event().wait()


async def serve_baseline() -> None:
    """A dict of JSON blobs behind aiohttp, with naive watch fan-out."""
    blobs: dict[str, bytes] = {}
    watchers: set[asyncio.Queue[bytes]] = set()

    def publish(kind: str, body: bytes) -> None:
        line = b'{"type":"' + kind.encode() + b'","object":' + body + b"}\n"
        for queue in watchers:
            queue.put_nowait(line)

    async def collection(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            body = await request.read()
            name = json.loads(body)["metadata"]["name"]
            blobs[name] = body
            publish("ADDED", body)
            return web.Response(body=body, status=201, content_type="application/json")
        if request.query.get("watch") == "true":
            queue: asyncio.Queue[bytes] = asyncio.Queue()
            watchers.add(queue)
            response = web.StreamResponse()
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                while True:
                    await response.write(await queue.get())
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                watchers.discard(queue)
            return response
        items = b",".join(blobs.values())
        return web.Response(
            body=b'{"metadata":{"resourceVersion":"0"},"items":[' + items + b"]}",
            content_type="application/json",
        )

    async def item(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if request.method == "PUT":
            body = await request.read()
            blobs[name] = body
            publish("MODIFIED", body)
            return web.Response(body=body, content_type="application/json")
        return web.Response(body=blobs[name], content_type="application/json")

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"watches": len(watchers)})

    app = web.Application()
    app.router.add_route("*", COLLECTION, collection)
    app.router.add_route("*", COLLECTION + "/{name}", item)
    app.router.add_get("/_sim/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, backlog=2048)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(port, flush=True)
    await asyncio.Event().wait()


# -- the client loop (identical for both servers) ---------------------------


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary(latencies: list[float], elapsed: float) -> dict[str, float]:
    return {
        "ops": len(latencies),
        "ops_per_s": round(len(latencies) / elapsed, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 95) * 1000, 2),
    }


async def run_parallel(jobs: list[Any], concurrency: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    queue: asyncio.Queue[Any] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)

    async def worker() -> None:
        while not queue.empty():
            job = queue.get_nowait()
            started = time.perf_counter()
            await job()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


async def crud(base: str, n: int, concurrency: int, prefix: str = "cm") -> dict[str, Any]:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(base, connector=connector) as session:
        stored: dict[str, dict[str, Any]] = {}

        def create(i: int) -> Any:
            async def job() -> None:
                body = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"{prefix}-{i}", "labels": {"bench": "crud"}},
                    "data": {"payload": "x" * 256},
                }
                async with session.post(COLLECTION, json=body) as response:
                    assert response.status == 201, await response.text()
                    stored[f"{prefix}-{i}"] = await response.json()

            return job

        def update(name: str) -> Any:
            async def job() -> None:
                body = stored[name]
                body["data"] = {"payload": "y" * 256}
                async with session.put(f"{COLLECTION}/{name}", json=body) as response:
                    assert response.status == 200, await response.text()
                    await response.read()

            return job

        created, created_s = await run_parallel([create(i) for i in range(n)], concurrency)
        updated, updated_s = await run_parallel([update(k) for k in list(stored)], concurrency)
    return {"creates": summary(created, created_s), "updates": summary(updated, updated_s)}


async def fanout(base: str, watchers: int, events: int, gap: float, burst: int) -> dict[str, Any]:
    """Latency with *gap* seconds between events, then throughput of a *burst*."""
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=None, sock_read=None)
    sent: dict[str, float] = {}
    arrivals: dict[str, list[float]] = {}
    async with aiohttp.ClientSession(base, connector=connector, timeout=timeout) as session:
        async with session.get(COLLECTION, params={"limit": "1"}) as response:
            rv = (await response.json())["metadata"]["resourceVersion"]
        expected = watchers * (events + burst)
        received = 0

        async def watch() -> None:
            nonlocal received
            params = {"watch": "true", "resourceVersion": rv, "timeoutSeconds": "600"}
            async with session.get(COLLECTION, params=params) as response:
                async for line in response.content:
                    if not line.strip():
                        continue
                    now = time.perf_counter()
                    name = json.loads(line)["object"]["metadata"]["name"]
                    if name in sent:
                        arrivals.setdefault(name, []).append(now - sent[name])
                        received += 1

        tasks = [asyncio.create_task(watch()) for _ in range(watchers)]
        await wait_for_watchers(session, watchers)

        async def create(name: str) -> None:
            body = {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": name},
                "data": {"payload": "z" * 256},
            }
            sent[name] = time.perf_counter()
            async with session.post(COLLECTION, json=body) as response:
                assert response.status == 201, await response.text()

        async def settle(count: int) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_until(lambda: received >= count), 120)

        for j in range(events):
            await create(f"fan-{j}")
            await asyncio.sleep(gap)
        await settle(watchers * events)
        latencies = [lat for lats in arrivals.values() for lat in lats]
        all_delivered = [max(lats) for lats in arrivals.values() if len(lats) == watchers]
        before = received
        started = time.perf_counter()
        for j in range(burst):
            await create(f"burst-{j}")
        await settle(before + watchers * burst)
        burst_s = time.perf_counter() - started
        burst_delivered = received - before
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "watchers": watchers,
        "events": events,
        "burst": burst,
        "delivered": len(latencies) + burst_delivered,
        "expected": expected,
        "deliveries_per_s": round(burst_delivered / burst_s, 1),
        "p50_ms": round(percentile(latencies, 50) * 1000, 2),
        "p95_ms": round(percentile(latencies, 95) * 1000, 2),
        "all_watchers_p50_ms": round(percentile(all_delivered, 50) * 1000, 2),
        "all_watchers_p95_ms": round(percentile(all_delivered, 95) * 1000, 2),
    }


async def wait_for_watchers(session: aiohttp.ClientSession, watchers: int) -> None:
    deadline = time.monotonic() + 60
    while True:
        async with session.get("/_sim/stats") as response:
            if (await response.json())["watches"] >= watchers:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("watchers did not connect in time")
        await asyncio.sleep(0.1)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.01)


class ServerProcess:
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", kind], stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.strip():
            self.proc.kill()
            raise RuntimeError(f"the {kind} server did not start")
        self.base = f"http://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


async def measure(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    server = ServerProcess(kind)
    try:
        await crud(server.base, 200, args.concurrency, prefix="warmup")
        result = await crud(server.base, args.objects, args.concurrency)
        result["fanout"] = await fanout(
            server.base, args.watchers, args.events, args.gap, args.burst
        )
    finally:
        server.stop()
    return result


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Field-wise median of several rounds' results."""
    first = runs[0]
    if isinstance(first, dict):
        return {k: median_of([r[k] for r in runs]) for k in first}  # type: ignore[return-value]
    return statistics.median(runs) if len(runs) > 1 else first  # type: ignore[return-value]


def ratio(sim: float, base: float) -> float:
    return round(sim / base, 3) if base else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small run, under a minute")
    parser.add_argument("--objects", type=int, help="objects to create and update")
    parser.add_argument("--concurrency", type=int, default=16, help="parallel clients")
    parser.add_argument("--watchers", type=int, default=1000, help="watchers for fan-out")
    parser.add_argument("--events", type=int, help="events for fan-out")
    parser.add_argument(
        "--gap", type=float, default=0.05, help="seconds between fan-out events (latency phase)"
    )
    parser.add_argument(
        "--burst", type=int, help="events created back to back (fan-out throughput phase)"
    )
    parser.add_argument(
        "--rounds", type=int, help="measure each server this many times (alternating); medians"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="results JSON file")
    parser.add_argument("--serve", choices=["sim", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        logging.basicConfig(level=logging.WARNING)
        asyncio.run(serve_sim() if args.serve == "sim" else serve_baseline())
        return 0
    args.objects = args.objects or (500 if args.quick else 3000)
    args.events = args.events or (10 if args.quick else 50)
    args.burst = args.burst or (20 if args.quick else 100)
    args.rounds = args.rounds or (1 if args.quick else 3)
    started = time.time()
    rounds: dict[str, list[dict[str, Any]]] = {"baseline": [], "sim": []}
    for i in range(args.rounds):
        # Alternate the order so neither server always runs on a cold machine.
        order = ("baseline", "sim") if i % 2 == 0 else ("sim", "baseline")
        for kind in order:
            rounds[kind].append(asyncio.run(measure(kind, args)))
    results = {kind: median_of(runs) for kind, runs in rounds.items()}
    sim, base = results["sim"], results["baseline"]
    ratios = {
        "creates_per_s": ratio(sim["creates"]["ops_per_s"], base["creates"]["ops_per_s"]),
        "updates_per_s": ratio(sim["updates"]["ops_per_s"], base["updates"]["ops_per_s"]),
        "fanout_deliveries_per_s": ratio(
            sim["fanout"]["deliveries_per_s"], base["fanout"]["deliveries_per_s"]
        ),
        "fanout_p95_latency": ratio(sim["fanout"]["p95_ms"], base["fanout"]["p95_ms"]),
    }
    report = {
        "benchmark": "apiserver",
        "quick": args.quick,
        "config": {
            "objects": args.objects,
            "concurrency": args.concurrency,
            "watchers": args.watchers,
            "events": args.events,
            "gap_s": args.gap,
            "burst": args.burst,
            "rounds": args.rounds,
        },
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count()},
        "results": results,
        "ratio_sim_over_baseline": ratios,
        "duration_s": round(time.time() - started, 1),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'':22} {'baseline':>22} {'multinic-sim':>22} {'ratio':>7}")
    for phase in ("creates", "updates"):
        b, s = base[phase], sim[phase]
        print(
            f"{phase + ' /s':22} {b['ops_per_s']:>22} {s['ops_per_s']:>22} "
            f"{ratio(s['ops_per_s'], b['ops_per_s']):>7}"
        )
        print(
            f"{phase + ' p50/p95 ms':22} {b['p50_ms']:>10}/{b['p95_ms']:<11} "
            f"{s['p50_ms']:>10}/{s['p95_ms']:<11}"
        )
    b, s = base["fanout"], sim["fanout"]
    print(
        f"{'fan-out deliveries/s':22} {b['deliveries_per_s']:>22} {s['deliveries_per_s']:>22} "
        f"{ratios['fanout_deliveries_per_s']:>7}"
    )
    print(
        f"{'fan-out p50/p95 ms':22} {b['p50_ms']:>10}/{b['p95_ms']:<11} "
        f"{s['p50_ms']:>10}/{s['p95_ms']:<11}"
    )
    print(
        f"{'all-watchers p50/p95':22} {b['all_watchers_p50_ms']:>10}/"
        f"{b['all_watchers_p95_ms']:<11} {s['all_watchers_p50_ms']:>10}/"
        f"{s['all_watchers_p95_ms']:<11}"
    )
    print(
        f"({args.watchers} watchers; latency over {args.events} spaced events, "
        f"deliveries/s over a burst of {args.burst}; delivered "
        f"{s['delivered']}/{s['expected']} sim, {b['delivered']}/{b['expected']} baseline)"
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
