"""Host routes computed from a CIDR plan (SPEC section 7)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from multinic_core.models import CIDR, CIDRSpec, load_resource
from multinic_core.routes import HostRoute, host_routes

WORKED = Path(__file__).resolve().parents[3] / "examples" / "worked"


@pytest.fixture
def worked_plan() -> CIDRSpec:
    """The worked example's expected plan (hosts A, B, C on eth1/eth2)."""
    return load_resource(CIDR, yaml.safe_load((WORKED / "cidr.yaml").read_text())).spec


def test_route_prints_like_ip_route() -> None:
    route = HostRoute(dst="192.168.2.0/24", gateway="10.0.1.12", device="eth1")
    assert str(route) == "192.168.2.0/24 via 10.0.1.12 dev eth1"


def test_worked_example_routes_on_each_host(worked_plan: CIDRSpec) -> None:
    assert [str(r) for r in host_routes(worked_plan, "A")] == [
        "192.168.2.0/24 via 10.0.1.12 dev eth1",
        "192.168.3.0/24 via 10.0.1.13 dev eth1",
        "192.168.129.0/24 via 10.0.2.12 dev eth2",
        "192.168.130.0/24 via 10.0.2.13 dev eth2",
    ]
    assert [str(r) for r in host_routes(worked_plan, "C")] == [
        "192.168.0.0/24 via 10.0.1.11 dev eth1",
        "192.168.2.0/24 via 10.0.1.12 dev eth1",
        "192.168.128.0/24 via 10.0.2.11 dev eth2",
        "192.168.129.0/24 via 10.0.2.12 dev eth2",
    ]


def test_host_outside_the_plan_gets_no_routes(worked_plan: CIDRSpec) -> None:
    assert host_routes(worked_plan, "Z") == []


def test_routes_use_this_hosts_own_nic_name(worked_plan: CIDRSpec) -> None:
    # B's NIC on the first network is named differently: only B's routes change.
    worked_plan.cidr[0].hosts[1].interface_name = "ens1f0"
    assert [r.device for r in host_routes(worked_plan, "B")] == ["ens1f0", "ens1f0", "eth2", "eth2"]
    assert {r.device for r in host_routes(worked_plan, "A")} == {"eth1", "eth2"}


def test_only_entries_the_host_is_on(worked_plan: CIDRSpec) -> None:
    # A loses its second NIC: no routes on eth2, and nobody routes to A's old block there.
    worked_plan.cidr[1].hosts = [h for h in worked_plan.cidr[1].hosts if h.host_name != "A"]
    assert [str(r) for r in host_routes(worked_plan, "A")] == [
        "192.168.2.0/24 via 10.0.1.12 dev eth1",
        "192.168.3.0/24 via 10.0.1.13 dev eth1",
    ]
    assert "192.168.128.0/24" not in {r.dst for r in host_routes(worked_plan, "B")}


def test_host_without_address_cannot_be_a_gateway(worked_plan: CIDRSpec) -> None:
    worked_plan.cidr[0].hosts[2].host_ip = ""  # C's eth1 has no address (unmanaged NIC)
    assert "192.168.3.0/24" not in {r.dst for r in host_routes(worked_plan, "A")}
    # C itself still reaches the others.
    assert [r.dst for r in host_routes(worked_plan, "C")][:2] == [
        "192.168.0.0/24",
        "192.168.2.0/24",
    ]


def test_host_ip_with_prefix_gives_a_plain_gateway(worked_plan: CIDRSpec) -> None:
    worked_plan.cidr[0].hosts[1].host_ip = "10.0.1.12/24"
    assert host_routes(worked_plan, "A")[0] == HostRoute("192.168.2.0/24", "10.0.1.12", "eth1")
