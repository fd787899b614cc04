"""Plugins are found by installing packages: pip install, discover, use, uninstall.

A fresh virtualenv (built once for this module) gets a non-editable install of
multinic-core; each test then pip-installs one more package, checks that
``multinic plugins`` and the registry see it and that it works, uninstalls it,
and checks that asking for it gives the named "not installed" error.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "packages" / "multinic-core"
POLICY_EXAMPLE = REPO / "examples" / "multinic-policy-example"
SRIOV = REPO / "packages" / "multinic-sriov"

# Run inside the test venv: every installed plugin as JSON rows.
DISCOVER = """
import json
from multinic_core.plugins import PluginRegistry

print(json.dumps([
    {"kind": p.kind, "name": p.name, "distribution": p.distribution,
     "version": p.version, "error": p.error}
    for p in PluginRegistry().discover()
]))
"""

# Run inside the test venv: load one plugin by group kind and name; for a
# policy, select NICs for a pod on a three-NIC node with one attachment so far.
LOAD = """
import json, sys
from multinic_core.errors import MultinicError
from multinic_core.hooktypes import PodArgs, SelectionRequest
from multinic_core.models import InterfaceInfo, MultiNicNetwork
from multinic_core.plugins import PluginRegistry

kind, name = sys.argv[1], sys.argv[2]
registry = PluginRegistry()
try:
    plugin = registry.policy(name) if kind == "policy" else registry.main_plugin(name)
except MultinicError as e:
    print(json.dumps({"error": type(e).__name__, "message": str(e)}))
    raise SystemExit(0)
answer = {"distribution": plugin.info.distribution, "version": plugin.info.version}
if kind == "policy":
    network = MultiNicNetwork.model_validate({
        "metadata": {"name": "demo"},
        "spec": {
            "ipam": '{"type":"multi-nic-ipam","hostBlock":6,"interfaceBlock":2}',
            "masterNets": ["10.0.3.0/24", "10.0.1.0/24", "10.0.2.0/24"],
            "plugin": {"type": "ipvlan"},
            "attachPolicy": {"strategy": name},
        },
    })
    nics = [
        InterfaceInfo(interfaceName=f"eth{i}", netAddress=f"10.0.{i}.0/24", hostIP=f"10.0.{i}.7")
        for i in (1, 2, 3)
    ]
    request = SelectionRequest(
        network=network, nics=nics, args=PodArgs(nics=2), usage={"eth3": 1}
    )
    answer["selected"] = [nic.name for nic in plugin.select_nics(request)]
