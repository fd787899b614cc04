"""whereabouts, the real IPAM binary (v0.9.2), behind the real agent and macvlan.

A ``multinic-agent`` runs in a simulated host's namespace (the ``agent``
fixture) and is exec'd through the installed shim (``runtime``), one pod
network namespace per pod, two NICs per pod.  Each NIC's delegate is the
real ``macvlan``, which execs the real ``whereabouts`` as its IPAM; that
keeps its allocations as ``whereabouts.cni.cncf.io/v1alpha1`` IPPools (and
OverlappingRangeIPReservations) on the test API server (``kube_api``: the
project's double, or a real kube-apiserver with MULTINIC_TEST_KUBECONFIG),
in the namespace of its kubeconfig's current context (kube-system when the
context names none), serialised by a ``whereabouts`` Lease there.

* ``whereabouts`` as a pass-through IPAM: the network's ``ipam`` given
  unchanged to both NICs, so both allocate from one pool (named after the
  range); whereabouts tells them apart by ``ifName`` (net1-0, net1-1).
* ``multi-config`` with ``ipam_type: whereabouts``: each NIC its own range,
  and the agent sets ``network_name`` to the NIC's name, so each NIC gets a
  pool of its own (``<NIC>-<range>``).

The delegates run in the host's namespace, as on a node; there 127.0.0.1 is
the simulated host's loopback, not the test's, so ``whereabouts`` in CNI_PATH
is a wrapper that runs the real binary in the test process's network
namespace, where the API server listens (on a node, the host namespace is
the one that reaches the API server).

Needs ``scripts/build-counterparts whereabouts`` (the binary) and the
whereabouts v0.9.2 Go module in the module cache (its CRDs).
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, cast

import pytest
import yaml

from multinic_sim.testing import KubeTestApi

from .conftest import SYSTEM_CNI, Agent, CniOutcome, Pods, Runtime

pytestmark = [pytest.mark.root, pytest.mark.slow]

WHEREABOUTS_VERSION = "v0.9.2"
BUILD_HINT = "scripts/build-counterparts whereabouts"
GROUP, VERSION = "whereabouts.cni.cncf.io", "v1alpha1"
CRD_FILES = (
    "whereabouts.cni.cncf.io_ippools.yaml",
    "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml",
)
RANGE = "10.88.0.0/24"
NIC_RANGES = {"eth1": "10.88.1.0/24", "eth2": "10.88.2.0/24"}
PODS = 6
LOG_LEVEL = "debug"


def repo_root() -> Path:
    for folder in Path(__file__).resolve().parents:
        if (folder / "scripts" / "build-counterparts").is_file():
            return folder
    raise AssertionError("not run from a multinic checkout (no scripts/build-counterparts)")


def whereabouts_binary() -> Path:
    configured = os.environ.get("COUNTERPARTS_DIR")
    base = Path(configured) if configured else repo_root() / ".cache" / "counterparts"
    binary = base / "bin" / "whereabouts"
    if not os.access(binary, os.X_OK):
        pytest.skip(f"no whereabouts binary at {binary}: build it with `{BUILD_HINT}`")
    return binary


def whereabouts_crds() -> list[dict[str, Any]]:
    """The CRDs of whereabouts' Go module (the version the binary is built from)."""
    cache = Path(os.environ.get("GOMODCACHE") or Path.home() / "go" / "pkg" / "mod")
    folder = cache / f"github.com/k8snetworkplumbingwg/whereabouts@{WHEREABOUTS_VERSION}/doc/crds"
    paths = [folder / name for name in CRD_FILES]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        pytest.skip(
            f"no whereabouts CRDs ({', '.join(missing)}): `{BUILD_HINT}` downloads the "
            f"whereabouts {WHEREABOUTS_VERSION} module into the Go module cache"
        )
    return [doc for p in paths for doc in yaml.safe_load_all(p.read_text()) if doc]


