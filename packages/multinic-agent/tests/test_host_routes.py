"""Host route tables on a real (namespaced) kernel: diff, never flush; main untouched."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from multinic_agent.host_routes import (
    TABLE_RANGE,
    HostRouteTables,
    RouteTableError,
    TableRegistry,
    check_table,
)
from multinic_core.routes import HostRoute

pytestmark = pytest.mark.root

WORKED_ROUTES_OF_A = [
    HostRoute("192.168.2.0/24", "10.0.1.12", "eth1"),
    HostRoute("192.168.3.0/24", "10.0.1.13", "eth1"),
    HostRoute("192.168.129.0/24", "10.0.2.12", "eth2"),
    HostRoute("192.168.130.0/24", "10.0.2.13", "eth2"),
]


def ip(netns: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", netns, *args], check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def host_netns() -> Iterator[str]:
    """A host namespace with eth1 (10.0.1.11/24) and eth2 (10.0.2.11/24), veth-backed."""
    name = f"mnt-routes-{uuid.uuid4().hex[:8]}"
    peer = f"{name}-fab"
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "netns", "add", peer], check=True)
    try:
        for index, nic in ((1, "eth1"), (2, "eth2")):
            ip(name, "link", "add", nic, "type", "veth", "peer", "name", f"p{index}", "netns", peer)
            ip(name, "addr", "add", f"10.0.{index}.11/24", "dev", nic)
            ip(name, "link", "set", nic, "up")
            ip(peer, "link", "set", f"p{index}", "up")
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)
        subprocess.run(["ip", "netns", "del", peer], check=False)


def table_lines(netns: str, table: int) -> list[str]:
    return sorted(
        " ".join(line.split()[:5])
        for line in ip(netns, "route", "show", "table", str(table)).splitlines()
    )


def test_reconcile_programs_the_worked_example_routes_and_rule(
    host_netns: str, tmp_path: Path
) -> None:
    main_before = ip(host_netns, "route", "show", "table", "main")
    tables = HostRouteTables(tmp_path, netns=host_netns)
    sync = tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A)
    assert sync.ok, sync.errors
    assert len(sync.added) == 4
    assert sync.table in TABLE_RANGE
    assert table_lines(host_netns, sync.table) == sorted(
        [
            "192.168.2.0/24 via 10.0.1.12 dev eth1",
            "192.168.3.0/24 via 10.0.1.13 dev eth1",
            "192.168.129.0/24 via 10.0.2.12 dev eth2",
            "192.168.130.0/24 via 10.0.2.13 dev eth2",
        ]
    )
    rules = ip(host_netns, "rule", "show")
    assert f"from 192.168.0.0/16 lookup {sync.table}" in rules
    assert ip(host_netns, "route", "show", "table", "main") == main_before


def test_reconcile_is_a_diff_not_a_flush(host_netns: str, tmp_path: Path) -> None:
    tables = HostRouteTables(tmp_path, netns=host_netns)
    tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A)
    again = tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A)
    assert (again.added, again.replaced, again.removed, again.kept) == ((), (), (), 4)
    # C leaves, D joins, B's eth2 gateway moves: only those routes change.
    changed = [
        HostRoute("192.168.2.0/24", "10.0.1.12", "eth1"),
        HostRoute("192.168.4.0/24", "10.0.1.14", "eth1"),
        HostRoute("192.168.129.0/24", "10.0.2.22", "eth2"),
    ]
    sync = tables.reconcile("demo", "192.168.0.0/16", changed)
    assert sync.added == ("192.168.4.0/24 via 10.0.1.14 dev eth1",)
    assert sync.replaced == ("192.168.129.0/24 via 10.0.2.22 dev eth2",)
    assert sorted(sync.removed) == [
        "192.168.130.0/24 via 10.0.2.13",
        "192.168.3.0/24 via 10.0.1.13",
    ]
    assert sync.kept == 1
    assert table_lines(host_netns, sync.table) == sorted(str(r) for r in changed)


def test_a_plan_change_diffs_against_the_last_pass_and_a_verifying_pass_repairs(
    host_netns: str, tmp_path: Path
) -> None:
    """Without ``verify`` the table is not read back (a join at 10,000 hosts adds its
    routes, not a dump of 80,000): a route removed by hand meanwhile is put back by
    the next verifying pass (the agent's periodic resync), not by a plan change."""
    tables = HostRouteTables(tmp_path, netns=host_netns)
    table = tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A).table
    ip(host_netns, "route", "del", "192.168.3.0/24", "table", str(table))
    joined = [*WORKED_ROUTES_OF_A, HostRoute("192.168.4.0/24", "10.0.1.14", "eth1")]
    sync = tables.reconcile("demo", "192.168.0.0/16", joined, verify=False)
    assert sync.added == ("192.168.4.0/24 via 10.0.1.14 dev eth1",)
    assert sync.kept == 4
    assert "192.168.3.0/24" not in tables.current_routes(table)
    repaired = tables.reconcile("demo", "192.168.0.0/16", joined)
    assert repaired.added == ("192.168.3.0/24 via 10.0.1.13 dev eth1",)
    assert table_lines(host_netns, table) == sorted(str(r) for r in joined)
    # A table this process has not reconciled yet is read all the same.
    fresh = HostRouteTables(tmp_path, netns=host_netns)
    again = fresh.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A, verify=False)
    assert again.removed == ("192.168.4.0/24 via 10.0.1.14",)
    assert table_lines(host_netns, table) == sorted(str(r) for r in WORKED_ROUTES_OF_A)


