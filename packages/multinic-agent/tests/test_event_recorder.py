"""The event recorder (multinic_core.events) writing through the agent's sink to an API server.

Against ``kube_api`` (the double, or a real kube-apiserver with
MULTINIC_TEST_KUBECONFIG): kubelet's correlation as Events a user lists -
one Event per repeat with a count, similar messages combined, a burst limit
per object, an Event deleted meanwhile written again - and that recording
never waits for the API server, even when there is none.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from multinic_agent.kube_api import load_api_client
from multinic_agent.kube_events import KubeEventSink
from multinic_core.events import (
    AGGREGATED_PREFIX,
    EventRecorder,
    network_ref,
    pod_ref,
)
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.testing import KubeTestApi


class Clock:
    """Seconds since the epoch that a test moves forward."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorders(kube_api: KubeTestApi, clock: Clock) -> Iterator[Any]:
    """``recorders(**options)``: an agent's recorder of node-7 on the test clock."""
    api = load_api_client(str(kube_api.kubeconfig))
    assert api is not None
    made: list[EventRecorder] = []

    def make(**options: Any) -> EventRecorder:
        made.append(
            EventRecorder(KubeEventSink(api), "multinic-agent", "node-7", clock=clock, **options)
        )
        return made[-1]

    try:
        yield make
    finally:
        for recorder in made:
            recorder.close()
        api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def recorder(recorders: Any) -> EventRecorder:
    made: EventRecorder = recorders()
    return made


def events(kube_api: KubeTestApi, namespace: str, **fields: str) -> list[dict[str, Any]]:
    selector = ",".join(f"{k}={v}" for k, v in fields.items())
    listed = kube_api.core_v1.list_namespaced_event(namespace, field_selector=selector)
    found: list[dict[str, Any]] = [
        kube_api.api_client.sanitize_for_serialization(e) for e in listed.items
    ]
    return sorted(found, key=lambda e: str(e["metadata"]["name"]))


def test_a_repeated_event_is_one_event_with_a_count(
    kube_api: KubeTestApi, kube_namespace: str, recorder: EventRecorder, clock: Clock
) -> None:
    ref = pod_ref(kube_namespace, "web", "uid-1")
    recorder.warning(ref, "PoolExhausted", "pool p has no free address")
    assert recorder.flush()
    [first] = events(kube_api, kube_namespace, **{"involvedObject.name": "web"})
    for _ in range(3):
        clock.now += 5
        recorder.warning(ref, "PoolExhausted", "pool p has no free address")
    assert recorder.flush()
    [event] = events(kube_api, kube_namespace, **{"involvedObject.name": "web"})
    assert event["metadata"]["name"] == first["metadata"]["name"]
    assert event["count"] == 4
    assert event["firstTimestamp"] == first["firstTimestamp"]
    assert event["lastTimestamp"] > first["lastTimestamp"]
    assert event["involvedObject"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "web",
        "namespace": kube_namespace,
        "uid": "uid-1",
    }
    assert event["source"] == {"component": "multinic-agent", "host": "node-7"}
    assert event["reportingComponent"] == "multinic-agent"
    # Another message is another Event.
    recorder.warning(ref, "PoolExhausted", "pool q has no free address")
    assert recorder.flush()
    assert len(events(kube_api, kube_namespace, **{"involvedObject.name": "web"})) == 2
    assert recorder.counts["created"] == 2
    assert recorder.counts["patched"] == 3


def test_ten_different_messages_of_one_reason_are_combined(
    kube_api: KubeTestApi, kube_namespace: str, recorder: EventRecorder, clock: Clock
) -> None:
    ref = pod_ref(kube_namespace, "busy")
    for number in range(12):
        clock.now += 1
        recorder.normal(ref, "Tried", f"attempt {number}")
    assert recorder.flush()
    found = events(kube_api, kube_namespace, **{"involvedObject.name": "busy"})
    single = [e for e in found if not e["message"].startswith(AGGREGATED_PREFIX)]
    [combined] = [e for e in found if e["message"].startswith(AGGREGATED_PREFIX)]
    assert len(single) == 9
    assert combined["message"] == f"{AGGREGATED_PREFIX}attempt 11"
    assert combined["count"] == 3


