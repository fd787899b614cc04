"""``multinic-sim apiserver``: kubeconfig on stdout, state file, signals, errors."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client import ApiException

CLI = [sys.executable, "-m", "multinic_sim"]


class RunningServer:
    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [*CLI, "apiserver", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line:
            self.proc.kill()
            _, err = self.proc.communicate()
            pytest.fail(f"apiserver printed no kubeconfig path: {err}")
        self.kubeconfig = Path(line)
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)

    @property
    def url(self) -> str:
        return str(self.api.configuration.host)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> tuple[int, str]:
        self.api.close()
        self.proc.send_signal(sig)
        _, err = self.proc.communicate(timeout=20)
        return self.proc.returncode, err


@pytest.fixture
def servers() -> Iterator[list[RunningServer]]:
    started: list[RunningServer] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.proc.kill()
            server.proc.communicate()


def test_help_explains_the_command() -> None:
    out = subprocess.run(
        [*CLI, "apiserver", "--help"], capture_output=True, text=True, check=True
    ).stdout
    for word in ("--port", "--state", "kubeconfig", "SIGTERM", "test double"):
        assert word in out
    top = subprocess.run([*CLI, "--help"], capture_output=True, text=True, check=True).stdout
    assert "apiserver" in top


@pytest.mark.slow
def test_serves_until_sigterm_and_resumes_from_state(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    state = tmp_path / "sim.json"
    first = RunningServer("--state", str(state))
    servers.append(first)
    kubeconfig = yaml.safe_load(first.kubeconfig.read_text())
    assert kubeconfig["clusters"][0]["cluster"]["server"].startswith("http://127.0.0.1:")
    cm = first.core.create_namespaced_config_map(
        "default", {"metadata": {"name": "kept"}, "data": {"a": "1"}}
    )
    code, err = first.stop(signal.SIGTERM)
    assert code == 0, err
    assert "Traceback" not in err
    saved = json.loads(state.read_text())
    assert saved["format"] == "multinic-sim/state/v1"

    second = RunningServer("--state", str(state))
    servers.append(second)
    again = second.core.read_namespaced_config_map("kept", "default")
    assert again.metadata.uid == cm.metadata.uid
    assert again.data == {"a": "1"}
    newer = second.core.create_namespaced_config_map("default", {"metadata": {"name": "new"}})
    assert int(newer.metadata.resource_version) > int(cm.metadata.resource_version)
    # The watch history did not survive the restart: resuming from before the last
    # change is 410 (resuming from the last resourceVersion itself still works).
    response = second.api.rest_client.pool_manager.request(
        "GET",
        f"{second.url}/api/v1/namespaces/default/configmaps",
        fields={
            "watch": "true",
            "resourceVersion": str(int(cm.metadata.resource_version) - 1),
            "timeoutSeconds": "1",
        },
        timeout=10,
    )
    event = json.loads(response.data.splitlines()[0])
    assert event["type"] == "ERROR"
    assert event["object"]["code"] == 410
    code, _ = second.stop(signal.SIGINT)
    assert code == 0


def test_token_is_required_when_set(servers: list[RunningServer]) -> None:
    server = RunningServer("--token", "s3cret")
    servers.append(server)
    assert server.core.read_namespace("default").metadata.name == "default"
    response = urllib3.PoolManager().request("GET", f"{server.url}/api/v1/namespaces")
    assert response.status == 401
    assert json.loads(response.data)["reason"] == "Unauthorized"
    server.stop()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--state", "/nonexistent-dir/state.json"], "does not exist"),
        (["--port", "70000"], "--port"),
    ],
)
def test_user_errors_are_one_line(args: list[str], message: str) -> None:
    result = subprocess.run(
        [*CLI, "apiserver", *args], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr
    assert result.stdout == ""


def test_corrupt_state_file_is_a_clear_error(tmp_path: Path) -> None:
    state = tmp_path / "broken.json"
    state.write_text("{not json")
    result = subprocess.run(
        [*CLI, "apiserver", "--state", str(state)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(lines) == 1
    assert "not valid JSON" in lines[0]


def test_port_in_use_is_a_clear_error(servers: list[RunningServer]) -> None:
    server = RunningServer()
    servers.append(server)
    port = server.url.rsplit(":", 1)[1]
    result = subprocess.run(
        [*CLI, "apiserver", "--port", port], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.returncode == 1
    assert "cannot listen" in result.stderr
    assert "Traceback" not in result.stderr
    with pytest.raises(ApiException):
        server.core.read_namespace("missing")


@pytest.mark.kubectl
@pytest.mark.slow
@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_kubectl_works_with_the_printed_kubeconfig(
    tmp_path: Path, servers: list[RunningServer]
) -> None:
    crds = Path(__file__).resolve().parents[3] / "deploy" / "crds"
    if not any(crds.glob("*.yaml")):
        pytest.skip(f"no CRDs generated in {crds} yet")
    server = RunningServer()
    servers.append(server)

    def kubectl(*args: str) -> str:
        result = subprocess.run(
            ["kubectl", f"--kubeconfig={server.kubeconfig}", f"--cache-dir={tmp_path}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        return result.stdout

    kubectl("apply", "-f", str(crds))
    kubectl("wait", "--for=condition=established", "--timeout=30s", "crd", "--all")
    resources = kubectl("api-resources", "--api-group=multinic.fms.io", "-o", "name").split()
    assert "multinicnetworks.multinic.fms.io" in resources
    assert kubectl("get", "multinicnetworks") == ""  # "No resources found" goes to stderr
    code, _ = server.stop()
    assert code == 0