print(json.dumps(answer))
"""


class Venv:
    """A throw-away virtualenv driven through its own executables."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "bin"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")
        }
        self.env["PATH"] = f"{self.bin}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env["VIRTUAL_ENV"] = str(root)

    def run(self, *argv: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        # cwd outside the repository, so nothing is imported from a source tree.
        done = subprocess.run(
            [str(a) for a in argv],
            cwd=self.root,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
        )
        if check and done.returncode != 0:
            raise AssertionError(
                f"{' '.join(map(str, argv))} exited {done.returncode}\n"
                f"stdout:\n{done.stdout}\nstderr:\n{done.stderr}"
            )
        return done

    def pip(self, *args: str | Path) -> None:
        self.run(self.bin / "python", "-m", "pip", "--disable-pip-version-check", "-q", *args)

    def python_json(self, code: str, *args: str) -> Any:
        return json.loads(self.run(self.bin / "python", "-c", code, *args).stdout)

    def discovered(self) -> list[dict[str, str]]:
        rows: list[dict[str, str]] = self.python_json(DISCOVER)
        return rows

    def load(self, kind: str, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.python_json(LOAD, kind, name)
        return answer

    def cli_plugins(self) -> str:
        """``multinic plugins`` as a user sees it (the table)."""
        return self.run(self.bin / "multinic", "plugins").stdout


def base_interpreter() -> str:
    """The real interpreter behind the running venv (a venv of a venv would chain)."""
    return getattr(sys, "_base_executable", None) or sys.executable


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Venv:
    root = tmp_path_factory.mktemp("plugin-install") / "venv"
    subprocess.run([base_interpreter(), "-m", "venv", str(root)], check=True, timeout=300)
    env = Venv(root)
    env.pip("install", CORE)
    return env


def cli_row(table: str, name: str) -> str | None:
    """The ``multinic plugins`` line of the plugin ``name`` (None when absent)."""
    for line in table.splitlines():
        if re.search(rf"\s{re.escape(name)}\s", f" {line} "):
            return line
    return None


def test_core_alone_has_only_its_built_in_policies(venv: Venv) -> None:
    rows = venv.discovered()
    assert {r["name"] for r in rows if r["kind"] == "attach policy"} == {
        "none",
        "devClass",
        "topology",
        "costOpt",
        "perfOpt",
    }
    assert {(r["distribution"], r["version"], r["error"]) for r in rows} == {
        ("multinic-core", "0.1.0", "")
    }
    assert venv.load("policy", "roundRobin") == {
        "error": "PluginNotFoundError",
        "message": "no attach policy 'roundRobin' installed: install a package that "
        "registers entry point 'roundRobin' in group 'multinic.policies'",
    }


def test_third_party_policy_install_use_uninstall(venv: Venv) -> None:
    venv.pip("install", POLICY_EXAMPLE)
    try:
        assert {
            "kind": "attach policy",
            "name": "roundRobin",
            "distribution": "multinic-policy-example",
            "version": "0.1.0",
            "error": "",
        } in venv.discovered()
        row = cli_row(venv.cli_plugins(), "roundRobin")
        assert row is not None
        assert re.fullmatch(
            r"attach policy\s+roundRobin\s+multinic-policy-example\s+0\.1\.0\s+ok", row.strip()
        ), row

        # One attachment on the node already: the turn moves to the second NIC
        # in masterNets order (built-in 'none' would give eth3, eth1).
        assert venv.load("policy", "roundRobin") == {
            "distribution": "multinic-policy-example",
            "version": "0.1.0",
            "selected": ["eth1", "eth2"],
        }
        assert venv.load("policy", "none")["selected"] == ["eth3", "eth1"]
    finally:
        venv.pip("uninstall", "-y", "multinic-policy-example")

    gone = venv.load("policy", "roundRobin")
    assert gone["error"] == "PluginNotFoundError"
    assert gone["message"].startswith("no attach policy 'roundRobin' installed: ")
    assert all(r["name"] != "roundRobin" for r in venv.discovered())
    assert cli_row(venv.cli_plugins(), "roundRobin") is None


def test_sriov_drivers_install_and_uninstall(venv: Venv) -> None:
    if not (SRIOV / "pyproject.toml").is_file():
        pytest.skip("packages/multinic-sriov has no pyproject.toml yet")
    venv.pip("install", SRIOV)
    try:
        rows = {r["name"]: r for r in venv.discovered() if r["kind"] == "main plugin"}
        for name in ("sriov", "host-device"):
            assert name in rows, f"{name} not discovered: {sorted(rows)}"
            assert (rows[name]["distribution"], rows[name]["error"]) == ("multinic-sriov", "")
            assert venv.load("main", name)["distribution"] == "multinic-sriov"
            row = cli_row(venv.cli_plugins(), name)
            assert row is not None
            version = re.escape(rows[name]["version"])
            pattern = rf"main plugin\s+{re.escape(name)}\s+multinic-sriov\s+{version}\s+ok"
            assert re.fullmatch(pattern, row.strip()), row
    finally:
        venv.pip("uninstall", "-y", "multinic-sriov")

    assert all(r["distribution"] != "multinic-sriov" for r in venv.discovered())
    table = venv.cli_plugins()
    for name in ("sriov", "host-device"):
        assert cli_row(table, name) is None
        assert venv.load("main", name) == {
            "error": "PluginNotFoundError",
            "message": f"no main plugin {name!r} installed: pip install multinic-sriov",
        }
