"""Fixtures for node tests: a simulated host (network namespace with veth NICs),
an agent serving it, pods (network namespaces), and the shim exec'd as a
container runtime execs a CNI plugin.

Every namespace name carries a per-run prefix, and every fixture removes what
it created even when the test fails.
"""

from __future__ import annotations

import copy
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from multinic_agent.cni_server import CniServer
from multinic_agent.node_state import FileNodeState
from multinic_agent.records import RecordStore
from multinic_agent.shim_build import build_shim, find_compiler
from multinic_ipam.journal import AllocationJournal

VENV_BIN = Path(sys.executable).parent
AGENT = str(VENV_BIN / "multinic-agent")
SYSTEM_CNI = "/usr/lib/cni"
PREFIX = f"mnt{os.getpid() % 100000}"
_counter = itertools.count()

NICS = [
    {"interfaceName": "eth1", "netAddress": "10.0.1.0/24", "hostIP": "10.0.1.11"},
    {"interfaceName": "eth2", "netAddress": "10.0.2.0/24", "hostIP": "10.0.2.11"},
]
POOLS = [
    {
        "podCIDR": "192.168.0.0/24",
        "vlanCIDR": "192.168.0.0/18",
        "netAttachDef": "demo",
        "hostName": "host-a",
        "interfaceName": "eth1",
        "excludes": ["192.168.0.128/25"],
    },
    {
        "podCIDR": "192.168.128.0/24",
        "vlanCIDR": "192.168.128.0/18",
        "netAttachDef": "demo",
        "hostName": "host-a",
        "interfaceName": "eth2",
    },
]
# 172.30/16 is reachable through both NICs (ECMP); 172.31/16 only through eth1's link.
ROUTES = [
    {"dst": "172.30.0.0/16", "gw": "192.168.63.254"},
    {"dst": "172.30.0.0/16", "gw": "192.168.191.254"},
    {"dst": "172.31.0.0/16", "gw": "192.168.63.254"},
]
NETCONF: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "demo",
    "type": "multi-nic",
    "ipam": {
        "type": "multi-nic-ipam",
        "hostBlock": 6,
        "interfaceBlock": 2,
        "vlanMode": "l2",
        "excludeCIDRs": ["192.168.0.128/25"],
        "routes": ROUTES,
    },
    "dns": {},
    "plugin": {"cniVersion": "1.0.0", "type": "macvlan", "mode": "bridge"},
    "subnet": "192.168.0.0/16",
    "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
    "multiNICIPAM": True,
    "daemonIP": "",
    "daemonPort": 11000,
}


def netconf(version: str = "1.0.0", **changes: Any) -> dict[str, Any]:
    config = copy.deepcopy(NETCONF)
    config["cniVersion"] = version
    config["plugin"]["cniVersion"] = version
    config.update(changes)
    return config


# --------------------------------------------------------------------------- in-process CNI server

SERVER_NETCONF: dict[str, Any] = {
    key: copy.deepcopy(value)
    for key, value in NETCONF.items()
    if key not in ("dns", "daemonIP", "daemonPort")
}
"""The demo NAD config the in-process CNI server tests send: no routes, excludes or DNS."""
SERVER_NETCONF["ipam"] = {
    key: value for key, value in NETCONF["ipam"].items() if key not in ("excludeCIDRs", "routes")
}
CNI_ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "c1",
    "CNI_NETNS": "/var/run/netns/none",
    "CNI_IFNAME": "net1",
    "CNI_PATH": SYSTEM_CNI,
}
"""A CNI ADD's environment (the netns does not exist: no delegate can run)."""


def cni_server(state_dir: Path, state: dict[str, Any], **options: Any) -> CniServer:
    """The agent's request handling in-process, node ``host-a`` with ``state`` as its node state."""
    (state_dir / "node-state.json").write_text(json.dumps(state))
    return CniServer(
        node="host-a",
        node_state=FileNodeState(state_dir / "node-state.json"),
        journal=AllocationJournal(state_dir),
        records=RecordStore(state_dir),
        **options,
    )


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(ip("-n", netns, "-j", *args).stdout or "[]")


def unique(kind: str) -> str:
    return f"{PREFIX}-{next(_counter)}-{kind}"


@dataclass
class Host:
    """A simulated node: a netns whose eth1/eth2 are veth pairs (peers eth1p/eth2p)."""

    netns: str

    def links(self) -> list[str]:
        return [link["ifname"] for link in ip_json(self.netns, "link", "show")]


