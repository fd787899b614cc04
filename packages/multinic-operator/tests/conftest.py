"""Fixtures: a clean local API server (multinic-sim) with the CRDs, and cluster helpers.

Every test that uses ``cluster`` runs against ``multinic_sim.testing.kube_api``:
the in-process local API server, or the cluster ``MULTINIC_TEST_KUBECONFIG``
points at.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import kopf
import pytest
import yaml
from aiohttp import web

from multinic_core.shards import NETWORK_LABEL, SHARD_ENTRIES, SHARD_LABEL
from multinic_operator.handlers import OperatorServices, build_registry, configure
from multinic_operator.kube import KubeApi, load_client_configuration
from multinic_sim.testing import KubeTestApi, kopf_operator, wait_for

REPO = Path(__file__).resolve().parents[3]
CRD_FILES = [
    *sorted((REPO / "deploy" / "crds").glob("*.yaml")),
    Path(__file__).parent / "data" / "third-party-crds.yaml",
]
API = "multinic.fms.io/v1"

L3_IPAM = {
    "type": "multi-nic-ipam",
    "hostBlock": 6,
    "interfaceBlock": 2,
    "vlanMode": "l3",
    "excludeCIDRs": ["192.168.64.0/18", "192.168.1.0/24", "192.168.0.128/25"],
}


def network_body(
    name: str = "demo",
    *,
    ipam: dict[str, Any] | None = None,
    master_nets: tuple[str, ...] = ("10.0.1.0/24", "10.0.2.0/24"),
    plugin: dict[str, Any] | None = None,
    namespaces: list[str] | None = None,
    subnet: str = "192.168.0.0/16",
) -> dict[str, Any]:
    """The worked example of SPEC section 2 (ipvlan l3), with overrides."""
    spec: dict[str, Any] = {
        "subnet": subnet,
        "ipam": json.dumps(ipam or L3_IPAM),
        "multiNICIPAM": True,
        "masterNets": list(master_nets),
        "plugin": plugin or {"cniVersion": "1.0.0", "type": "ipvlan", "args": {"mode": "l3"}},
    }
    if namespaces is not None:
        spec["namespaces"] = namespaces
    return {"apiVersion": API, "kind": "MultiNicNetwork", "metadata": {"name": name}, "spec": spec}


class Cluster:
    """Test-side access to the API server (a separate client from the operator's)."""

    def __init__(self, kube_api: KubeTestApi) -> None:
        self.kube_api = kube_api
        self.api = KubeApi(load_client_configuration(str(kube_api.kubeconfig)))
        self.api.api_client.user_agent = "multinic-operator-tests"
        self.nodes: set[str] = set()

    # -- writes ------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.api.create(body)

    def add_host(
        self, name: str, nics: list[tuple[str, str, str]] | None = None, *, pci: bool = False
    ) -> None:
        """A Node and its HostInterface; default NICs eth1/eth2 on 10.0.1/2.0/24."""
        self.api.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        self.nodes.add(name)
        self.set_host_nics(name, nics, pci=pci, create=True)

    def set_host_nics(
        self,
        name: str,
        nics: list[tuple[str, str, str]] | None = None,
        *,
        pci: bool = False,
        create: bool = False,
    ) -> None:
        number = int("".join(c for c in name if c.isdigit()) or "0") % 200 + 11
        if nics is None:
            nics = [
                ("eth1", "10.0.1.0/24", f"10.0.1.{number}"),
                ("eth2", "10.0.2.0/24", f"10.0.2.{number}"),
            ]
        interfaces = []
        for i, (ifname, net, ip) in enumerate(nics):
            nic = {
                "interfaceName": ifname,
                "netAddress": net,
                "hostIP": ip,
                "vendor": "15b3",
                "product": "1017",
            }
            if pci:
                nic["pciAddress"] = f"0000:{number:02x}:00.{i}"
            interfaces.append(nic)
        spec = {"hostName": name, "interfaces": interfaces}
        if create:
            self.api.create(
                {
                    "apiVersion": API,
                    "kind": "HostInterface",
                    "metadata": {"name": name},
                    "spec": spec,
                }
            )
        else:
            self.api.patch(API, "HostInterface", name, {"spec": spec})

    def delete_node(self, name: str) -> None:
        self.api.delete("v1", "Node", name)
        self.nodes.discard(name)

    def add_namespace(self, name: str) -> None:
        self.kube_api.new_namespace(name=name)

    def remove_leftovers(self) -> None:
        """On a real cluster: delete the Nodes the test added and what the operator made
        in its namespace (the local server's reset forgets everything by itself)."""
        if not self.kube_api.is_real_cluster:
            return
        for name in list(self.nodes):
            self.delete_node(name)
        for api_version, kind, name in (
            ("apps/v1", "DaemonSet", "multinic-agent"),
            ("v1", "ServiceAccount", "multinic-agent"),
            ("coordination.k8s.io/v1", "Lease", "multinic-operator"),
        ):
            self.api.delete(api_version, kind, name, "default")
        self.kube_api.core_v1.delete_collection_namespaced_event(
            "default", field_selector="source=multinic-operator"
        )

    # -- reads -------------------------------------------------------------

    def network(self, name: str = "demo") -> dict[str, Any] | None:
        return self.api.get(API, "MultiNicNetwork", name)

    def status(self, name: str = "demo") -> dict[str, Any]:
        body = self.network(name) or {}
        return dict(body.get("status") or {})

    def cidr(self, name: str = "demo") -> dict[str, Any] | None:
        return self.api.get(API, "CIDR", name)

    def cidr_shards(self, name: str = "demo") -> dict[str, dict[str, Any]]:
        """The CIDR objects holding the network's plan by name: the CIDR and its shards."""
        found = {
            c["metadata"]["name"]: c
            for c in self.api.list(
                API, "CIDR", label_selector=f"{NETWORK_LABEL}={name},{SHARD_LABEL}"
            )
        }
        base = self.cidr(name)
        if base is not None:
            found[name] = base
        return found

    def pod_cidrs(self, name: str = "demo") -> dict[tuple[str, str], str]:
        """(host, interface) -> podCIDR of the network's plan (all its CIDR shards)."""
        return {
            (h["hostName"], h["interfaceName"]): h["podCIDR"]
            for cidr in self.cidr_shards(name).values()
            for e in (cidr.get("spec") or {}).get("cidr") or []
            for h in e.get("hosts") or []
        }

    def pools(self, name: str = "demo") -> dict[str, dict[str, Any]]:
        return {
            p["metadata"]["name"]: p
            for p in self.api.list(API, "IPPool", label_selector=f"netname={name}")
        }

    def nads(self, name: str = "demo") -> dict[str, dict[str, Any]]:
        return {
            n["metadata"]["namespace"]: n
            for n in self.api.list(
                "k8s.cni.cncf.io/v1",
                "NetworkAttachmentDefinition",
                field_selector=f"metadata.name={name}",
            )
        }

    def wait(self, predicate: Any, what: str, timeout: float = 20.0) -> None:
        wait_for(predicate, timeout, what)


@pytest.fixture
def cluster(kube_api: KubeTestApi) -> Iterator[Cluster]:
    """A clean API server with the multinic and third-party CRDs installed."""
    kube_api.reset()
    for path in CRD_FILES:
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                kube_api.apply_crd(doc)
    cluster = Cluster(kube_api)
    try:
        yield cluster
    finally:
        cluster.remove_leftovers()
        cluster.api.close()
        kube_api.reset()  # leave nothing for the next package's tests


# --------------------------------------------------------------------------- the operator


class RecordingProxy:
    """An HTTP proxy in front of the API server that records every request.

    The operator under test talks to the API only through it, so the records
    are exactly the operator's API calls (kopf's and the services'), for the
    RBAC comparison and for counting writes.
    """

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.records: list[tuple[str, str, str]] = []
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""

    def calls(self) -> list[tuple[str, str, str]]:
        """(method, path, query) of every request so far."""
        with self._lock:
            return list(self.records)

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _ in self.calls() if m in ("POST", "PUT", "PATCH", "DELETE")]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        with self._lock:
            self.records.append((request.method, request.path, request.query_string))
        assert self._session is not None
        headers = {
            k: v
            for k, v in request.headers.items()
            if k.lower() not in ("host", "content-length", "transfer-encoding")
        }
        body = await request.read()
        async with self._session.request(
            request.method,
            self.upstream + request.path_qs,
            headers=headers,
            data=body or None,
            ssl=False,
        ) as upstream:
            response = web.StreamResponse(status=upstream.status)
            for key in ("Content-Type", "Retry-After"):
                if key in upstream.headers:
                    response.headers[key] = upstream.headers[key]
            try:
                await response.prepare(request)
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
                await response.write_eof()
            except (ConnectionResetError, aiohttp.ClientError):
                pass
            return response

    def start(self) -> RecordingProxy:
        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self._serve())
            loop.close()

        self._thread = threading.Thread(target=run, name="recording-proxy", daemon=True)
        self._thread.start()
        assert self._started.wait(10)
        return self

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.5)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        self._started.set()
        await self._stop.wait()
        await self._session.close()
        await runner.cleanup()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)


