"""The ``multinic-operator`` command, run as users run it (a process per replica)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from multinic_sim.kubeconfig import write_kubeconfig

from .conftest import RecordingProxy, check_rbac, network_body

OPERATOR = str(Path(sys.executable).parent / "multinic-operator")


def test_help_names_the_options() -> None:
    result = subprocess.run([OPERATOR, "--help"], capture_output=True, text=True, check=True)
    assert "--kubeconfig" in result.stdout
    assert "--namespace" in result.stdout


def test_bad_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    result = subprocess.run(
        [OPERATOR, "--kubeconfig", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "cannot load Kubernetes credentials" in result.stderr
    assert "Traceback" not in result.stderr


def _start(kubeconfig: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    # Replicas on one machine: each its own free health port.
    health = ["--health-address", "127.0.0.1:0"]
    with log.open("wb") as out:
        return subprocess.Popen(
            [OPERATOR, "--kubeconfig", str(kubeconfig), "--namespace", "default", *health, *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def _stop(process: subprocess.Popen[bytes]) -> int:
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise


@pytest.mark.slow
def test_two_replicas_never_both_act(cluster: Any, tmp_path: Path) -> None:
    proxy = RecordingProxy(cluster.kube_api.server_url).start()
    try:
        # The proxy is plain HTTP; the API server's token (if any) goes through it.
        token = cluster.kube_api.kopf_login().token
        kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", proxy.url, token)
        cluster.add_host("node1")
        logs = [tmp_path / "replica-1.log", tmp_path / "replica-2.log"]
        replicas = [_start(kubeconfig, log) for log in logs]
        try:
            cluster.create(network_body())
            cluster.wait(lambda: len(cluster.pools()) == 2, "the network reconciled", timeout=60)

            def acted() -> list[bool]:
                return ["network demo reconciled" in log.read_text() for log in logs]

            cluster.add_host("node2")
            cluster.wait(lambda: len(cluster.pools()) == 4, "node2 planned", timeout=60)
            cluster.create(network_body("second"))
            cluster.wait(lambda: len(cluster.pools("second")) == 4, "second network", timeout=60)
            assert sum(acted()) == 1
            active = acted().index(True)
            idle = logs[1 - active].read_text()
            # The other replica wrote nothing: no Config, DaemonSet, plan or pool of its own.
            assert "another replica leads" in idle
            assert "multinic_operator.reconciler" not in idle
            assert "multinic_operator.agent" not in idle

            # The active replica stops (releasing the Lease): the other one takes over.
            assert _stop(replicas[active]) == 0
            cluster.create(network_body("third"))
            cluster.wait(
                lambda: len(cluster.pools("third")) == 4, "the other replica took over", timeout=60
            )
            cluster.wait(
                lambda: "network third reconciled" in logs[1 - active].read_text(),
                "the replica that took over reconciled the new network",
            )
        finally:
            codes = [_stop(p) if p.poll() is None else p.returncode for p in replicas]
        assert codes == [0, 0]
        calls = check_rbac(proxy)
        assert {v for g, r, v in calls if r == "leases"} == {"get", "create", "patch"}
    finally:
        proxy.stop()


@pytest.mark.slow
def test_sigterm_stops_the_operator_at_once(cluster: Any, tmp_path: Path) -> None:
    """Not after kopf's 5 s wait for "hung" tasks: `multinic-sim down`, rollouts wait for it."""
    log = tmp_path / "operator.log"
    operator = _start(cluster.kube_api.kubeconfig, log, "--standalone")
    try:
        cluster.add_host("node1")
        cluster.create(network_body())
        cluster.wait(lambda: len(cluster.pools()) == 2, "the network reconciled", timeout=60)
        # A running operator is stopped, not one still taking in its first object:
        # kopf may miss a timer it starts in the same instant as the signal and
        # then waits 5 s for it (a kopf race, not ours).
        time.sleep(1.0)
    finally:
        operator.send_signal(signal.SIGTERM)
        try:
            # Well under the 5 s kopf gives a task it waits for in vain.
            code = operator.wait(4)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
            pytest.fail(f"the operator still ran 4 s after SIGTERM:\n{log.read_text()[-2000:]}")
    assert code == 0
    assert "Hung tasks" not in log.read_text()