@pytest.fixture(scope="module")
def crds(kube_api: KubeTestApi) -> Iterator[None]:
    whereabouts_binary()
    bodies = whereabouts_crds()
    for body in bodies:
        kube_api.apply_crd(body)
    yield
    for body in bodies:
        kube_api.delete_crd(body["metadata"]["name"])


class Whereabouts:
    """whereabouts' side of one test: its namespace, kubeconfig, log, CNI_PATH."""

    def __init__(self, kube_api: KubeTestApi, namespace: str, workdir: Path) -> None:
        self.kube_api = kube_api
        self.namespace = namespace
        workdir.mkdir()
        self.kubeconfig = workdir / "whereabouts.kubeconfig"
        self.flat_file = workdir / "whereabouts.conf"
        self.log_file = workdir / "whereabouts.log"
        self.bin_dir = workdir / "bin"
        self.bin_dir.mkdir()
        # The test API server's kubeconfig with ``namespace`` in its current context:
        # whereabouts keeps its pools and its Lease there.
        document = yaml.safe_load(kube_api.kubeconfig.read_text())
        for context in document["contexts"]:
            if context["name"] == document["current-context"]:
                context["context"]["namespace"] = namespace
        self.kubeconfig.write_text(yaml.safe_dump(document))
        self.kubeconfig.chmod(0o600)
        # v0.9.2 refuses to run without its "flat file" ("config file not found");
        # a node has one at /etc/cni/net.d/whereabouts.d/whereabouts.conf, this
        # test names its own with configuration_path.  Its keys only fill in what
        # the network's ipam lacks, so it names nothing else.
        self.flat_file.write_text(json.dumps({"datastore": "kubernetes"}))
        # It also notes every exec that starts while another of the same pod
        # (CNI_CONTAINERID) is still running: Multus runs a pod's attachments one
        # at a time, and whereabouts is only safe that way (see overlaps()).
        self.inflight = workdir / "inflight"
        self.inflight.mkdir()
        self.overlaps_file = workdir / "overlaps"
        wrapper = self.bin_dir / "whereabouts"
        wrapper.write_text(
            "#!/bin/sh\n"
            f"marker={self.inflight}/$CNI_CONTAINERID.$CNI_IFNAME.$$\n"
            f'others=$(ls {self.inflight} | grep -F "$CNI_CONTAINERID.")\n'
            ': > "$marker"\n'
            f'[ -z "$others" ] || echo "$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME while $others"'
            f" >> {self.overlaps_file}\n"
            f"nsenter --net=/proc/{os.getpid()}/ns/net {whereabouts_binary()}\n"
            "status=$?\n"
            'rm -f "$marker"\n'
            "exit $status\n"
        )
        wrapper.chmod(0o755)

    @property
    def cni_path(self) -> str:
        return f"{self.bin_dir}{os.pathsep}{SYSTEM_CNI}"

    def ipam(self, **extra: Any) -> dict[str, Any]:
        """whereabouts' own IPAM keys (pkg/types IPAMConfig), for ``range`` etc. in ``extra``."""
        return {
            "kubernetes": {"kubeconfig": str(self.kubeconfig)},
            "configuration_path": str(self.flat_file),
            "log_file": str(self.log_file),
            "log_level": LOG_LEVEL,
            **extra,
        }

    def _list(self, plural: str) -> list[dict[str, Any]]:
        found = self.kube_api.custom_objects.list_namespaced_custom_object(
            GROUP, VERSION, self.namespace, plural
        )
        return list(cast(dict[str, Any], found)["items"])

    def pools(self) -> dict[str, dict[str, Any]]:
        """IPPool name -> its spec."""
        return {p["metadata"]["name"]: p["spec"] for p in self._list("ippools")}

    def reservations(self) -> dict[str, dict[str, Any]]:
        """OverlappingRangeIPReservation name -> its spec."""
        return {
            r["metadata"]["name"]: r["spec"] for r in self._list("overlappingrangeipreservations")
        }

    def lease(self) -> Any:
        from kubernetes import client

        coordination = client.CoordinationV1Api(self.kube_api.api_client)
        return coordination.read_namespaced_lease("whereabouts", self.namespace)

    def overlaps(self) -> list[str]:
        """Execs that ran while another exec of the same pod did.

        whereabouts v0.9.2 keeps its "this pod reserved the address already"
        flag across retries: when two interfaces of one pod allocate from one
        range at once, one address can be left without its
        OverlappingRangeIPReservation, free for an overlapping range to give again.
        """
        text = self.overlaps_file.read_text() if self.overlaps_file.exists() else ""
        return text.splitlines()

    def log(self) -> str:
        return self.log_file.read_text(errors="replace") if self.log_file.exists() else ""


