"""Least privilege and hostile input: no shell anywhere, hostile names refused
before they reach netlink, a subprocess or the file system.

Proven elsewhere (not repeated here):
* the agent's socket is 0600, root-owned, in a 0700 directory, and the agent
  has no TCP listener but its health port (/healthz, /readyz, /metrics only):
  packages/multinic-agent/tests/test_node_attach.py::
  test_socket_is_root_only_and_no_tcp_listener_but_the_health_port (and again
  after every restart of the crash storm, test_crash_storm.py) and
  packages/multinic-agent/tests/test_health_metrics.py;
* the route reconciler never uses the main/local/default tables:
  packages/multinic-agent/tests/test_host_routes.py::test_system_tables_are_never_used;
* RBAC in deploy/ is least privilege: packages/multinic-operator/tests/test_rbac.py;
* the shim refuses a regular file, a symlink and a socket not owned by root:
  packages/multinic-agent/tests/test_shim.py.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from multinic_agent.cni_server import CniServer
from multinic_agent.host_routes import HostRouteTables, RouteTableError, check_table
from multinic_agent.node_state import FileNodeState
from multinic_core.errors import ConfigError
from multinic_core.models import InterfaceInfo
from multinic_core.routes import HostRoute

from .cni_inputs import HOSTILE_NAMES
from .conftest import REPO, node_fixtures

SOURCES = sorted(REPO.glob("packages/*/src/**/*.py"))
SUBPROCESS_CALLS = {"run", "Popen", "call", "check_call", "check_output"}
SHELL_CALLS = {"system", "popen", "getstatusoutput", "getoutput", "create_subprocess_shell"}
MODULES = {"os", "subprocess", "asyncio"}


def shell_uses(path: Path, root: Path = REPO) -> list[str]:
    """Every call in ``path`` that would run a shell or a command given as a string."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not isinstance(node, ast.Call):
            continue
        # ``subprocess.run(...)``, ``os.system(...)``, ``asyncio.create_subprocess_shell(...)``
        # and the same names imported bare.
        func = node.func
        if isinstance(func, ast.Attribute):
            module = func.value.id if isinstance(func.value, ast.Name) else ""
            name = func.attr if module in MODULES else ""
        else:
            name = func.id if isinstance(func, ast.Name) else ""
        where = f"{path.relative_to(root)}:{node.lineno}"
        for keyword in node.keywords:
            if keyword.arg == "shell" and not (
                isinstance(keyword.value, ast.Constant) and keyword.value.value is False
            ):
                found.append(f"{where}: shell={ast.unparse(keyword.value)}")
        if name in SHELL_CALLS:
            found.append(f"{where}: {ast.unparse(node.func)}()")
        if name in SUBPROCESS_CALLS and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant | ast.JoinedStr | ast.BinOp):
                found.append(f"{where}: command given as a string")
    return found


def test_no_shell_and_argv_lists_only_in_any_package() -> None:
    assert len(SOURCES) > 30, "the scan found the sources"
    problems = [problem for path in SOURCES for problem in shell_uses(path)]
    assert problems == []


def test_the_scan_finds_what_it_looks_for(tmp_path: Path) -> None:
    planted = tmp_path / "planted.py"
    planted.write_text(
        "import os, subprocess\n"
        "os.system('reboot')\n"
        "subprocess.run('ip link', shell=True)\n"
        "subprocess.check_output(f'ip {x}')\n"
        "subprocess.run(['ip', 'link'], shell=False)\n"
    )
    problems = shell_uses(planted, tmp_path)
    assert len(problems) == 4, problems


# --------------------------------------------------------------------------- CNI path


@pytest.fixture
def server(tmp_path: Path) -> CniServer:
    state = {"nics": node_fixtures.NICS, "ippools": node_fixtures.POOLS}
    return node_fixtures.cni_server(tmp_path, state, cni_path=())


def env(**changes: str) -> dict[str, str]:
    return {
        **node_fixtures.CNI_ENV,
        "CNI_NETNS": "/var/run/netns/absent",
        "CNI_PATH": "",
        **changes,
    }


IFNAME = re.compile(r"\A[A-Za-z0-9_.:@-]{1,15}\Z")
CONTAINER_ID = re.compile(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}\Z")
OBJECT_NAME = re.compile(r"\A[a-z0-9]([-a-z0-9.]*[a-z0-9])?\Z")


@pytest.mark.root
@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if not IFNAME.match(n)])
def test_hostile_names_through_the_shim_are_refused(
    runtime: Any, agent: Any, pods: Any, name: str
) -> None:
    before = sorted(os.listdir(agent.workdir.parent))
    config = node_fixtures.netconf()
    netns = pods.new()
    outcomes = {
        "ifname": runtime.run({**runtime.env("ADD", "c1", netns), "CNI_IFNAME": name}, config),
        # A name that is a fine container ID (e.g. 16 letters) is no attack there.
        "container": runtime.run(
            {**runtime.env("ADD", "c1", netns), "CNI_CONTAINERID": name}, config
        )
        if not CONTAINER_ID.match(name)
        else runtime.run({**runtime.env("ADD", "c1", netns), "CNI_IFNAME": name}, config),
        "netns": runtime.run(runtime.env("ADD", "c2", name or "/absent"), config),
        "master": runtime.add(
            "c3", netns, node_fixtures.netconf(args={"cni": {"masters": [name]}})
        ),
    }
    for what, outcome in outcomes.items():
        assert outcome.status == 1, (what, outcome)
        error = outcome.json
        assert error["code"] in (4, 7, 999), (what, error)
        assert "Traceback" not in outcome.stdout + outcome.stderr
    assert outcomes["ifname"].json["code"] == 4
    assert outcomes["container"].json["code"] == 4
    # Nothing was allocated, recorded, created in the pod or beside the agent's files.
    assert agent.held_addresses() == {}
    assert agent.records() == []
    assert pods.links(netns) == ["lo"]
    assert sorted(agent.host.links()) == ["eth1", "eth1p", "eth2", "eth2p", "lo"]
    assert sorted(os.listdir(agent.workdir.parent)) == before