def make_host() -> Host:
    host = Host(unique("host"))
    ip("netns", "add", host.netns)
    ip("-n", host.netns, "link", "set", "lo", "up")
    for nic in NICS:
        name = nic["interfaceName"]
        ip("-n", host.netns, "link", "add", name, "type", "veth", "peer", "name", f"{name}p")
        ip("-n", host.netns, "addr", "add", f"{nic['hostIP']}/24", "dev", name)
        ip("-n", host.netns, "link", "set", name, "up")
        ip("-n", host.netns, "link", "set", f"{name}p", "up")
    return host


@dataclass
class Agent:
    """A running ``multinic-agent`` inside a host's namespace."""

    host: Host
    workdir: Path
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(init=False)
    options: list[str] = field(default_factory=list)
    """Extra agent options (``--exec-delegates``...), given at the next start."""

    def __post_init__(self) -> None:
        self.log_path = self.workdir / "agent.log"

    @property
    def socket(self) -> Path:
        return self.workdir / "run" / "agent.sock"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    def write_node_state(self, pools: list[dict[str, Any]] | None = None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        state = {"nics": NICS, "ippools": POOLS if pools is None else pools}
        temporary = self.state_dir / "node-state.json.tmp"
        temporary.write_text(json.dumps(state))
        temporary.replace(self.state_dir / "node-state.json")

    def command(self) -> list[str]:
        """The agent's command line, run in the host's namespace."""
        return [
            "ip",
            "netns",
            "exec",
            self.host.netns,
            AGENT,
            "--node",
            "host-a",
            "--socket",
            str(self.socket),
            "--state-dir",
            str(self.state_dir),
            "--cni-path",
            SYSTEM_CNI,
            "--log-level",
            "DEBUG",
            *self.options,
            "run",
        ]

    def start(self, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while not self.socket.exists():
            if self.process.poll() is not None:
                raise RuntimeError(f"agent exited: {self.log_path.read_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent socket not ready: {self.log_path.read_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def kill(self) -> None:
        """``kill -9``: no chance to clean up or flush anything."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()
        self.socket.unlink(missing_ok=True)

    def journal_copy(self) -> AllocationJournal:
        """The agent's journal, opened on a copy (the agent may be writing it); close it."""
        from multinic_ipam.journal import JOURNAL_FILE

        copy_dir = self.workdir / "journal-copy"
        shutil.rmtree(copy_dir, ignore_errors=True)
        copy_dir.mkdir()
        source = self.state_dir / JOURNAL_FILE
        if source.exists():
            shutil.copy(source, copy_dir / JOURNAL_FILE)
        return AllocationJournal(copy_dir)

    def held_addresses(self) -> dict[tuple[str, str], list[str]]:
        """What the agent's journal says each attachment holds (read from a copy)."""
        journal = self.journal_copy()
        held = {
            (cid, ifname): [e.address for e in journal.entries(net, cid, ifname)]
            for net, cid, ifname in journal.attachments()
        }
        journal.close()
        return held

    def records(self) -> list[str]:
        return sorted(p.name for p in (self.state_dir / "attachments").glob("*.json"))

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@dataclass
class CniOutcome:
    status: int
    stdout: str
    stderr: str

    @property
    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class Runtime:
    """Execs the installed ``multi-nic`` shim exactly as a container runtime does."""

    shim: Path
    agent: Agent
    cni_path: str = SYSTEM_CNI

    def env(
        self,
        command: str,
        container_id: str,
        netns: str = "",
        ifname: str = "net1",
        pod: str = "pod",
    ) -> dict[str, str]:
        return {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": ifname,
            "CNI_PATH": self.cni_path,
            "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MULTINIC_AGENT_SOCKET": str(self.agent.socket),
        }

    def run(self, env: dict[str, str], config: dict[str, Any] | str) -> CniOutcome:
        stdin = config if isinstance(config, str) else json.dumps(config)
        done = subprocess.run(
            [str(self.shim)],
            input=stdin,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        return CniOutcome(done.returncode, done.stdout, done.stderr)

    def verb(
        self,
        command: str,
        container_id: str,
        netns: str,
        config: dict[str, Any] | None = None,
        ifname: str = "net1",
    ) -> CniOutcome:
        return self.run(self.env(command, container_id, netns, ifname), config or netconf())

    def add(self, *args: Any, **kwargs: Any) -> CniOutcome:
        return self.verb("ADD", *args, **kwargs)

    def delete(self, *args: Any, **kwargs: Any) -> CniOutcome:
        return self.verb("DEL", *args, **kwargs)

    def check(self, *args: Any, **kwargs: Any) -> CniOutcome:
        return self.verb("CHECK", *args, **kwargs)


class Pods:
    """Pod network namespaces, removed at the end of the test."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def new(self) -> str:
        name = unique("pod")
        ip("netns", "add", name)
        self.names.append(name)
        return f"/var/run/netns/{name}"

    def remove(self, path: str) -> None:
        ip("netns", "del", netns_name(path))

    def cleanup(self) -> None:
        for name in self.names:
            ip("netns", "del", name, check=False)

    @staticmethod
    def links(path: str) -> list[str]:
        return [link["ifname"] for link in ip_json(netns_name(path), "link", "show")]

    @staticmethod
    def addresses(path: str) -> dict[str, list[str]]:
        """IPv4 addresses per interface, ``ADDRESS/PREFIX``."""
        found: dict[str, list[str]] = {}
        for link in ip_json(netns_name(path), "-4", "addr", "show"):
            found[link["ifname"]] = [f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]]
        return found

    @staticmethod
    def routes(path: str) -> list[dict[str, Any]]:
        return list(ip_json(netns_name(path), "route", "show"))


def netns_name(path: str) -> str:
    return Path(path).name


@pytest.fixture
def host() -> Iterator[Host]:
    if not Path(SYSTEM_CNI, "macvlan").exists():
        pytest.skip(f"no CNI plugins in {SYSTEM_CNI}: apt-get install containernetworking-plugins")
    host = make_host()
    try:
        yield host
    finally:
        ip("netns", "del", host.netns, check=False)


@pytest.fixture
def agent(host: Host, tmp_path: Path) -> Iterator[Agent]:
    agent = Agent(host, tmp_path / "agent")
    agent.workdir.mkdir()
    agent.write_node_state()
    agent.start()
    try:
        yield agent
    finally:
        agent.stop()


SHIM_KINDS = ("python", "compiled")
"""Every test of the installed shim runs against both, expecting the same."""

SANITIZE = os.environ.get("MULTINIC_SHIM_SANITIZE", "") not in ("", "0")
"""Build the compiled shim with ASan+UBSan (dynamically linked) instead."""

_built: dict[str, Path] = {}


def compiled_shim_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``shim.c`` built once per session (``build-shim``); skips without a C compiler."""
    if "binary" not in _built:
        if find_compiler() is None:
            pytest.skip("no C compiler (cc/gcc/clang) for the compiled shim: apt-get install gcc")
        output = tmp_path_factory.mktemp("shim-build") / "multi-nic"
        if SANITIZE:
            flags = ["-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
            build_shim(output, static=False, extra_flags=flags)
        else:
            build_shim(output)
        _built["binary"] = output
    return _built["binary"]


@pytest.fixture
def compiled_shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The compiled shim as ``build-shim`` makes it (built once per session)."""
    return compiled_shim_binary(tmp_path_factory)


def install_shim_cli(bin_dir: Path, kind: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``multinic-agent install-cni`` of the ``kind`` shim into ``bin_dir``."""
    command = [AGENT, "install-cni", "--bin-dir", str(bin_dir), "--shim", kind]
    if kind == "compiled":
        command += ["--shim-binary", str(compiled_shim_binary(tmp_path_factory))]
    subprocess.run(command, check=True, capture_output=True)
    return bin_dir / "multi-nic"


@pytest.fixture(params=SHIM_KINDS)
def shim(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The installed shim: the Python one, then the compiled one."""
    return install_shim_cli(
        tmp_path / "cni-bin", request.param, request.getfixturevalue("tmp_path_factory")
    )


@pytest.fixture
def installed_shim(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shim a node gets (``install-cni``, mode auto: the compiled one when cc exists).

    For tests of the agent behind the shim; the shim's own behaviour is
    tested on both kinds through ``shim``.
    """
    kind = "compiled" if find_compiler() is not None else "python"
    return install_shim_cli(tmp_path / "cni-bin", kind, tmp_path_factory)


@pytest.fixture
def runtime(installed_shim: Path, agent: Agent) -> Runtime:
    return Runtime(installed_shim, agent)


@pytest.fixture(name="netconf")
def netconf_factory() -> Any:
    """``netconf(version="1.0.0", **top_level_changes)``: the demo NAD config."""
    return netconf


@pytest.fixture
def pods() -> Iterator[Pods]:
    pods = Pods()
    try:
        yield pods
    finally:
        pods.cleanup()
