"""concheck: can a pod on every host reach a pod on every other host, on every NIC?

For each network, one pod per host is taken (the first by name); for every
ordered pair of hosts FROM != TO and every NIC index k, the FROM pod pings
the TO pod's address on ``net1-<k>`` out of its own ``net1-<k>``; with iperf3
installed, a one-second iperf3 run between the same two addresses gives the
bandwidth. A pair is CONNECTED on as many NICs as answered.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from multinic_sim.errors import SimError
from multinic_sim.pods import PodInterface, PodRecord, PodRuntime
from multinic_sim.tables import render_table

log = logging.getLogger(__name__)

PING_WAIT_S = 2
IPERF_PORT = 5201
IPERF_SECONDS = 1
IPERF_START_S = 5.0


@dataclass
class LinkCheck:
    """One NIC of one host pair."""

    nic: int
    interface: str
    source: str
    target: str
    connected: bool
    rtt_ms: float | None = None
    bandwidth_gbps: float | None = None
    error: str = ""


@dataclass
class PairCheck:
    """All NICs of one ordered host pair of one network."""

    network: str
    source_host: str
    target_host: str
    source_pod: str
    target_pod: str
    links: list[LinkCheck] = field(default_factory=list)

    @property
    def connected(self) -> int:
        return sum(link.connected for link in self.links)

    @property
    def total(self) -> int:
        return len(self.links)


def pods_by_host(runtime: PodRuntime, network: str) -> dict[str, PodRecord]:
    """The first pod (by name) of ``network`` on each host that has one."""
    chosen: dict[str, PodRecord] = {}
    for record in runtime.records():
        if record.network == network and record.node not in chosen:
            chosen[record.node] = record
    return dict(sorted(chosen.items()))


def run_concheck(
    runtime: PodRuntime, network: str | None = None, *, bandwidth: bool = True
) -> list[PairCheck]:
    """Check every pair of hosts of every network (or of ``network``)."""
    networks = sorted({r.network for r in runtime.records()})
    if network is not None:
        networks = [network]
    if not networks:
        raise SimError("no simulated pods: add one per host with `multinic-sim pod add`")
    iperf = bandwidth and shutil.which("iperf3") is not None
    results: list[PairCheck] = []
    for name in networks:
        pods = pods_by_host(runtime, name)
        if len(pods) < 2:
            raise SimError(
                f"concheck needs pods of network {name!r} on at least two hosts; "
                f"found them on: {', '.join(pods) or 'none'}"
            )
        interfaces = {host: runtime.interfaces(pod) for host, pod in pods.items()}
        for source_host, source_pod in pods.items():
            for target_host, target_pod in pods.items():
                if source_host == target_host:
                    continue
                pair = PairCheck(name, source_host, target_host, source_pod.name, target_pod.name)
                pair.links = _check_links(
                    source_pod, interfaces[source_host], target_pod, interfaces[target_host], iperf
                )
                results.append(pair)
    return results


def _check_links(
    source_pod: PodRecord,
    source_interfaces: list[PodInterface],
    target_pod: PodRecord,
    target_interfaces: list[PodInterface],
    iperf: bool,
) -> list[LinkCheck]:
    sources = {i.nic_index: i for i in source_interfaces}
    targets = {i.nic_index: i for i in target_interfaces}
    links = []
    for nic in sorted(set(sources) | set(targets)):
        source, target = sources.get(nic), targets.get(nic)
        if source is None or target is None:
            missing = source_pod.name if source is None else target_pod.name
            links.append(
                LinkCheck(
                    nic=nic,
                    interface=f"net1-{nic}",
                    source=source.ip if source else "-",
                    target=target.ip if target else "-",
                    connected=False,
                    error=f"pod {missing} has no interface net1-{nic}",
                )
            )
            continue
        link = _ping(source_pod, source, target)
        if link.connected and iperf:
            link.bandwidth_gbps = _bandwidth(source_pod, source, target_pod, target)
        links.append(link)
    return links


def _ping(source_pod: PodRecord, source: PodInterface, target: PodInterface) -> LinkCheck:
    done = subprocess.run(
        ["ip", "netns", "exec", source_pod.netns, "ping", "-c", "1", "-W", str(PING_WAIT_S),
         "-I", source.name, target.ip],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    link = LinkCheck(
        nic=source.nic_index,
        interface=source.name,
        source=source.ip,
        target=target.ip,
        connected=done.returncode == 0,
    )
    if done.returncode == 0:
        for token in done.stdout.split():
            if token.startswith("time="):
                link.rtt_ms = float(token.removeprefix("time="))
    else:
        lines = (done.stdout + done.stderr).strip().splitlines()
        link.error = lines[-1] if lines else f"ping exited {done.returncode}"
    return link


def _bandwidth(
    source_pod: PodRecord, source: PodInterface, target_pod: PodRecord, target: PodInterface
) -> float | None:
    """Gbit/s received by an iperf3 server in the target pod; None when the run failed."""
    import json  # noqa: PLC0415

    server = subprocess.Popen(
        ["ip", "netns", "exec", target_pod.netns, "iperf3", "--server", "--one-off",
         "--bind", target.ip, "--port", str(IPERF_PORT)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # iperf3 block-buffers its "listening" line when not on a terminal, so
        # the client retries until the server accepts instead.
        deadline = time.monotonic() + IPERF_START_S
        while True:
            client = subprocess.run(
                ["ip", "netns", "exec", source_pod.netns, "iperf3", "--client", target.ip,
                 "--bind", source.ip, "--port", str(IPERF_PORT), "--time", str(IPERF_SECONDS),
                 "--json"],
                capture_output=True, text=True, check=False, timeout=IPERF_SECONDS + 15,
            )  # fmt: skip
            answer = client.stdout + client.stderr
            if "refused" not in answer or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        report = json.loads(client.stdout)
        if client.returncode != 0 or "error" in report:
            log.warning("iperf3 %s -> %s: %s", source.ip, target.ip, report.get("error"))
            return None
        return float(report["end"]["sum_received"]["bits_per_second"]) / 1e9
    except (subprocess.TimeoutExpired, ValueError, KeyError) as e:
        log.warning("iperf3 %s -> %s gave no result: %s", source.ip, target.ip, e)
        return None
    finally:
        server.kill()
        server.wait()


# -- output -----------------------------------------------------------------------


def all_connected(results: list[PairCheck]) -> bool:
    return bool(results) and all(p.total > 0 and p.connected == p.total for p in results)


def render(results: list[PairCheck]) -> str:
    """The connectivity matrix: one row per network and ordered host pair."""
    rows = []
    for pair in results:
        state = "CONNECTED" if pair.total and pair.connected == pair.total else "FAILED"
        addresses = ", ".join(
            f"{link.interface} {link.source}->{link.target}" for link in pair.links
        )
        speeds = ", ".join(
            "-" if link.bandwidth_gbps is None else f"{link.bandwidth_gbps:.1f}"
            for link in pair.links
        )
        rows.append(
            [
                pair.network,
                pair.source_host,
                pair.target_host,
                f"{pair.connected}/{pair.total} {state}",
                addresses,
                speeds,
            ]
        )
    table = render_table(
        ["NETWORK", "FROM", "TO", "CONNECTED/TOTAL", "ADDRESSES", "BANDWIDTH (Gbit/s)"], rows
    )
    failures = [
        f"  {p.network} {p.source_host}->{p.target_host} {link.interface}: {link.error}"
        for p in results
        for link in p.links
        if not link.connected
    ]
    if failures:
        table += "\nfailed:\n" + "\n".join(failures)
    return table


def as_json(results: list[PairCheck]) -> dict[str, Any]:
    """Machine-readable results (``concheck --json``)."""
    by_network: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for pair in results:
        by_network[pair.network].append(
            {
                "from": pair.source_host,
                "to": pair.target_host,
                "fromPod": pair.source_pod,
                "toPod": pair.target_pod,
                "connected": pair.connected,
                "total": pair.total,
                "links": [asdict(link) for link in pair.links],
            }
        )
    return {"allConnected": all_connected(results), "networks": dict(by_network)}
