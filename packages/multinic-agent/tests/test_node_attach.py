"""A node end to end: the shim exec'd like a runtime does, the agent in a host
namespace with veth NICs, the macvlan delegates (in the agent's process, the
default; the tests that inject failing binaries exec the real Debian ones),
and what a user would see in the pod's namespace and on the host.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.root

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


def multipath(routes: list[dict[str, Any]], dst: str) -> list[tuple[str, str]]:
    route = next(r for r in routes if r["dst"] == dst)
    return sorted((hop["gateway"], hop["dev"]) for hop in route.get("nexthops", []))


def test_add_gives_the_pod_one_interface_per_nic(runtime: Any, pods: Any, agent: Any) -> None:
    pod = pods.new()
    outcome = runtime.add("c1", pod)
    assert outcome.status == 0, outcome
    result = outcome.json
    assert [i["name"] for i in result["interfaces"]] == ["net1-0", "net1-1"]
    assert all(i["sandbox"] == pod for i in result["interfaces"])
    assert result["ips"] == [
        {"address": "192.168.0.1/18", "interface": 0},
        {"address": "192.168.128.1/18", "interface": 1},
    ]
    # inside the pod: the addresses with the vlanCIDR prefix (/18), on the right NIC
    assert pods.addresses(pod) == {
        "net1-0": ["192.168.0.1/18"],
        "net1-1": ["192.168.128.1/18"],
    }
    routes = pods.routes(pod)
    assert multipath(routes, "172.30.0.0/16") == [
        ("192.168.191.254", "net1-1"),
        ("192.168.63.254", "net1-0"),
    ]
    single = next(r for r in routes if r["dst"] == "172.31.0.0/16")
    assert (single["gateway"], single["dev"]) == ("192.168.63.254", "net1-0")
    # the result lists the multipath destination once per gateway
    assert [r for r in result["routes"] if r["dst"] == "172.30.0.0/16"] == [
        {"dst": "172.30.0.0/16", "gw": "192.168.63.254"},
        {"dst": "172.30.0.0/16", "gw": "192.168.191.254"},
    ]
    # the macvlans went into the pod; the host keeps only its own links
    assert sorted(agent.host.links()) == ["eth1", "eth1p", "eth2", "eth2p", "lo"]
    assert agent.held_addresses() == {("c1", "net1"): ["192.168.0.1", "192.168.128.1"]}
    assert agent.records() == ["c1_net1.json"]


def test_pod_args_reach_delegates_that_would_refuse_unknown_keys(
    runtime: Any, pods: Any, netconf: Any
) -> None:
    pod = pods.new()
    env = runtime.env("ADD", "c-args", pod)
    env["CNI_ARGS"] = (
        "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_UID=u1"  # no IgnoreUnknown
    )
    outcome = runtime.run(env, netconf())
    assert outcome.status == 0, outcome
    assert sorted(pods.addresses(pod)) == ["net1-0", "net1-1"]


def test_repeated_add_returns_the_same_attachment(runtime: Any, pods: Any, agent: Any) -> None:
    pod = pods.new()
    first = runtime.add("c1", pod)
    again = runtime.add("c1", pod)
    assert (first.status, again.status) == (0, 0)
    assert again.json["ips"] == first.json["ips"]
    assert agent.held_addresses() == {("c1", "net1"): ["192.168.0.1", "192.168.128.1"]}


@pytest.mark.parametrize("version", VERSIONS)
def test_result_in_the_requested_version(
    runtime: Any, pods: Any, netconf: Any, version: str
) -> None:
    pod = pods.new()
    outcome = runtime.add("c1", pod, netconf(version))
    assert outcome.status == 0, outcome
    result = outcome.json
    assert result["cniVersion"] == version
    names = [i["name"] for i in result["interfaces"]]
    for ip, nic in zip(result["ips"], ["net1-0", "net1-1"], strict=True):
        assert names[ip["interface"]] == nic
        if version in ("0.3.0", "0.3.1", "0.4.0"):
            assert ip["version"] == "4"
        else:
            assert "version" not in ip
    assert pods.addresses(pod) == {"net1-0": ["192.168.0.1/18"], "net1-1": ["192.168.128.1/18"]}
    assert runtime.delete("c1", pod, netconf(version)).status == 0


def test_del_removes_interfaces_and_releases_addresses(runtime: Any, pods: Any, agent: Any) -> None:
    pod = pods.new()
    assert runtime.add("c1", pod).status == 0
    outcome = runtime.delete("c1", pod)
    assert (outcome.status, outcome.stdout) == (0, "")
    assert pods.links(pod) == ["lo"]
    assert agent.held_addresses() == {}
    assert agent.records() == []
    assert runtime.delete("c1", pod).status == 0  # a second DEL
    # the released .1 is not reused within 60 s: the next pod gets .2
    other = pods.new()
    assert runtime.add("c2", other).json["ips"][0]["address"] == "192.168.0.2/18"


def test_del_after_the_netns_is_gone_releases_addresses(
    runtime: Any, pods: Any, agent: Any
) -> None:
    pod = pods.new()
    assert runtime.add("c1", pod).status == 0
    pods.remove(pod)
    assert runtime.delete("c1", pod).status == 0
    assert agent.held_addresses() == {}
    assert agent.records() == []
    assert sorted(agent.host.links()) == ["eth1", "eth1p", "eth2", "eth2p", "lo"]


def test_del_of_an_unknown_container_succeeds(runtime: Any) -> None:
    outcome = runtime.delete("never-added", "")
    assert (outcome.status, outcome.stdout) == (0, "")


def test_check_passes_then_detects_a_deleted_interface(
    runtime: Any, pods: Any, netconf: Any
) -> None:
    pod = pods.new()
    config = netconf("1.0.0")
    assert runtime.add("c1", pod, config).status == 0
    assert runtime.check("c1", pod, config).status == 0
    subprocess.run(["ip", "-n", Path(pod).name, "link", "del", "net1-1"], check=True)
    outcome = runtime.check("c1", pod, config)
    assert outcome.status == 1
    assert outcome.json["code"] == 999
    assert "interface net1-1 is missing" in outcome.json["msg"]


def test_check_detects_a_removed_multipath_route(runtime: Any, pods: Any) -> None:
    pod = pods.new()
    assert runtime.add("c1", pod).status == 0
    subprocess.run(["ip", "-n", Path(pod).name, "route", "del", "172.30.0.0/16"], check=True)
    outcome = runtime.check("c1", pod)
    assert outcome.status == 1
    assert "multipath route 172.30.0.0/16 is missing" in outcome.json["msg"]


def test_check_detects_a_removed_address(runtime: Any, pods: Any) -> None:
    pod = pods.new()
    assert runtime.add("c1", pod).status == 0
    subprocess.run(
        ["ip", "-n", Path(pod).name, "addr", "del", "192.168.0.1/18", "dev", "net1-0"], check=True
    )
    outcome = runtime.check("c1", pod)
    assert outcome.status == 1
    assert "address 192.168.0.1/18 is missing from net1-0" in outcome.json["msg"]


def failing_second_nic(directory: Path) -> str:
    """A CNI_PATH whose ``macvlan`` fails ADD for net1-1 and is the real one otherwise."""
    directory.mkdir()
    wrapper = directory / "macvlan"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$CNI_COMMAND" = ADD ] && [ "$CNI_IFNAME" = net1-1 ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","code":999,"msg":"injected failure on net1-1"}\'\n'
        "  exit 1\n"
        "fi\n"
        "exec /usr/lib/cni/macvlan\n"
    )
    wrapper.chmod(0o755)
    return str(directory)


def test_failure_on_the_second_nic_rolls_everything_back(
    runtime: Any, pods: Any, agent: Any, tmp_path: Path
) -> None:
    runtime.cni_path = failing_second_nic(tmp_path / "failing")
    agent.stop()
    agent.options = ["--exec-delegates"]  # the injected failure is a binary
    agent.start()
    pod = pods.new()
    outcome = runtime.add("c1", pod)
    assert outcome.status == 1
    assert outcome.json["code"] == 999
    assert "delegate macvlan ADD for net1-1" in outcome.json["msg"]
    assert "injected failure" in outcome.json["msg"]
    # the first NIC (which the delegate did attach) is gone again, nothing is held
    assert pods.links(pod) == ["lo"]
    assert agent.held_addresses() == {}
    assert agent.records() == []
    assert sorted(agent.host.links()) == ["eth1", "eth1p", "eth2", "eth2p", "lo"]
    # and the node still works once the fault is gone
    runtime.cni_path = "/usr/lib/cni"
    assert runtime.add("c1", pod).status == 0


def test_gc_releases_attachments_not_in_the_valid_list(
    runtime: Any, pods: Any, agent: Any, netconf: Any
) -> None:
    kept, dropped = pods.new(), pods.new()
    assert runtime.add("kept", kept).status == 0
    assert runtime.add("dropped", dropped).status == 0
    config = netconf(
        "1.1.0", **{"cni.dev/valid-attachments": [{"containerID": "kept", "ifname": "net1"}]}
    )
    outcome = runtime.run(runtime.env("GC", ""), config)
    assert (outcome.status, outcome.stdout) == (0, ""), outcome
    assert list(agent.held_addresses()) == [("kept", "net1")]
    assert agent.records() == ["kept_net1.json"]
    assert pods.links(dropped) == ["lo"]
    assert sorted(pods.links(kept)) == ["lo", "net1-0", "net1-1"]


def test_status_reports_missing_pools(runtime: Any, agent: Any, netconf: Any) -> None:
    ready = runtime.run(runtime.env("STATUS", ""), netconf("1.1.0"))
    assert (ready.status, ready.stdout) == (0, "")
    agent.write_node_state(pools=[])
    waiting = runtime.run(runtime.env("STATUS", ""), netconf("1.1.0"))
    assert waiting.status == 1
    assert waiting.json["code"] == 50


@pytest.mark.parametrize(
    ("stdin", "code"),
    [
        ("{oops", 6),
        (json.dumps({"cniVersion": "2.0.0", "name": "x"}), 1),
        (json.dumps({"cniVersion": "1.0.0", "name": "x"}), 7),
    ],
)
def test_bad_input_through_the_shim(runtime: Any, pods: Any, stdin: str, code: int) -> None:
    outcome = runtime.run(runtime.env("ADD", "c1", pods.new()), stdin)
    assert outcome.status == 1
    assert outcome.json["code"] == code
    assert "Traceback" not in outcome.stdout + outcome.stderr


def test_socket_is_root_only_and_no_tcp_listener_but_the_health_port(agent: Any) -> None:
    assert agent.process is not None
    info = os.stat(agent.socket)
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert info.st_uid == 0
    assert stat.S_IMODE(os.stat(agent.socket.parent).st_mode) == 0o700
    marker = f"pid={agent.process.pid},"
    for netns, ports in ((agent.host.netns, {"11000"}), (None, set())):
        prefix = ["ip", "netns", "exec", netns] if netns else []
        tcp = subprocess.run([*prefix, "ss", "-ltnpH"], capture_output=True, text=True, check=True)
        # Only /healthz, /readyz and /metrics (test_health_metrics.py): no CNI over TCP.
        listening = {line.split()[3].rsplit(":", 1)[1] for line in tcp.stdout.splitlines()
                     if marker in line}  # fmt: skip
        assert listening == ports
    # positive control: ss does see the agent's unix socket (in its namespace)
    unix = subprocess.run(
        ["ip", "netns", "exec", agent.host.netns, "ss", "-lxpH"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert any(marker in line and str(agent.socket) in line for line in unix.stdout.splitlines())


def test_ipvlan_end_to_end(runtime: Any, pods: Any, agent: Any, netconf: Any) -> None:
    probe = subprocess.run(
        ["ip", "-n", agent.host.netns, "link", "add", "ipvl0", "link", "eth1", "type", "ipvlan"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(f"this kernel has no ipvlan: {probe.stderr.strip()}")
    subprocess.run(["ip", "-n", agent.host.netns, "link", "del", "ipvl0"], check=True)
    pod = pods.new()
    config = netconf(plugin={"cniVersion": "1.0.0", "type": "ipvlan", "mode": "l2"})
    outcome = runtime.add("c1", pod, config)
    assert outcome.status == 0, outcome
    assert pods.addresses(pod) == {"net1-0": ["192.168.0.1/18"], "net1-1": ["192.168.128.1/18"]}
    assert runtime.delete("c1", pod, config).status == 0
    assert pods.links(pod) == ["lo"]


def test_host_device_moves_the_nic_into_the_pod_and_back(
    runtime: Any, pods: Any, agent: Any, netconf: Any
) -> None:
    """The device hand-off path (SR-IOV VFs, host devices) with a veth as the device."""
    config = netconf(
        plugin={"cniVersion": "1.0.0", "type": "host-device"},
        ipam={"type": "host-device-ipam"},
        multiNICIPAM=False,
        args={"cni": {"masters": ["eth2"]}},
    )
    pod = pods.new()
    outcome = runtime.add("c1", pod, config)
    assert outcome.status == 0, outcome
    assert outcome.json["ips"] == [{"address": "10.0.2.11/24", "interface": 0}]
    # the host's eth2 is now the pod's net1-0, with the host address
    assert pods.addresses(pod) == {"net1-0": ["10.0.2.11/24"]}
    assert "eth2" not in agent.host.links()
    assert runtime.delete("c1", pod, config).status == 0
    assert pods.links(pod) == ["lo"]
    assert "eth2" in agent.host.links()
    assert agent.records() == []


def test_pass_through_ipam_is_run_and_released_by_the_delegates(
    runtime: Any, pods: Any, agent: Any, netconf: Any, tmp_path: Path
) -> None:
    """host-local given unchanged to both NICs; DEL without netns still frees its leases."""
    leases = tmp_path / "host-local"
    ipam = {"type": "host-local", "dataDir": str(leases),
            "ranges": [[{"subnet": "10.77.0.0/24"}]]}  # fmt: skip
    config = netconf(ipam=ipam, multiNICIPAM=False)
    pod = pods.new()
    outcome = runtime.add("c1", pod, config)
    assert outcome.status == 0, outcome
    given = sorted(ip["address"] for ip in outcome.json["ips"])
    assert given == ["10.77.0.2/24", "10.77.0.3/24"]
    assert sorted(a for found in pods.addresses(pod).values() for a in found) == given
    assert sorted(p.name for p in (leases / "demo").iterdir() if p.name.startswith("10.")) == [
        "10.77.0.2",
        "10.77.0.3",
    ]
    pods.remove(pod)
    assert runtime.delete("c1", pod, config).status == 0
    assert [p.name for p in (leases / "demo").iterdir() if p.name.startswith("10.")] == []
    assert agent.records() == []


def test_multi_config_runs_a_different_ipam_per_nic(
    runtime: Any, pods: Any, agent: Any, netconf: Any, tmp_path: Path
) -> None:
    """eth1 from host-local, eth2 a static address of its own, through the real delegates."""
    leases = tmp_path / "host-local"
    ipam = {
        "type": "multi-config",
        "args": {
            "eth1": {"type": "host-local", "dataDir": str(leases),
                     "ranges": [[{"subnet": "10.78.0.0/24"}]]},
            "eth2": {"type": "static", "addresses": [{"address": "10.79.0.9/24"}]},
        },
    }  # fmt: skip
    config = netconf(ipam=ipam, multiNICIPAM=False)
    pod = pods.new()
    outcome = runtime.add("c1", pod, config)
    assert outcome.status == 0, outcome
    assert pods.addresses(pod) == {"net1-0": ["10.78.0.2/24"], "net1-1": ["10.79.0.9/24"]}
    assert runtime.delete("c1", pod, config).status == 0
    assert [p.name for p in (leases / "demo").iterdir() if p.name.startswith("10.")] == []
    assert agent.records() == []


def test_del_after_an_agent_restart_uses_the_durable_record(
    runtime: Any, pods: Any, agent: Any
) -> None:
    pod = pods.new()
    assert runtime.add("c1", pod).status == 0
    agent.stop()
    agent.start()
    assert runtime.check("c1", pod).status == 0
    assert runtime.delete("c1", pod).status == 0
    assert pods.links(pod) == ["lo"]
    assert agent.held_addresses() == {}


def test_failed_delegate_del_keeps_the_record_for_the_retry(
    runtime: Any, pods: Any, agent: Any, tmp_path: Path
) -> None:
    wrappers = tmp_path / "wrappers"
    wrappers.mkdir()
    refuse = tmp_path / "refuse-del"
    (wrappers / "macvlan").write_text(
        "#!/bin/sh\n"
        f'if [ "$CNI_COMMAND" = DEL ] && [ -e {refuse} ]; then\n'
        '  echo \'{"cniVersion":"1.0.0","code":999,"msg":"DEL refused"}\'\n'
        "  exit 1\n"
        "fi\n"
        "exec /usr/lib/cni/macvlan\n"
    )
    (wrappers / "macvlan").chmod(0o755)
    runtime.cni_path = str(wrappers)
    agent.stop()
    agent.options = ["--exec-delegates"]  # the refusing DEL is a binary
    agent.start()
    pod = pods.new()
    assert runtime.add("c1", pod).status == 0
    refuse.touch()
    outcome = runtime.delete("c1", pod)
    assert outcome.status == 1
    assert "delegate macvlan DEL for net1-" in outcome.json["msg"]
    assert "DEL refused" in outcome.json["msg"]
    # nothing was released: the runtime retries DEL, which then finds the record
    assert agent.records() == ["c1_net1.json"]
    assert list(agent.held_addresses()) == [("c1", "net1")]
    refuse.unlink()
    assert runtime.delete("c1", pod).status == 0
    assert pods.links(pod) == ["lo"]
    assert agent.held_addresses() == {}


def test_concurrent_adds_of_one_container_make_one_attachment(
    runtime: Any, pods: Any, agent: Any
) -> None:
    pod = pods.new()
    with ThreadPoolExecutor(4) as pool:
        outcomes = list(pool.map(lambda _: runtime.add("c1", pod), range(4)))
    assert [o.status for o in outcomes] == [0, 0, 0, 0]
    assert len({json.dumps(o.json["ips"]) for o in outcomes}) == 1
    assert sorted(pods.links(pod)) == ["lo", "net1-0", "net1-1"]
    assert list(agent.held_addresses()) == [("c1", "net1")]
