"""The in-process macvlan delegate against the reference plugin, on the same pod config.

Each case attaches one pod namespace with the exec'd reference ``macvlan``
binary (which execs ``static``) and another with :class:`MacvlanInProcess`,
both from the same host namespace and master NIC, and compares what a user
can see: the link (kind, mode, MTU, flags, txqueuelen, name_assign_type, MAC where it is not
random), its addresses, every route of every table, the sysctls, the result
JSON, CHECK's answer, and that DEL leaves the pod and the master as before.
Hostile calls must fail with the same CNI error codes.
"""

from __future__ import annotations

import copy
import json
import os
import re
import secrets
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from multinic_core.plugins import PluginRegistry
from multinic_macvlan import netlink
from multinic_macvlan.inprocess import MacvlanInProcess

CNI_BIN = Path("/usr/lib/cni")

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(
        not (CNI_BIN / "macvlan").exists() or not (CNI_BIN / "static").exists(),
        reason="needs containernetworking-plugins (/usr/lib/cni/macvlan, static)",
    ),
]

SYSCTLS = (
    "net/ipv4/conf/{if}/arp_notify",
    "net/ipv6/conf/{if}/ndisc_notify",
    "net/ipv6/conf/{if}/disable_ipv6",
    "net/ipv6/conf/{if}/keep_addr_on_down",
    "net/ipv6/conf/lo/disable_ipv6",
)


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def ip_json(netns: str, *args: str) -> Any:
    return json.loads(ip("-n", netns, "-j", *args).stdout or "[]")


@dataclass
class Setup:
    host: str
    reference_pod: str
    inprocess_pod: str

    def pods(self) -> tuple[str, str]:
        return self.reference_pod, self.inprocess_pod


@pytest.fixture
def setup() -> Iterator[Setup]:
    """A host namespace with master NICs eth1, eth2 (veths, up); one pod per side."""
    suffix = secrets.token_hex(3)
    made = Setup(f"mnh-{suffix}", f"mnr-{suffix}", f"mni-{suffix}")
    try:
        for ns in (made.host, *made.pods()):
            ip("netns", "add", ns)
        for nic in ("eth1", "eth2"):
            ip("-n", made.host, "link", "add", nic, "type", "veth", "peer", "name", f"{nic}p")
            ip("-n", made.host, "link", "set", nic, "up")
            ip("-n", made.host, "link", "set", f"{nic}p", "up")
        yield made
    finally:
        for ns in (*made.pods(), made.host):
            ip("netns", "del", ns, check=False)


def cni_env(command: str, pod: str, ifname: str = "net1-0", args: str = "") -> dict[str, str]:
    return {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c0ffee",
        "CNI_NETNS": f"/var/run/netns/{pod}" if pod else "",
        "CNI_IFNAME": ifname,
        "CNI_PATH": str(CNI_BIN),
        "CNI_ARGS": args,
    }


@dataclass
class Outcome:
    status: int
    out: str

    @property
    def code(self) -> int | None:
        return int(json.loads(self.out)["code"]) if self.status else None

    @property
    def result(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.out) if self.out.strip() else {}
        return value


def reference(host: str, env: dict[str, str], config: dict[str, Any]) -> Outcome:
    run = subprocess.run(
        ["ip", "netns", "exec", host, str(CNI_BIN / "macvlan")],
        input=json.dumps(config),
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **env},
        capture_output=True,
        text=True,
        check=False,
    )
    return Outcome(run.returncode, run.stdout)


def inprocess(host: str, env: dict[str, str], config: dict[str, Any]) -> Outcome:
    """The in-process plugin called from a thread in the host namespace, as the agent calls it."""
    plugin = MacvlanInProcess()
    assert plugin.accepts(env, config), "the agent would exec this config"
    fd = os.open(f"/var/run/netns/{host}", os.O_RDONLY)
    try:
        with netlink.in_netns(fd):
            status, out, _ = plugin.run(env, json.dumps(config))
    finally:
        os.close(fd)
    return Outcome(status, out)


