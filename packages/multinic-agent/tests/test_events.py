"""Events on pods from a real agent: what ``kubectl describe pod`` shows a user.

A ``multinic-agent`` runs in a simulated host's namespace (veth NICs eth1 and
eth2) against the test API server (``kube_api``: the project's double, or a
real kube-apiserver with MULTINIC_TEST_KUBECONFIG), reached through a port
forward into that namespace as a node reaches its API server.  Pods are Pod
objects in a fresh namespace and network namespaces attached through the
installed shim with the real macvlan delegate.  The agent must post:

* ``UnknownAttachPolicy`` when the network's attach policy is not installed
  and it fell back to ``none`` - once, with a count, however many ADDs;
* ``PoolExhausted`` when the node's pool of a NIC has no address left;
* ``NICMissing`` when the pod gets fewer NICs than the network's masterNets
  because the node lacks one, and when a NIC the pod names is not there.

The agent learns the pools from the API (IPPools labelled for its node);
the attach policy comes from the NAD config (the agent's source when it
knows no MultiNicNetwork of that name).
"""

from __future__ import annotations

import copy
import time
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from multinic_sim.testing import KubeTestApi, wait_for

from .conftest import AGENT, SERVER_NETCONF, SYSTEM_CNI, Agent, CniOutcome, Host, Pods, Runtime
from .test_kube_sync import (
    ClusterObjects,
    NetnsPortForward,
    make_pod,
    netns_path,
    pool_body,
    spec_nics,
    unique,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]

EVENT_WAIT_S = 20.0


def forwarded_kubeconfig(kube_api: KubeTestApi, netns: str, path: Path) -> NetnsPortForward:
    """The test API server's kubeconfig for a client inside ``netns``, written to ``path``.

    Credentials stay as they are; the server becomes a port forward on the
    namespace's 127.0.0.1 (the certificate is checked against the real host name).
    """
    document = yaml.safe_load(kube_api.kubeconfig.read_text())
    context = next(
        c["context"] for c in document["contexts"] if c["name"] == document["current-context"]
    )
    cluster = next(c["cluster"] for c in document["clusters"] if c["name"] == context["cluster"])
    url = urllib.parse.urlsplit(cluster["server"])
    default_port = 443 if url.scheme == "https" else 80
    assert url.hostname, cluster["server"]
    forward = NetnsPortForward(netns_path(netns), (url.hostname, url.port or default_port))
    cluster["server"] = f"{url.scheme}://127.0.0.1:{forward.port}{url.path}"
    if url.hostname not in ("127.0.0.1", "localhost"):
        cluster["tls-server-name"] = url.hostname
    path.write_text(yaml.safe_dump(document))
    path.chmod(0o600)
    return forward


@dataclass
class ClusterAgent(Agent):
    """An agent of node ``node`` that works from the API (``--kubeconfig``)."""

    node: str = ""
    kubeconfig: Path = field(default_factory=Path)

    def command(self) -> list[str]:
        return [
            "ip", "netns", "exec", self.host.netns, AGENT,
            "--node", self.node,
            "--kubeconfig", str(self.kubeconfig),
            "--socket", str(self.socket),
            "--state-dir", str(self.state_dir),
            "--cni-path", SYSTEM_CNI,
            "--log-level", "DEBUG",
            "run",
        ]  # fmt: skip


