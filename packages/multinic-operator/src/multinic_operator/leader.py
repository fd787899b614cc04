"""Leader election on a ``coordination.k8s.io`` Lease: only one replica acts.

The operator replicas race for the Lease ``multinic-operator`` in their
namespace; the holder runs the handlers and renews the Lease every
``renew_seconds``; the others wait.  A replica that cannot renew for
``lease_seconds`` stops acting before anyone else may take over.

Expiry is judged like client-go does: by how long *this* replica has seen
the same holder record unchanged on its own monotonic clock, never by
comparing another machine's timestamps with ours, so clock skew between
nodes cannot make two replicas leaders at once.  Every write is guarded by
the Lease's resourceVersion, so two candidates cannot both win a round.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from multinic_operator.kube import KubeApi, KubeApiError

log = logging.getLogger(__name__)

LEASE_API_VERSION = "coordination.k8s.io/v1"
LEASE_NAME = "multinic-operator"


def _micro_time() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElection:
    """Acquire, keep and release the operator's Lease (one object per replica)."""

    def __init__(
        self,
        api: KubeApi,
        namespace: str,
        identity: str,
        *,
        name: str = LEASE_NAME,
        lease_seconds: float = 15.0,
        renew_seconds: float = 5.0,
        retry_seconds: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.namespace = namespace
        self.identity = identity
        self.name = name
        self.lease_seconds = lease_seconds
        self.renew_seconds = renew_seconds
        self.retry_seconds = retry_seconds
        self._clock = clock
        self._observed: tuple[str, str] | None = None
        self._observed_at = 0.0
        self._renewed_at: float | None = None
        self.round_error: str | None = None
        """While waiting: "" when the last round reached the API, else why not (None: no round yet)."""
        self.won = False
        """Set once a round won the Lease (before the replica starts to act)."""

    # ------------------------------------------------------------------ one round

    def try_acquire_or_renew(self) -> bool:
        """One election round; True when this replica holds the Lease afterwards."""
        now = self._clock()
        lease = self.api.get(LEASE_API_VERSION, "Lease", self.name, self.namespace)
        stamp = _micro_time()
        duration = max(1, round(self.lease_seconds))
        if lease is None:
            body = {
                "apiVersion": LEASE_API_VERSION,
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": {
                    "holderIdentity": self.identity,
                    "leaseDurationSeconds": duration,
                    "acquireTime": stamp,
                    "renewTime": stamp,
                    "leaseTransitions": 0,
                },
            }
            return self._write(lambda: self.api.create(body), now)
        spec: dict[str, Any] = lease.get("spec") or {}
        holder = str(spec.get("holderIdentity") or "")
        record = (holder, str(spec.get("renewTime") or ""))
        if record != self._observed:
            self._observed, self._observed_at = record, now
        expired = now - self._observed_at > float(spec.get("leaseDurationSeconds") or duration)
        if holder and holder != self.identity and not expired:
            return False
        new_spec: dict[str, Any] = {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": duration,
            "renewTime": stamp,
        }
        if holder != self.identity:
            new_spec["acquireTime"] = stamp
            new_spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
            log.info(
                "taking over the Lease %s/%s from %r", self.namespace, self.name, holder or "nobody"
            )
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": new_spec,
        }
        return self._write(
            lambda: self.api.patch(LEASE_API_VERSION, "Lease", self.name, patch, self.namespace),
            now,
        )

    def _write(self, action: Callable[[], Any], now: float) -> bool:
        try:
            action()
        except KubeApiError as e:
            if e.conflict:
                # Another replica wrote first this round.
                return False
            raise
        self._renewed_at = now
        return True

    # ------------------------------------------------------------------ loops

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this replica leads (True) or ``stop`` is set (False)."""
        logged = False
        while not stop.is_set():
            try:
                acquired = self.try_acquire_or_renew()
                if acquired:
                    self.won = True  # first: from here on this replica is no standby
                    log.info(
                        "this replica (%s) leads: Lease %s/%s",
                        self.identity,
                        self.namespace,
                        self.name,
                    )
                    return True
                self.round_error = ""
            except KubeApiError as e:
                self.round_error = str(e)
                log.warning("leader election: %s", e)
            if not logged:
                log.info("another replica leads (Lease %s/%s); waiting", self.namespace, self.name)
                logged = True
            stop.wait(self.retry_seconds)
        return False

    def keep(self, lost: Callable[[], None], stop: threading.Event) -> threading.Thread:
        """Renew in a daemon thread; call ``lost()`` once leadership cannot be kept.

        Leadership is given up when a renewal has not succeeded for
        ``lease_seconds`` minus one retry (before another replica may take over).
        """

        # Give up early enough that the handlers stop before another replica,
        # which waits lease_seconds on its own clock, may start.
        deadline = self.lease_seconds - 2 * self.retry_seconds

        def renew() -> None:
            interval = self.renew_seconds
            while not stop.wait(interval):
                try:
                    if self.try_acquire_or_renew():
                        interval = self.renew_seconds
                        continue
                    log.error("the Lease %s/%s was taken over", self.namespace, self.name)
                except KubeApiError as e:
                    last = self._renewed_at or 0.0
                    if self._clock() - last + self.retry_seconds < deadline:
                        log.warning("leader election: renewal failed, retrying: %s", e)
                        interval = self.retry_seconds
                        continue
                    log.error("leader election: could not renew in time: %s", e)
                lost()
                return

        thread = threading.Thread(target=renew, name="multinic-leader", daemon=True)
        thread.start()
        return thread

    def release(self) -> None:
        """Give the Lease up (on a clean stop) so that another replica takes over now."""
        lease = self.api.get(LEASE_API_VERSION, "Lease", self.name, self.namespace)
        if lease is None or (lease.get("spec") or {}).get("holderIdentity") != self.identity:
            return
        patch = {
            "metadata": {"resourceVersion": lease["metadata"]["resourceVersion"]},
            "spec": {"holderIdentity": None, "leaseDurationSeconds": 1},
        }
        try:
            self.api.patch(LEASE_API_VERSION, "Lease", self.name, patch, self.namespace)
        except KubeApiError as e:
            log.warning("could not release the Lease: %s", e)