class RunningOperator:
    """A handle on an operator run by ``operator_runner``."""

    def __init__(self, services: OperatorServices, proxy: RecordingProxy) -> None:
        self.services = services
        self.proxy = proxy


@pytest.fixture
def operator_runner(cluster: Cluster) -> Iterator[Any]:
    """Start the real operator (kopf in a thread) behind a recording proxy.

    ``with operator_runner() as op:`` runs it for the block; it can be
    started several times in one test (restarts).
    """
    proxies: list[RecordingProxy] = []

    @contextlib.contextmanager
    def run(
        batch_window: float = 0.3, shard_entries: int = SHARD_ENTRIES
    ) -> Iterator[RunningOperator]:
        proxy = RecordingProxy(cluster.kube_api.server_url).start()
        proxies.append(proxy)
        configuration = load_client_configuration(str(cluster.kube_api.kubeconfig))
        configuration.host = proxy.url
        # With a token, the kubernetes client's refresh hook copies the kubeconfig's
        # server back into the configuration before every request.
        configuration.refresh_api_key_hook = None
        api = KubeApi(configuration)
        services = OperatorServices.create(
            api, "default", batch_window=batch_window, shard_entries=shard_entries
        )
        registry = build_registry(services)
        settings = configure(kopf.OperatorSettings())

        # The proxy speaks plain HTTP; the API server's token (if any) goes through it.
        token = cluster.kube_api.kopf_login().token

        def login(**_: Any) -> Any:
            return kopf.ConnectionInfo(server=proxy.url, insecure=True, token=token)

        try:
            with kopf_operator(registry, login, settings=settings):
                yield RunningOperator(services, proxy)
        finally:
            api.close()

    try:
        yield run
    finally:
        for proxy in proxies:
            proxy.stop()
    for proxy in proxies:
        check_rbac(proxy)


