"""roundRobin: pods take turns over the node's NICs, through multinic's plugin checks."""

from __future__ import annotations

import importlib
import importlib.metadata
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from multinic_policy_example import RoundRobinPolicy

from multinic_core.errors import SelectionError
from multinic_core.hooktypes import PodArgs, SelectionRequest
from multinic_core.models import InterfaceInfo, MultiNicNetwork
from multinic_core.plugins import POLICIES, AttachPolicyPlugin, PluginRegistry, validate_plugin

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def request(
    usage: Mapping[str, int] | None = None,
    cni_args: Mapping[str, Any] | None = None,
    master_nets: tuple[str, ...] = ("10.0.3.0/24", "10.0.1.0/24", "10.0.2.0/24"),
) -> SelectionRequest:
    network = MultiNicNetwork.model_validate(
        {
            "metadata": {"name": "demo"},
            "spec": {
                "ipam": '{"type":"multi-nic-ipam","hostBlock":6,"interfaceBlock":2}',
                "masterNets": list(master_nets),
                "plugin": {"type": "ipvlan"},
                "attachPolicy": {"strategy": "roundRobin"},
            },
        }
    )
    nics = [
        InterfaceInfo.model_validate(
            {"interfaceName": f"eth{i}", "netAddress": f"10.0.{i}.0/24", "hostIP": f"10.0.{i}.5"}
        )
        for i in (1, 2, 3)
    ]
    return SelectionRequest(
        network=network, nics=nics, args=PodArgs.from_cni_args(cni_args), usage=usage or {}
    )


def plugin() -> AttachPolicyPlugin:
    """The policy as multinic loads it: validated against the hook specs."""
    loaded = validate_plugin(
        POLICIES, "roundRobin", RoundRobinPolicy(), "multinic-policy-example", "0.1.0"
    )
    assert isinstance(loaded, AttachPolicyPlugin)
    return loaded


def names(req: SelectionRequest) -> list[str]:
    return [nic.name for nic in plugin().select_nics(req)]


@pytest.mark.parametrize(
    ("attachments", "first"),
    [(0, "eth3"), (1, "eth1"), (2, "eth2"), (3, "eth3"), (7, "eth1")],
)
def test_pods_take_turns_in_masternets_order(attachments: int, first: str) -> None:
    usage = {"eth1": attachments}
    assert names(request(usage=usage, cni_args={"nics": 1})) == [first]


def test_consecutive_pods_spread_over_every_nic() -> None:
    usage: dict[str, int] = {}
    chosen = []
    for _pod in range(6):
        nic = names(request(usage=usage, cni_args={"nics": 1}))[0]
        chosen.append(nic)
        usage[nic] = usage.get(nic, 0) + 1
    assert chosen == ["eth3", "eth1", "eth2", "eth3", "eth1", "eth2"]


def test_several_nics_wrap_around() -> None:
    assert names(request(usage={"eth9": 2}, cni_args={"nics": 2})) == ["eth2", "eth3"]


def test_masters_are_rotated_too() -> None:
    selected = names(request(usage={"eth1": 1}, cni_args={"masters": ["eth2", "eth1"]}))
    assert selected == ["eth1", "eth2"]


def test_shared_pipeline_errors_still_apply() -> None:
    with pytest.raises(SelectionError, match=r"nics=4 but only 3 NIC\(s\)"):
        names(request(cni_args={"nics": 4}))
    with pytest.raises(SelectionError, match=r"no NIC of network 'demo'"):
        names(request(master_nets=("10.9.9.0/24",)))


def test_entry_point_names_this_policy() -> None:
    entry_points = tomllib.loads(PYPROJECT.read_text())["project"]["entry-points"]
    target = entry_points["multinic.policies"]["roundRobin"]
    module, _, attr = target.partition(":")
    assert getattr(importlib.import_module(module), attr) is RoundRobinPolicy


def test_installed_policy_is_discoverable() -> None:
    try:
        importlib.metadata.distribution("multinic-policy-example")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("multinic-policy-example is not pip-installed in this environment")
    loaded = PluginRegistry().policy("roundRobin")
    assert (loaded.info.distribution, loaded.info.version) == ("multinic-policy-example", "0.1.0")
    assert [n.name for n in loaded.select_nics(request(usage={"eth1": 1}))] == [
        "eth1",
        "eth2",
        "eth3",
    ]
