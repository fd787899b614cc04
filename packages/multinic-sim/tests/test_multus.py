"""``--multus real``: the simulated kubelet execs the real Multus thin plugin as the pods' CNI.

Multus (built by ``scripts/build-counterparts multus``) reads the pod and its
NADs from the API server double, execs the ``multi-nic`` shim and writes the
network-status annotation itself (a protobuf ``pods/status`` PUT). The first
tests need neither root nor the binary: what Multus sends the API (bodies
captured from Multus v4.3.0 against the double) and the config the kubelet
gives it. The root tests run the demo with real Multus on 2 hosts x 2 NICs.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config

from multinic_sim import multus
from multinic_sim.cluster_builder import SimCluster
from multinic_sim.errors import SimError
from multinic_sim.fabric import FabricLayout, leftovers, run_ip
from multinic_sim.kubelet import NETWORK_STATUS_ANNOTATION, multus_network_status
from multinic_sim.pods import interfaces_of
from multinic_sim.processes import processes_of
from multinic_sim.protobuf import ProtobufError, decode

from .conftest import DATA

SIM = str(Path(sys.executable).parent / "multinic-sim")
HOSTS, NICS = 2, 2


def sim(*args: str, timeout: float = 600, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [SIM, *args], capture_output=True, text=True, check=False, timeout=timeout,
        env={**os.environ, **env},
    )  # fmt: skip


# -- what Multus sends the API server ----------------------------------------------


def test_the_pod_multus_puts_to_pods_status_decodes_to_its_json_form() -> None:
    body = (DATA / "multus-pod-status.pb").read_bytes()
    pod = decode(body, "status")
    assert (pod["apiVersion"], pod["kind"]) == ("v1", "Pod")
    assert "spec" not in pod  # skipped: pods/status ignores it
    meta = pod["metadata"]
    assert meta["name"] == "rich"
    assert meta["labels"] == {"app": "demo"}
    assert meta["finalizers"] == ["example.com/keep"]
    assert meta["ownerReferences"][0]["controller"] is True
    assert meta["creationTimestamp"].endswith("Z")
    statuses = json.loads(meta["annotations"][NETWORK_STATUS_ANNOTATION])
    assert [s["name"] for s in statuses] == ["sim-loopback", "default/br"]
    assert statuses[0]["default"] is True
    status = pod["status"]
    assert status["phase"] == "Running"
    assert status["startTime"] == "2026-12-06T19:30:00Z"
    assert status["podIPs"] == [{"ip": "10.0.0.9"}]
    assert [c["type"] for c in status["conditions"]] == ["Ready", "PodScheduled"]
    container = status["containerStatuses"][0]
    # Zero values JSON shows (no omitempty) are kept; the others dropped, as JSON would.
    assert container["ready"] is True
    assert container["restartCount"] == 0
    assert container["imageID"] == ""
    assert "containerID" not in container
    assert container["state"] == {"running": {"startedAt": "2026-12-06T19:30:00Z"}}
    assert container["lastState"]["terminated"]["exitCode"] == 0
    assert container["allocatedResources"] == {"cpu": "500m"}


def test_a_protobuf_pod_is_decoded_for_pods_status_only() -> None:
    body = (DATA / "multus-pod-status.pb").read_bytes()
    for subresource in (None, "ephemeralcontainers"):
        with pytest.raises(ProtobufError, match="status subresource only"):
            decode(body, subresource)


def test_the_event_multus_records_decodes_to_its_json_form() -> None:
    event = decode((DATA / "multus-event.pb").read_bytes())
    assert (event["kind"], event["reason"], event["type"]) == ("Event", "AddedInterface", "Normal")
    assert event["message"] == "Add net1 [10.99.0.2/24] from default/br"
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["source"] == {"component": "multus"}
    assert event["reportingComponent"] == "multus"
    assert event["reportingInstance"] == ""  # no omitempty
    assert event["count"] == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", event["firstTimestamp"])
    assert "eventTime" not in event  # zero


# -- the kubelet's side -------------------------------------------------------------


def test_each_host_gets_a_multus_config_with_its_kubeconfig_and_a_loopback_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = tmp_path / "multus-binary"
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setenv(multus.BINARY_ENV, str(binary))
    cluster = SimCluster(tmp_path / "state", FabricLayout(hosts=2, nics=2, prefix="t"))
    dirs = [cluster.cni_bin_dir, Path("/usr/lib/cni")]
    multus.install(cluster, dirs)
    multus.install(cluster, dirs)  # idempotent
    assert (cluster.cni_bin_dir / "multus").resolve() == binary
    for host in range(2):
        conf = multus.read_config(cluster, host)
        assert conf["type"] == "multus"
        assert conf["name"] == multus.NETWORK_NAME
        assert conf["kubeconfig"] == str(cluster.host_kubeconfig(host))
        assert conf["binDir"] == str(cluster.cni_bin_dir)
        assert conf["delegates"] == [
            {"cniVersion": "1.0.0", "name": "sim-loopback", "type": "loopback"}
        ]
        assert conf["cniDir"].startswith(str(cluster.host_dir(host)))
        assert conf["logFile"] == str(cluster.logs_dir / f"multus-host-{host}.log")


def test_without_the_binary_the_error_names_build_counterparts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(multus.BINARY_ENV, raising=False)
    monkeypatch.setenv(multus.COUNTERPARTS_ENV, str(tmp_path / "empty"))
    with pytest.raises(SimError, match=r"scripts/build-counterparts multus"):
        multus.find_binary()
    # `up` refuses before it makes anything.
    state_dir = tmp_path / "state"
    refused = sim(
        "up", "--multus", "real", "--state-dir", str(state_dir), "--prefix", "nomu",
        timeout=60, COUNTERPARTS_DIR=str(tmp_path / "empty"),
    )  # fmt: skip
    assert refused.returncode == 1
    assert "scripts/build-counterparts multus" in refused.stderr
    assert not state_dir.exists()


def test_the_network_status_multus_wrote_is_read_without_its_default_network() -> None:
    written = [
        {"name": "sim-loopback", "interface": "lo", "ips": ["127.0.0.1", "::1"],
         "mac": "00:00:00:00:00:00", "default": True, "dns": {}},
        {"name": "default/net", "interface": "net1-0", "ips": ["192.168.0.1"], "mac": "aa",
         "dns": {}},
        {"name": "default/net", "interface": "net1-1", "ips": ["192.168.64.1"], "mac": "bb",
         "dns": {}},
    ]  # fmt: skip
    annotations = {NETWORK_STATUS_ANNOTATION: json.dumps(written, indent=4)}
    pod = client.V1Pod(metadata=client.V1ObjectMeta(annotations=annotations))
    assert multus_network_status(pod) == written
    assert [(i.name, i.nic_index) for i in interfaces_of(annotations)] == [
        ("net1-0", 0), ("net1-1", 1)
    ]  # fmt: skip
    garbled = client.V1Pod(
        metadata=client.V1ObjectMeta(annotations={NETWORK_STATUS_ANNOTATION: "{"})
    )
    assert multus_network_status(garbled) == []


# -- on a simulated cluster ---------------------------------------------------------


def require_multus() -> Path:
    try:
        return multus.find_binary()
    except SimError as e:
        pytest.skip(f"the Multus binary is not built (run scripts/build-counterparts multus): {e}")


def assert_nothing_left(state_dir: Path, prefix: str) -> None:
    assert processes_of(state_dir) == [], "daemons of the simulated cluster still run"
    assert leftovers(prefix) == [], "network namespaces left behind"
    assert f"{prefix}-" not in run_ip("-o", "link", "show"), "links left behind"
    assert not state_dir.exists(), "state directory left behind"


def demo_rows(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("demo-macvlan  host-")]


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimCluster]:
    """``demo --keep --multus real`` on 2 hosts x 2 NICs: its two pods stay."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, netlink)")
    require_multus()
    state_dir = tmp_path_factory.mktemp("multus") / "state"
    prefix = f"u{secrets.token_hex(3)}"
    try:
        demo = sim(
            "demo", "--multus", "real", "--keep", "--no-bandwidth", "--hosts", str(HOSTS),
            "--nics", str(NICS), "--state-dir", str(state_dir), "--prefix", prefix,
        )  # fmt: skip
        assert demo.returncode == 0, demo.stdout + demo.stderr
        assert "with the real Multus as their CNI" in demo.stdout
        assert len(demo_rows(demo.stdout)) == HOSTS * (HOSTS - 1)
        assert all(f"{NICS}/{NICS} CONNECTED" in row for row in demo_rows(demo.stdout))
        yield SimCluster.load(state_dir)
    finally:
        sim("down", "--state-dir", str(state_dir), "--prefix", prefix, timeout=300)


