"""How `pod add` and concheck wait for a pod: what makes them give up, and what they say."""

from __future__ import annotations

import time
from typing import Any

import pytest

from multinic_sim.errors import SimError
from multinic_sim.pods import wait_running
from multinic_sim.testing import KubeTestApi


def make_pod(kube_api: KubeTestApi, namespace: str, name: str) -> Any:
    return kube_api.core_v1.create_namespaced_pod(
        namespace,
        {
            "metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "image": "busybox"}]},
        },
    )


def sandbox_event(kube_api: KubeTestApi, namespace: str, pod: Any, message: str) -> None:
    kube_api.core_v1.create_namespaced_event(
        namespace,
        {
            "metadata": {"name": f"{pod.metadata.name}.sandbox"},
            "involvedObject": {
                "kind": "Pod",
                "namespace": namespace,
                "name": pod.metadata.name,
                "uid": pod.metadata.uid,
            },
            "reason": "FailedCreatePodSandBox",
            "message": message,
            "type": "Warning",
            "count": 1,
        },
    )


def test_a_cni_error_other_than_try_again_fails_at_once(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    pod = make_pod(kube_api, kube_namespace, "broken")
    sandbox_event(
        kube_api, kube_namespace, pod,
        "Failed to create pod sandbox: plugin type='multi-nic' name='n' failed (add): "
        "CNI error code 7: no NIC matches",
    )  # fmt: skip
    started = time.monotonic()
    with pytest.raises(SimError, match=r"did not start: .*CNI error code 7: no NIC matches"):
        wait_running(kube_api.core_v1, kube_namespace, "broken", timeout=30)
    assert time.monotonic() - started < 20


@pytest.mark.parametrize(
    "message",
    [
        "... CNI error code 11: the agent has no IPPool for this host yet",
        # A real kubelet's wording names no code: waited out as well.
        'failed to setup network for sandbox "abc": plugin type="multus" failed (add): timeout',
    ],
)
def test_try_again_and_unknown_sandbox_errors_are_waited_out_and_then_named(
    kube_api: KubeTestApi, kube_namespace: str, message: str
) -> None:
    pod = make_pod(kube_api, kube_namespace, "slow")
    sandbox_event(kube_api, kube_namespace, pod, message)
    started = time.monotonic()
    with pytest.raises(SimError, match="not running after 1s: ") as info:
        wait_running(kube_api.core_v1, kube_namespace, "slow", timeout=1)
    assert message in str(info.value)
    assert time.monotonic() - started >= 1


def test_a_pod_that_ended_fails_with_its_container_reason(
    kube_api: KubeTestApi, kube_namespace: str
) -> None:
    make_pod(kube_api, kube_namespace, "ended")
    kube_api.core_v1.patch_namespaced_pod_status(
        "ended",
        kube_namespace,
        {
            "status": {
                "phase": "Failed",
                "containerStatuses": [
                    {
                        "name": "c",
                        "ready": False,
                        "restartCount": 0,
                        "image": "busybox",
                        "imageID": "",
                        "state": {"terminated": {"exitCode": 127, "reason": "Error",
                                                 "message": "sleep: not found"}},
                    }
                ],
            }
        },
    )  # fmt: skip
    with pytest.raises(SimError, match=r"ended \(Failed\): Error sleep: not found"):
        wait_running(kube_api.core_v1, kube_namespace, "ended", timeout=30)


def test_a_running_pod_is_returned(kube_api: KubeTestApi, kube_namespace: str) -> None:
    make_pod(kube_api, kube_namespace, "fine")
    kube_api.core_v1.patch_namespaced_pod_status(
        "fine", kube_namespace, {"status": {"phase": "Running"}}
    )
    pod = wait_running(kube_api.core_v1, kube_namespace, "fine", timeout=5)
    assert pod.metadata.name == "fine"