@pytest.mark.parametrize("name", [n for n in HOSTILE_NAMES if n not in ("", "net 1")])
def test_hostile_nic_names_in_node_state_are_refused(name: str) -> None:
    nic = {"interfaceName": name, "netAddress": "10.0.1.0/24", "hostIP": "10.0.1.11"}
    with pytest.raises(ConfigError, match="interfaceName"):
        FileNodeState.parse(json.dumps({"nics": [nic]}))


@pytest.mark.parametrize("name", ["eth1\n", "c1\n"])
def test_a_trailing_newline_is_not_an_interface_name(name: str) -> None:
    with pytest.raises(ValueError, match="not an interface name"):
        InterfaceInfo.model_validate({"interfaceName": name})


@pytest.mark.parametrize("variable", ["CNI_CONTAINERID", "CNI_IFNAME"])
def test_a_trailing_newline_in_container_id_or_ifname_is_refused(
    server: CniServer, variable: str
) -> None:
    value = {"CNI_CONTAINERID": "c1\n", "CNI_IFNAME": "net1\n"}[variable]
    config = json.dumps(node_fixtures.netconf())
    status, stdout, _ = asyncio.run(server.handle(env(**{variable: value}), config))
    assert (status, json.loads(stdout)["code"]) == (1, 4)


# --------------------------------------------------------------------------- route reconciler

HOSTILE_ROUTES = (
    [
        ("network", name, HostRoute("192.168.2.0/24", "10.0.1.12", "eth1"))
        for name in HOSTILE_NAMES
        if not OBJECT_NAME.match(name)
    ]
    + [
        ("device", "demo", HostRoute("192.168.2.0/24", "10.0.1.12", name))
        for name in HOSTILE_NAMES
        if not IFNAME.match(name)
    ]
    + [
        ("destination", "demo", HostRoute(dst, "10.0.1.12", "eth1"))
        for dst in ("192.168.2.0/33", "192.168.2.0/24; reboot", "default", "0.0.0.0/0 via x", "")
    ]
    + [
        ("gateway", "demo", HostRoute("192.168.2.0/24", gw, "eth1"))
        for gw in ("10.0.1.12; reboot", "$(reboot)", "", "10.0.1.300")
    ]
)


@pytest.mark.root
def test_hostile_input_to_the_route_reconciler_changes_nothing(host: Any, tmp_path: Path) -> None:
    def view() -> tuple[str, str]:
        routes = node_fixtures.ip("-n", host.netns, "-4", "route", "show", "table", "all").stdout
        rules = node_fixtures.ip("-n", host.netns, "rule", "show").stdout
        return routes, rules

    before = view()
    tables = HostRouteTables(tmp_path, netns=f"/var/run/netns/{host.netns}")
    refused = 0
    for _, network, route in HOSTILE_ROUTES:
        with pytest.raises(RouteTableError):
            tables.reconcile(network, "192.168.0.0/16", [route])
        refused += 1
    assert refused == len(HOSTILE_ROUTES)
    assert view() == before
    assert not (tmp_path / "route-tables.json").exists()
    # "." and ".." pass the name pattern but name no device: reported, nothing applied.
    for device in (".", ".."):
        route = HostRoute("192.168.2.0/24", "10.0.1.12", device)
        sync = tables.reconcile("demo", "192.168.0.0/16", [route])
        assert not sync.ok, sync.summary()
        assert not sync.changed, sync.summary()
        assert view()[0] == before[0]
    # A well-formed call in the same namespace works (the refusals were not an accident).
    sync = tables.reconcile(
        "demo", "192.168.0.0/16", [HostRoute("192.168.2.0/24", "10.0.1.12", "eth1")]
    )
    assert sync.ok, sync.summary()
    assert "192.168.2.0/24 via 10.0.1.12 dev eth1" in view()[0]


@pytest.mark.parametrize("table", [-1, 0, 253, 254, 255, 2**31, 2**32])
def test_hostile_table_ids_are_refused(table: int) -> None:
    with pytest.raises(RouteTableError):
        check_table(table)


# --------------------------------------------------------------------------- shim


@pytest.mark.parametrize("kind", ["fifo", "directory", "dangling symlink"])
def test_the_shim_refuses_what_is_not_a_socket(shim: Path, tmp_path: Path, kind: str) -> None:
    path = tmp_path / "agent.sock"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        path.mkdir()
    else:
        path.symlink_to(tmp_path / "nowhere")
    done = subprocess.run(
        [str(shim)],
        input=json.dumps(node_fixtures.netconf()),
        env={**env(), "MULTINIC_AGENT_SOCKET": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    error = json.loads(done.stdout)
    assert done.returncode == 1
    assert error["code"] == 11
    assert "not a unix socket" in error["msg"]
    # A fifo is never opened (it would block the shim forever).
    assert not stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.root
def test_the_agent_socket_refuses_nobody_else(agent: Any) -> None:
    """An unprivileged user cannot even connect to the agent's socket."""
    assert stat.S_IMODE(os.stat(agent.socket).st_mode) == 0o600
    child = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-c",
            "import socket, sys\n"
            "s = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1])\nexcept PermissionError:\n    sys.exit(3)\n",
            str(agent.socket),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert child.returncode == 3, child
