"""The agent's in-process macvlan delegate against ``--exec-delegates``, end to end.

Two agents serve the same host (its NICs, node state and pools): one as
shipped, which runs the macvlan delegates in its own process, and one with
``--exec-delegates``, which execs the reference binaries.  The same pod
config through each, one after the other, must give the same pod: result,
interfaces, addresses, routes (the agent's multipath ones included),
sysctls, CHECK, DEL, rollback.
"""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from .conftest import SYSTEM_CNI, Agent, Host, Pods, Runtime, ip, ip_json, netconf, netns_name

pytestmark = pytest.mark.root


@dataclass
class ModeAgent(Agent):
    """An agent with its own delegate directory, sharing the host with another one."""

    cni_dir: str = SYSTEM_CNI

    def command(self) -> list[str]:
        command = super().command()
        command[command.index("--cni-path") + 1] = self.cni_dir
        # Two agents share the host namespace: no health port for either.
        return [*command[:-1], "--health-address", "off", command[-1]]


@pytest.fixture
def agents(host: Host, tmp_path: Path) -> Iterator[dict[str, ModeAgent]]:
    started: dict[str, ModeAgent] = {}
    try:
        for mode, options in (("in-process", []), ("exec", ["--exec-delegates"])):
            agent = ModeAgent(host, tmp_path / mode, options=options)
            agent.workdir.mkdir()
            agent.write_node_state()
            agent.start()
            started[mode] = agent
        yield started
    finally:
        for agent in started.values():
            agent.stop()


_LINK_LOCAL = re.compile(r"^fe80::[0-9a-f:]+$")


def _masked(address: str) -> str:
    return "fe80::<eui64>" if _LINK_LOCAL.match(address) else address


def pod_view(pod: str) -> dict[str, Any]:
    """The pod's interfaces, addresses, routes of every table and sysctls; MACs masked."""
    name = netns_name(pod)
    interfaces = {}
    for link in ip_json(name, "-d", "addr", "show"):
        if link["ifname"] == "lo":
            continue
        ifname = link["ifname"]
        for random_value in ("ifindex", "address", "link_netnsid"):
            link.pop(random_value, None)
        for entry in link["addr_info"]:
            entry.pop("valid_life_time", None)
            entry.pop("preferred_life_time", None)
            entry.pop("tentative", None)
            entry["local"] = _masked(entry["local"])
        values = subprocess.run(
            ["ip", "netns", "exec", name, "cat", f"/sys/class/net/{ifname}/tx_queue_len",
             f"/proc/sys/net/ipv4/conf/{ifname}/arp_notify"],
            capture_output=True, text=True, check=True,
        ).stdout.split()  # fmt: skip
        interfaces[ifname] = {**link, "txqlen": values[0], "arp_notify": values[1]}
    routes = []
    for family in ("-4", "-6"):
        for route in ip_json(name, family, "route", "show", "table", "all"):
            route["dst"] = _masked(route.get("dst", ""))
            if "prefsrc" in route:
                route["prefsrc"] = _masked(route["prefsrc"])
            routes.append(json.dumps(route, sort_keys=True))
    return {"interfaces": interfaces, "routes": sorted(routes)}


def masked_result(result: dict[str, Any], pod: str) -> dict[str, Any]:
    masked = copy.deepcopy(result)
    for interface in masked["interfaces"]:
        assert interface.pop("sandbox") == pod
        assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", interface.pop("mac"))
    return masked


def attach_and_detach(runtime: Runtime, pods: Pods, config: dict[str, Any]) -> dict[str, Any]:
    pod = pods.new()
    added = runtime.add("c1", pod, config)
    assert added.status == 0, (added, runtime.agent.log()[-2000:])
    view = pod_view(pod)
    checked = runtime.check("c1", pod, config)
    deleted = runtime.delete("c1", pod, config)
    assert deleted.status == 0, deleted
    assert pods.links(pod) == ["lo"]
    assert runtime.agent.held_addresses() == {}
    assert runtime.agent.records() == []
    return {
        "result": masked_result(added.json, pod),
        "view": view,
        "check": (checked.status, checked.stdout),
    }


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0"])
def test_in_process_attaches_the_pod_exactly_as_the_exec_delegates(
    agents: dict[str, ModeAgent], installed_shim: Path, pods: Pods, version: str
) -> None:
    config = netconf(version)
    config["plugin"]["mtu"] = 1400
    seen = {
        mode: attach_and_detach(Runtime(installed_shim, agent), pods, config)
        for mode, agent in agents.items()
    }
    assert seen["in-process"]["result"] == seen["exec"]["result"]
    assert seen["in-process"]["view"] == seen["exec"]["view"]
    assert seen["in-process"]["check"] == seen["exec"]["check"] == (0, "")
    # What the comparison covers: both NICs, their MTU, the agent's multipath route.
    view = seen["in-process"]["view"]
    assert sorted(view["interfaces"]) == ["net1-0", "net1-1"]
    assert {i["mtu"] for i in view["interfaces"].values()} == {1400}
    assert any("nexthops" in route for route in view["routes"])


def test_a_failed_attach_rolls_back_alike(
    agents: dict[str, ModeAgent], installed_shim: Path, pods: Pods
) -> None:
    """The second NIC's name is taken in the pod: the same error, the same pod after rollback."""
    outcomes = {}
    for mode, agent in agents.items():
        pod = pods.new()
        ip("-n", netns_name(pod), "link", "add", "net1-1", "type", "veth", "peer", "name", "x")
        failed = Runtime(installed_shim, agent).add("c1", pod)
        assert failed.status == 1, failed
        assert agent.held_addresses() == {}
        assert agent.records() == []
        outcomes[mode] = (failed.json["code"], pods.links(pod))
    assert outcomes["in-process"] == outcomes["exec"]


def test_exec_delegates_runs_the_binaries_and_the_default_does_not(
    host: Host, installed_shim: Path, pods: Pods, tmp_path: Path
) -> None:
    """A delegate directory with macvlan but no static: only the exec'd delegate needs it."""
    cni_dir = tmp_path / "cni"
    cni_dir.mkdir()
    os.symlink(Path(SYSTEM_CNI, "macvlan"), cni_dir / "macvlan")
    outcomes = {}
    for mode, options in (("in-process", []), ("exec", ["--exec-delegates"])):
        agent = ModeAgent(host, tmp_path / mode, options=options, cni_dir=str(cni_dir))
        agent.workdir.mkdir()
        agent.write_node_state()
        agent.start()
        try:
            runtime = Runtime(installed_shim, agent, cni_path=str(cni_dir))
            pod = pods.new()
            outcomes[mode] = runtime.add("c1", pod)
            assert runtime.delete("c1", pod).status == 0
            assert agent.held_addresses() == {}
            if mode == "in-process":
                assert pods.links(pod) == ["lo"]
            # (The exec'd macvlan leaves its links: its own DEL, the rollback's,
            # fails too without static.)
        finally:
            agent.stop()
    assert outcomes["in-process"].status == 0, outcomes["in-process"]
    assert outcomes["exec"].status == 1
    assert "static" in outcomes["exec"].json["msg"], outcomes["exec"]
