"""Merging delegate results and writing them in each CNI spec version."""

from __future__ import annotations

import pytest

from multinic_agent.cni_result import AttachResult, best_common_version, merge_results

NET1_0 = {
    "cniVersion": "1.0.0",
    "interfaces": [{"name": "net1-0", "mac": "aa:00:00:00:00:01", "sandbox": "/run/netns/p"}],
    "ips": [{"address": "192.168.0.1/18", "interface": 0}],
    "routes": [{"dst": "172.31.0.0/16", "gw": "192.168.63.254"}],
    "dns": {},
}
NET1_1_LEGACY = {  # a 0.4.0 delegate: ips carry "version"
    "cniVersion": "0.4.0",
    "interfaces": [{"name": "net1-1", "mac": "aa:00:00:00:00:02", "sandbox": "/run/netns/p"}],
    "ips": [{"version": "6", "address": "fd00::5/64", "interface": 0}],
    "dns": {},
}


def merged() -> AttachResult:
    results = [AttachResult.parse(NET1_0), AttachResult.parse(NET1_1_LEGACY)]
    extra = [
        {"dst": "172.30.0.0/16", "gw": "192.168.63.254"},
        {"dst": "172.30.0.0/16", "gw": "192.168.191.254"},
    ]
    return merge_results(results, extra_routes=extra, dns={"nameservers": ["10.0.0.53"]})


@pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
def test_legacy_versions_carry_ip_version_and_interface_index(version: str) -> None:
    result = merged().render(version)
    assert result["cniVersion"] == version
    assert result["ips"] == [
        {"version": "4", "address": "192.168.0.1/18", "interface": 0},
        {"version": "6", "address": "fd00::5/64", "interface": 1},
    ]


@pytest.mark.parametrize("version", ["1.0.0", "1.1.0"])
def test_1x_versions_have_no_ip_version(version: str) -> None:
    result = merged().render(version)
    assert result["cniVersion"] == version
    assert result["ips"] == [
        {"address": "192.168.0.1/18", "interface": 0},
        {"address": "fd00::5/64", "interface": 1},
    ]
    assert [i["name"] for i in result["interfaces"]] == ["net1-0", "net1-1"]


def test_multipath_routes_are_listed_once_per_gateway() -> None:
    result = merged().render("1.0.0")
    assert result["routes"] == [
        {"dst": "172.31.0.0/16", "gw": "192.168.63.254"},
        {"dst": "172.30.0.0/16", "gw": "192.168.63.254"},
        {"dst": "172.30.0.0/16", "gw": "192.168.191.254"},
    ]
    assert result["dns"] == {"nameservers": ["10.0.0.53"]}


def test_delegate_version_is_the_newest_it_shares() -> None:
    debian = ["0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0"]
    assert best_common_version("1.1.0", debian) == "1.0.0"
    assert best_common_version("0.3.1", debian) == "0.3.1"
    assert best_common_version("0.3.0", ["0.4.0", "1.0.0"]) is None
