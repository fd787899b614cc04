"""CNI ADD/DEL of a pod with 2 macvlan NICs: multi-nic vs. the bare delegates.

multi-nic: the installed shim -> agent -> both macvlan delegates in parallel,
with multi-nic-ipam.  Baseline, measured in the same run on the same host:
the same two delegates exec'd directly one after the other with static IPAM
(what a runtime would pay for two plain macvlan attachments).  Then a storm:
200 pods, 16 at a time, through multi-nic; duplicates and leaks must be 0.

Needs root.  ``--quick`` runs in well under a minute.  Writes
``bench/results/cni_attach.json``.

The shim is the compiled one by default (``install-cni --shim compiled``: the
static executable built from ``shim.c``, as the agent image installs it);
``--shim python`` measures the Python shim instead.  ``shim`` in the results
says which one ran.

Where the time goes (2 cores): the shim's start-up and exit (its VERSION
answer, reported as ``shim_startup_p50_ms``): about a millisecond for the
compiled shim, about one delegate's cost for the Python one (no less than the
bare interpreter's ``python -IS -c pass``, ``interpreter_startup_p50_ms``);
the agent itself (IPAM with fsync, configs, both delegates in parallel,
record with fsync) takes a little more than one delegate, as long as the
second core is free.  So the ADD ratio is roughly (start-up + one delegate +
a few ms) / two delegates, and rises when other load takes the core the
parallel delegates need.

    .venv/bin/python bench/cni_attach.py [--quick] [--shim compiled|python]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

VENV_BIN = Path(sys.executable).parent
AGENT = str(VENV_BIN / "multinic-agent")
CNI = "/usr/lib/cni"
RESULTS = Path(__file__).parent / "results" / "cni_attach.json"
PREFIX = f"mnb{os.getpid() % 100000}"
NICS = [
    {"interfaceName": "eth1", "netAddress": "10.0.1.0/24", "hostIP": "10.0.1.11"},
    {"interfaceName": "eth2", "netAddress": "10.0.2.0/24", "hostIP": "10.0.2.11"},
]
POOLS = [
    {"podCIDR": "192.168.0.0/22", "vlanCIDR": "192.168.0.0/18", "netAttachDef": "demo",
     "hostName": "bench", "interfaceName": "eth1"},
    {"podCIDR": "192.168.128.0/22", "vlanCIDR": "192.168.128.0/18", "netAttachDef": "demo",
     "hostName": "bench", "interfaceName": "eth2"},
]  # fmt: skip
NETCONF = {
    "cniVersion": "1.0.0",
    "name": "demo",
    "type": "multi-nic",
    "ipam": {"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "vlanMode": "l2"},
    "dns": {},
    "plugin": {"cniVersion": "1.0.0", "type": "macvlan", "mode": "bridge"},
    "subnet": "192.168.0.0/16",
    "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
    "multiNICIPAM": True,
}


def ip(*args: str, check: bool = True) -> None:
    subprocess.run(["ip", *args], check=check, capture_output=True)


def enter_netns(name: str) -> None:
    """Move this process into the host namespace: delegates need its NICs as masters."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/var/run/netns/{name}", os.O_RDONLY)
    try:
        if libc.setns(fd, 0x40000000) != 0:
            raise OSError(ctypes.get_errno(), "setns")
    finally:
        os.close(fd)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