def test_routes_someone_else_put_in_the_table_are_removed_and_other_tables_ignored(
    host_netns: str, tmp_path: Path
) -> None:
    """The table is read back whole (IPv4, IPv6, a default route); other tables are not ours."""
    tables = HostRouteTables(tmp_path, netns=host_netns)
    table = tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A).table
    ip(host_netns, "route", "add", "192.168.9.0/24", "via", "10.0.1.99", "table", str(table))
    ip(host_netns, "route", "add", "default", "via", "10.0.2.1", "table", str(table))
    ip(host_netns, "-6", "route", "add", "fd00:9::/64", "dev", "eth1", "table", str(table))
    # The same destination as one of ours, in the main table: left alone.
    ip(host_netns, "route", "add", "192.168.2.0/24", "via", "10.0.1.77")
    seen = tables.current_routes(table)
    assert seen["192.168.9.0/24"][0] == "10.0.1.99"
    assert seen["0.0.0.0/0"][0] == "10.0.2.1"
    assert seen["fd00:9::/64"][0] == ""
    assert seen["192.168.2.0/24"][0] == "10.0.1.12"
    sync = tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A)
    assert sorted(sync.removed) == [
        "0.0.0.0/0 via 10.0.2.1",
        "192.168.9.0/24 via 10.0.1.99",
        "fd00:9::/64 via ",
    ]
    assert sync.kept == 4
    assert not sync.added
    assert not sync.replaced
    assert table_lines(host_netns, table) == sorted(str(r) for r in WORKED_ROUTES_OF_A)
    assert ip(host_netns, "-6", "route", "show", "table", str(table)).strip() == ""
    assert "192.168.2.0/24 via 10.0.1.77" in ip(host_netns, "route", "show", "table", "main")


def test_a_restarted_agent_finds_its_table_and_changes_nothing(
    host_netns: str, tmp_path: Path
) -> None:
    first = HostRouteTables(tmp_path, netns=host_netns).reconcile(
        "demo", "192.168.0.0/16", WORKED_ROUTES_OF_A
    )
    restarted = HostRouteTables(tmp_path, netns=host_netns)
    sync = restarted.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A)
    assert sync.table == first.table
    assert not sync.changed
    assert sync.kept == 4
    assert ip(host_netns, "rule", "show").count(f"lookup {sync.table}") == 1


def test_networks_get_separate_tables_and_removal_cleans_up(
    host_netns: str, tmp_path: Path
) -> None:
    tables = HostRouteTables(tmp_path, netns=host_netns)
    demo = tables.reconcile("demo", "192.168.0.0/16", WORKED_ROUTES_OF_A)
    other = tables.reconcile(
        "other", "172.20.0.0/16", [HostRoute("172.20.1.0/24", "10.0.1.12", "eth1")]
    )
    assert demo.table != other.table
    removed = tables.remove("demo")
    assert len(removed.removed) == 4
    assert table_lines(host_netns, demo.table) == []
    assert f"lookup {demo.table}" not in ip(host_netns, "rule", "show")
    assert table_lines(host_netns, other.table) == ["172.20.1.0/24 via 10.0.1.12 dev eth1"]
    assert tables.networks() == ["other"]


def test_a_missing_device_is_reported_and_the_rest_applied(host_netns: str, tmp_path: Path) -> None:
    routes = [*WORKED_ROUTES_OF_A, HostRoute("192.168.200.0/24", "10.0.3.12", "eth3")]
    sync = HostRouteTables(tmp_path, netns=host_netns).reconcile("demo", "192.168.0.0/16", routes)
    assert not sync.ok
    assert sync.errors == ("192.168.200.0/24 via 10.0.3.12 dev eth3: device eth3 does not exist",)
    assert len(sync.added) == 4


@pytest.mark.parametrize(
    ("network", "routes", "message"),
    [
        ("Demo; reboot", [], "not a valid network"),
        ("demo", [HostRoute("192.168.2.0/24", "10.0.1.12", "eth1; rm -rf /")], "not an interface"),
        ("demo", [HostRoute("192.168.2.7/24", "10.0.1.12", "eth1")], "not a network address"),
        ("demo", [HostRoute("192.168.2.0/24", "gateway", "eth1")], "route 192.168.2.0/24"),
    ],
)
def test_bad_input_is_refused_before_anything_changes(
    host_netns: str, tmp_path: Path, network: str, routes: list[HostRoute], message: str
) -> None:
    with pytest.raises(RouteTableError, match=message):
        HostRouteTables(tmp_path, netns=host_netns).reconcile(network, "192.168.0.0/16", routes)
    assert not (tmp_path / "route-tables.json").exists()


@pytest.mark.parametrize("table", [0, 253, 254, 255, 100, TABLE_RANGE.stop])
def test_system_tables_are_never_used(table: int, tmp_path: Path) -> None:
    with pytest.raises(RouteTableError, match="never touched"):
        check_table(table)
    path = tmp_path / "route-tables.json"
    path.write_text(json.dumps({"tables": {"demo": table}}))
    with pytest.raises(RouteTableError):
        TableRegistry.load(path)
