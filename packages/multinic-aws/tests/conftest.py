"""Fixtures: an EC2 endpoint on loopback (moto's server, started here), a proxy in
front of it that injects faults (throttling, refusals, slow answers), a VPC with
the ENIs of this host's NICs and of another host, and the NICs' MAC addresses
where the driver reads them.

Nothing reaches a real AWS: the credentials are fake, the instance metadata
service is disabled, and every endpoint is 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import logging
import os
import stat
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.session
import pytest
from moto.server import ThreadedMotoServer

from multinic_agent.cni_server import CniServer
from multinic_agent.node_state import FileNodeState
from multinic_agent.records import RecordStore
from multinic_aws import host
from multinic_core.hooktypes import NicAttachment, SelectedNic, StaticCluster
from multinic_core.models import HostInterface, MultiNicNetwork, load_resource
from multinic_core.nad import nad_config
from multinic_core.planner import plan_cidrs, planned_ippools
from multinic_core.plugins import MainPlugin, PluginRegistry
from multinic_ipam.journal import AllocationJournal

REGION = "us-east-1"
NETWORK = "aws-net"
MASTER_NETS = ["10.0.1.0/24", "10.0.2.0/24"]
# AWS reserves each subnet's first four addresses; the hosts' own are excluded by the planner.
EXCLUDES = ["10.0.1.0/30", "10.0.2.0/30"]
HOST_A = {"eth1": "10.0.1.11", "eth2": "10.0.2.11"}
HOST_B = {"eth1": "10.0.1.12", "eth2": "10.0.2.12"}
CLEAN_ENIS: dict[str, list[str]] = {"a-eth1": [], "a-eth2": [], "b-eth1": [], "b-eth2": []}
"""``Cloud.all_secondary()`` when no ENI has a secondary private IP."""


# --------------------------------------------------------------------------- AWS sandbox


@pytest.fixture(autouse=True)
def fake_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials, no region, no config files, no instance metadata service."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))


@pytest.fixture(scope="session")
def moto_url() -> Iterator[str]:
    """moto's EC2 (and every other service) on a free loopback port, for the session."""
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    address, port = server.get_host_and_port()
    try:
        yield f"http://{address}:{port}"
    finally:
        server.stop()


@dataclass
class Fault:
    """Answer matching requests with an EC2 error (or late) instead of moto, ``times`` times."""

    action: str
    times: int = 1
    status: int = 503
    code: str = "RequestLimitExceeded"
    message: str = "Request limit exceeded."
    eni: str = ""
    """Only requests naming this NetworkInterfaceId."""
    delay_s: float = 0.0
    """Let moto apply the request, then answer what it answered this late: a slow endpoint."""
    applied: bool = False
    """Let moto apply the request, then answer the error all the same."""


@dataclass
class FaultProxy:
    """An HTTP proxy to moto that applies ``faults`` in order and logs every request."""

    upstream: str
    url: str = ""
    faults: list[Fault] = field(default_factory=list)
    log: list[tuple[str, str]] = field(default_factory=list)
    """(Action, "moto" | "slow" | error code) per request received."""

    def attempts(self, action: str) -> int:
        return sum(1 for logged, _ in self.log if logged == action)

    def fault_for(self, params: dict[str, list[str]]) -> Fault | None:
        action = params.get("Action", [""])[0]
        eni = params.get("NetworkInterfaceId", [""])[0]
        for fault in self.faults:
            if fault.times > 0 and fault.action == action and fault.eni in ("", eni):
                fault.times -= 1
                return fault
        return None

    def forward(self, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        request = urllib.request.Request(self.upstream + path, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.headers.get("Content-Type", ""), response.read()
        except urllib.error.HTTPError as e:
            return e.code, e.headers.get("Content-Type", ""), e.read()


def error_xml(code: str, message: str) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Response><Errors><Error><Code>{code}</Code><Message>{message}</Message></Error>"
        "</Errors><RequestID>injected-fault</RequestID></Response>"
    ).encode()


def _handler(proxy: FaultProxy) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            params = urllib.parse.parse_qs(body.decode())
            action = params.get("Action", [""])[0]
            fault = proxy.fault_for(params)
            headers = {
                k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
            }
            if fault is None or fault.delay_s:
                status, content_type, payload = proxy.forward(self.path, body, headers)
                proxy.log.append((action, "slow" if fault else "moto"))
                if fault:
                    time.sleep(fault.delay_s)
            else:
                if fault.applied:
                    proxy.forward(self.path, body, headers)
                proxy.log.append((action, fault.code))
                status, content_type = fault.status, "text/xml"
                payload = error_xml(fault.code, fault.message)
            try:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)
            except OSError:
                pass  # the client gave up (a read timeout under test)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture
def proxy(moto_url: str) -> Iterator[FaultProxy]:
    """A fault-injecting proxy on another loopback port; the driver is pointed at it."""
    faults = FaultProxy(upstream=moto_url)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(faults))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    faults.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield faults
    finally:
        server.shutdown()
        server.server_close()


