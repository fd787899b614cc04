"""CNI ADD/DEL of a pod with N macvlan NICs: multi-nic vs. the bare delegates.

multi-nic: the installed shim -> agent -> the N macvlan delegates in
parallel, with multi-nic-ipam; the agent runs them in its own process (the
macvlan driver's in-process delegate), or execs them with
``--exec-delegates``.  Baseline, measured in the same run on the same host:
the same N reference delegates exec'd directly one after the other with
static IPAM (what a runtime would pay for N plain macvlan attachments).
``--nics`` (2 by default, up to 8: the host gets eth1..ethN).  Then a storm
(``--storm-pods`` 200, ``--storm-concurrency`` 16 by default) through
multi-nic; duplicates, leaked addresses and links left in pods after its
DELs must be 0.  ``--floor`` also runs the storm's delegate work alone (the
in-process ADDs back to back, no agent; in one thread, then in a thread per
core): the kernel's part, the floor under any agent.  ``--profile FILE``
samples the agent with py-spy during the storm's ADDs (``--profile-gil``:
only the thread holding the GIL).

Needs root.  ``--quick`` runs in well under a minute.  Writes
``bench/results/cni_attach.json`` (``--output`` elsewhere).

The shim is the compiled one by default (``install-cni --shim compiled``: the
static executable built from ``shim.c``, as the agent image installs it);
``--shim python`` measures the Python shim instead.  ``shim`` in the results
says which one ran.

Where the time goes (2 cores): the shim's start-up and exit (its own VERSION
answer with no agent to ask, reported as ``shim_startup_p50_ms``; with the
bench's agent answering it, ``shim_version_p50_ms``): about a millisecond for the
compiled shim, about one delegate's cost for the Python one (no less than the
bare interpreter's ``python -IS -c pass``, ``interpreter_startup_p50_ms``);
the agent itself (IPAM with fsync, configs, both delegates in parallel,
record with fsync) takes a little more than one delegate, as long as the
second core is free.  So the ADD ratio is roughly (start-up + one delegate +
a few ms) / two delegates, and rises when other load takes the core the
parallel delegates need.

With the in-process delegates the agent's share is no longer a delegate's
exec but its netlink requests: about 0.5 ms of kernel and Python per NIC
when alone (create under the final name, arp_notify, address, up,
routes), so the ADD ratio falls with N (measured 0.40 at 2 NICs, 0.24 at 8; exec'd 1.01 and
0.97).  DEL is the kernel's unregister of the link (RCU waits, tens of ms
whoever asks), in parallel here and one after the other in the baseline.
A storm is bound by the kernel: link set-up holds the rtnl lock, and in
bridge mode every new macvlan's gratuitous ARP (``arp_notify``) and IPv6
multicast are delivered to every sibling macvlan of its master, so the
kernel's cost per NIC grows with the pods already on the node (500 pods x 8
NICs: about 100 pods/s for the delegate work alone, 84 while it renamed
each link as the plugin does), and by the contention of concurrent ADDs
for that lock; then by the agent's own per-pod work (selection, JSON on
the event loop; the IPAM and record fsyncs in threads, one fsync shared by
the ADDs waiting together).

    .venv/bin/python bench/cni_attach.py [--quick] [--shim compiled|python] [--nics N]
        [--storm-pods P] [--storm-concurrency C] [--exec-delegates] [--floor]
        [--profile FILE [--profile-gil]] [--output FILE]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
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
MAX_NICS = 8


def host_nics(count: int) -> list[dict[str, str]]:
    """The bench host's NICs eth1..ethN (veths), 10.0.N.11/24."""
    return [
        {"interfaceName": f"eth{i}", "netAddress": f"10.0.{i}.0/24", "hostIP": f"10.0.{i}.11"}
        for i in range(1, count + 1)
    ]


