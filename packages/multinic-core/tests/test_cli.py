"""The `multinic` command as a user runs it: real process, real files, exit codes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[3]
WORKED = ROOT / "examples" / "worked"
NETWORK = WORKED / "network.yaml"
HOSTS = WORKED / "hosts.yaml"


def multinic(*args: str | Path) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("multinic", path=str(Path(sys.executable).parent))
    command = [exe] if exe else [sys.executable, "-m", "multinic_core.cli"]
    return subprocess.run(
        [*command, *map(str, args)], capture_output=True, text=True, check=False, timeout=60
    )


def test_plan_prints_the_worked_example_blocks() -> None:
    result = multinic("plan", NETWORK, HOSTS)
    assert result.returncode == 0, result.stderr
    cidr = yaml.safe_load(result.stdout)
    assert (cidr["apiVersion"], cidr["kind"], cidr["metadata"]["name"]) == (
        "multinic.fms.io/v1",
        "CIDR",
        "demo",
    )
    blocks = {
        (e["vlanCIDR"], h["hostName"]): h["podCIDR"]
        for e in cidr["spec"]["cidr"]
        for h in e["hosts"]
    }
    assert blocks == {
        ("192.168.0.0/18", "A"): "192.168.0.0/24",
        ("192.168.0.0/18", "B"): "192.168.2.0/24",
        ("192.168.0.0/18", "C"): "192.168.3.0/24",
        ("192.168.128.0/18", "A"): "192.168.128.0/24",
        ("192.168.128.0/18", "B"): "192.168.129.0/24",
        ("192.168.128.0/18", "C"): "192.168.130.0/24",
    }


def test_plan_json_output_and_previous_plan_keep_the_blocks(tmp_path: Path) -> None:
    first = multinic("plan", NETWORK, HOSTS, "-o", "json")
    assert first.returncode == 0, first.stderr
    previous = tmp_path / "cidr.yaml"
    previous.write_text(yaml.safe_dump(json.loads(first.stdout)))
    # Host B leaves: A and C keep their blocks.
    hosts = [h for h in yaml.safe_load_all(HOSTS.read_text()) if h["metadata"]["name"] != "B"]
    fewer = tmp_path / "hosts.yaml"
    fewer.write_text(yaml.safe_dump(hosts))  # a YAML list this time
    again = multinic("plan", NETWORK, fewer, "--previous", previous, "-o", "json")
    assert again.returncode == 0, again.stderr
    pods = [h["podCIDR"] for e in json.loads(again.stdout)["spec"]["cidr"] for h in e["hosts"]]
    assert pods == ["192.168.0.0/24", "192.168.3.0/24", "192.168.128.0/24", "192.168.130.0/24"]


def test_plan_with_pools_lists_what_an_edit_would_strand(tmp_path: Path) -> None:
    """hostBlock 6 -> 8 shrinks A's /24 to a /26: .1 still fits, .100 is stranded."""
    first = multinic("plan", NETWORK, HOSTS, "-o", "json")
    previous = tmp_path / "cidr.yaml"
    previous.write_text(first.stdout)
    pools = tmp_path / "pools.yaml"
    pool = {
        "apiVersion": "multinic.fms.io/v1",
        "kind": "IPPool",
        "metadata": {"name": "demo-192.168.0.0-24"},
        "spec": {
            "podCIDR": "192.168.0.0/24",
            "vlanCIDR": "192.168.0.0/18",
            "netAttachDef": "demo",
            "hostName": "A",
            "interfaceName": "eth1",
            "allocations": [
                {"pod": "fits", "namespace": "default", "index": 1, "address": "192.168.0.1"},
                {"pod": "big", "namespace": "team", "index": 100, "address": "192.168.0.100",
                 "containerID": "c1", "ifName": "net1"},
            ],
        },
    }  # fmt: skip
    pools.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [pool]}))
    edited = yaml.safe_load(NETWORK.read_text())
    ipam = json.loads(edited["spec"]["ipam"])
    edited["spec"]["ipam"] = json.dumps({**ipam, "hostBlock": 8})
    network = tmp_path / "network.yaml"
    network.write_text(yaml.safe_dump(edited))

    result = multinic("plan", network, HOSTS, "--previous", previous, "--pools", pools)
    assert result.returncode == 0, result.stderr
    assert "strands 1 of 2 allocation(s) of demo" in result.stderr
    assert "  team/big 192.168.0.100 (IPPool demo-192.168.0.0-24)" in result.stderr
    assert "default/fits" not in result.stderr
    unchanged = multinic("plan", NETWORK, HOSTS, "--previous", previous, "--pools", pools)
    assert "strands none of the 2 allocation(s) of demo" in unchanged.stderr