class Bench:
    def __init__(self, workdir: Path, shim_kind: str = "compiled") -> None:
        self.workdir = workdir
        self.shim_kind = shim_kind
        self.shim_installed = ""
        self.host = f"{PREFIX}-host"
        self.socket = workdir / "run" / "agent.sock"
        self.state = workdir / "state"
        self.shim = workdir / "bin" / "multi-nic"
        self.agent: subprocess.Popen[bytes] | None = None
        self.pods: list[str] = []
        self._count = 0

    def setup(self) -> None:
        ip("netns", "add", self.host)
        for index, nic in enumerate(NICS, start=1):
            name = nic["interfaceName"]
            ip("-n", self.host, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
            ip("-n", self.host, "addr", "add", f"10.0.{index}.11/24", "dev", name)
            ip("-n", self.host, "link", "set", name, "up")
            ip("-n", self.host, "link", "set", f"{name}p", "up")
        self.state.mkdir(parents=True)
        (self.state / "node-state.json").write_text(json.dumps({"nics": NICS, "ippools": POOLS}))
        installed = subprocess.run(
            [AGENT, "install-cni", "--bin-dir", str(self.shim.parent), "--shim", self.shim_kind],
            check=False,
            capture_output=True,
            text=True,
        )
        if installed.returncode != 0:
            raise RuntimeError(f"install-cni --shim {self.shim_kind}: {installed.stderr.strip()}")
        self.shim_installed = installed.stdout.strip()
        log = (self.workdir / "agent.log").open("wb")
        self.agent = subprocess.Popen(
            ["ip", "netns", "exec", self.host, AGENT, "--node", "bench",
             "--socket", str(self.socket), "--state-dir", str(self.state),
             "--cni-path", CNI, "--log-level", "WARNING", "run"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.monotonic() + 30
        while not self.socket.exists():
            if self.agent.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((self.workdir / "agent.log").read_text()[-2000:])
            time.sleep(0.05)
        enter_netns(self.host)

    def teardown(self) -> None:
        if self.agent and self.agent.poll() is None:
            self.agent.send_signal(signal.SIGTERM)
            self.agent.wait(timeout=10)
        for pod in self.pods:
            ip("netns", "del", pod, check=False)
        ip("netns", "del", self.host, check=False)

    def new_pod(self) -> str:
        self._count += 1
        name = f"{PREFIX}-pod{self._count}"
        ip("netns", "add", name)
        self.pods.append(name)
        return f"/var/run/netns/{name}"

    def drop_pod(self, path: str) -> None:
        name = Path(path).name
        ip("netns", "del", name, check=False)
        self.pods.remove(name)

    @staticmethod
    def _exec(binary: str, env: dict[str, str], stdin: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [binary],
            input=stdin,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
            capture_output=True,
            text=True,
            check=False,
        )

    def shim_call(self, command: str, container: str, netns: str) -> dict[str, Any] | None:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": netns,
            "CNI_IFNAME": "net1",
            "CNI_PATH": CNI,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=bench;K8S_POD_NAME={container}",
            "MULTINIC_AGENT_SOCKET": str(self.socket),
        }
        done = self._exec(str(self.shim), env, json.dumps(NETCONF))
        if done.returncode != 0:
            raise RuntimeError(f"multi-nic {command} {container}: {done.stdout} {done.stderr}")
        return json.loads(done.stdout) if done.stdout else None

    def baseline_call(self, command: str, container: str, netns: str, index: int) -> None:
        """The two delegates one after the other, as two plain attachments would be."""
        for position, nic in enumerate(("eth1", "eth2")):
            config = {
                "cniVersion": "1.0.0",
                "name": "demo",
                "type": "macvlan",
                "master": nic,
                "mode": "bridge",
                "ipam": {
                    "type": "static",
                    "addresses": [{"address": f"10.{100 + position}.{index // 250}."
                                              f"{index % 250 + 1}/16"}],
                },
            }  # fmt: skip
            env = {
                "CNI_COMMAND": command,
                "CNI_CONTAINERID": container,
                "CNI_NETNS": netns,
                "CNI_IFNAME": f"net1-{position}",
                "CNI_PATH": CNI,
            }
            done = self._exec(f"{CNI}/macvlan", env, json.dumps(config))
            if done.returncode != 0:
                raise RuntimeError(f"baseline {command}: {done.stdout} {done.stderr}")

    def held(self) -> int:
        """Attachments still holding addresses in the agent's journal (read from a copy)."""
        from multinic_ipam.journal import JOURNAL_FILE, AllocationJournal

        copy = self.workdir / "journal-copy"
        shutil.rmtree(copy, ignore_errors=True)
        copy.mkdir()
        shutil.copy(self.state / JOURNAL_FILE, copy / JOURNAL_FILE)
        journal = AllocationJournal(copy)
        count = len(journal.attachments())
        journal.close()
        return count


def timed(work: Any, *args: Any) -> float:
    start = time.perf_counter()
    work(*args)
    return (time.perf_counter() - start) * 1000


def measure(bench: Bench, iterations: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {"add": [], "del": [], "base_add": [], "base_del": []}
    # Interleaved, so that machine noise hits both sides alike; one warm-up round.
    for i in range(iterations + 1):
        pod = bench.new_pod()
        add = timed(bench.shim_call, "ADD", f"m{i}", pod)
        delete = timed(bench.shim_call, "DEL", f"m{i}", pod)
        base_pod = bench.new_pod()
        base_add = timed(bench.baseline_call, "ADD", f"b{i}", base_pod, i)
        base_del = timed(bench.baseline_call, "DEL", f"b{i}", base_pod, i)
        bench.drop_pod(pod)
        bench.drop_pod(base_pod)
        if i:
            for key, value in zip(times, (add, delete, base_add, base_del), strict=True):
                times[key].append(value)
    return times


def storm(bench: Bench, pods: int, concurrency: int) -> dict[str, Any]:
    netns = {f"s{i}": bench.new_pod() for i in range(pods)}

    def add(container: str) -> list[str]:
        result = bench.shim_call("ADD", container, netns[container]) or {}
        return [ip["address"] for ip in result.get("ips", [])]

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        addresses = list(pool.map(add, list(netns)))
    elapsed = time.perf_counter() - start
    every = [a for found in addresses for a in found]
    duplicates = len(every) - len(set(every))
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda c: bench.shim_call("DEL", c, netns[c]), list(netns)))
    leaks = bench.held() + len(list((bench.state / "attachments").glob("*.json")))
    for path in netns.values():
        bench.drop_pod(path)
    return {
        "pods": pods,
        "concurrency": concurrency,
        "pods_per_s": round(pods / elapsed, 1),
        "seconds": round(elapsed, 2),
        "addresses": len(every),
        "duplicates": duplicates,
        "leaks": leaks,
    }


def shim_startup_ms(bench: Bench, runs: int = 15) -> float:
    env = {"CNI_COMMAND": "VERSION"}
    return statistics.median(timed(Bench._exec, str(bench.shim), env, "{}") for _ in range(runs))


def interpreter_startup_ms(runs: int = 15) -> float:
    """``python -IS -c pass`` with the Python shim's interpreter: the floor of any Python shim."""
    command = [os.path.realpath(sys.executable), "-IS", "-c", "pass"]

    def run() -> None:  # with pipes, as Bench._exec runs the shim
        subprocess.run(command, input="{}", capture_output=True, text=True, check=True)

    return statistics.median(timed(run) for _ in range(runs))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (< 1 minute)")
    parser.add_argument("--iterations", type=int)
    parser.add_argument(
        "--shim",
        choices=("compiled", "python"),
        default="compiled",
        help="the shim to install and measure (default: the compiled one)",
    )
    options = parser.parse_args()
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    iterations = options.iterations or (25 if options.quick else 150)
    workdir = Path(tempfile.mkdtemp(prefix="mnbench-"))
    bench = Bench(workdir, options.shim)
    try:
        bench.setup()
        times = measure(bench, iterations)
        results: dict[str, Any] = {
            "shim": options.shim,
            "shim_installed": bench.shim_installed.replace(str(workdir), "<workdir>"),
            "iterations": iterations,
            "add_p50_ms": round(statistics.median(times["add"]), 1),
            "add_p95_ms": round(percentile(times["add"], 0.95), 1),
            "del_p50_ms": round(statistics.median(times["del"]), 1),
            "del_p95_ms": round(percentile(times["del"], 0.95), 1),
            "baseline_add_p50_ms": round(statistics.median(times["base_add"]), 1),
            "baseline_add_p95_ms": round(percentile(times["base_add"], 0.95), 1),
            "baseline_del_p50_ms": round(statistics.median(times["base_del"]), 1),
            "baseline_del_p95_ms": round(percentile(times["base_del"], 0.95), 1),
            "shim_startup_p50_ms": round(shim_startup_ms(bench), 1),
            "interpreter_startup_p50_ms": round(interpreter_startup_ms(), 1),
        }
        results["ratio_add_p50"] = round(results["add_p50_ms"] / results["baseline_add_p50_ms"], 2)
        results["ratio_del_p50"] = round(results["del_p50_ms"] / results["baseline_del_p50_ms"], 2)
        results["storm"] = storm(bench, 200, 16)
    finally:
        bench.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    ok = results["storm"]["duplicates"] == 0 and results["storm"]["leaks"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