def pools(count: int) -> list[dict[str, str]]:
    """One IPPool per NIC: NIC index i gets vlanCIDR 192.168.32i.0/19, the host its first /21."""
    return [
        {"podCIDR": f"192.168.{32 * i}.0/21", "vlanCIDR": f"192.168.{32 * i}.0/19",
         "netAttachDef": "demo", "hostName": "bench", "interfaceName": f"eth{i + 1}"}
        for i in range(count)
    ]  # fmt: skip


def netconf(count: int) -> dict[str, Any]:
    return {
        "cniVersion": "1.0.0",
        "name": "demo",
        "type": "multi-nic",
        "ipam": {"type": "multi-nic-ipam", "hostBlock": 2, "interfaceBlock": 3, "vlanMode": "l2"},
        "dns": {},
        "plugin": {"cniVersion": "1.0.0", "type": "macvlan", "mode": "bridge"},
        "subnet": "192.168.0.0/16",
        "masterNets": [nic["netAddress"] for nic in host_nics(count)],
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
    def __init__(
        self,
        workdir: Path,
        shim_kind: str = "compiled",
        nics: int = 2,
        exec_delegates: bool = False,
    ) -> None:
        self.workdir = workdir
        self.shim_kind = shim_kind
        self.nics = nics
        self.exec_delegates = exec_delegates
        self.netconf = json.dumps(netconf(nics))
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
        nics = host_nics(self.nics)
        for nic in nics:
            name = nic["interfaceName"]
            ip("-n", self.host, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
            ip("-n", self.host, "addr", "add", f"{nic['hostIP']}/24", "dev", name)
            ip("-n", self.host, "link", "set", name, "up")
            ip("-n", self.host, "link", "set", f"{name}p", "up")
        self.state.mkdir(parents=True)
        state = {"nics": nics, "ippools": pools(self.nics)}
        (self.state / "node-state.json").write_text(json.dumps(state))
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
             "--cni-path", CNI, "--log-level", "WARNING",
             *(["--exec-delegates"] if self.exec_delegates else []), "run"],
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
        done = self._exec(str(self.shim), env, self.netconf)
        if done.returncode != 0:
            raise RuntimeError(f"multi-nic {command} {container}: {done.stdout} {done.stderr}")
        return json.loads(done.stdout) if done.stdout else None

    def baseline_call(self, command: str, container: str, netns: str, index: int) -> None:
        """The N delegates one after the other, as N plain attachments would be."""
        for position, nic in enumerate(n["interfaceName"] for n in host_nics(self.nics)):
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


def links_in(path: str) -> int:
    """Interfaces other than ``lo`` in a pod's namespace."""
    listed = subprocess.run(
        ["ip", "-n", Path(path).name, "-j", "link", "show"],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return sum(1 for link in json.loads(listed.stdout) if link.get("ifname") != "lo")


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds process ``pid`` has used, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


def own_cpu_seconds() -> float:
    """CPU seconds of this process and its reaped children (the shims it ran)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Profiler:
    """py-spy sampling the agent (every thread, CPU only) while a phase runs."""

    def __init__(self, pid: int, output: Path, gil: bool = False) -> None:
        self.output = output
        spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
        if spy is None:
            raise RuntimeError("--profile needs py-spy (pip install py-spy)")
        self.process = subprocess.Popen(
            [spy, "record", "--pid", str(pid), "--rate", "250", "--format", "raw",
             "--function", "--threads", "--nonblocking", "--output", str(output),
             *(["--gil"] if gil else [])],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        time.sleep(0.5)  # attached before the phase starts

    def stop(self) -> dict[str, Any]:
        self.process.send_signal(signal.SIGINT)
        self.process.wait(timeout=60)
        return summarize_profile(self.output)


def summarize_profile(path: Path, top: int = 25) -> dict[str, Any]:
    """Share of the agent's CPU samples per function (inclusive and self), from collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if not f.startswith(("process ", "thread "))]
        if not frames:
            continue
        total += count
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + count
        own[frames[-1]] = own.get(frames[-1], 0) + count

    def share(table: dict[str, int]) -> list[list[Any]]:
        ordered = sorted(table.items(), key=lambda item: -item[1])[:top]
        return [[frame, round(100 * n / total, 1)] for frame, n in ordered]

    return {"samples": total, "inclusive_pct": share(inclusive), "self_pct": share(own)}


def storm(
    bench: Bench, pods: int, concurrency: int, profile: Path | None = None, gil: bool = False
) -> dict[str, Any]:
    netns = {f"s{i}": bench.new_pod() for i in range(pods)}

    def add(container: str) -> list[str]:
        result = bench.shim_call("ADD", container, netns[container]) or {}
        return [ip["address"] for ip in result.get("ips", [])]

    assert bench.agent is not None
    profiler = Profiler(bench.agent.pid, profile, gil) if profile else None
    agent_before, client_before = cpu_seconds(bench.agent.pid), own_cpu_seconds()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        addresses = list(pool.map(add, list(netns)))
    elapsed = time.perf_counter() - start
    agent_after, client_after = cpu_seconds(bench.agent.pid), own_cpu_seconds()
    profiled = profiler.stop() if profiler else None
    every = [a for found in addresses for a in found]
    duplicates = len(every) - len(set(every))
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda c: bench.shim_call("DEL", c, netns[c]), list(netns)))
    del_elapsed = time.perf_counter() - start
    leaks = bench.held() + len(list((bench.state / "attachments").glob("*.json")))
    links_left = sum(links_in(path) for path in netns.values())
    for path in netns.values():
        bench.drop_pod(path)
    results: dict[str, Any] = {
        "pods": pods,
        "nics": bench.nics,
        "concurrency": concurrency,
        "pods_per_s": round(pods / elapsed, 1),
        "seconds": round(elapsed, 2),
        "del_pods_per_s": round(pods / del_elapsed, 1),
        # Where the cores went during the ADDs: the agent (user = Python, system =
        # mostly the kernel's netlink/link work) and this client with its shims.
        "agent_cpu_user_s": round(agent_after[0] - agent_before[0], 2),
        "agent_cpu_system_s": round(agent_after[1] - agent_before[1], 2),
        "client_cpu_s": round(client_after - client_before, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "addresses": len(every),
        "duplicates": duplicates,
        "leaks": leaks,
        "links_left": links_left,
    }
    if profiled is not None:
        results["agent_profile"] = profiled
    return results


def floor(bench: Bench, pods: int, threads: int = 1) -> dict[str, Any]:
    """The storm's delegate work alone: the in-process macvlan ADDs back to back.

    The same pods, NICs, static addresses and kernel work as the storm (in this
    process, in the host namespace, no agent, no IPAM, no shim): what the
    link set-up itself costs, the floor under any agent.  With ``threads`` > 1
    that many threads take the pods (each pod's NICs in turn): the most the
    kernel gives on this machine's cores, whatever runs it.
    """
    from multinic_macvlan.inprocess import MacvlanInProcess

    plugin = MacvlanInProcess()
    netns = [bench.new_pod() for _ in range(pods)]
    configs = [
        json.dumps(
            {
                "cniVersion": "1.0.0",
                "name": "demo",
                "type": "macvlan",
                "master": nic,
                "mode": "bridge",
                "ipam": {
                    "type": "static",
                    "addresses": [
                        {"address": f"192.168.{32 * position + index // 250}.{index % 250 + 1}/19"}
                    ],
                },
            }
        )
        for index in range(pods)
        for position, nic in enumerate(n["interfaceName"] for n in host_nics(bench.nics))
    ]

    def add(index: int) -> None:
        for position in range(bench.nics):
            env = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": f"f{index}",
                   "CNI_NETNS": netns[index], "CNI_IFNAME": f"net1-{position}",
                   "CNI_PATH": CNI}  # fmt: skip
            status, out, _ = plugin.run(env, configs[index * bench.nics + position])
            if status != 0:
                raise RuntimeError(f"in-process ADD: {out}")

    before, start = os.times(), time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(add, range(pods)))
    elapsed, after = time.perf_counter() - start, os.times()
    for path in netns:
        bench.drop_pod(path)
    return {
        "pods": pods,
        "threads": threads,
        "pods_per_s": round(pods / elapsed, 1),
        "cpu_user_s": round(after.user - before.user, 2),
        "cpu_system_s": round(after.system - before.system, 2),
    }