# --------------------------------------------------------------------------- RBAC

RBAC_FILE = REPO / "deploy" / "operator" / "rbac.yaml"
OPERATOR_ROLE = "multinic-operator"
AGENT_ROLE = "multinic-agent"


def api_call(method: str, path: str, query: str) -> tuple[str, str, str] | None:
    """(apiGroup, resource[/subresource], verb) of a request; None for discovery."""
    parts = [p for p in path.split("/") if p]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None
    if rest[0] == "namespaces" and len(rest) >= 3:
        rest = rest[2:]
    resource, name, sub = rest[0], rest[1] if len(rest) > 1 else "", rest[2:3]
    if sub:
        resource = f"{resource}/{sub[0]}"
    if method == "GET":
        verb = "get" if name else ("watch" if "watch=true" in query else "list")
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return group, resource, verb


def cluster_role_rules(name: str) -> list[dict[str, Any]]:
    """The rules of ClusterRole ``name`` and of the Role of the same name, if any."""
    rules: list[dict[str, Any]] = []
    for doc in yaml.safe_load_all(RBAC_FILE.read_text()):
        if doc and doc["kind"] in ("ClusterRole", "Role") and doc["metadata"]["name"] == name:
            rules.extend(doc["rules"])
    assert rules, f"no ClusterRole {name} in {RBAC_FILE}"
    return rules


def allowed(rules: list[dict[str, Any]], call: tuple[str, str, str]) -> bool:
    group, resource, verb = call
    return any(
        group in r.get("apiGroups", [])
        and resource in r.get("resources", [])
        and verb in r.get("verbs", [])
        for r in rules
    )


RECORDED_CALLS: set[tuple[str, str, str]] = set()
"""Every API call the operator made in this test session (for test_rbac)."""


def check_rbac(proxy: RecordingProxy) -> set[tuple[str, str, str]]:
    """Every call the operator made is allowed by its roles in deploy/; returns the calls."""
    rules = cluster_role_rules(OPERATOR_ROLE)
    calls = {c for m, p, q in proxy.calls() if (c := api_call(m, p, q)) is not None}
    RECORDED_CALLS.update(calls)
    denied = sorted(c for c in calls if not allowed(rules, c))
    assert not denied, f"the operator made calls its ClusterRole does not allow: {denied}"
    return calls
