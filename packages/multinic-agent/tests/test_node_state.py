"""The file-backed node state: what tests and the simulated cluster write for an agent."""

from __future__ import annotations

import json
import os
from pathlib import Path

from multinic_agent.node_state import FileNodeState

STATE = {
    "nics": [{"interfaceName": "eth1", "netAddress": "10.0.1.0/24", "hostIP": "10.0.1.11"}],
    "ippools": [
        {"podCIDR": "192.168.0.0/24", "vlanCIDR": "192.168.0.0/18", "netAttachDef": "demo",
         "hostName": "a", "interfaceName": "eth1"},
        {"podCIDR": "10.9.0.0/24", "vlanCIDR": "10.9.0.0/16", "netAttachDef": "other",
         "hostName": "a", "interfaceName": "eth1"},
    ],
}  # fmt: skip


def write(path: Path, content: str, stamp: int) -> None:
    path.write_text(content)
    os.utime(path, ns=(stamp, stamp))  # distinct mtimes even within one clock tick


def test_pools_per_network_and_reload_on_change(tmp_path: Path) -> None:
    path = tmp_path / "node-state.json"
    state = FileNodeState(path)
    assert state.nics() == []  # no file yet: nothing known, no error
    write(path, json.dumps(STATE), 1_000_000_000)
    assert [p.pod_cidr for p in state.pools_for("demo")] == ["192.168.0.0/24"]
    assert [n.interface_name for n in state.nics()] == ["eth1"]
    write(path, json.dumps({**STATE, "ippools": []}), 2_000_000_000)
    assert state.pools_for("demo") == []


def test_a_broken_file_keeps_the_last_good_state(tmp_path: Path) -> None:
    path = tmp_path / "node-state.json"
    state = FileNodeState(path)
    write(path, json.dumps(STATE), 1_000_000_000)
    assert len(state.pools_for("demo")) == 1
    write(path, '{"ippools": [{"podCIDR": "not a cidr"}]}', 2_000_000_000)
    assert len(state.pools_for("demo")) == 1
    write(path, "{half", 3_000_000_000)
    assert [n.interface_name for n in state.nics()] == ["eth1"]