def shim_startup_ms(bench: Bench, runs: int = 15) -> float:
    """VERSION with no agent at the socket path: the shim's start-up and its own answer."""
    env = {"CNI_COMMAND": "VERSION", "MULTINIC_AGENT_SOCKET": str(bench.workdir / "absent.sock")}
    return statistics.median(timed(Bench._exec, str(bench.shim), env, "{}") for _ in range(runs))


def shim_version_ms(bench: Bench, runs: int = 15) -> float:
    """VERSION answered by the agent: start-up plus one round trip through the socket."""
    env = {"CNI_COMMAND": "VERSION", "MULTINIC_AGENT_SOCKET": str(bench.socket)}
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
    parser.add_argument(
        "--nics", type=int, default=2, help=f"macvlan NICs per pod, 1..{MAX_NICS} (default 2)"
    )
    parser.add_argument("--storm-pods", type=int, default=200, help="pods in the storm")
    parser.add_argument(
        "--storm-concurrency", type=int, default=16, help="storm ADDs (and DELs) at a time"
    )
    parser.add_argument(
        "--exec-delegates",
        action="store_true",
        help="run the agent with --exec-delegates (every delegate binary exec'd)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        help="py-spy the agent during the storm's ADDs: collapsed stacks to this file, "
        "a summary in the results",
    )
    parser.add_argument(
        "--profile-gil",
        action="store_true",
        help="with --profile: sample only the thread holding the GIL (where the agent's "
        "Python time goes, without the threads waiting in the kernel)",
    )
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also run the storm's delegate work alone (in-process ADDs back to back)",
    )
    parser.add_argument("--output", type=Path, help=f"results file (default {RESULTS})")
    options = parser.parse_args()
    if not 1 <= options.nics <= MAX_NICS:
        parser.error(f"--nics must be 1..{MAX_NICS}, not {options.nics}")
    if options.storm_pods < 1 or options.storm_concurrency < 1:
        parser.error("--storm-pods and --storm-concurrency must be at least 1")
    if os.geteuid() != 0:
        print("needs root (network namespaces)", file=sys.stderr)
        return 2
    iterations = options.iterations or (25 if options.quick else 150)
    workdir = Path(tempfile.mkdtemp(prefix="mnbench-"))
    bench = Bench(workdir, options.shim, options.nics, options.exec_delegates)
    try:
        bench.setup()
        times = measure(bench, iterations)
        results: dict[str, Any] = {
            "shim": options.shim,
            "nics": options.nics,
            "delegates": "exec" if options.exec_delegates else "in-process where offered",
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
            "shim_version_p50_ms": round(shim_version_ms(bench), 1),
            "interpreter_startup_p50_ms": round(interpreter_startup_ms(), 1),
        }
        results["ratio_add_p50"] = round(results["add_p50_ms"] / results["baseline_add_p50_ms"], 2)
        results["ratio_del_p50"] = round(results["del_p50_ms"] / results["baseline_del_p50_ms"], 2)
        results["storm"] = storm(
            bench, options.storm_pods, options.storm_concurrency, options.profile,
            options.profile_gil,
        )  # fmt: skip
        if options.floor:
            results["delegates_alone"] = floor(bench, options.storm_pods)
            cores = os.cpu_count() or 1
            if cores > 1:
                results["delegates_alone_every_core"] = floor(bench, options.storm_pods, cores)
    finally:
        bench.teardown()
        shutil.rmtree(workdir, ignore_errors=True)
    output = options.output or RESULTS
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    ok = results["storm"]["duplicates"] == 0 and results["storm"]["leaks"] == 0
    ok = ok and results["storm"]["links_left"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