def core_api(cluster: SimCluster) -> Any:
    return client.CoreV1Api(config.new_client_from_config(config_file=str(cluster.kubeconfig)))


def added_interface_events(core: Any, uid: str) -> list[str]:
    """The messages of Multus' AddedInterface Events on the pod (its recorder sends them async)."""
    deadline = time.monotonic() + 5
    while True:
        events = core.list_namespaced_event(
            "default", field_selector=f"involvedObject.uid={uid},reason=AddedInterface"
        ).items
        if len(events) >= 2 or time.monotonic() > deadline:
            assert all(e.source.component == "multus" for e in events)
            return [e.message for e in events]
        time.sleep(0.2)


def multus_log(cluster: SimCluster, host: int) -> str:
    return multus.log_path(cluster, host).read_text()


@pytest.mark.root
@pytest.mark.slow
def test_pods_get_both_nics_from_the_shim_through_multus_which_writes_network_status(
    kept: SimCluster,
) -> None:
    state = ["--state-dir", str(kept.state_dir)]
    # The demo's macvlan pods (its L3 network's pods are left to the delete test).
    pods = [
        p
        for p in json.loads(sim("pod", "list", "--json", *state).stdout)
        if p["name"].startswith("macvlan-")
    ]
    assert sorted(p["node"] for p in pods) == [f"host-{h}" for h in range(HOSTS)]
    for pod in pods:
        assert [(i["name"], i["nic"]) for i in pod["interfaces"]] == [("net1-0", 0), ("net1-1", 1)]
    check = sim("concheck", "--json", "--no-bandwidth", *state)
    assert check.returncode == 0, check.stdout + check.stderr
    assert json.loads(check.stdout)["allConnected"] is True

    core = core_api(kept)
    for host in range(HOSTS):
        pod = core.read_namespaced_pod(f"macvlan-{host}", "default")
        # Multus' shape: its default network (loopback) first, indented JSON, per-NIC entries.
        raw = pod.metadata.annotations[NETWORK_STATUS_ANNOTATION]
        assert raw.startswith('[{\n    "name": "sim-loopback"')
        written = json.loads(raw)
        assert written[0]["default"] is True
        assert written[0]["interface"] == "lo"
        assert [(e["name"], e["interface"]) for e in written[1:]] == [
            ("default/demo-macvlan", "net1-0"), ("default/demo-macvlan", "net1-1")
        ]  # fmt: skip
        # Multus exec'd the shim for the NAD (its log shows the delegate ADD and result).
        log = multus_log(kept, host)
        assert re.search(
            rf"\[verbose\] Add: default:macvlan-{host}:{pod.metadata.uid}:"
            r"default/demo-macvlan\(demo-macvlan\):net1 .*\"name\":\"net1-1\"",
            log,
        ), log
        # and recorded its Events (protobuf POSTs the double decodes).
        ips = " ".join(f"{e['ips'][0]}/18" for e in written[1:])
        wanted = f"Add net1 [{ips}] from default/demo-macvlan"
        assert wanted in added_interface_events(core, pod.metadata.uid)
    kubelet_log = (kept.logs_dir / "kubelet.log").read_text()
    assert "pods are attached by Multus" in kubelet_log
    # One pod per host on each of the demo's two networks (L2 and L3).
    assert kubelet_log.count("(network-status written by Multus)") == 2 * HOSTS