@dataclass
class Cloud:
    """A VPC in moto: subnets 10.0.1.0/24 and 10.0.2.0/24, the ENIs of host-a's
    eth1/eth2 (the NICs under test) and of host-b's."""

    ec2: Any
    url: str
    """moto's endpoint."""
    enis: dict[str, str]
    """``a-eth1`` -> ENI id, ..."""
    macs: dict[str, str]
    subnets: dict[str, str]

    def secondary(self, eni: str) -> list[str]:
        """The ENI's secondary private IPs, as DescribeNetworkInterfaces lists them."""
        found = self.ec2.describe_network_interfaces(NetworkInterfaceIds=[self.enis[eni]])
        return sorted(
            a["PrivateIpAddress"]
            for a in found["NetworkInterfaces"][0]["PrivateIpAddresses"]
            if not a.get("Primary")
        )

    def all_secondary(self) -> dict[str, list[str]]:
        return {name: self.secondary(name) for name in self.enis}

    def assign(self, eni: str, *ips: str) -> None:
        self.ec2.assign_private_ip_addresses(
            NetworkInterfaceId=self.enis[eni], PrivateIpAddresses=list(ips)
        )


@pytest.fixture(scope="session")
def moto_ec2(moto_url: str) -> Any:
    """A client of moto's EC2 for the tests themselves (set-up and assertions)."""
    return botocore.session.Session().create_client(
        "ec2",
        region_name=REGION,
        endpoint_url=moto_url,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


@pytest.fixture
def cloud(moto_url: str, moto_ec2: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cloud:
    """A fresh moto state, and host-a's NICs' MAC addresses in a fake sysfs."""
    urllib.request.urlopen(
        urllib.request.Request(f"{moto_url}/moto-api/reset", method="POST"), timeout=10
    ).close()
    ec2 = moto_ec2
    vpc = ec2.create_vpc(CidrBlock="10.0.0.0/16")["Vpc"]["VpcId"]
    subnets = {
        nic: ec2.create_subnet(VpcId=vpc, CidrBlock=net)["Subnet"]["SubnetId"]
        for nic, net in zip(("eth1", "eth2"), MASTER_NETS, strict=True)
    }
    enis, macs = {}, {}
    for name, addresses in (("a", HOST_A), ("b", HOST_B)):
        for nic, address in addresses.items():
            eni = ec2.create_network_interface(
                SubnetId=subnets[nic], PrivateIpAddress=address, Description=f"host-{name} {nic}"
            )["NetworkInterface"]
            enis[f"{name}-{nic}"] = eni["NetworkInterfaceId"]
            macs[f"{name}-{nic}"] = eni["MacAddress"]
    sysfs = tmp_path / "sys-class-net"
    for nic in HOST_A:
        (sysfs / nic).mkdir(parents=True)
        (sysfs / nic / "address").write_text(macs[f"a-{nic}"].upper() + "\n")
    monkeypatch.setattr(host, "SYSFS_NET", sysfs)
    return Cloud(ec2=ec2, url=moto_url, enis=enis, macs=macs, subnets=subnets)


# --------------------------------------------------------------------------- the network


def aws_network(
    args: dict[str, str],
    *,
    subnet: str = "",
    vlan_mode: str = "l2",
    master_nets: list[str] | None = None,
) -> MultiNicNetwork:
    ipam = {
        "type": "multi-nic-ipam",
        "hostBlock": 2,
        "interfaceBlock": 0,
        "vlanMode": vlan_mode,
        "excludeCIDRs": EXCLUDES,
    }
    return load_resource(
        MultiNicNetwork,
        {
            "apiVersion": "multinic.fms.io/v1",
            "kind": "MultiNicNetwork",
            "metadata": {"name": NETWORK, "uid": "u-aws"},
            "spec": {
                "subnet": subnet,
                "ipam": json.dumps(ipam),
                "multiNICIPAM": True,
                "masterNets": MASTER_NETS if master_nets is None else master_nets,
                "plugin": {"cniVersion": "1.0.0", "type": "aws-ipvlan", "args": args},
            },
        },
        "test network",
    )


def hosts(names: dict[str, str] | None = None) -> list[HostInterface]:
    """host-a and host-b, their NICs ``eth1``/``eth2`` (host-a's renamed by ``names``)."""
    names = names or {"eth1": "eth1", "eth2": "eth2"}
    return [
        load_resource(
            HostInterface,
            {
                "apiVersion": "multinic.fms.io/v1",
                "kind": "HostInterface",
                "metadata": {"name": f"host-{name}"},
                "spec": {
                    "hostName": f"host-{name}",
                    "interfaces": [
                        {
                            "interfaceName": names[nic] if name == "a" else nic,
                            "netAddress": MASTER_NETS[int(nic[-1]) - 1],
                            "hostIP": addresses[nic],
                        }
                        for nic in names
                    ],
                },
            },
            "test host",
        )
        for name, addresses in (("a", HOST_A), ("b", HOST_B))
    ]


def settings_args(endpoint: str, **more: str) -> dict[str, str]:
    return {"region": REGION, "endpoint_url": endpoint, "connect_timeout": "1", **more}


@pytest.fixture
def driver() -> MainPlugin:
    """``aws-ipvlan`` through a fresh registry (so no client or ENI is cached between tests)."""
    return PluginRegistry().main_plugin("aws-ipvlan")


def attachments(
    driver: MainPlugin, args: dict[str, str], addresses: dict[str, str]
) -> list[NicAttachment]:
    """What the agent hands ``multinic_nics_attached`` after the delegates attached
    ``addresses`` (NIC -> ``ADDRESS/PREFIX``), with the delegate configs the driver built."""
    network = aws_network(args)
    netconf = nad_config(network, driver.network_attachment(network, StaticCluster()))
    found = []
    for i, (nic, address) in enumerate(addresses.items()):
        config = driver.delegate_config(
            netconf, SelectedNic(name=nic), {"type": "static", "addresses": [{"address": address}]}
        )
        found.append(
            NicAttachment(
                network=NETWORK,
                container_id="c1",
                ifname=f"net1-{i}",
                nic=nic,
                config=config,
                addresses=(address,),
            )
        )
    return found


# --------------------------------------------------------------------------- an agent

FAKE_IPVLAN = """#!{python}
# Stands in for the reference ipvlan plugin: answers as it does, logs each call.
import json, os, sys
config = json.load(sys.stdin)
command = os.environ["CNI_COMMAND"]
if command == "VERSION":
    print(json.dumps({{"cniVersion": config["cniVersion"],
                      "supportedVersions": ["0.3.1", "0.4.0", "1.0.0", "1.1.0"]}}))
    sys.exit(0)
with open({log!r}, "a") as log:
    log.write(json.dumps({{"command": command, "ifname": os.environ["CNI_IFNAME"],
                           "config": config}}) + "\\n")
if command == "ADD":
    print(json.dumps({{
        "cniVersion": config["cniVersion"],
        "interfaces": [{{"name": os.environ["CNI_IFNAME"], "sandbox": os.environ["CNI_NETNS"]}}],
        "ips": [{{"address": a["address"], "interface": 0}} for a in config["ipam"]["addresses"]],
    }}))
"""


class Node:
    """host-a's agent, in-process, serving a network of ``args``; its CNI path holds
    the stand-in ipvlan delegate unless ``cni_path`` names the real plugins."""

    def __init__(
        self,
        tmp_path: Path,
        args: dict[str, str],
        *,
        nics: dict[str, str] | None = None,
        cni_path: str = "",
        netns: str = "/var/run/netns/none",
    ) -> None:
        # The cloud fixture's NICs (eth1, eth2) -> the names they have on this host.
        nics = nics or {"eth1": "eth1", "eth2": "eth2"}
        self.state_dir = tmp_path / "state"
        self.state_dir.mkdir()
        cni = tmp_path / "cni"
        cni.mkdir()
        self.delegate_log = cni / "ipvlan.log"
        delegate = cni / "ipvlan"
        delegate.write_text(FAKE_IPVLAN.format(python=sys.executable, log=str(self.delegate_log)))
        delegate.chmod(delegate.stat().st_mode | stat.S_IXUSR)
        self.cni_path = cni_path or str(cni)
        self.netns = netns
        network = aws_network(args, master_nets=[MASTER_NETS[int(n[-1]) - 1] for n in nics])
        driver = PluginRegistry().main_plugin("aws-ipvlan")
        self.netconf = nad_config(network, driver.network_attachment(network, StaticCluster()))
        plan = plan_cidrs(network, hosts(nics))
        pools = [
            p.spec.model_dump(by_alias=True, exclude_none=True)
            for p in planned_ippools(plan.spec)
            if p.spec.host_name == "host-a"
        ]
        interfaces = [
            {
                "interfaceName": name,
                "netAddress": MASTER_NETS[int(nic[-1]) - 1],
                "hostIP": HOST_A[nic],
            }
            for nic, name in nics.items()
        ]
        state = {"nics": interfaces, "ippools": pools}
        (self.state_dir / "node-state.json").write_text(json.dumps(state))
        self.journal = AllocationJournal(self.state_dir)
        self.records = RecordStore(self.state_dir)
        self.server = CniServer(
            node="host-a",
            node_state=FileNodeState(self.state_dir / "node-state.json"),
            journal=self.journal,
            records=self.records,
            cni_path=(self.cni_path,),
        )

    def cni(self, command: str, container: str = "c1") -> tuple[int, dict[str, Any]]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": container,
            "CNI_NETNS": self.netns,
            "CNI_IFNAME": "net1",
            "CNI_PATH": self.cni_path,
            "CNI_ARGS": "K8S_POD_NAMESPACE=default;K8S_POD_NAME=pod-1",
        }
        status, out, _ = asyncio.run(self.server.handle(env, json.dumps(self.netconf)))
        return status, json.loads(out) if out else {}

    def delegate_calls(self) -> list[dict[str, Any]]:
        if not self.delegate_log.exists():
            return []
        return [json.loads(line) for line in self.delegate_log.read_text().splitlines()]

    def held(self, container: str = "c1") -> list[str]:
        return sorted(
            e.address for e in self.journal.entries(self.netconf["name"], container, "net1")
        )
