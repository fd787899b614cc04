"""Which cluster the agent talks to: kubeconfig, in-cluster config, or none (file mode)."""

from __future__ import annotations

from pathlib import Path

import pytest

from multinic_agent.cli import main
from multinic_agent.kube_api import IN_CLUSTER_ENV, load_api_client
from multinic_core.errors import ConfigError
from multinic_sim.kubeconfig import write_kubeconfig


def test_no_kubeconfig_and_not_in_a_pod_means_no_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(IN_CLUSTER_ENV, raising=False)
    assert load_api_client("") is None


def test_a_kubeconfig_names_the_server(tmp_path: Path) -> None:
    path = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:6443")
    api = load_api_client(str(path))
    assert api is not None
    try:
        assert api.configuration.host == "http://127.0.0.1:6443"
    finally:
        api.close()


def test_a_missing_kubeconfig_is_a_named_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=str(missing)):
        load_api_client(str(missing))


def test_in_a_pod_without_a_service_account_the_agent_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv(IN_CLUSTER_ENV, "10.96.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")
    monkeypatch.delenv("KUBECONFIG", raising=False)
    with pytest.raises(ConfigError, match="in-cluster config"):
        load_api_client("")
    status = main(
        ["--node", "n", "--state-dir", str(tmp_path / "state"), "--socket", str(tmp_path / "s")]
    )
    assert status == 1
    assert "in-cluster config unusable" in caplog.text
    assert not (tmp_path / "s").exists()
