"""aws-ipvlan through the registry, as the operator and the agent call it, against
an EC2 endpoint on loopback (moto's server) with faults injected by a proxy.

What is asserted is what a user sees: the NAD and the delegate configs, the
ENIs' private IPs in EC2 (DescribeNetworkInterfaces) after ADD, DEL and failed
ADDs, and the error (its kind, which is the CNI code, and its message).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from multinic_aws.ec2 import Ec2Settings
from multinic_core.errors import ConfigError, MultinicError, PluginError, TryAgainError
from multinic_core.hooktypes import IpamRequest, SelectedNic, StaticCluster
from multinic_core.nad import nad_config
from multinic_core.planner import plan_cidrs, planned_ippools
from multinic_core.plugins import MainPlugin, PluginRegistry
from multinic_ipam.journal import AllocationJournal
from multinic_ipam.plugins import CONTEXT_JOURNAL, CONTEXT_POOLS

from .conftest import (
    CLEAN_ENIS,
    HOST_A,
    MASTER_NETS,
    NETWORK,
    REGION,
    Cloud,
    Fault,
    FaultProxy,
    attachments,
    aws_network,
    hosts,
    settings_args,
)

POD = {"eth1": "10.0.1.4/24", "eth2": "10.0.2.4/24"}
CLEAN = CLEAN_ENIS


# --------------------------------------------------------------------------- configuration


def test_installed_and_discoverable(driver: MainPlugin) -> None:
    assert driver.info.distribution == "multinic-aws"
    assert driver.info.hooks == (
        "multinic_delegate_config",
        "multinic_network_attachment",
        "multinic_nics_attached",
        "multinic_nics_detached",
    )
    assert driver.dependent_objects(aws_network({}), [], StaticCluster()) == []


def test_no_subnet_network_gives_ipvlan_delegates_with_host_subnet_addresses(
    driver: MainPlugin, tmp_path: Path
) -> None:
    """The NAD, the planner's no-subnet blocks, multi-nic-ipam's addresses (with the
    host network's prefix) and the ipvlan delegate per NIC, end to end."""
    network = aws_network(settings_args("http://127.0.0.1:9", max_attempts="3"))
    netconf = nad_config(network, driver.network_attachment(network, StaticCluster()))
    assert netconf["subnet"] == ""
    assert netconf["plugin"] == {
        "cniVersion": "1.0.0",
        "type": "aws-ipvlan",
        "mode": "l2",
        "region": REGION,
        "endpoint_url": "http://127.0.0.1:9",
        "connect_timeout": 1,
        "max_attempts": 3,
    }
    plan = plan_cidrs(network, hosts())
    assert plan.problems == []
    pools = {
        pool.spec.interface_name: pool.spec
        for pool in planned_ippools(plan.spec)
        if pool.spec.host_name == "host-a"
    }
    assert {nic: (p.pod_cidr, p.vlan_cidr) for nic, p in pools.items()} == {
        "eth1": ("10.0.1.0/26", "10.0.1.0/24"),
        "eth2": ("10.0.2.0/26", "10.0.2.0/24"),
    }
    nics = [
        SelectedNic(name=nic, net_address=net, host_ip=HOST_A[nic])
        for nic, net in zip(("eth1", "eth2"), MASTER_NETS, strict=True)
    ]
    sections = (
        PluginRegistry()
        .ipam("multi-nic-ipam")
        .add(
            IpamRequest(
                network=network,
                ipam=netconf["ipam"],
                nics=nics,
                container_id="c1",
                if_name="net1",
                context={
                    CONTEXT_JOURNAL: AllocationJournal(tmp_path),
                    CONTEXT_POOLS: pools,
                    "node": "host-a",
                },
            )
        )
    )
    delegates = [
        driver.delegate_config(netconf, nic, section)
        for nic, section in zip(nics, sections, strict=True)
    ]
    assert delegates == [
        {
            "cniVersion": "1.0.0",
            "name": NETWORK,
            "type": "ipvlan",
            "master": nic,
            "mode": "l2",
            "region": REGION,
            "endpoint_url": "http://127.0.0.1:9",
            "connect_timeout": 1,
            "max_attempts": 3,
            # AWS's reserved .0-.3 and the hosts' addresses excluded; the /24 of the host network.
            "ipam": {"type": "static", "addresses": [{"address": address}], "routes": []},
        }
        for nic, address in POD.items()
    ]


@pytest.mark.parametrize(
    ("args", "subnet", "vlan_mode", "words"),
    [
        ({}, "192.168.0.0/16", "l2", "spec.subnet '192.168.0.0/16' must be empty"),
        ({"mode": "l3"}, "", "l2", "spec.plugin.args.mode 'l3' disagrees with spec.ipam vlanMode"),
        ({"mode": "l9"}, "", "l2", "spec.plugin.args.mode 'l9' must be one of l2, l3, l3s"),
        ({"endpoint_url": "127.0.0.1:5000"}, "", "l2", "must be an http:// or https:// URL"),
        ({"max_attempts": "0"}, "", "l2", "spec.plugin.args.max_attempts 0 must be at least 1"),
        (
            {"read_timeout": "600"},
            "",
            "l2",
            "spec.plugin.args.read_timeout 600 must be at most 120",
        ),
        ({"master": "eth1"}, "", "l2", "spec.plugin.args.master 'eth1' is set by multinic"),
    ],
)
def test_bad_networks_are_refused_naming_the_field(
    driver: MainPlugin, args: dict[str, str], subnet: str, vlan_mode: str, words: str
) -> None:
    network = aws_network(args, subnet=subnet, vlan_mode=vlan_mode)
    with pytest.raises(ConfigError, match=r"^MultiNicNetwork aws-net: ") as caught:
        driver.network_attachment(network, StaticCluster())
    assert words in str(caught.value)


# --------------------------------------------------------------------------- ADD and DEL


def test_add_assigns_each_pod_address_to_its_nics_eni_and_del_unassigns(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    nics = attachments(driver, settings_args(moto_url), POD)
    states = driver.nics_attached(nics)
    assert states == [
        {"eni": cloud.enis["a-eth1"], "addresses": ["10.0.1.4"]},
        {"eni": cloud.enis["a-eth2"], "addresses": ["10.0.2.4"]},
    ]
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"], "a-eth2": ["10.0.2.4"]}

    recorded = [
        n.__class__(**{**n.__dict__, "state": s}) for n, s in zip(nics, states, strict=True)
    ]
    driver.nics_detached(recorded)
    assert cloud.all_secondary() == CLEAN
    # DEL again (the runtime retries DEL), and DEL of an address someone else removed.
    driver.nics_detached(recorded)
    assert cloud.all_secondary() == CLEAN


def test_add_repeated_and_del_keep_other_addresses_of_the_eni(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    """Another pod's address on the same ENI is untouched; a repeated ADD assigns nothing twice."""
    cloud.assign("a-eth1", "10.0.1.5")
    nics = attachments(driver, settings_args(moto_url), {"eth1": POD["eth1"]})
    driver.nics_attached(nics)
    states = driver.nics_attached(nics)
    assert cloud.secondary("a-eth1") == ["10.0.1.4", "10.0.1.5"]
    driver.nics_detached([nics[0].__class__(**{**nics[0].__dict__, "state": states[0]})])
    assert cloud.secondary("a-eth1") == ["10.0.1.5"]


def test_del_without_recorded_state_finds_the_eni_by_the_nics_mac(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    nics = attachments(driver, settings_args(moto_url), POD)
    driver.nics_attached(nics)
    driver.nics_detached(nics)  # state empty
    assert cloud.all_secondary() == CLEAN


# --------------------------------------------------------------------------- never steal, partial failure


def test_an_address_held_by_another_eni_is_never_taken_and_the_first_nic_is_rolled_back(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    cloud.assign("b-eth2", "10.0.2.4")  # host-b holds the address eth2's pod would get
    nics = attachments(driver, settings_args(moto_url), POD)
    with pytest.raises(MultinicError) as caught:
        driver.nics_attached(nics)
    message = str(caught.value)
    assert not isinstance(caught.value, TryAgainError)
    assert f"aws-ipvlan: NIC eth2 (net1-1, ENI {cloud.enis['a-eth2']}): " in message
    assert (
        f"not reassigned (never taken from another interface): 10.0.2.4 is assigned to {cloud.enis['b-eth2']}"
        in message
    )
    assert (
        f"unassigned again: 10.0.1.4 from NIC eth1 (net1-0, ENI {cloud.enis['a-eth1']})" in message
    )
    assert cloud.all_secondary() == {**CLEAN, "b-eth2": ["10.0.2.4"]}


def test_second_nic_refused_by_ec2_rolls_back_the_first(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    proxy.faults.append(
        Fault(
            "AssignPrivateIpAddresses",
            eni=cloud.enis["a-eth2"],
            status=400,
            code="PrivateIpAddressLimitExceeded",
            message="Number of private addresses will exceed limit.",
        )
    )
    nics = attachments(driver, settings_args(proxy.url), POD)
    with pytest.raises(MultinicError) as caught:
        driver.nics_attached(nics)
    message = str(caught.value)
    assert message.startswith(f"aws-ipvlan: NIC eth2 (net1-1, ENI {cloud.enis['a-eth2']}): ")
    assert (
        "EC2 AssignPrivateIpAddresses: PrivateIpAddressLimitExceeded: "
        "Number of private addresses will exceed limit." in message
    )
    assert "unassigned again: 10.0.1.4 from NIC eth1" in message
    assert proxy.attempts("AssignPrivateIpAddresses") == 2  # not retried: not transient
    assert cloud.all_secondary() == CLEAN


def test_a_nic_whose_mac_no_eni_has_fails_after_rolling_back(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    cloud.ec2.delete_network_interface(NetworkInterfaceId=cloud.enis["a-eth2"])
    nics = attachments(driver, settings_args(moto_url), POD)
    with pytest.raises(
        MultinicError, match="NIC eth2 \\(net1-1\\): EC2 has 0 network interfaces with MAC"
    ):
        driver.nics_attached(nics)
    assert cloud.secondary("a-eth1") == []


def test_an_eni_deleted_since_it_was_looked_up(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    nics = attachments(driver, settings_args(moto_url), POD)
    driver.nics_detached(nics)  # looks both ENIs up (and caches them)
    cloud.ec2.delete_network_interface(NetworkInterfaceId=cloud.enis["a-eth2"])
    with pytest.raises(MultinicError, match=r"InvalidNetworkInterfaceID\.NotFound"):
        driver.nics_attached(nics)
    assert cloud.secondary("a-eth1") == []
    # Forgotten: the next ADD looks it up again.
    with pytest.raises(MultinicError, match="EC2 has 0 network interfaces with MAC"):
        driver.nics_attached(nics)


def test_a_pod_address_ec2_reserves_or_outside_the_enis_subnet_is_a_config_error(
    driver: MainPlugin, cloud: Cloud, moto_url: str
) -> None:
    for address, words in (
        ("10.0.1.1/24", "10.0.1.1 is reserved by AWS in subnet"),
        ("10.0.9.4/24", "10.0.9.4 is not in subnet"),
        ("10.0.1.11/24", "10.0.1.11 is the primary address of ENI"),
    ):
        nics = attachments(driver, settings_args(moto_url), {"eth1": address})
        with pytest.raises(ConfigError, match=words):
            driver.nics_attached(nics)
    nics = attachments(driver, settings_args(moto_url), {"eth1": "fd00::4/64"})
    with pytest.raises(ConfigError, match="is IPv6; only IPv4"):
        driver.nics_attached(nics)
    assert cloud.all_secondary() == CLEAN


# --------------------------------------------------------------------------- retries and timeouts


def test_throttled_assignment_succeeds_within_the_bounded_retries(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    proxy.faults.append(Fault("AssignPrivateIpAddresses", times=2))
    nics = attachments(driver, settings_args(proxy.url, max_attempts="4"), POD)
    driver.nics_attached(nics)
    assert proxy.log.count(("AssignPrivateIpAddresses", "RequestLimitExceeded")) == 2
    assert proxy.attempts("AssignPrivateIpAddresses") == 4  # 3 for eth1, 1 for eth2
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"], "a-eth2": ["10.0.2.4"]}


def test_throttled_beyond_the_bounds_fails_as_try_again_and_leaves_nothing(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    proxy.faults.append(Fault("AssignPrivateIpAddresses", eni=cloud.enis["a-eth2"], times=10))
    nics = attachments(driver, settings_args(proxy.url, max_attempts="3"), POD)
    with pytest.raises(TryAgainError) as caught:
        driver.nics_attached(nics)
    message = str(caught.value)
    assert message.startswith("aws-ipvlan: NIC eth2 (net1-1, ENI ")
    assert (
        "EC2 AssignPrivateIpAddresses: RequestLimitExceeded: Request limit exceeded. (after 3 attempt(s))"
        in message
    )
    assert "unassigned again: 10.0.1.4 from NIC eth1" in message
    assert proxy.log.count(("AssignPrivateIpAddresses", "RequestLimitExceeded")) == 3
    assert cloud.all_secondary() == CLEAN


def test_an_unanswered_call_times_out_and_is_retried(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    """The endpoint applies the first Assign but answers after the read timeout: the
    retry finds it assigned, and nothing is assigned twice."""
    proxy.faults.append(Fault("AssignPrivateIpAddresses", delay_s=2))
    nics = attachments(driver, settings_args(proxy.url, read_timeout="1"), {"eth1": POD["eth1"]})
    started = time.monotonic()
    driver.nics_attached(nics)
    assert time.monotonic() - started < 10
    assert proxy.log.count(("AssignPrivateIpAddresses", "slow")) == 1
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"]}


def test_an_assignment_ec2_applied_but_refused_counts_as_done(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    """A retried Assign that EC2 refuses because its first attempt was applied: what
    the ENI holds decides, so the ADD succeeds."""
    proxy.faults.append(
        Fault(
            "AssignPrivateIpAddresses",
            applied=True,
            status=400,
            code="InvalidParameterValue",
            message="The address 10.0.1.4 is already assigned",
        )
    )
    nics = attachments(driver, settings_args(proxy.url), {"eth1": POD["eth1"]})
    assert driver.nics_attached(nics) == [{"eni": cloud.enis["a-eth1"], "addresses": ["10.0.1.4"]}]
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"]}


def test_an_endpoint_that_never_answers_fails_as_try_again_within_its_bound(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    proxy.faults.append(Fault("DescribeNetworkInterfaces", delay_s=3, times=10))
    nics = attachments(
        driver, settings_args(proxy.url, read_timeout="1", max_attempts="2"), {"eth1": POD["eth1"]}
    )
    started = time.monotonic()
    with pytest.raises(
        TryAgainError,
        match="NIC eth1 \\(net1-0\\): EC2 DescribeNetworkInterfaces failed: ReadTimeoutError",
    ):
        driver.nics_attached(nics)
    # Bounded by attempts x (connect + read timeout) + backoff.
    bound = Ec2Settings(max_attempts=2, connect_timeout=1, read_timeout=1).worst_case_s()
    assert bound == 5
    assert time.monotonic() - started < bound
    assert cloud.all_secondary() == CLEAN


def test_del_while_ec2_throttles_fails_as_try_again_and_a_later_del_unassigns(
    driver: MainPlugin, cloud: Cloud, proxy: FaultProxy
) -> None:
    nics = attachments(driver, settings_args(proxy.url, max_attempts="2"), POD)
    states = driver.nics_attached(nics)
    recorded = [
        n.__class__(**{**n.__dict__, "state": s}) for n, s in zip(nics, states, strict=True)
    ]
    proxy.faults.append(Fault("UnassignPrivateIpAddresses", eni=cloud.enis["a-eth1"], times=2))
    with pytest.raises(TryAgainError) as caught:
        driver.nics_detached(recorded)
    assert str(caught.value).startswith(
        "aws-ipvlan: NIC eth1 (net1-0): EC2 UnassignPrivateIpAddresses: RequestLimitExceeded"
    )
    # The other NIC is done; eth1's address stays until DEL succeeds.
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"]}
    driver.nics_detached(recorded)
    assert cloud.all_secondary() == CLEAN


# --------------------------------------------------------------------------- credentials, region


def test_no_region_and_no_credentials_are_config_errors(
    driver: MainPlugin, cloud: Cloud, moto_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    nics = attachments(driver, {"endpoint_url": moto_url}, {"eth1": POD["eth1"]})
    with pytest.raises(
        ConfigError, match=r"aws-ipvlan has no AWS region: set spec\.plugin\.args\.region"
    ):
        driver.nics_attached(nics)
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    nics = attachments(driver, settings_args(moto_url), {"eth1": POD["eth1"]})
    with pytest.raises(ConfigError, match="no AWS credentials for the agent"):
        driver.nics_attached(nics)
    assert cloud.all_secondary() == CLEAN


def test_the_region_may_come_from_the_agents_environment(
    driver: MainPlugin, cloud: Cloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    nics = attachments(driver, {"endpoint_url": cloud.url}, {"eth1": POD["eth1"]})
    driver.nics_attached(nics)
    assert cloud.all_secondary() == {**CLEAN, "a-eth1": ["10.0.1.4"]}


def test_a_driver_with_only_one_of_the_paired_hooks_is_refused() -> None:
    from multinic_core.hookspecs import hookimpl
    from multinic_core.plugins import MAIN_PLUGINS, validate_plugin

    class HalfDriver:
        @hookimpl
        def multinic_network_attachment(self) -> None: ...

        @hookimpl
        def multinic_delegate_config(self) -> None: ...

        @hookimpl
        def multinic_nics_attached(self) -> None: ...

    with pytest.raises(
        PluginError, match="must implement both or neither of multinic_nics_attached"
    ):
        validate_plugin(MAIN_PLUGINS, "half", HalfDriver(), "half-dist", "0")
