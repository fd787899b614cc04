"""The agent's Events (on Pods), written through the ``kubernetes`` client.

:class:`KubeEventSink` is the :class:`multinic_core.events.EventSink` of the
agent: core v1 Events, created and merge-patched.  The recorder that
correlates them runs in its own thread, off the CNI request path.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from multinic_agent.kube_api import REQUEST_TIMEOUT_S, api_status, describe_error, is_transient
from multinic_core.events import EventRecorder, EventRejectedError

COMPONENT = "multinic-agent"
MERGE_PATCH = "application/merge-patch+json"
EVENT_TIMEOUT_S = 10.0
"""An Event write waits at most this long (the recorder retries; nobody waits for it)."""


class KubeEventSink:
    """Creates and patches core v1 Events with the agent's API client."""

    def __init__(self, api: client.ApiClient) -> None:
        self.core: Any = client.CoreV1Api(api)

    def create(self, namespace: str, event: Mapping[str, Any]) -> None:
        try:
            self.core.create_namespaced_event(
                namespace, dict(event), _request_timeout=min(EVENT_TIMEOUT_S, REQUEST_TIMEOUT_S)
            )
        except ApiException as e:
            # 409 here is AlreadyExists (a name clash), not a conflict worth retrying.
            if not is_transient(e) or api_status(e) == 409:
                raise EventRejectedError(describe_error(e)) from e
            raise

    def patch(self, namespace: str, name: str, changes: Mapping[str, Any]) -> bool:
        try:
            self.core.patch_namespaced_event(
                name,
                namespace,
                dict(changes),
                _content_type=MERGE_PATCH,
                _request_timeout=min(EVENT_TIMEOUT_S, REQUEST_TIMEOUT_S),
            )
        except ApiException as e:
            if api_status(e) == 404:
                return False
            if not is_transient(e):
                raise EventRejectedError(describe_error(e)) from e
            raise
        return True

    def close(self) -> None:
        """Nothing of its own: the API client is the agent's, closed by the agent."""


def agent_event_recorder(api: client.ApiClient, node: str) -> EventRecorder:
    """The recorder of the agent on ``node`` (``source: {component: multinic-agent, host: node}``)."""
    return EventRecorder(KubeEventSink(api), COMPONENT, node)
