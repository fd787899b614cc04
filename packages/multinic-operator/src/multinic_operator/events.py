"""The operator's Events (on MultiNicNetworks), written through :class:`KubeApi`.

:class:`OperatorEventSink` is the :class:`multinic_core.events.EventSink` of
the operator: core v1 Events, created and merge-patched.  A network is
cluster-scoped, so its Events live in namespace ``default``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from multinic_core.events import EventRecorder, EventRejectedError
from multinic_operator.kube import KubeApi, KubeApiError

COMPONENT = "multinic-operator"


class OperatorEventSink:
    """Creates and patches core v1 Events with a KubeApi of their own (closed with the sink)."""

    def __init__(self, api: KubeApi) -> None:
        self.api = api

    def create(self, namespace: str, event: Mapping[str, Any]) -> None:
        body = {**event, "metadata": {**event["metadata"], "namespace": namespace}}
        try:
            self.api.create(body)
        except KubeApiError as e:
            # 409 here is AlreadyExists (a name clash), not a conflict worth retrying.
            if not e.transient or e.conflict:
                raise EventRejectedError(str(e)) from e
            raise

    def patch(self, namespace: str, name: str, changes: Mapping[str, Any]) -> bool:
        try:
            self.api.patch("v1", "Event", name, changes, namespace)
        except KubeApiError as e:
            if e.status == 404:
                return False
            if not e.transient:
                raise EventRejectedError(str(e)) from e
            raise
        return True

    def close(self) -> None:
        self.api.close()


def operator_event_recorder(api: KubeApi, identity: str = "") -> EventRecorder:
    """The operator's recorder (``source.component: multinic-operator``)."""
    return EventRecorder(OperatorEventSink(api), COMPONENT, identity)
