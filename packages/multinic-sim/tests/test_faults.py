"""Fault injection: chosen requests fail, hang, or lose their watch stream."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import kopf
import pytest
import urllib3
from kubernetes import watch

from multinic_sim.faults import FaultRule, FaultRuleError
from multinic_sim.testing import KubeTestApi, kopf_operator, wait_for

from .conftest import GROUP, PLURAL, VERSION, WidgetClient, status_of


@pytest.fixture
def faults(kube_api: KubeTestApi) -> Iterator[Any]:
    injector = kube_api.faults  # skips on a real cluster
    injector.clear()
    yield injector
    injector.clear()


def admin(api: KubeTestApi, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    response = api.api_client.rest_client.pool_manager.request(
        method,
        api.server_url + path,
        body=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        timeout=10,
    )
    return response.status, json.loads(response.data or b"null")


def test_error_answers_count_times_then_recovers(
    faults: Any, kube_api: KubeTestApi, kube_namespace: str
) -> None:
    faults.add(verb="create", resource="configmaps", status=500, count=2)
    body = {"metadata": {"name": "flaky"}}
    for _ in range(2):
        status = status_of(
            lambda: kube_api.core_v1.create_namespaced_config_map(kube_namespace, body)
        )
        assert (status["code"], status["reason"]) == (500, "InternalError")
    created = kube_api.core_v1.create_namespaced_config_map(kube_namespace, body)
    assert created.metadata.name == "flaky"


def test_throttling_carries_retry_after(
    faults: Any, kube_api: KubeTestApi, kube_namespace: str
) -> None:
    rule = faults.add(verb="list", path=r"/namespaces/[^/]+/configmaps$", status=429, retry_after=1)
    response = kube_api.api_client.rest_client.pool_manager.request(
        "GET",
        f"{kube_api.server_url}/api/v1/namespaces/{kube_namespace}/configmaps",
        retries=False,
        timeout=10,
    )
    assert response.status == 429
    assert response.headers["Retry-After"] == "1"
    assert json.loads(response.data)["reason"] == "TooManyRequests"
    # The kubernetes client (urllib3) honours Retry-After and succeeds on its retry.
    rule.count = 2
    kube_api.core_v1.list_namespaced_config_map(kube_namespace)
    assert rule.hits == 2


def test_injected_conflict_on_update_only(
    faults: Any, kube_api: KubeTestApi, kube_namespace: str
) -> None:
    cm = kube_api.core_v1.create_namespaced_config_map(kube_namespace, {"metadata": {"name": "c"}})
    faults.add(verb="update", resource="configmaps", status=409)
    kube_api.core_v1.read_namespaced_config_map("c", kube_namespace)  # reads unaffected
    assert (
        status_of(lambda: kube_api.core_v1.replace_namespaced_config_map("c", kube_namespace, cm))[
            "code"
        ]
        == 409
    )
    kube_api.core_v1.replace_namespaced_config_map("c", kube_namespace, cm)


@pytest.mark.slow
def test_timeout_hangs_the_request(faults: Any, kube_api: KubeTestApi, kube_namespace: str) -> None:
    rule = faults.add(verb="get", resource="namespaces", action="timeout", delay=5, count=None)
    started = time.monotonic()
    # urllib3 retries the idempotent GET after each read timeout, then gives up.
    with pytest.raises(urllib3.exceptions.HTTPError):
        kube_api.core_v1.read_namespace(kube_namespace, _request_timeout=0.3)
    assert rule.hits >= 2
    assert time.monotonic() - started < 4.5


def test_probability_zero_never_fires(faults: Any, kube_api: KubeTestApi) -> None:
    rule = faults.add(verb="get", resource="namespaces", status=500, count=None, probability=0.0)
    for _ in range(20):
        kube_api.core_v1.read_namespace("default")
    assert rule.hits == 0


def test_status_subresource_can_be_targeted(faults: Any, widgets: WidgetClient) -> None:
    widgets.create(widgets.body("fs"))
    faults.add(resource=f"{PLURAL}/status", status=500)
    widgets.patch("fs", {"spec": {"size": 2}})
    assert status_of(lambda: widgets.patch_status("fs", {"status": {"phase": "x"}}))["code"] == 500


def test_bad_rules_are_refused() -> None:
    with pytest.raises(FaultRuleError):
        FaultRule(verb="fetch")
    with pytest.raises(FaultRuleError):
        FaultRule(path="(")
    with pytest.raises(FaultRuleError):
        FaultRule.from_json({"status": 500, "colour": "red"})


def test_admin_http_endpoint_manages_rules(faults: Any, kube_api: KubeTestApi) -> None:
    code, rule = admin(
        kube_api,
        "POST",
        "/_sim/faults",
        {"verb": "get", "resource": "namespaces", "status": 503, "count": 1},
    )
    assert code == 201
    code, listed = admin(kube_api, "GET", "/_sim/faults")
    assert [r["id"] for r in listed["rules"]] == [rule["id"]]
    assert status_of(lambda: kube_api.core_v1.read_namespace("default"))["code"] == 503
    kube_api.core_v1.read_namespace("default")
    code, bad = admin(kube_api, "POST", "/_sim/faults", {"verb": "nope"})
    assert code == 400
    assert "verb" in bad["message"]
    assert admin(kube_api, "DELETE", f"/_sim/faults/{rule['id']}")[0] == 200
    assert admin(kube_api, "GET", "/_sim/faults")[1]["rules"] == []


def test_dropping_watches_ends_client_streams(
    faults: Any, kube_api: KubeTestApi, kube_namespace: str
) -> None:
    ended = threading.Event()

    def consume() -> None:
        for _ in watch.Watch().stream(
            kube_api.core_v1.list_namespaced_config_map, kube_namespace, timeout_seconds=60
        ):
            pass
        ended.set()

    before = admin(kube_api, "GET", "/_sim/stats")[1]["watches"]
    threading.Thread(target=consume, daemon=True).start()
    wait_for(
        lambda: admin(kube_api, "GET", "/_sim/stats")[1]["watches"] > before,
        10,
        "the watch to open",
    )
    code, dropped = admin(kube_api, "POST", "/_sim/watches/drop", {"resource": "configmaps"})
    assert code == 200
    assert dropped["dropped"] >= 1
    assert ended.wait(10), "the client's watch did not end when the server dropped it"


@pytest.mark.slow
def test_kopf_recovers_from_dropped_watches_and_errors(
    faults: Any, kube_api: KubeTestApi, widgets: WidgetClient
) -> None:
    registry = kopf.OperatorRegistry()

    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    def created(patch: kopf.Patch, **_: Any) -> None:
        patch.status["phase"] = "Seen"

    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.2
    settings.persistence.finalizer = "test.multinic.dev/kopf-finalizer"
    with kopf_operator(registry, kube_api.kopf_login, settings=settings):
        widgets.create(widgets.body("before"))
        wait_for(
            lambda: (widgets.get("before").get("status") or {}).get("phase") == "Seen",
            30,
            "kopf to see the first widget",
        )
        # The stream breaks, resuming gets 500 twice, then 410 Gone (history
        # compacted): kopf must re-list to catch up.
        kube_api.compact()
        kube_api.drop_watches(PLURAL, abort=True)
        faults.add(verb="watch", resource=PLURAL, status=500, count=2)
        faults.add(verb="patch", resource=f"{PLURAL}/status", status=500, count=1)
        widgets.create(widgets.body("after"))
        wait_for(
            lambda: (widgets.get("after").get("status") or {}).get("phase") == "Seen",
            60,
            "kopf to recover and see the second widget",
        )
        for name in ("before", "after"):
            widgets.delete(name)
        wait_for(
            lambda: not widgets.exists("before") and not widgets.exists("after"),
            30,
            "kopf to release its finalizers",
        )


def test_watch_of_a_departed_client_is_released(
    faults: Any, kube_api: KubeTestApi, kube_namespace: str
) -> None:
    def open_watches() -> int:
        return int(admin(kube_api, "GET", "/_sim/stats")[1]["watches"])

    before = open_watches()
    url = urllib3.util.parse_url(kube_api.server_url)
    with socket.create_connection((url.host, url.port), timeout=10) as sock:
        sock.sendall(
            f"GET /api/v1/namespaces/{kube_namespace}/configmaps?watch=true "
            f"HTTP/1.1\r\nHost: {url.host}\r\n\r\n".encode()
        )
        assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        wait_for(lambda: open_watches() > before, 10, "the watch to open")
    wait_for(lambda: open_watches() == before, 10, "the server to release the watch")