@dataclass
class Node:
    """One node of the test: its agent, the shim, the network's NAD config, the pods."""

    kube_api: KubeTestApi
    namespace: str
    agent: ClusterAgent
    runtime: Runtime
    pods: Pods
    network: str
    uids: dict[str, str] = field(default_factory=dict)

    def netconf(self, **changes: Any) -> dict[str, Any]:
        config = copy.deepcopy(SERVER_NETCONF)
        config["name"] = self.network
        config.update(changes)
        return config

    def pod(self, name: str) -> str:
        """A Pod object ``name`` in the test namespace (its uid is remembered)."""
        self.uids[name] = make_pod(self.kube_api, self.namespace, name)
        return self.uids[name]

    def run(self, command: str, pod: str, container: str, netns: str, config: Any) -> CniOutcome:
        env = self.runtime.env(command, container, netns)
        env["CNI_ARGS"] = (
            f"IgnoreUnknown=1;K8S_POD_NAMESPACE={self.namespace};K8S_POD_NAME={pod};"
            f"K8S_POD_UID={self.uids.get(pod, '')}"
        )
        return self.runtime.run(env, config)

    def add(self, pod: str, container: str, config: dict[str, Any]) -> tuple[CniOutcome, str]:
        netns = self.pods.new()
        return self.run("ADD", pod, container, netns, config), netns

    def events(self, pod: str, reason: str) -> list[dict[str, Any]]:
        listed = self.kube_api.core_v1.list_namespaced_event(
            self.namespace, field_selector=f"involvedObject.name={pod},reason={reason}"
        )
        return [self.kube_api.api_client.sanitize_for_serialization(e) for e in listed.items]

    def wait_event(
        self, pod: str, reason: str, done: Callable[[dict[str, Any]], bool] = lambda _: True
    ) -> dict[str, Any]:
        found: list[dict[str, Any]] = []

        def seen() -> bool:
            found[:] = [e for e in self.events(pod, reason) if done(e)]
            return bool(found)

        wait_for(seen, EVENT_WAIT_S, f"a {reason} event on pod {pod}")
        return found[0]


@pytest.fixture(scope="module")
def crds(kube_api: KubeTestApi) -> None:
    crd_dir = Path(__file__).resolve().parents[3] / "deploy" / "crds"
    for path in sorted(crd_dir.glob("*.yaml")):
        kube_api.apply_crd(yaml.safe_load(path.read_text()))


@pytest.fixture
def node(
    kube_api: KubeTestApi,
    crds: None,
    *,
    kube_namespace: str,
    host: Host,
    installed_shim: Path,
    pods: Pods,
    tmp_path: Path,
) -> Iterator[Node]:
    """An agent of a fresh node with pools of a fresh network in the API.

    The pool of eth1 is tiny (a /30: two addresses), so that a test can exhaust it.
    """
    objects = ClusterObjects(kube_api)
    name, network = unique("evnode"), unique("evnet")
    objects.track("hostinterfaces", name)
    for nic, pod_cidr, vlan_cidr in (
        ("eth1", "192.168.0.0/30", "192.168.0.0/18"),
        ("eth2", "192.168.128.0/24", "192.168.128.0/18"),
    ):
        objects.create("ippools", pool_body(network, name, nic, pod_cidr, vlan_cidr))
    workdir = tmp_path / "agent"
    workdir.mkdir()
    forward = forwarded_kubeconfig(kube_api, host.netns, workdir / "kubeconfig")
    agent = ClusterAgent(host, workdir, node=name, kubeconfig=workdir / "kubeconfig")
    made = Node(kube_api, kube_namespace, agent, Runtime(installed_shim, agent), pods, network)
    try:
        agent.start()
        wait_for(
            lambda: (
                spec_nics(objects.get("hostinterfaces", name))
                == {"eth1": "10.0.1.0/24", "eth2": "10.0.2.0/24"}
            ),
            30,
            "the agent to write its HostInterface",
        )
        # STATUS succeeds once the agent holds the network's pools (it answers 50 before).
        status = made.netconf(cniVersion="1.1.0")
        wait_for(
            lambda: made.run("STATUS", "", "", "", status).status == 0,
            30,
            "the agent to know the network's IPPools",
        )
        yield made
    finally:
        agent.stop()
        forward.close()
        objects.cleanup()


