"""Fuzzing the MultiNicNetwork model and its ``ipam`` JSON string.

Valid networks load and round-trip unchanged; a network with one field broken
is rejected with a ConfigError that names that field (the status message a
user reads); arbitrary input raises nothing but ConfigError / ValueError.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import netaddr
import pytest
from hypothesis import given
from hypothesis import strategies as st

from multinic_core.errors import ConfigError
from multinic_core.models import (
    CNI_VERSIONS,
    MultiNicIpamConfig,
    MultiNicNetwork,
    load_resource,
    parse_ipam,
)

from .cni_inputs import JSON_VALUES, TEXT, spread
from .conftest import FUZZ_EXAMPLES
from .test_fuzz_cni import fuzz_settings

CIDRS = ["10.0.0.0/8", "192.168.0.0/24", "fd00::/64", "10.0.0.1/8", "300.1.1.0/24", "10.0.0.0"]
NAME = st.from_regex(r"\A[a-z][a-z0-9-]{0,20}\Z")


@st.composite
def valid_spec(draw: st.DrawFn) -> dict[str, Any]:
    """A valid MultiNicNetwork spec (multi-nic-ipam or a pass-through IPAM)."""
    version = draw(st.sampled_from([4, 6, 0]))
    subnet = ""
    if version:
        width = 32 if version == 4 else 128
        prefix = draw(st.integers(8 if version == 4 else 48, width - 4))
        base = draw(st.integers(0, 2**width - 1))
        subnet = str(netaddr.IPNetwork((base, prefix), version=version).cidr)
    masters = draw(st.lists(st.integers(0, 255), max_size=4, unique=True))
    spec: dict[str, Any] = {
        "subnet": subnet,
        "multiNICIPAM": draw(st.booleans()),
        "masterNets": [f"10.0.{m}.0/24" for m in masters],
        "plugin": {
            "cniVersion": draw(st.sampled_from(CNI_VERSIONS)),
            "type": draw(st.sampled_from(["ipvlan", "macvlan", "sriov", "host-device"])),
            "args": draw(st.dictionaries(NAME, NAME, max_size=3)),
        },
        "attachPolicy": {
            "strategy": draw(st.sampled_from(["none", "costOpt", "perfOpt", "devClass"])),
            "target": "",
        },
        "namespaces": draw(st.lists(NAME, max_size=3, unique=True)),
    }
    if draw(st.booleans()) or not subnet:
        ipam: dict[str, Any] = {"type": draw(st.sampled_from(["whereabouts", "host-local"]))}
    else:
        net = netaddr.IPNetwork(subnet)
        room = (32 if net.version == 4 else 128) - net.prefixlen - 2
        interface_block = draw(st.integers(0, min(room, 8)))
        host_block = draw(st.integers(0, min(room - interface_block, 16)))
        excludes = sorted(
            {
                str(netaddr.IPNetwork((net.first + offset, p), version=net.version).cidr)
                for offset, p in draw(
                    st.lists(
                        st.tuples(
                            st.integers(0, net.size - 1),
                            st.integers(net.prefixlen, 32 if net.version == 4 else 128),
                        ),
                        max_size=4,
                    )
                )
            }
        )
        ipam = {
            "type": "multi-nic-ipam",
            "hostBlock": host_block,
            "interfaceBlock": interface_block,
            "vlanMode": draw(st.sampled_from(["l2", "l3", "l3s"])),
            "excludeCIDRs": excludes,
        }
    spec["ipam"] = json.dumps(ipam)
    return spec


def body(spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "multinic.fms.io/v1",
        "kind": "MultiNicNetwork",
        "metadata": {"name": "fuzz"},
        "spec": spec,
    }


def test_valid_networks_round_trip(figures: dict[str, Any]) -> None:
    kinds: Counter[str] = Counter()

    @fuzz_settings(FUZZ_EXAMPLES * 2 // 3)
    @given(valid_spec())
    def run(spec: dict[str, Any]) -> None:
        network = load_resource(MultiNicNetwork, body(spec))
        written = network.to_dict()
        assert load_resource(MultiNicNetwork, written) == network
        for key, value in spec.items():
            kept = written["spec"][key]
            # Defaults are added (plugin capabilities); nothing given is changed.
            if isinstance(value, dict):
                kept = {k: kept[k] for k in value}
            assert kept == value, key
        # The ipam string is kept verbatim and parses to what was written.
        given_ipam = json.loads(spec["ipam"])
        parsed = parse_ipam(written["spec"]["ipam"]).model_dump(mode="json", by_alias=True)
        assert {k: parsed[k] for k in given_ipam} == given_ipam
        kinds[given_ipam["type"]] += 1

    run()
    figures.update(cases=sum(kinds.values()), ipam_types=dict(kinds))
    assert kinds["multi-nic-ipam"] > 0


def ipam_of(spec: dict[str, Any]) -> dict[str, Any]:
    return dict(json.loads(spec["ipam"]))


@st.composite
def broken_network(draw: st.DrawFn) -> tuple[str, str, dict[str, Any]]:
    """A valid spec with one field broken; (what, the field the error names, body)."""
    spec = draw(valid_spec())
    multi = ipam_of(spec)["type"] == "multi-nic-ipam"
    kinds = ["subnet", "masterNets entry", "masterNets twice", "ipam not JSON", "ipam not object"]
    kinds += ["ipam no type", "plugin type", "plugin cniVersion", "namespaces", "multiNICIPAM"]
    if multi:
        kinds += ["hostBlock", "interfaceBlock", "vlanMode", "excludeCIDRs", "routes", "too big"]
    kind = draw(spread(kinds))
    ipam = ipam_of(spec)
    field = kind
    if kind == "subnet":
        spec["subnet"] = draw(
            st.sampled_from(["10.0.0.1/8", "300.0.0.0/8", "10.0.0.0", "x/y", "fd00::1/64"])
            | TEXT.filter(lambda s: "/" not in s and s != "")
        )
        field = "spec.subnet"
    elif kind == "masterNets entry":
        spec["masterNets"] = [*spec["masterNets"], draw(st.sampled_from(["eth1", "10.0.1.1/24"]))]
        field = f"spec.masterNets[{len(spec['masterNets']) - 1}]"
    elif kind == "masterNets twice":
        spec["masterNets"] = ["10.0.9.0/24", "10.0.9.0/24"]
        field = "masterNets"
    elif kind == "ipam not JSON":
        spec["ipam"] = draw(TEXT.filter(lambda s: not _is_json(s)))
        field = "spec.ipam"
    elif kind == "ipam not object":
        spec["ipam"] = json.dumps(draw(st.lists(JSON_VALUES, max_size=2) | st.integers()))
        field = "spec.ipam"
    elif kind == "ipam no type":
        ipam["type"] = draw(st.sampled_from(["", None, 5]))
        spec["ipam"] = json.dumps(ipam)
        field = "type"
    elif kind == "plugin type":
        spec["plugin"]["type"] = draw(st.sampled_from(["", None, 7]))
        field = "spec.plugin.type"
    elif kind == "plugin cniVersion":
        spec["plugin"]["cniVersion"] = draw(TEXT.filter(lambda s: s not in CNI_VERSIONS))
        field = "spec.plugin.cniVersion"
    elif kind == "namespaces":
        spec["namespaces"] = [draw(st.integers() | st.none() | st.just({}))]
        field = "spec.namespaces[0]"
    elif kind == "multiNICIPAM":
        spec["multiNICIPAM"] = draw(st.sampled_from(["maybe", [], {}, 2]))
        field = "spec.multiNICIPAM"
    elif kind in ("hostBlock", "interfaceBlock"):
        ipam[kind] = draw(st.sampled_from(["six", -1, 999, None, [], 1.5]))
        spec["ipam"] = json.dumps(ipam)
    elif kind == "vlanMode":
        ipam["vlanMode"] = draw(TEXT.filter(lambda s: s not in ("l2", "l3", "l3s")))
        spec["ipam"] = json.dumps(ipam)
    elif kind == "excludeCIDRs":
        bad = draw(st.sampled_from(["10.0.0.1/8", "x", "fd00::/64", "1.2.3.0/24"]))
        subnet = netaddr.IPNetwork(spec["subnet"])
        if bad == "fd00::/64" and subnet.version == 6:
            bad = "10.0.0.0/8"
        if bad == "1.2.3.0/24" and subnet.version == 4:
            bad = "fd00::/64"
        ipam["excludeCIDRs"] = [*ipam["excludeCIDRs"], bad]
        spec["ipam"] = json.dumps(ipam)
    elif kind == "routes":
        ipam["routes"] = [{"dst": draw(st.sampled_from(["x", "10.0.0.1/8"])), "gw": "10.0.0.1"}]
        spec["ipam"] = json.dumps(ipam)
    elif kind == "too big":
        subnet = netaddr.IPNetwork(spec["subnet"])
        width = 32 if subnet.version == 4 else 128
        ipam["hostBlock"] = width - subnet.prefixlen - ipam["interfaceBlock"] - 1
        spec["ipam"] = json.dumps(ipam)
        field = "hostBlock"
    return kind, field, body(spec)


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def test_invalid_networks_are_rejected_naming_the_field(figures: dict[str, Any]) -> None:
    kinds: Counter[str] = Counter()

    @fuzz_settings(FUZZ_EXAMPLES * 2 // 3)
    @given(broken_network())
    def run(case: tuple[str, str, dict[str, Any]]) -> None:
        kind, field, data = case
        with pytest.raises(ConfigError) as refused:
            load_resource(MultiNicNetwork, data)
        message = str(refused.value)
        assert message.startswith("MultiNicNetwork fuzz: "), message
        assert field in message, f"{kind}: {message} does not name {field}"
        kinds[kind] += 1

    run()
    figures.update(cases=sum(kinds.values()), kinds=dict(kinds))


def test_arbitrary_ipam_strings_and_bodies_raise_only_config_errors(
    figures: dict[str, Any],
) -> None:
    outcomes: Counter[str] = Counter()
    ipam_keys = ["type", "hostBlock", "interfaceBlock", "vlanMode", "excludeCIDRs", "routes"]

    @fuzz_settings(FUZZ_EXAMPLES * 2 // 3)
    @given(
        st.one_of(
            TEXT,
            st.dictionaries(st.sampled_from(ipam_keys) | TEXT, JSON_VALUES, max_size=6).map(
                json.dumps
            ),
            st.fixed_dictionaries(
                {
                    "type": st.just("multi-nic-ipam"),
                    "hostBlock": st.integers(-2, 70) | JSON_VALUES,
                    "interfaceBlock": st.integers(-2, 40) | JSON_VALUES,
                },
                optional={
                    "vlanMode": st.sampled_from(["l2", "l3", "l3s"]) | TEXT,
                    "excludeCIDRs": st.lists(st.sampled_from(CIDRS) | TEXT, max_size=3),
                    "routes": st.lists(
                        st.fixed_dictionaries({"dst": st.sampled_from(CIDRS) | TEXT}), max_size=2
                    ),
                },
            ).map(json.dumps),
        ),
        st.fixed_dictionaries(
            {},
            optional={
                "subnet": st.sampled_from(["", *CIDRS]) | JSON_VALUES,
                "masterNets": st.lists(st.sampled_from(CIDRS), max_size=3) | JSON_VALUES,
                "plugin": st.just({"type": "ipvlan"}) | JSON_VALUES,
            },
        ),
    )
    def run(ipam: str, extra: dict[str, Any]) -> None:
        try:
            parsed = parse_ipam(ipam)
        except ValueError as e:
            problem = str(e)
            assert problem.startswith("ipam "), problem
            outcomes["ipam rejected"] += 1
        else:
            data = json.loads(ipam)
            assert parsed.type == data["type"]
            if isinstance(parsed, MultiNicIpamConfig):
                # Lax like the API's own int fields: "6" and 6.0 mean 6.
                assert parsed.host_block == int(data["hostBlock"])
            outcomes["ipam accepted"] += 1
        spec = {"ipam": ipam, "plugin": {"type": "ipvlan"}, **extra}
        try:
            load_resource(MultiNicNetwork, body(spec))
        except ConfigError:
            outcomes["network rejected"] += 1
        else:
            outcomes["network accepted"] += 1

    run()
    figures.update(cases=outcomes["ipam rejected"] + outcomes["ipam accepted"], **outcomes)
    assert outcomes["ipam accepted"]
    assert outcomes["ipam rejected"]