@pytest.mark.root
@pytest.mark.slow
def test_a_pod_whose_nad_is_missing_fails_in_multus_and_is_undone(kept: SimCluster) -> None:
    core = core_api(kept)
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {
                "name": "orphan",
                "annotations": {"k8s.v1.cni.cncf.io/networks": "nosuch"},
            },
            "spec": {"nodeName": "host-0", "containers": [{"name": "c", "image": "none"}]},
        },
    )
    deadline = time.monotonic() + 30
    while True:
        failed = core.list_namespaced_event(
            "default", field_selector="involvedObject.name=orphan,reason=FailedCreatePodSandBox"
        ).items
        if failed:
            break
        assert time.monotonic() < deadline, "no FailedCreatePodSandBox event"
        time.sleep(0.2)
    message = failed[0].message
    assert 'plugin type="multus" name="multus-cni-network" failed (add)' in message
    assert "cannot find a network-attachment-definition (nosuch) in namespace (default)" in message
    assert core.read_namespaced_pod("orphan", "default").status.phase == "Pending"
    assert f"{kept.layout.prefix}-pod-default-orphan" not in leftovers(kept.layout.prefix)
    core.delete_namespaced_pod("orphan", "default")
    deadline = time.monotonic() + 30
    while core.list_namespaced_pod("default", field_selector="metadata.name=orphan").items:
        assert time.monotonic() < deadline, "pod orphan not deleted"
        time.sleep(0.2)