def test_an_object_gets_a_burst_then_one_event_per_refill(
    kube_api: KubeTestApi, kube_namespace: str, recorders: Any, clock: Clock
) -> None:
    recorder = recorders(burst=8)
    ref = pod_ref(kube_namespace, "noisy")
    for number in range(12):
        recorder.warning(ref, f"Reason{number}", "something")
    assert recorder.flush()
    assert len(events(kube_api, kube_namespace, **{"involvedObject.name": "noisy"})) == 8
    assert recorder.counts["throttled"] == 4
    # Another object has a bucket of its own; and five minutes later one more passes.
    recorder.warning(pod_ref(kube_namespace, "quiet"), "Reason0", "something")
    clock.now += 300
    recorder.warning(ref, "Later", "something")
    recorder.warning(ref, "EvenLater", "something")
    assert recorder.flush()
    noisy = events(kube_api, kube_namespace, **{"involvedObject.name": "noisy"})
    assert [e["reason"] for e in noisy].count("Later") == 1
    assert "EvenLater" not in [e["reason"] for e in noisy]
    assert len(events(kube_api, kube_namespace, **{"involvedObject.name": "quiet"})) == 1


def test_an_event_deleted_meanwhile_is_written_again(
    kube_api: KubeTestApi, kube_namespace: str, recorder: EventRecorder
) -> None:
    ref = pod_ref(kube_namespace, "web")
    recorder.warning(ref, "NICMissing", "no NIC on 10.0.3.0/24")
    assert recorder.flush()
    [gone] = events(kube_api, kube_namespace, **{"involvedObject.name": "web"})
    kube_api.core_v1.delete_namespaced_event(gone["metadata"]["name"], kube_namespace)
    recorder.warning(ref, "NICMissing", "no NIC on 10.0.3.0/24")
    assert recorder.flush()
    [event] = events(kube_api, kube_namespace, **{"involvedObject.name": "web"})
    assert event["metadata"]["name"] != gone["metadata"]["name"]
    assert event["count"] == 1


def test_an_event_on_a_cluster_scoped_network_goes_to_default(
    kube_api: KubeTestApi, recorder: EventRecorder
) -> None:
    name = f"net-{time.monotonic_ns():x}"
    recorder.warning(network_ref(name, "uid-9"), "AllocationsStranded", "1 allocation")
    assert recorder.flush()
    [event] = events(kube_api, "default", **{"involvedObject.name": name})
    assert event["involvedObject"]["kind"] == "MultiNicNetwork"
    assert "namespace" not in event["involvedObject"] or not event["involvedObject"]["namespace"]
    kube_api.core_v1.delete_namespaced_event(event["metadata"]["name"], "default")


def test_recording_never_waits_for_an_api_server_that_is_not_there(tmp_path: Path) -> None:
    kubeconfig = write_kubeconfig(tmp_path / "kubeconfig", "http://127.0.0.1:9")  # discard port
    api = load_api_client(str(kubeconfig))
    assert api is not None
    recorder = EventRecorder(
        KubeEventSink(api), "multinic-agent", retry_delay_s=0.05, max_tries=2, queue_size=5
    )
    try:
        started = time.monotonic()
        queued = [
            recorder.warning(pod_ref("default", f"p{i}"), "PoolExhausted", "full")
            for i in range(50)
        ]
        took = time.monotonic() - started
        assert took < 0.5, f"recording 50 events took {took:.2f} s"
        assert not all(queued)  # the queue holds 5 (and the one being written)
        assert recorder.counts["dropped"] >= 40
        assert recorder.flush(30)
        assert recorder.counts["failed"] == queued.count(True)
        assert recorder.counts["created"] == 0
    finally:
        recorder.close()
        api.close()  # type: ignore[no-untyped-call]
