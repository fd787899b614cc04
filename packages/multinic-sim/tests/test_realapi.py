"""``multinic-sim apiserver --real``: the real control plane in place of the double."""

from __future__ import annotations

import base64
import os
import signal
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from multidict import MultiDict

from multinic_sim import realapi
from multinic_sim.errors import SimError
from multinic_sim.kubeconfig import read_credentials, write_kubeconfig
from multinic_sim.processes import processes_of
from multinic_sim.server import _kubelet_exec_query

CLI = [sys.executable, "-m", "multinic_sim"]


def _built() -> bool:
    try:
        realapi.find_programs()
    except SimError:
        return False
    return True


needs_counterparts = pytest.mark.skipif(
    not _built(), reason=f"counterparts not built (`{realapi.BUILD_HINT}`)"
)


def test_missing_counterparts_name_the_build_step(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(realapi.COUNTERPARTS_ENV, str(tmp_path))
    with pytest.raises(SimError) as info:
        realapi.find_programs()
    assert "scripts/build-counterparts" in str(info.value)
    assert "kube-apiserver" in str(info.value)
    done = subprocess.run(
        [*CLI, "apiserver", "--real"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, realapi.COUNTERPARTS_ENV: str(tmp_path)},
    )
    assert done.returncode == 1
    assert "scripts/build-counterparts" in done.stderr
    assert "Traceback" not in done.stderr


def test_real_only_options_are_refused_for_the_double(tmp_path: Path) -> None:
    for argv, message in (
        (["--data-dir", str(tmp_path)], "--data-dir needs --real"),
        (["--real", "--state", str(tmp_path / "s.json")], "--state is for the double"),
    ):
        done = subprocess.run(
            [*CLI, "apiserver", *argv], capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 1
        assert message in done.stderr


def test_kubeconfig_carries_the_ca_and_the_token(tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    path = write_kubeconfig(
        tmp_path / "kubeconfig", "https://127.0.0.1:6443", "t0k", certificate_authority_data=ca
    )
    assert path.stat().st_mode & 0o777 == 0o600
    credentials = read_credentials(path)
    assert credentials.server_url == "https://127.0.0.1:6443"
    assert credentials.token == "t0k"
    assert credentials.certificate_authority_data == ca
    plain = read_credentials(write_kubeconfig(tmp_path / "plain", "http://127.0.0.1:1"))
    assert (plain.token, plain.certificate_authority_data) == (None, None)


def test_exec_reaches_the_kubelet_with_the_kubelet_api_names() -> None:
    # kube-apiserver turns pods/exec's stdin/stdout/stderr=true into the kubelet's
    # input/output/error=1 (and drops the container, which is in the path).
    query = MultiDict(
        [
            ("command", "sh"),
            ("command", "-c"),
            ("command", "echo a&b"),
            ("stdout", "true"),
            ("stderr", "true"),
            ("stdin", "false"),
            ("container", "main"),
        ]
    )
    assert _kubelet_exec_query(query) == (
        "command=sh&command=-c&command=echo+a%26b&output=1&error=1"
    )


@needs_counterparts
@pytest.mark.slow
def test_real_apiserver_serves_tls_with_a_token_and_stops_its_programs(tmp_path: Path) -> None:
    data = tmp_path / "data"
    process = subprocess.Popen(
        [*CLI, "apiserver", "--real", "--data-dir", str(data)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line, process.stderr.read() if process.stderr else ""
        credentials = read_credentials(line)
        assert credentials.server_url.startswith("https://127.0.0.1:")
        assert credentials.token
        assert credentials.certificate_authority_data
        assert {"etcd", "pki"} <= {p.name for p in data.iterdir()}
        names = {Path(_argv0(pid)).name for pid in processes_of(data)}
        # (and this apiserver --real process itself, a python3)
        assert {"etcd", "kube-apiserver", "kube-controller-manager"} <= names
        context = ssl.create_default_context(
            cadata=base64.b64decode(credentials.certificate_authority_data).decode()
        )

        def get(path: str, token: str | None) -> tuple[int, bytes]:
            request = urllib.request.Request(credentials.server_url + path)
            if token:
                request.add_header("Authorization", f"Bearer {token}")
            try:
                with urllib.request.urlopen(request, context=context, timeout=10) as response:
                    return response.status, response.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        status, body = get("/version", credentials.token)
        assert status == 200
        assert b'"gitVersion": "v1.37.2"' in body
        assert get("/api/v1/namespaces", None)[0] == 401
        assert get("/api/v1/namespaces", "wrong")[0] == 401
        # The controllers run: every namespace gets its ServiceAccount.
        assert (
            get("/api/v1/namespaces/default/serviceaccounts/default", credentials.token)[0] == 200
        )
    finally:
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert processes_of(data) == []


def _argv0(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
    except OSError:
        return ""