def both(
    setup: Setup, command: str, config: dict[str, Any], ifname: str = "net1-0", args: str = ""
) -> tuple[Outcome, Outcome]:
    return (
        reference(setup.host, cni_env(command, setup.reference_pod, ifname, args), config),
        inprocess(setup.host, cni_env(command, setup.inprocess_pod, ifname, args), config),
    )


_LINK_LOCAL = re.compile(r"^fe80::[0-9a-f:]+$")


def _plain(address: str, mac_random: bool) -> str:
    """An address with the MAC-derived IPv6 link-local part masked when the MAC is random."""
    return "fe80::<eui64>" if mac_random and _LINK_LOCAL.match(address) else address


def snapshot(pod: str, ifname: str, mac_random: bool) -> dict[str, Any]:
    """What a user sees of the pod's network namespace, MAC-derived values masked."""
    link = ip_json(pod, "-d", "link", "show", "dev", ifname)[0]
    for random_value in ("ifindex", "link_netnsid"):
        link.pop(random_value, None)
    if mac_random:
        link.pop("address")
    addresses = []
    for entry in ip_json(pod, "addr", "show", "dev", ifname)[0]["addr_info"]:
        entry.pop("valid_life_time", None)
        entry.pop("preferred_life_time", None)
        if entry.get("scope") == "link":
            entry.pop("tentative", None)  # DAD timing, not configuration
        entry["local"] = _plain(entry["local"], mac_random)
        addresses.append(entry)
    routes = []
    for family in ("-4", "-6"):
        for route in ip_json(pod, family, "route", "show", "table", "all"):
            route.pop("expires", None)
            route["dst"] = _plain(route.get("dst", ""), mac_random)
            if "prefsrc" in route:
                route["prefsrc"] = _plain(route["prefsrc"], mac_random)
            routes.append(json.dumps(route, sort_keys=True))
    paths = [f"/proc/sys/{s.format(**{'if': ifname})}" for s in SYSCTLS]
    values = subprocess.run(
        [
            "ip", "netns", "exec", pod, "cat",
            f"/sys/class/net/{ifname}/tx_queue_len",
            f"/sys/class/net/{ifname}/name_assign_type",  # 4: renamed, as the plugin's are
            *paths,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()  # fmt: skip
    lo = ip_json(pod, "link", "show", "dev", "lo")[0]["flags"]
    return {
        "link": link,
        "addresses": addresses,
        "routes": sorted(routes),
        "txqlen": values[0],
        "name_assign_type": values[1],
        "sysctls": dict(zip(SYSCTLS, values[2:], strict=True)),
        "lo": lo,
    }


def masked_result(result: dict[str, Any], mac_random: bool) -> dict[str, Any]:
    masked = copy.deepcopy(result)
    for interface in masked.get("interfaces", []):
        assert interface.pop("sandbox").startswith("/var/run/netns/mn")
        if mac_random:
            assert re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", interface.pop("mac"))
    return masked


def links(pod: str) -> list[str]:
    return sorted(link["ifname"] for link in ip_json(pod, "link", "show"))


def master_state(host: str) -> list[Any]:
    """The host's NICs, as the pods must leave them after DEL."""
    shown = ip_json(host, "-d", "link", "show")
    return sorted(
        (json.dumps({k: v for k, v in link.items() if k != "ifindex"}, sort_keys=True))
        for link in shown
    )


def config(mode: str = "bridge", version: str = "1.0.0", **extra: Any) -> dict[str, Any]:
    return {
        "cniVersion": version,
        "name": "fabric",
        "type": "macvlan",
        "master": "eth1",
        "mode": mode,
        **extra,
    }


def static(*addresses: dict[str, Any], routes: list[dict[str, str]] | None = None) -> Any:
    ipam: dict[str, Any] = {"type": "static", "addresses": list(addresses)}
    if routes is not None:
        ipam["routes"] = routes
    return ipam


CASES: dict[str, tuple[dict[str, Any], str, bool]] = {
    # name: (config, CNI_ARGS, MAC random)
    "bridge, gateway, routes, dns": (
        config(
            ipam=static(
                {"address": "10.1.0.5/16", "gateway": "10.1.0.1"},
                routes=[
                    {"dst": "10.9.0.0/16"},
                    {"dst": "10.10.0.0/16", "gw": "10.1.0.254"},
                    {"dst": "0.0.0.0/0"},
                ],
            ),
            dns={"nameservers": ["10.1.0.53"], "search": ["pods.example"]},
        ),
        "",
        True,
    ),
    "private, mtu, runtimeConfig.mac, 0.4.0": (
        config(
            "private",
            "0.4.0",
            mtu=1400,
            runtimeConfig={"mac": "02:aa:bb:cc:dd:01"},
            ipam=static({"address": "192.168.7.9/24"}),
        ),
        "",
        False,
    ),
    "vepa, no IPAM, MAC from CNI_ARGS, 0.3.1": (
        config("vepa", "0.3.1"),
        "IgnoreUnknown=1;K8S_POD_NAME=p;MAC=02:aa:bb:cc:dd:02",
        False,
    ),
    "passthru, two addresses": (
        config(
            "passthru",
            ipam=static(
                {"address": "10.2.0.5/24", "gateway": "10.2.0.1"},
                {"address": "10.3.0.5/24"},
                routes=[{"dst": "10.20.0.0/16", "gw": "10.3.0.1"}],
            ),
        ),
        "",
        False,
    ),
    "IPv6 enabled, gateway, DAD settled": (
        config(
            ipam=static(
                {"address": "fd00:1::5/64", "gateway": "fd00:1::1"},
                {"address": "10.4.0.5/24"},
                routes=[{"dst": "fd00:9::/64"}, {"dst": "10.40.0.0/16", "gw": "10.4.0.1"}],
            ),
        ),
        "",
        True,
    ),
}


def attach_check_detach(
    setup: Setup, side: str, conf: dict[str, Any], args: str, mac_random: bool
) -> dict[str, Any]:
    """ADD, what the pod then shows, CHECK against the result, DEL: one side's whole story.

    One side after the other: two macvlans of one master cannot hold the same
    MAC at once, nor two passthru ones exist.
    """
    run, pod = (
        (reference, setup.reference_pod)
        if side == "reference"
        else (inprocess, setup.inprocess_pod)
    )
    master_before = master_state(setup.host)
    added = run(setup.host, cni_env("ADD", pod, args=args), conf)
    assert added.status == 0, (side, added.out)
    assert added.result["interfaces"][0]["sandbox"] == f"/var/run/netns/{pod}"
    seen = snapshot(pod, "net1-0", mac_random)
    if not mac_random:
        assert added.result["interfaces"][0]["mac"] == seen["link"]["address"]
    checked = None
    if conf["cniVersion"] != "0.3.1":  # CHECK needs 0.4.0 or later
        check = run(
            setup.host, cni_env("CHECK", pod, args=args), {**conf, "prevResult": added.result}
        )
        checked = (check.status, check.code)
    deleted = run(setup.host, cni_env("DEL", pod, args=args), conf)
    assert deleted.status == 0, (side, deleted.out)
    assert links(pod) == ["lo"], side
    assert master_state(setup.host) == master_before, side
    return {"result": masked_result(added.result, mac_random), "seen": seen, "check": checked}


@pytest.mark.parametrize("case", list(CASES))
def test_inprocess_attaches_exactly_as_the_reference_plugin(setup: Setup, case: str) -> None:
    conf, args, mac_random = CASES[case]
    if "IPv6" in case:
        # New links start with IPv6 off: the plugin must turn it on (lo too).
        for pod in setup.pods():
            for knob in ("default", "lo"):
                subprocess.run(
                    ["ip", "netns", "exec", pod, "sysctl", "-qw",
                     f"net.ipv6.conf.{knob}.disable_ipv6=1"],
                    check=True,
                )  # fmt: skip
    expected = attach_check_detach(setup, "reference", conf, args, mac_random)
    found = attach_check_detach(setup, "in-process", conf, args, mac_random)
    assert found["result"] == expected["result"]
    assert found["seen"] == expected["seen"]
    # The same CHECK verdict (in the first case both fail: a route without gw
    # that took the address's gateway is not found by the plugin's own check).
    assert found["check"] == expected["check"]


def test_check_verdicts_match_on_a_changed_pod(setup: Setup) -> None:
    """CHECK fails alike when the pod no longer matches prevResult."""
    conf = config(
        ipam=static({"address": "10.5.0.5/24"}, routes=[{"dst": "10.50.0.0/16", "gw": "10.5.0.1"}])
    )
    ref, mine = both(setup, "ADD", conf)
    assert (ref.status, mine.status) == (0, 0)
    for ns, result in ((setup.reference_pod, ref.result), (setup.inprocess_pod, mine.result)):
        ok_ref = reference(setup.host, cni_env("CHECK", ns), {**conf, "prevResult": result})
        assert ok_ref.status == 0, ok_ref.out
    ok = inprocess(
        setup.host, cni_env("CHECK", setup.inprocess_pod), {**conf, "prevResult": mine.result}
    )
    assert ok.status == 0, ok.out
    Change = Callable[[dict[str, Any], dict[str, Any]], tuple[dict[str, Any], dict[str, Any]]]
    changes: dict[str, Change] = {
        "mode": lambda c, r: ({**c, "mode": "vepa"}, r),
        "mac": lambda c, r: (c, _with_mac(r, "02:00:00:00:00:99")),
        "route gone": lambda c, r: (
            c,
            {**r, "routes": [{"dst": "10.77.0.0/16", "gw": "10.5.0.1"}]},
        ),
        "address gone": lambda c, r: (
            c,
            {**r, "ips": [{"interface": 0, "address": "10.5.0.6/24"}]},
        ),
        "master gone": lambda c, r: ({**c, "master": "eth9"}, r),
    }
    for name, change in changes.items():
        ref_conf, ref_prev = change(conf, ref.result)
        mine_conf, mine_prev = change(conf, mine.result)
        ref_check = reference(
            setup.host, cni_env("CHECK", setup.reference_pod), {**ref_conf, "prevResult": ref_prev}
        )
        mine_check = inprocess(
            setup.host,
            cni_env("CHECK", setup.inprocess_pod),
            {**mine_conf, "prevResult": mine_prev},
        )
        assert ref_check.status == 1, name
        assert (mine_check.status, mine_check.code) == (1, ref_check.code), (name, mine_check.out)


def _with_mac(result: dict[str, Any], mac: str) -> dict[str, Any]:
    changed = copy.deepcopy(result)
    changed["interfaces"][0]["mac"] = mac
    return changed


def test_hostile_calls_fail_with_the_reference_codes_and_leave_nothing(setup: Setup) -> None:
    good = config(ipam=static({"address": "10.6.0.5/24"}))
    cases = {
        "master missing": ({**good, "master": "eth9"}, None),
        "MTU above the master's": ({**good, "mtu": 9000}, None),
        "unknown mode": ({**good, "mode": "bogus"}, None),
        "ifname taken": (good, "taken"),
        "netns missing": (good, "missing"),
        "no address from IPAM": ({**good, "ipam": static()}, None),
        "route refused by the kernel": (
            {**good, "ipam": static({"address": "10.6.0.5/24"}, routes=[{"dst": "10.60.0.7/16"}])},
            None,
        ),
    }
    for name, (conf, pre) in cases.items():
        if pre == "taken":
            for pod in setup.pods():
                ip("-n", pod, "link", "add", "net1-0", "type", "veth", "peer", "name", "other")
        if pre == "missing":
            ref = reference(setup.host, cni_env("ADD", "mnx-gone"), conf)
            mine = inprocess(setup.host, cni_env("ADD", "mnx-gone"), conf)
        else:
            ref, mine = both(setup, "ADD", conf)
        assert ref.status == 1, (name, ref.out)
        assert (mine.status, mine.code) == (1, ref.code), (name, mine.out)
        expected = ["lo", "net1-0", "other"] if pre == "taken" else ["lo"]
        assert links(setup.inprocess_pod) == expected, name
        # The reference leaves the link when it fails after creating it (an
        # error variable shadowed in 1.1.1); the runtime's DEL removes it.
        for pod in setup.pods():
            if pre == "taken":
                ip("-n", pod, "link", "del", "net1-0")  # the veth pair, not the plugin's
        if pre is None:
            # With the good config: 1.1.1's DEL checks the master and MTU again.
            assert [o.status for o in both(setup, "DEL", good)] == [0, 0], name
        for pod in setup.pods():
            assert links(pod) == ["lo"], name


def test_delete_is_idempotent(setup: Setup) -> None:
    conf = config(ipam=static({"address": "10.7.0.5/24"}))
    assert [o.status for o in both(setup, "ADD", conf)] == [0, 0]
    for _ in range(2):
        assert [o.status for o in both(setup, "DEL", conf)] == [0, 0]
    for env in (cni_env("DEL", ""), cni_env("DEL", "mnx-gone")):
        assert reference(setup.host, env, conf).status == 0
        assert inprocess(setup.host, env, conf).status == 0
    for pod in setup.pods():
        assert links(pod) == ["lo"]


def test_delete_succeeds_when_the_master_is_gone(setup: Setup) -> None:
    """Where it does what later releases do: 1.1.1's DEL fails without the master."""
    conf = config(master="eth2", ipam=static({"address": "10.8.0.5/24"}))
    added = inprocess(setup.host, cni_env("ADD", setup.inprocess_pod), conf)
    assert added.status == 0, added.out
    ip("-n", setup.host, "link", "del", "eth2")  # its macvlans go with it
    deleted = inprocess(setup.host, cni_env("DEL", setup.inprocess_pod), conf)
    assert deleted.status == 0, deleted.out
    assert links(setup.inprocess_pod) == ["lo"]


def test_name_clashes_fail_and_pass_as_with_the_reference(setup: Setup) -> None:
    """The link is created under its final name at once; clashes end as the plugin's rename.

    A pod link of that name: the same error, word for word, nothing left.  A
    host link of that name (where the request is sent from) is no clash for
    the plugin (it creates a random name there): none here either.  A name
    only the rename takes apart (``%d``) fails as the plugin's rename does.
    """
    good = config(ipam=static({"address": "10.6.0.5/24"}))
    for pod in setup.pods():
        ip("-n", pod, "link", "add", "net1-0", "type", "veth", "peer", "name", "other")
    ref, mine = both(setup, "ADD", good)
    assert ref.status == 1, ref.out
    assert json.loads(mine.out) == json.loads(ref.out)
    assert "failed to rename macvlan" in json.loads(mine.out)["msg"], mine.out
    assert links(setup.inprocess_pod) == ["lo", "net1-0", "other"]
    for pod in setup.pods():
        ip("-n", pod, "link", "del", "net1-0")

    ip("-n", setup.host, "link", "add", "net1-0", "type", "veth", "peer", "name", "other")
    ref, mine = both(setup, "ADD", good)
    assert (ref.status, mine.status) == (0, 0), (ref.out, mine.out)
    assert snapshot(setup.inprocess_pod, "net1-0", True) == snapshot(
        setup.reference_pod, "net1-0", True
    )
    assert [o.status for o in both(setup, "DEL", good)] == [0, 0]
    ip("-n", setup.host, "link", "del", "net1-0")

    ref, mine = both(setup, "ADD", good, ifname="net%d")
    assert ref.status == 1, ref.out
    assert (mine.status, mine.code) == (ref.status, ref.code), (ref.out, mine.out)
    assert links(setup.inprocess_pod) == ["lo"]  # 1.1.1 leaves its link (net0)


def test_master_lookups_follow_the_master(setup: Setup) -> None:
    """No stale master: renamed away, recreated under its name, given a smaller MTU."""
    good = config(ipam=static({"address": "10.6.0.5/24"}))
    pod = setup.inprocess_pod
    assert inprocess(setup.host, cni_env("ADD", pod), good).status == 0
    assert inprocess(setup.host, cni_env("DEL", pod), good).status == 0
    ip("-n", setup.host, "link", "set", "eth1", "name", "eth1old")
    ref, mine = both(setup, "ADD", good)
    assert json.loads(mine.out) == json.loads(ref.out)
    assert json.loads(mine.out)["msg"] == "Link not found"
    ip("-n", setup.host, "link", "add", "eth1", "type", "veth", "peer", "name", "eth1q")
    for nic in ("eth1", "eth1q"):
        ip("-n", setup.host, "link", "set", nic, "up")
    added = inprocess(setup.host, cni_env("ADD", pod), good)
    assert added.status == 0, added.out
    shown = ip_json(pod, "-d", "link", "show", "dev", "net1-0")[0]
    master = ip_json(setup.host, "link", "show", "dev", "eth1")[0]
    assert shown["link_index"] == master["ifindex"]
    assert inprocess(setup.host, cni_env("DEL", pod), good).status == 0
    ip("-n", setup.host, "link", "set", "eth1", "mtu", "1300")
    ref, mine = both(setup, "ADD", {**good, "mtu": 1400})
    assert ref.status == 1, ref.out
    assert json.loads(mine.out) == json.loads(ref.out)
    assert links(pod) == ["lo"]


CALL = cni_env("ADD", "mnx")


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"ipam": {"type": "whereabouts", "range": "10.0.0.0/24"}}, "another IPAM"),
        ({"runtimeConfig": {"ips": ["10.0.0.5/24"]}}, "static's runtimeConfig.ips"),
        ({"args": {"cni": {"ips": ["10.0.0.5/24"]}}}, "static's args.cni.ips"),
        ({"linkInContainer": True}, "a later release's key"),
        ({"bcqueuelen": 100}, "a later release's key"),
        ({"mtu": "1400"}, "a string MTU (the binary's own JSON error)"),
        ({"master": ""}, "the default-route master"),
        ({"mac": "0000.5e00.5301"}, "a MAC form Go reads and Python does not"),
        ({"ipam": static({"address": "10.0.0.5"})}, "an address without prefix"),
        ({"ipam": static({"address": "::ffff:10.0.0.5/120"})}, "an IPv4-mapped address"),
        ({"ipam": static({"address": "10.0.0.5/24", "metric": 5})}, "an unknown address key"),
        ({"cniVersion": "0.2.0"}, "a result version it does not print"),
    ],
)
def test_configs_it_cannot_match_exactly_go_to_the_binary(change: dict[str, Any], why: str) -> None:
    plugin = MacvlanInProcess()
    good = config(ipam=static({"address": "10.0.0.5/24"}))
    assert plugin.accepts(CALL, good)
    assert not plugin.accepts(CALL, {**good, **change}), why


@pytest.mark.parametrize(
    "args",
    ["IP=10.0.0.9/24", "K8S_POD_NAME=p", "IgnoreUnknown=maybe;K8S_POD_NAME=p", "MAC=zz"],
)
def test_cni_args_it_cannot_match_exactly_go_to_the_binary(args: str) -> None:
    good = config(ipam=static({"address": "10.0.0.5/24"}))
    assert not MacvlanInProcess().accepts({**CALL, "CNI_ARGS": args}, good)


def test_the_macvlan_driver_offers_it_through_the_registry() -> None:
    registry = PluginRegistry()
    offered = registry.inprocess_delegate("macvlan")
    assert isinstance(offered, MacvlanInProcess)
    assert registry.inprocess_delegate("ipvlan") is None
    assert registry.inprocess_delegate("macvlan") is offered  # asked once