@pytest.fixture
def whereabouts(
    crds: None, kube_api: KubeTestApi, kube_namespace: str, tmp_path: Path
) -> Whereabouts:
    return Whereabouts(kube_api, kube_namespace, tmp_path / "whereabouts")


@pytest.fixture
def wa_runtime(runtime: Runtime, whereabouts: Whereabouts) -> Runtime:
    runtime.cni_path = whereabouts.cni_path
    return runtime


class Pod:
    def __init__(self, index: int, netns: str) -> None:
        self.container_id = f"wa{index}"
        self.name = f"pod-{index}"
        self.netns = netns
        self.result: dict[str, Any] = {}

    @property
    def podref(self) -> str:
        return f"default/{self.name}"  # K8S_POD_NAMESPACE=default in the runtime's CNI_ARGS

    def addresses(self) -> dict[str, str]:
        """Pod interface -> the ADD result's ``ADDRESS/PREFIX`` on it."""
        names = [i["name"] for i in self.result["interfaces"]]
        return {names[ip["interface"]]: ip["address"] for ip in self.result["ips"]}


def cni(runtime: Runtime, command: str, pod: Pod, config: dict[str, Any]) -> CniOutcome:
    env = runtime.env(command, pod.container_id, pod.netns, pod=pod.name)
    return runtime.run(env, config)


def add_all(runtime: Runtime, pods: list[Pod], config: dict[str, Any]) -> None:
    """ADD every pod at once (as a kubelet starts several pods), each expected to succeed."""
    with ThreadPoolExecutor(len(pods)) as executor:
        outcomes = list(executor.map(lambda pod: cni(runtime, "ADD", pod, config), pods))
    for pod, outcome in zip(pods, outcomes, strict=True):
        assert outcome.status == 0, (pod.name, outcome)
        pod.result = outcome.json


def delete_all(runtime: Runtime, pods: list[Pod], config: dict[str, Any]) -> None:
    with ThreadPoolExecutor(len(pods)) as executor:
        outcomes = list(executor.map(lambda pod: cni(runtime, "DEL", pod, config), pods))
    for pod, outcome in zip(pods, outcomes, strict=True):
        assert (outcome.status, outcome.stdout) == (0, ""), (pod.name, outcome)


def offset(address: str, cidr: str) -> str:
    """whereabouts' allocation key: the address's offset from the range's first address."""
    ip = ipaddress.ip_interface(address).ip
    return str(int(ip) - int(ipaddress.ip_network(cidr).network_address))


def allocation(pod: Pod, ifname: str) -> dict[str, str]:
    return {"id": pod.container_id, "podref": pod.podref, "ifname": ifname}