def test_routes_prints_host_a_routes_exactly() -> None:
    result = multinic("routes", NETWORK, HOSTS, "--host", "A")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        "192.168.2.0/24 via 10.0.1.12 dev eth1",
        "192.168.3.0/24 via 10.0.1.13 dev eth1",
        "192.168.129.0/24 via 10.0.2.12 dev eth2",
        "192.168.130.0/24 via 10.0.2.13 dev eth2",
    ]


def test_routes_of_an_unknown_host_is_a_clear_error() -> None:
    result = multinic("routes", NETWORK, HOSTS, "--host", "Z")
    assert result.returncode == 2
    assert result.stderr.strip() == "multinic: error: host 'Z' is not in the plan (hosts: A, B, C)"


def test_routes_of_an_l2_network_say_none_are_managed(tmp_path: Path) -> None:
    network = yaml.safe_load(NETWORK.read_text())
    network["spec"]["ipam"] = network["spec"]["ipam"].replace('"l3"', '"l2"')
    path = tmp_path / "l2.yaml"
    path.write_text(yaml.safe_dump(network))
    result = multinic("routes", path, HOSTS, "--host", "A")
    assert result.returncode == 0
    assert result.stdout == ""
    assert "manages no host routes" in result.stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "no such file"),
        ("", "empty file"),
        ("spec: [unclosed", "not valid YAML at line 1"),
        ("- 1\n- 2\n", "expected a MultiNicNetwork object, found list"),
        ("a: 1\n---\nb: 2\n", "expected one MultiNicNetwork, found 2 documents"),
        ("kind: CIDR\nspec: {}\n", "expected kind MultiNicNetwork, found CIDR"),
        (
            "kind: MultiNicNetwork\nmetadata: {name: x}\nspec:\n  subnet: 10.0.0.0/99\n"
            '  ipam: \'{"type": "host-local"}\'\n  plugin: {type: macvlan}\n',
            "MultiNicNetwork x: spec.subnet: '10.0.0.0/99' is not a valid CIDR",
        ),
    ],
)
def test_a_bad_network_file_is_one_line_naming_file_and_problem(
    tmp_path: Path, content: str | None, expected: str
) -> None:
    path = tmp_path / "net.yaml"
    if content is not None:
        path.write_text(content)
    result = multinic("plan", path, HOSTS)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"multinic: error: {path}: ")
    assert expected in lines[0]
    assert result.stdout == ""


def test_a_bad_hosts_file_names_the_host_and_field(tmp_path: Path) -> None:
    hosts = list(yaml.safe_load_all(HOSTS.read_text()))
    hosts[1]["spec"]["interfaces"][0]["hostIP"] = "10.0.1.999"
    path = tmp_path / "hosts.yaml"
    path.write_text(yaml.safe_dump_all(hosts))
    result = multinic("plan", NETWORK, path)
    assert result.returncode == 2
    assert "HostInterface B: spec.interfaces[0].hostIP: '10.0.1.999' is not a valid IP" in (
        result.stderr
    )
    duplicate = tmp_path / "dup.yaml"
    duplicate.write_text(yaml.safe_dump_all([hosts[0], hosts[0]]))
    result = multinic("plan", NETWORK, duplicate)
    assert result.returncode == 2
    assert "HostInterface A listed twice" in result.stderr


def test_help_explains_each_command() -> None:
    result = multinic("--help")
    assert result.returncode == 0
    for command in ("plan", "routes", "plugins", "crds"):
        assert command in result.stdout
    assert "--previous" in multinic("plan", "--help").stdout


def test_plugins_lists_built_in_and_installed_plugins() -> None:
    table = multinic("plugins")
    assert table.returncode == 0, table.stdout + table.stderr
    assert table.stdout.splitlines()[0].split() == [
        "KIND",
        "NAME",
        "DISTRIBUTION",
        "VERSION",
        "STATUS",
    ]
    rows = {
        (r["group"], r["name"]): r for r in json.loads(multinic("plugins", "-o", "json").stdout)
    }
    for policy in ("none", "devClass", "topology", "costOpt", "perfOpt"):
        row = rows[("multinic.policies", policy)]
        assert (row["distribution"], row["error"]) == ("multinic-core", "")
        assert row["hooks"] == ["multinic_select_nics"]
        assert any(
            line.split()[2:4] == [policy, "multinic-core"] for line in table.stdout.splitlines()
        )