def test_unknown_attach_policy_is_one_warning_on_the_pod_with_a_count(node: Node) -> None:
    uid = node.pod("web")
    config = node.netconf(attachPolicy={"strategy": "nosuch"})
    first, netns = node.add("web", "c1", config)
    assert first.status == 0, (first.stdout, node.agent.log()[-3000:])
    # The fallback attached every NIC of masterNets, as 'none' does.
    assert sorted(node.pods.addresses(netns)) == ["net1-0", "net1-1"]
    event = node.wait_event("web", "UnknownAttachPolicy")
    assert event["type"] == "Warning"
    assert event["involvedObject"]["kind"] == "Pod"
    assert event["involvedObject"]["uid"] == uid
    assert event["involvedObject"]["namespace"] == node.namespace
    assert "'nosuch'" in event["message"]
    assert "attach policy 'none'" in event["message"]
    assert event["source"] == {"component": "multinic-agent", "host": node.agent.node}
    assert event["count"] == 1

    # The runtime retries the pod's sandbox (DEL, then ADD of a new container): the
    # same warning each time.
    previous = ("c1", netns)
    for container in ("c2", "c3"):
        deleted = node.run("DEL", "web", *previous, config)
        assert deleted.status == 0, deleted.stdout
        again, netns = node.add("web", container, config)
        assert again.status == 0, again.stdout
        previous = (container, netns)
    counted = node.wait_event("web", "UnknownAttachPolicy", lambda e: e["count"] == 3)
    assert counted["metadata"]["name"] == event["metadata"]["name"]
    assert counted["firstTimestamp"] == event["firstTimestamp"]
    assert len(node.events("web", "UnknownAttachPolicy")) == 1

    # A network whose policy is installed posts nothing.
    node.pod("db")
    plain, _ = node.add("db", "c4", node.netconf())
    assert plain.status == 0, plain.stdout
    time.sleep(1.0)
    assert node.events("db", "UnknownAttachPolicy") == []


def test_an_exhausted_pool_is_a_warning_on_the_pod_that_got_no_address(node: Node) -> None:
    config = node.netconf()
    for index in (1, 2):
        node.pod(f"p{index}")
        outcome, _ = node.add(f"p{index}", f"c{index}", config)
        assert outcome.status == 0, outcome.stdout
    node.pod("p3")
    refused, netns = node.add("p3", "c3", config)
    assert refused.status == 1
    error = refused.json
    assert "has no free address" in error["msg"]
    event = node.wait_event("p3", "PoolExhausted")
    assert event["type"] == "Warning"
    assert f"{node.network}-192.168.0.0-30" in event["message"]
    assert node.agent.node in event["message"]
    # Nothing of the refused ADD is left: no interface, no address, no record.
    assert node.pods.links(netns) == ["lo"]
    assert ("c3", "net1") not in node.agent.held_addresses()
    assert node.events("p1", "PoolExhausted") == []


def test_missing_nics_are_warnings_on_the_pod(node: Node) -> None:
    # masterNets lists a network this node has no NIC on: the pod starts with two.
    node.pod("short")
    config = node.netconf(masterNets=["10.0.1.0/24", "10.0.2.0/24", "10.0.3.0/24"])
    attached, netns = node.add("short", "c1", config)
    assert attached.status == 0, attached.stdout
    assert sorted(node.pods.addresses(netns)) == ["net1-0", "net1-1"]
    event = node.wait_event("short", "NICMissing")
    assert "no NIC on masterNets 10.0.3.0/24" in event["message"]
    assert "the pod got 2 NIC(s) (eth1, eth2) instead of 3" in event["message"]

    # A pod that names a NIC the node does not have is refused, and told so.
    node.pod("named")
    named = node.netconf(args={"cni": {"masters": ["eth9"]}})
    refused, netns = node.add("named", "c2", named)
    assert refused.status == 1
    assert "unknown interface(s) eth9" in refused.json["msg"]
    event = node.wait_event("named", "NICMissing")
    assert "unknown interface(s) eth9; available: eth1, eth2" in event["message"]
    assert node.pods.links(netns) == ["lo"]