@pytest.mark.root
@pytest.mark.slow
def test_a_pods_requested_ips_and_mac_reach_the_agent_through_multus(kept: SimCluster) -> None:
    """The NAD declares the ``ips`` and ``mac`` capabilities, so Multus passes the pod's
    ``ips``/``mac`` as runtimeConfig: the pod gets exactly those addresses (multi-nic-ipam
    reads them only there), each on the NIC whose pool holds it, and the MAC on its first NIC."""
    core = core_api(kept)
    custom = client.CustomObjectsApi(core.api_client)
    pools = custom.list_cluster_custom_object(
        "multinic.fms.io", "v1", "ippools", label_selector="hostname=host-0,netname=demo-macvlan"
    )["items"]
    blocks = {p["spec"]["interfaceName"]: p["spec"]["podCIDR"] for p in pools}
    wanted = [
        str(ipaddress.ip_network(blocks["eth2"])[88]),  # listed first: the pools decide the NIC
        str(ipaddress.ip_network(blocks["eth1"])[77]),
    ]
    mac = "02:00:5e:10:00:77"
    selection = [{"name": "demo-macvlan", "ips": wanted, "mac": mac}]
    core.create_namespaced_pod(
        "default",
        {
            "metadata": {
                "name": "asked",
                "annotations": {"k8s.v1.cni.cncf.io/networks": json.dumps(selection)},
            },
            "spec": {"nodeName": "host-0", "containers": [{"name": "c", "image": "none"}]},
        },
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            pod = core.read_namespaced_pod("asked", "default")
            raw = (pod.metadata.annotations or {}).get(NETWORK_STATUS_ANNOTATION)
            if raw:
                break
            assert time.monotonic() < deadline, "no network-status on pod asked"
            time.sleep(0.3)
        written = {e["interface"]: e for e in json.loads(raw) if e.get("interface") != "lo"}
        assert written["net1-0"]["ips"] == [wanted[1]]
        assert written["net1-1"]["ips"] == [wanted[0]]
        # Multus also passes CNI_ARGS MAC= (a deprecated path); only the first NIC takes it.
        assert written["net1-0"]["mac"] == mac
        assert written["net1-1"]["mac"] != mac
    finally:
        core.delete_namespaced_pod("asked", "default")
        deadline = time.monotonic() + 30
        while core.list_namespaced_pod("default", field_selector="metadata.name=asked").items:
            assert time.monotonic() < deadline, "pod asked not deleted"
            time.sleep(0.2)


@pytest.mark.root
@pytest.mark.slow
def test_pod_delete_runs_del_through_multus_and_leaves_nothing(kept: SimCluster) -> None:
    state = ["--state-dir", str(kept.state_dir)]
    core = core_api(kept)
    uids = {
        h: core.read_namespaced_pod(f"macvlan-{h}", "default").metadata.uid for h in range(HOSTS)
    }
    # The demo's L3 network's pods first, so that each host is left with its NICs only.
    for pod in json.loads(sim("pod", "list", "--json", *state).stdout):
        if not pod["name"].startswith("macvlan-"):
            assert sim("pod", "del", pod["name"], *state).returncode == 0
    for host in range(HOSTS):
        deleted = sim("pod", "del", f"macvlan-{host}", *state)
        assert deleted.returncode == 0, deleted.stderr
        log = multus_log(kept, host)
        # Multus ran DEL of the shim (from its cache of the pod's delegates), then of loopback.
        assert re.search(
            rf"\[verbose\] Del: default:macvlan-{host}:{uids[host]}:demo-macvlan:net1 ", log
        ), log
        assert re.search(
            rf"\[verbose\] Del: default:macvlan-{host}:{uids[host]}:sim-loopback:eth0 ", log
        )
        cache = multus.host_dir(kept, host) / "cache"
        assert sorted(p.name for p in cache.iterdir()) == ["results"]  # the scratch file went
        assert list((cache / "results").iterdir()) == []
        links = run_ip("-n", kept.layout.host_netns(host), "-o", "link", "show")
        assert [line.split(":")[1].strip().split("@")[0] for line in links.splitlines()] == [
            "lo", "eth1", "eth2"
        ]  # fmt: skip
    assert json.loads(sim("pod", "list", "--json", *state).stdout) == []
    assert [n for n in leftovers(kept.layout.prefix) if "-pod-" in n] == []
    down = sim("down", *state)
    assert down.returncode == 0, down.stderr
    assert_nothing_left(kept.state_dir, kept.layout.prefix)


@pytest.mark.root
@pytest.mark.slow
def test_demo_with_real_multus_passes_end_to_end_and_leaves_nothing(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, netlink)")
    require_multus()
    state_dir, prefix = tmp_path / "state", f"u{secrets.token_hex(3)}"
    try:
        started = time.monotonic()
        demo = sim(
            "demo", "--multus", "real", "--no-bandwidth", "--hosts", str(HOSTS),
            "--nics", str(NICS), "--state-dir", str(state_dir), "--prefix", prefix,
        )  # fmt: skip
        took = time.monotonic() - started
        assert demo.returncode == 0, f"demo failed after {took:.0f}s:\n{demo.stdout}\n{demo.stderr}"
        rows = demo_rows(demo.stdout)
        assert len(rows) == HOSTS * (HOSTS - 1), demo.stdout
        assert all(f"{NICS}/{NICS} CONNECTED" in row for row in rows), demo.stdout
        assert f"every pair of {HOSTS} hosts CONNECTED on all {NICS} NICs" in demo.stdout
        assert_nothing_left(state_dir, prefix)
    finally:
        sim("down", "--state-dir", str(state_dir), "--prefix", prefix, timeout=300)
