"""The plugin framework: stevedore finds plugins by name, pluggy validates and calls them."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from multinic_core.errors import PluginError, PluginNotFoundError, SelectionError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import SelectedNic, SelectionRequest
from multinic_core.models import InterfaceInfo, MultiNicNetwork
from multinic_core.plugins import (
    POLICIES,
    AttachPolicyPlugin,
    PluginRegistry,
    install_hint,
    validate_plugin,
)

NETWORK = MultiNicNetwork.model_validate(
    {
        "metadata": {"name": "net"},
        "spec": {"ipam": '{"type": "host-local"}', "plugin": {"type": "macvlan"}},
    }
)
NICS = [
    InterfaceInfo.model_validate({"interfaceName": "eth2", "netAddress": "10.0.2.0/24"}),
    InterfaceInfo.model_validate({"interfaceName": "eth1", "netAddress": "10.0.1.0/24"}),
]


class ReversePolicy:
    @hookimpl
    def multinic_select_nics(self, request: SelectionRequest) -> list[SelectedNic]:
        names = sorted((n.interface_name for n in request.nics), reverse=True)
        return [SelectedNic(name=n) for n in names]


def policy(obj: object) -> AttachPolicyPlugin:
    plugin = validate_plugin(POLICIES, "test", obj, "test-dist", "1.2.3")
    assert isinstance(plugin, AttachPolicyPlugin)
    return plugin


def test_a_valid_plugin_is_called_with_keywords_and_answers() -> None:
    plugin = policy(ReversePolicy())
    chosen = plugin.select_nics(SelectionRequest(network=NETWORK, nics=NICS))
    assert [n.name for n in chosen] == ["eth2", "eth1"]
    assert plugin.info.hooks == ("multinic_select_nics",)
    assert (plugin.info.distribution, plugin.info.version) == ("test-dist", "1.2.3")


def test_a_hook_with_an_argument_the_spec_lacks_fails_at_load_naming_the_package() -> None:
    class WrongArgs:
        @hookimpl
        def multinic_select_nics(self, request: Any, extra: Any) -> list[SelectedNic]:
            return []

    with pytest.raises(PluginError, match=r"attach policy 'test' from test-dist.*extra"):
        policy(WrongArgs())


def test_a_misspelled_hook_fails_at_load() -> None:
    class Typo(ReversePolicy):
        @hookimpl
        def multinic_select_nic(self, request: Any) -> list[SelectedNic]:
            return []

    with pytest.raises(PluginError, match="multinic_select_nic"):
        policy(Typo())


def test_a_plugin_missing_its_roles_hook_fails_at_load() -> None:
    class Nothing:
        pass

    with pytest.raises(PluginError, match=r"does not implement required hook.*select_nics"):
        policy(Nothing())


def test_a_plugin_that_crashes_is_reported_by_name_and_package() -> None:
    class Crashing:
        @hookimpl
        def multinic_select_nics(self, request: Any) -> list[SelectedNic]:
            raise KeyError("boom")

    with pytest.raises(PluginError, match=r"'test' \(test-dist\) failed in multinic_select_nics"):
        policy(Crashing()).select_nics(SelectionRequest(network=NETWORK, nics=NICS))


def test_a_plugins_own_multinic_error_passes_through_unchanged() -> None:
    class Refusing:
        @hookimpl
        def multinic_select_nics(self, request: Any) -> list[SelectedNic]:
            raise SelectionError("no NIC of class fast")

    with pytest.raises(SelectionError, match="no NIC of class fast"):
        policy(Refusing()).select_nics(SelectionRequest(network=NETWORK, nics=NICS))


def test_a_plugin_that_answers_nothing_is_an_error() -> None:
    class Silent:
        @hookimpl
        def multinic_select_nics(self, request: Any) -> None:
            return None

    with pytest.raises(PluginError, match="returned nothing"):
        policy(Silent()).select_nics(SelectionRequest(network=NETWORK, nics=NICS))


def test_a_plugin_that_is_not_installed_names_what_to_install() -> None:
    with pytest.raises(PluginNotFoundError) as info:
        PluginRegistry().main_plugin("no-such-driver")
    assert str(info.value).startswith("no main plugin 'no-such-driver' installed")
    assert install_hint("multinic.main_plugins", "sriov") == "pip install multinic-sriov"
    assert install_hint("multinic.ipam", "multi-nic-ipam") == "pip install multinic-ipam"


def test_built_in_policies_load_through_their_entry_points() -> None:
    registry = PluginRegistry()
    plugin = registry.policy("none")
    assert plugin.info.distribution == "multinic-core"
    assert registry.policy("none") is plugin  # loaded once, kept


# ---------------------------------------------------------------------------
# Entry points of installed distributions, in a subprocess: a fake site dir with
# *.dist-info folders is exactly what pip leaves behind.


def make_dist(site: Path, name: str, version: str, entry_points: str, module: str = "") -> None:
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))
    if module:
        mod_name = name.replace("-", "_")
        (site / f"{mod_name}.py").write_text(textwrap.dedent(module))


def run_multinic(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = "import sys; from multinic_core.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin", "HOME": str(site)},
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


GOOD_POLICY = """
    from multinic_core.hookspecs import hookimpl

    class Policy:
        @hookimpl
        def multinic_select_nics(self, request):
            return []
"""


def test_one_broken_plugin_is_reported_and_does_not_hide_the_others(tmp_path: Path) -> None:
    make_dist(
        tmp_path,
        "good-policy",
        "2.0.1",
        "[multinic.policies]\ngoodOne = good_policy:Policy\n",
        GOOD_POLICY,
    )
    make_dist(
        tmp_path,
        "broken-policy",
        "0.1",
        "[multinic.policies]\nbrokenOne = broken_policy:Policy\n",
        "import module_that_does_not_exist\n",
    )
    result = run_multinic(tmp_path, "plugins", "-o", "json")
    assert result.returncode == 1, result.stderr  # a broken plugin makes the listing fail
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["goodOne"]["distribution"] == "good-policy"
    assert rows["goodOne"]["version"] == "2.0.1"
    assert rows["goodOne"]["error"] == ""
    assert rows["none"]["error"] == ""  # built-ins unaffected
    assert "broken-policy failed to load: ModuleNotFoundError" in rows["brokenOne"]["error"]
    assert "Traceback" not in result.stderr


def test_two_packages_claiming_one_name_is_an_error(tmp_path: Path) -> None:
    for dist in ("first-dist", "second-dist"):
        make_dist(
            tmp_path,
            dist,
            "1.0",
            f"[multinic.policies]\nsame = {dist.replace('-', '_')}:Policy\n",
            GOOD_POLICY,
        )
    result = run_multinic(tmp_path, "plugins", "-o", "json")
    rows = [row for row in json.loads(result.stdout) if row["name"] == "same"]
    assert rows
    assert all("more than one package" in row["error"] for row in rows)
