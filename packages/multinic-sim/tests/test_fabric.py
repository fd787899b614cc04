"""The simulated fabric on a real kernel: hosts reach each other on every NIC; teardown is total."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator

import pytest

from multinic_sim.fabric import FabricError, FabricLayout, build, leftovers, run_ip, teardown


@pytest.fixture
def layout() -> Iterator[FabricLayout]:
    fabric = FabricLayout(hosts=3, nics=2, prefix=f"t{secrets.token_hex(3)}")
    yield fabric
    teardown(fabric.prefix)


@pytest.mark.root
def test_every_host_reaches_every_other_host_on_every_nic(layout: FabricLayout) -> None:
    build(layout)
    assert leftovers(layout.prefix) == sorted(layout.all_netns)
    for src in range(layout.hosts):
        for dst in range(layout.hosts):
            for nic in range(layout.nics):
                if src == dst:
                    continue
                ping = subprocess.run(
                    ["ip", "netns", "exec", layout.host_netns(src), "ping", "-c", "1", "-W", "2",
                     "-I", layout.nic_name(nic), layout.nic_address(dst, nic)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                assert ping.returncode == 0, ping.stdout + ping.stderr
    addresses = run_ip("-n", layout.host_netns(1), "-4", "-o", "addr", "show", "dev", "eth2")
    assert "10.0.2.12/24" in addresses


@pytest.mark.root
def test_teardown_leaves_nothing_and_building_twice_is_refused(layout: FabricLayout) -> None:
    build(layout)
    with pytest.raises(FabricError, match="already exist: run `multinic-sim down`"):
        build(layout)
    assert sorted(teardown(layout.prefix)) == sorted(layout.all_netns)
    assert leftovers(layout.prefix) == []
    links = run_ip("-o", "link", "show")
    assert f"{layout.prefix}-" not in links
    assert teardown(layout.prefix) == []  # idempotent


def test_layout_names_and_limits() -> None:
    layout = FabricLayout(hosts=3, nics=2)
    assert [layout.nic_address(h, 0) for h in range(3)] == ["10.0.1.11", "10.0.1.12", "10.0.1.13"]
    assert layout.host_netns(2) == "mnsim-host-2"
    assert layout.nic_network(1) == "10.0.2.0/24"
    with pytest.raises(ValueError, match="prefix"):
        FabricLayout(prefix="Bad-Prefix")
    with pytest.raises(ValueError, match=r"nics must be 1\.\.8"):
        FabricLayout(nics=9)
