"""The operator's health port (``/healthz``, ``/readyz``, ``/metrics``), scraped from
``multinic-operator`` processes against the local API server, and the port's
HTTP server and address parsing on their own.
"""

from __future__ import annotations

import asyncio
import http.client
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from multinic_core.errors import ConfigError
from multinic_core.health import BindAddress, HealthServer, HealthThread, parse_bind_address
from multinic_core.models import Config
from multinic_operator.agent import agent_daemonset, default_config

from .conftest import network_body

OPERATOR = str(Path(sys.executable).parent / "multinic-operator")
PORT_LOG = re.compile(r"serving /healthz, /readyz and /metrics on \S+ \(port (\d+)\)")


def http_get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def metrics(port: int) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = http_get(port, "/metrics")
    assert status == 200, body
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def value(
    scraped: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return scraped.get((name, frozenset(labels.items())), 0.0)


class Replica:
    """A ``multinic-operator`` process and its health port (read from its log)."""

    def __init__(self, kubeconfig: Path, log: Path, *extra: str) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                [OPERATOR, "--kubeconfig", str(kubeconfig), "--namespace", "default",
                 "--health-address", "127.0.0.1:0", *extra],
                stdout=out,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + 30
        while (found := PORT_LOG.search(log.read_text())) is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"no health port: {log.read_text()[-2000:]}")
            time.sleep(0.02)
        self.port = int(found.group(1))

    def readiness(self, timeout: float = 60.0) -> list[tuple[int, str]]:
        """Every distinct ``/readyz`` answer until the first 200."""
        seen: list[tuple[int, str]] = []
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            answer = http_get(self.port, "/readyz")
            if not seen or seen[-1] != answer:
                seen.append(answer)
            if answer[0] == 200:
                return seen
            time.sleep(0.02)
        pytest.fail(f"/readyz not 200 within {timeout:.0f} s: {seen[-3:]}\n{self.log.read_text()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                return self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


@pytest.mark.slow
def test_an_operator_is_ready_once_it_watches_and_re_planned_every_network(
    cluster: Any, tmp_path: Path
) -> None:
    faults = cluster.kube_api.faults
    # The startup handler's read of the Config fails once: kopf retries it after 5 s.
    faults.add(verb="get", resource="configs", status=500, count=1)
    cluster.add_host("node1")
    replica = Replica(cluster.kube_api.kubeconfig, tmp_path / "operator.log", "--standalone")
    try:
        assert http_get(replica.port, "/healthz") == (200, "ok\n")
        seen = replica.readiness()
        not_ready = [body for status, body in seen if status == 503]
        assert any("kopf has not finished its startup handlers" in b for b in not_ready), seen
        assert seen[-1] == (200, "ok: acting, watching, every network re-planned\n")
        ready = metrics(replica.port)
        assert value(ready, "multinic_api_errors_total", verb="get", code="500") == 1
        assert value(ready, "multinic_operator_leader") == 1
        assert value(ready, "multinic_reconcile_batch_duration_seconds_count",
                     scope="all", result="ok") >= 1  # fmt: skip

        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 2, "the network reconciled", timeout=60)
        cluster.wait(
            lambda: value(
                metrics(replica.port),
                "multinic_network_reconcile_duration_seconds_count",
                result="success",
            ) > value(ready, "multinic_network_reconcile_duration_seconds_count", result="success"),
            "the network's reconcile counted",
        )  # fmt: skip
        after = metrics(replica.port)
        # Two IPPools, a CIDR and a NAD at least were created by the operator's client.
        creates = "multinic_api_requests_total"
        assert value(after, creates, verb="create") - value(ready, creates, verb="create") >= 4
        cluster.wait(
            lambda: value(metrics(replica.port), "multinic_reconcile_queue_depth") == 0,
            "the batch queue drained",
        )
        assert http_get(replica.port, "/healthz") == (200, "ok\n")
    finally:
        faults.clear()
        assert replica.stop() == 0


@pytest.mark.slow
def test_a_replica_waiting_for_the_lease_is_a_ready_standby(cluster: Any, tmp_path: Path) -> None:
    """Else a rolling update of the two replicas would wait forever for the new one."""
    first = Replica(cluster.kube_api.kubeconfig, tmp_path / "first.log")
    second = None
    try:
        assert first.readiness()[-1][1].startswith("ok: acting")
        second = Replica(cluster.kube_api.kubeconfig, tmp_path / "second.log")
        assert second.readiness()[-1] == (
            200,
            "ok: standby, waiting for the Lease multinic-operator (another replica acts)\n",
        )
        assert value(metrics(first.port), "multinic_operator_leader") == 1
        assert value(metrics(second.port), "multinic_operator_leader") == 0
        # The standby took part in the election: its client read the Lease.
        assert value(metrics(second.port), "multinic_api_requests_total", verb="get") >= 1
    finally:
        codes = [first.stop(), second.stop() if second else 0]
    assert codes == [0, 0]


