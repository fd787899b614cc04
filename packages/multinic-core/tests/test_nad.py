"""The NetworkAttachmentDefinition of a network (SPEC section 3)."""

from __future__ import annotations

import json
from typing import Any

from multinic_core.hooktypes import NetworkAttachment
from multinic_core.models import Config, MultiNicNetwork
from multinic_core.nad import nad_config, nad_config_json, nad_object, owner_reference

# SPEC section 3, with the worked example's excludes in place of "[...]", and the
# CNI capabilities the agent honours (runtimeConfig.ips and .mac from Multus).
SPEC_EXAMPLE = """
{"cniVersion":"0.3.0","name":"demo","type":"multi-nic",
 "ipam":{"excludeCIDRs":["192.168.64.0/18","192.168.1.0/24","192.168.0.128/25"],
         "hostBlock":6,"interfaceBlock":2,"type":"multi-nic-ipam","vlanMode":"l3"},
 "dns":{},"plugin":{"cniVersion":"0.3.0","mode":"l3","type":"ipvlan"},
 "subnet":"192.168.0.0/16","masterNets":["10.0.1.0/24","10.0.2.0/24"],
 "multiNICIPAM":true,"daemonIP":"","daemonPort":11000,
 "capabilities":{"ips":true,"mac":true}}
"""

# The ipam as a user writes it: a different key order than the NAD shows.
USER_IPAM = (
    '{"type": "multi-nic-ipam", "hostBlock": 6, "interfaceBlock": 2, "vlanMode": "l3",'
    ' "excludeCIDRs": ["192.168.64.0/18", "192.168.1.0/24", "192.168.0.128/25"]}'
)
# What the ipvlan driver answers for this network (its own tests pin that).
IPVLAN_L3 = NetworkAttachment(plugin={"type": "ipvlan", "mode": "l3", "cniVersion": "0.3.0"})


def demo(uid: str | None = "4f1c-uid", **spec: Any) -> MultiNicNetwork:
    metadata: dict[str, Any] = {"name": "demo"}
    if uid:
        metadata["uid"] = uid
    return MultiNicNetwork.model_validate(
        {
            "metadata": metadata,
            "spec": {
                "subnet": "192.168.0.0/16",
                "ipam": USER_IPAM,
                "multiNICIPAM": True,
                "masterNets": ["10.0.1.0/24", "10.0.2.0/24"],
                "plugin": {"cniVersion": "0.3.0", "type": "ipvlan", "args": {"mode": "l3"}},
                **spec,
            },
        }
    )


def test_nad_config_is_the_spec_example() -> None:
    config = nad_config(demo(), IPVLAN_L3)
    expected = json.loads(SPEC_EXAMPLE)
    assert config == expected
    assert list(config) == list(expected)


def test_stored_config_string_parses_back_to_the_spec_example_in_the_same_order() -> None:
    text = nad_object(demo(), IPVLAN_L3, "default")["spec"]["config"]
    parsed = json.loads(text)
    assert parsed == json.loads(SPEC_EXAMPLE)
    assert list(parsed) == list(json.loads(SPEC_EXAMPLE))
    assert list(parsed["ipam"]) == sorted(parsed["ipam"])
    assert " " not in text


def test_the_same_network_always_gives_the_same_bytes() -> None:
    reordered = NetworkAttachment(plugin={"cniVersion": "0.3.0", "mode": "l3", "type": "ipvlan"})
    first = nad_object(demo(), IPVLAN_L3, "default")
    second = nad_object(demo(), reordered, "default")
    assert json.dumps(first) == json.dumps(second)


def test_a_changed_network_changes_the_config_string() -> None:
    before = nad_object(demo(), IPVLAN_L3, "default")["spec"]["config"]
    after = nad_object(demo(subnet="172.16.0.0/16"), IPVLAN_L3, "default")["spec"]["config"]
    assert before != after
    assert json.loads(after)["subnet"] == "172.16.0.0/16"


def test_cni_version_follows_the_plugin_and_dns_the_plugins_dns() -> None:
    network = demo(
        plugin={
            "cniVersion": "1.0.0",
            "type": "macvlan",
            "dns": {"nameservers": ["10.0.0.10"], "search": ["svc.local"]},
        },
        multiNICIPAM=False,
        masterNets=[],
    )
    attachment = NetworkAttachment(
        plugin={"cniVersion": "1.0.0", "mode": "bridge", "type": "macvlan"}
    )
    config = nad_config(network, attachment, cni_type="multi-nic-dev", daemon_port=11500)
    assert config["cniVersion"] == "1.0.0"
    assert config["dns"] == {"nameservers": ["10.0.0.10"], "search": ["svc.local"]}
    assert config["type"] == "multi-nic-dev"
    assert config["daemonPort"] == 11500
    assert config["multiNICIPAM"] is False
    assert config["masterNets"] == []


def test_a_pass_through_ipam_is_carried_as_an_object() -> None:
    network = demo(ipam='{"type":"whereabouts","range":"192.168.0.0/18"}', multiNICIPAM=False)
    config = nad_config(network, IPVLAN_L3)
    assert config["ipam"] == {"range": "192.168.0.0/18", "type": "whereabouts"}


def test_nad_object_is_labelled_owned_and_annotated() -> None:
    attachment = NetworkAttachment(
        plugin={"cniVersion": "0.3.0", "type": "sriov"},
        annotations={"k8s.v1.cni.cncf.io/resourceName": "openshift.io/demo"},
    )
    nad = nad_object(demo(), attachment, "team-a")
    assert {k: v for k, v in nad.items() if k != "spec"} == {
        "apiVersion": "k8s.cni.cncf.io/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": {
            "name": "demo",
            "namespace": "team-a",
            "labels": {"multi-nic-cni-generated": "true"},
            "annotations": {"k8s.v1.cni.cncf.io/resourceName": "openshift.io/demo"},
            "ownerReferences": [
                {
                    "apiVersion": "multinic.fms.io/v1",
                    "kind": "MultiNicNetwork",
                    "name": "demo",
                    "uid": "4f1c-uid",
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
    }
    assert isinstance(nad["spec"]["config"], str)


def test_owner_reference_leaves_out_a_uid_the_network_does_not_have() -> None:
    assert "uid" not in owner_reference(demo(uid=None))


def test_nad_object_takes_shim_type_and_port_from_the_config_object() -> None:
    config = Config.model_validate(
        {"metadata": {"name": "multi-nicd"}, "spec": {"cniType": "mnic", "daemon": {"port": 12000}}}
    )
    content = json.loads(nad_object(demo(), IPVLAN_L3, "default", config)["spec"]["config"])
    assert (content["type"], content["daemonPort"]) == ("mnic", 12000)


def test_config_json_is_compact_and_keeps_non_ascii() -> None:
    assert nad_config_json({"name": "réseau", "a": [1, 2]}) == '{"name":"réseau","a":[1,2]}'