def test_pass_through_whereabouts_gives_both_nics_distinct_addresses_from_one_pool(
    wa_runtime: Runtime, whereabouts: Whereabouts, pods: Pods, agent: Agent, netconf: Any
) -> None:
    config = netconf(ipam={"type": "whereabouts", **whereabouts.ipam(range=RANGE)},
                     multiNICIPAM=False)  # fmt: skip
    attached = [Pod(i, pods.new()) for i in range(PODS)]
    started = time.monotonic()
    add_all(wa_runtime, attached, config)
    added = time.monotonic() - started

    network = ipaddress.ip_network(RANGE)
    given = [a for pod in attached for a in pod.addresses().values()]
    assert len(given) == 2 * PODS
    assert whereabouts.overlaps() == []
    assert len(set(given)) == 2 * PODS, f"an address was given twice: {sorted(given)}"
    for address in given:
        interface = ipaddress.ip_interface(address)
        assert interface.network == network, address
        assert interface.ip not in (network.network_address, network.broadcast_address), address
    for pod in attached:
        assert sorted(pod.addresses()) == ["net1-0", "net1-1"], pod.result
        # macvlan configured what whereabouts gave, in the pod's namespace
        assert pods.addresses(pod.netns) == {k: [v] for k, v in pod.addresses().items()}

    # One pool for both NICs (the same range, no network_name), every allocation
    # with its pod, container and interface; one cluster-wide reservation per address.
    expected = {
        offset(address, RANGE): allocation(pod, ifname)
        for pod in attached
        for ifname, address in pod.addresses().items()
    }
    assert whereabouts.pools() == {"10.88.0.0-24": {"range": RANGE, "allocations": expected}}
    reservations = whereabouts.reservations()
    assert reservations == {
        address.split("/")[0]: {"podref": pod.podref, "ifname": ifname}
        for pod in attached
        for ifname, address in pod.addresses().items()
    }
    assert agent.records() == sorted(f"{p.container_id}_net1.json" for p in attached)

    # A repeated ADD is answered from the agent's record: nothing new is allocated.
    again = cni(wa_runtime, "ADD", attached[0], config)
    assert again.status == 0, again
    assert again.json["ips"] == attached[0].result["ips"]
    assert whereabouts.pools()["10.88.0.0-24"]["allocations"] == expected

    # DEL releases every allocation, also of pods whose namespace is already gone.
    for pod in attached[: PODS // 2]:
        pods.remove(pod.netns)
    started = time.monotonic()
    delete_all(wa_runtime, attached, config)
    deleted = time.monotonic() - started
    assert whereabouts.pools() == {"10.88.0.0-24": {"range": RANGE, "allocations": {}}}
    assert whereabouts.reservations() == {}
    assert whereabouts.overlaps() == []
    assert agent.records() == []
    for pod in attached[PODS // 2 :]:
        assert pods.links(pod.netns) == ["lo"]
    # The last holder let its Lease go (ReleaseOnCancel).
    assert not whereabouts.lease().spec.holder_identity
    # A second DEL of a released attachment is fine.
    assert cni(wa_runtime, "DEL", attached[-1], config).status == 0
    print(
        f"\nwhereabouts pass-through: {PODS} pods x 2 NICs: ADD {added:.2f}s, "
        f"DEL {deleted:.2f}s (all pods at once)"
    )


def test_multi_config_whereabouts_gives_each_nic_its_own_range_and_pool(
    wa_runtime: Runtime, whereabouts: Whereabouts, pods: Pods, agent: Agent, netconf: Any
) -> None:
    ipam = {
        "type": "multi-config",
        "ipam_type": "whereabouts",
        "args": {nic: whereabouts.ipam(range=cidr) for nic, cidr in NIC_RANGES.items()},
    }
    config = netconf(ipam=ipam, multiNICIPAM=False)
    attached = [Pod(i, pods.new()) for i in range(PODS)]
    started = time.monotonic()
    add_all(wa_runtime, attached, config)
    added = time.monotonic() - started

    ranges = {"net1-0": NIC_RANGES["eth1"], "net1-1": NIC_RANGES["eth2"]}
    given = [a for pod in attached for a in pod.addresses().values()]
    assert len(set(given)) == 2 * PODS, sorted(given)
    assert whereabouts.overlaps() == []
    for pod in attached:
        for ifname, address in pod.addresses().items():
            assert ipaddress.ip_interface(address).network == ipaddress.ip_network(
                ranges[ifname]
            ), (pod.name, ifname, address)
        assert pods.addresses(pod.netns) == {k: [v] for k, v in pod.addresses().items()}

    # network_name is the NIC's name: a pool per NIC, reservations prefixed with it.
    nics = {"net1-0": "eth1", "net1-1": "eth2"}
    expected = {
        f"{nic}-{cidr.replace('/', '-')}": {
            "range": cidr,
            "allocations": {
                offset(address, cidr): allocation(pod, ifname)
                for pod in attached
                for ifname, address in pod.addresses().items()
                if nics[ifname] == nic
            },
        }
        for nic, cidr in NIC_RANGES.items()
    }
    assert whereabouts.pools() == expected
    assert whereabouts.reservations() == {
        f"{nics[ifname]}-{address.split('/')[0]}": {"podref": pod.podref, "ifname": ifname}
        for pod in attached
        for ifname, address in pod.addresses().items()
    }

    started = time.monotonic()
    delete_all(wa_runtime, attached, config)
    deleted = time.monotonic() - started
    assert whereabouts.pools() == {
        name: {"range": pool["range"], "allocations": {}} for name, pool in expected.items()
    }
    assert whereabouts.reservations() == {}
    assert agent.records() == []
    print(
        f"\nwhereabouts multi-config: {PODS} pods x 2 NICs: ADD {added:.2f}s, "
        f"DEL {deleted:.2f}s (all pods at once)"
    )


def failing_after_ipam(directory: Path) -> None:
    """A ``macvlan`` whose ADD for net1-1 does all its work (whereabouts included), then fails."""
    wrapper = directory / "macvlan"
    wrapper.write_text(
        "#!/bin/sh\n"
        'if [ "$CNI_COMMAND" = ADD ] && [ "$CNI_IFNAME" = net1-1 ]; then\n'
        f"  {SYSTEM_CNI}/macvlan >/dev/null || exit 1\n"
        '  echo \'{"cniVersion":"1.0.0","code":999,"msg":"injected failure on net1-1"}\'\n'
        "  exit 1\n"
        "fi\n"
        f"exec {SYSTEM_CNI}/macvlan\n"
    )
    wrapper.chmod(0o755)


@pytest.mark.parametrize("fault", ["delegate-fails-after-ipam", "range-runs-out"])
def test_failed_add_leaves_no_whereabouts_allocation(
    wa_runtime: Runtime, whereabouts: Whereabouts, pods: Pods, netconf: Any, fault: str
) -> None:
    """One NIC's delegate fails after the other's whereabouts allocated: both are rolled back.

    ``delegate-fails-after-ipam``: net1-1's macvlan fails after its own
    whereabouts ADD, so both NICs hold an allocation when the ADD fails.
    ``range-runs-out``: the range has 3 addresses; a first pod takes 2, the
    second pod's whereabouts gets the last one on one NIC and refuses the other.
    """
    agent = wa_runtime.agent
    if fault == "delegate-fails-after-ipam":
        failing_after_ipam(whereabouts.bin_dir)
        config = netconf(ipam={"type": "whereabouts", **whereabouts.ipam(range=RANGE)},
                         multiNICIPAM=False)  # fmt: skip
        before: dict[str, Any] = {}
        holder = None
    else:
        ipam = {"type": "whereabouts", **whereabouts.ipam(range=RANGE, range_end="10.88.0.3")}
        config = netconf(ipam=ipam, multiNICIPAM=False)
        holder = Pod(0, pods.new())
        add_all(wa_runtime, [holder], config)
        before = {offset(a, RANGE): allocation(holder, i) for i, a in holder.addresses().items()}
        assert set(before) == {"1", "2"}, holder.result
        assert whereabouts.pools()["10.88.0.0-24"]["allocations"] == before

    pod = Pod(1, pods.new())
    outcome = cni(wa_runtime, "ADD", pod, config)
    assert outcome.status == 1, outcome
    if fault == "delegate-fails-after-ipam":
        assert "injected failure on net1-1" in outcome.json["msg"]
        # whereabouts did allocate for both NICs before the failure
        log = whereabouts.log()
        for ifname in ("net1-0", "net1-1"):
            reserved = rf'Reserving IP: "10\.88\.0\.\d+" - container ID "{pod.container_id}" - '
            assert re.search(reserved + rf'podRef: "{pod.podref}" - ifName: "{ifname}"', log)
    else:
        assert "Could not allocate IP in range" in outcome.json["msg"], outcome
        assert "10.88.0.3" in whereabouts.log()  # the other NIC got the last address

    # Nothing of the failed pod is left: no allocation, no reservation, no record.
    pool = whereabouts.pools()["10.88.0.0-24"]
    assert pool["allocations"] == before
    assert {s["podref"] for s in whereabouts.reservations().values()} <= (
        {holder.podref} if holder else set()
    )
    assert pods.links(pod.netns) == ["lo"]
    assert agent.records() == ([f"{holder.container_id}_net1.json"] if holder else [])
    assert sorted(agent.host.links()) == ["eth1", "eth1p", "eth2", "eth2p", "lo"]

    # Once the fault is gone, the pod attaches.
    if fault == "delegate-fails-after-ipam":
        (whereabouts.bin_dir / "macvlan").unlink()
    else:
        assert holder is not None
        delete_all(wa_runtime, [holder], config)
        assert whereabouts.pools()["10.88.0.0-24"]["allocations"] == {}
    add_all(wa_runtime, [pod], config)
    assert sorted(pod.addresses()) == ["net1-0", "net1-1"]
    delete_all(wa_runtime, [pod], config)
    assert whereabouts.pools()["10.88.0.0-24"]["allocations"] == {}
    assert whereabouts.reservations() == {}
    assert agent.records() == []


RACE_SLEEP_S = 1
"""whereabouts' ``sleep_for_race``: seconds between choosing an address and writing the pool."""


def test_a_pods_nics_allocate_from_one_pool_one_after_another(
    wa_runtime: Runtime, whereabouts: Whereabouts, pods: Pods, netconf: Any
) -> None:
    """The agent runs a pod's whereabouts delegates one at a time, in NIC order, as Multus does.

    whereabouts' Lease does not keep a pod's two NICs apart (its leader
    identity is the pod), and v0.9.2 is not safe when they race (see
    Whereabouts.overlaps).  With ``sleep_for_race`` between choosing an
    address and writing the pool, racing NICs would both choose 10.88.0.1
    and one write would fail; one after another, net1-0 writes 10.88.0.1
    before net1-1 reads the pool, and no write fails.
    """
    ipam = {"type": "whereabouts", **whereabouts.ipam(range=RANGE, sleep_for_race=RACE_SLEEP_S)}
    config = netconf(ipam=ipam, multiNICIPAM=False)
    pod = Pod(0, pods.new())
    started = time.monotonic()
    add_all(wa_runtime, [pod], config)
    took = time.monotonic() - started
    log = whereabouts.log()
    assert whereabouts.overlaps() == []
    assert "IPAM error updating pool" not in log, log
    assert pod.addresses() == {"net1-0": "10.88.0.1/24", "net1-1": "10.88.0.2/24"}
    assert took >= 2 * RACE_SLEEP_S, took
    expected = {offset(a, RANGE): allocation(pod, i) for i, a in pod.addresses().items()}
    assert whereabouts.pools()["10.88.0.0-24"]["allocations"] == expected
    assert set(whereabouts.reservations()) == {"10.88.0.1", "10.88.0.2"}
    delete_all(wa_runtime, [pod], config)
    assert whereabouts.pools()["10.88.0.0-24"]["allocations"] == {}
    assert whereabouts.overlaps() == []
    print(
        f"\nwhereabouts, one pod's NICs in turn: ADD {took:.2f}s (sleep_for_race {RACE_SLEEP_S}s)"
    )