def test_an_address_in_use_is_a_clear_error(cluster: Any, tmp_path: Path) -> None:
    replica = Replica(cluster.kube_api.kubeconfig, tmp_path / "first.log", "--standalone")
    try:
        taken = subprocess.run(
            [OPERATOR, "--kubeconfig", str(cluster.kube_api.kubeconfig), "--standalone",
             "--health-address", f"127.0.0.1:{replica.port}"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert taken.returncode == 2
        assert f"cannot serve health and metrics on 127.0.0.1:{replica.port}" in taken.stderr
        assert "Traceback" not in taken.stderr
        bad = subprocess.run(
            [OPERATOR, "--kubeconfig", str(cluster.kube_api.kubeconfig), "--health-address", "9740"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert bad.returncode == 2
        assert "expected HOST:PORT" in bad.stderr
    finally:
        assert replica.stop() == 0


# --------------------------------------------------------------------------- the port itself


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9740", BindAddress("", 9740)),
        ("0.0.0.0:11000", BindAddress("0.0.0.0", 11000)),
        ("127.0.0.1:0", BindAddress("127.0.0.1", 0)),
        ("[::1]:9740", BindAddress("::1", 9740)),
        ("", None),
        ("off", None),
    ],
)
def test_bind_addresses(text: str, expected: BindAddress | None) -> None:
    assert parse_bind_address(text) == expected


@pytest.mark.parametrize("text", ["9740", "host", ":99999", "::1:80", "a:b"])
def test_bad_bind_addresses_are_refused(text: str) -> None:
    with pytest.raises(ConfigError, match="--health-address"):
        parse_bind_address(text)


def test_the_port_answers_only_its_paths_and_survives_bad_clients() -> None:
    async def not_ready() -> list[str]:
        return ["the first re-plan has not succeeded yet"]

    server = HealthServer(
        BindAddress("127.0.0.1", 0),
        metrics=lambda: (b"m 1\n", "text/plain; version=0.0.4; charset=utf-8"),
        readiness=not_ready,
    )
    thread = HealthThread(server).start()
    try:
        port = server.port
        assert http_get(port, "/readyz") == (
            503,
            "not ready\nthe first re-plan has not succeeded yet\n",
        )
        assert http_get(port, "/healthz?verbose") == (200, "ok\n")
        assert http_get(port, "/metrics") == (200, "m 1\n")
        assert http_get(port, "/metrics", "HEAD") == (200, "")
        assert http_get(port, "/metrics", "POST")[0] == 405
        assert http_get(port, "/")[0] == 404
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"GET /" + b"x" * 10_000 + b" HTTP/1.1\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 431 ")
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            raw.sendall(b"\x00\xff nonsense\r\n\r\n")
            assert raw.recv(100).startswith(b"HTTP/1.1 400 ")
        # A client that never finishes its request does not hold the port for others.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
            slow.sendall(b"GET /healthz HTTP/1.1\r\n")
            assert http_get(port, "/healthz") == (200, "ok\n")
    finally:
        thread.stop()


def test_liveness_fails_when_the_work_loop_is_stuck() -> None:
    from multinic_core.health import loop_answers

    work = asyncio.new_event_loop()
    release = threading.Event()
    runner = threading.Thread(target=work.run_forever, daemon=True)
    runner.start()
    try:
        assert asyncio.run(loop_answers(work, "the work loop", timeout=2)) == []
        work.call_soon_threadsafe(release.wait)  # the loop blocks in a callback
        assert asyncio.run(loop_answers(work, "the work loop", timeout=0.5)) == [
            "the work loop has not run a callback for 0.5 s"
        ]
    finally:
        release.set()
        work.call_soon_threadsafe(work.stop)
        runner.join(5)
        work.close()


# --------------------------------------------------------------------------- the agent DaemonSet


def test_the_agent_daemonset_probes_the_configs_daemon_port() -> None:
    config = Config.model_validate(default_config("img:1"))
    config.spec.daemon.port = 12345
    container = agent_daemonset(config, "multinic-system")["spec"]["template"]["spec"][
        "containers"
    ][0]
    assert container["command"][-2:] == ["--health-address", ":12345"]
    assert container["ports"][0]["containerPort"] == 12345
    assert {container[p]["httpGet"]["port"] for p in ("startupProbe", "livenessProbe",
            "readinessProbe")} == {"health"}  # fmt: skip
    config.spec.daemon.port = 0
    with pytest.raises(ConfigError, match=r"daemon\.port 0 is not a TCP port"):
        agent_daemonset(config, "multinic-system")
