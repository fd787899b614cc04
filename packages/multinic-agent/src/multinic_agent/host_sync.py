"""This node's ``HostInterface``: discovered NICs written to the API.

Discovery runs on start, whenever the kernel reports a link or address change
(a netlink event socket in the host namespace, read by the event loop), and
every ``resync_interval`` seconds.  The object is written only when its spec
differs from what discovery found, so a resync of an unchanged node writes
nothing.  A HostInterface labelled ``multi-nic-unmanaged: "true"`` belongs to
a user and is never written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from multinic_agent.discovery import discover_nics, host_interface
from multinic_agent.kube_api import REQUEST_TIMEOUT_S, call_with_retries, describe_error
from multinic_agent.pod_netns import in_netns
from multinic_core.errors import MultinicError
from multinic_core.models import GROUP, VERSION, HostInterface, InterfaceInfo, load_resource

log = logging.getLogger(__name__)

NETLINK_ROUTE = 0
RTMGRP_LINK = 0x1
RTMGRP_IPV4_IFADDR = 0x10
RTMGRP_IPV6_IFADDR = 0x100
DEBOUNCE_S = 0.2
"""Events arrive in bursts (a link and its addresses): one discovery per burst."""


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def open_event_socket(netns: str | None = None) -> socket.socket:
    """A non-blocking netlink socket subscribed to link and address changes.

    Created inside ``netns`` when given: a socket stays bound to the namespace
    it was created in.
    """

    def create() -> socket.socket:
        events = socket.socket(
            socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_NONBLOCK, NETLINK_ROUTE
        )
        events.bind((0, RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR))
        return events

    return in_netns(netns, create) if netns else create()


class HostInterfaceSync:
    """Discovers the node's NICs and keeps its HostInterface equal to them."""

    def __init__(
        self,
        api: client.ApiClient,
        node: str,
        *,
        netns: str | None = None,
        sysfs: Path = Path("/sys"),
        ignore: Sequence[str] = (),
        resync_interval: float = 60.0,
    ) -> None:
        self.objects_api: Any = client.CustomObjectsApi(api)
        self.node = node
        self.netns = netns
        self.sysfs = sysfs
        self.ignore = tuple(ignore)
        self.resync_interval = resync_interval
        self.changed = asyncio.Event()
        self.syncs = 0
        self.discovered: list[InterfaceInfo] = []
        """The NICs the last discovery found."""
        self._confirmed: list[dict[str, Any]] | None = None

    # ------------------------------------------------------------------ blocking

    def discover(self) -> list[InterfaceInfo]:
        def look() -> list[InterfaceInfo]:
            return discover_nics(None, sysfs=self.sysfs, ignore=self.ignore)

        # setns in this worker thread: pyroute2's netns= forks a helper process.
        self.discovered = in_netns(self.netns, look) if self.netns else look()
        return list(self.discovered)

    def read(self) -> HostInterface | None:
        """The current HostInterface, None when it does not exist (never on an error)."""

        def get() -> Any:
            try:
                return self.objects_api.get_cluster_custom_object(
                    GROUP,
                    VERSION,
                    HostInterface.plural,
                    self.node,
                    _request_timeout=REQUEST_TIMEOUT_S,
                )
            except ApiException as e:
                if e.status == 404:
                    return None
                raise

        found = call_with_retries(get, f"get HostInterface {self.node}")
        return load_resource(HostInterface, found) if found else None

    def sync_once(self, *, force: bool = True) -> tuple[bool, str]:
        """Discover, then create or update the HostInterface.

        Without ``force`` (a netlink event), NICs equal to those last confirmed
        in the API are not compared with the object again: pod attachments
        cause link events on the host and must not cost an API read each.
        :returns: whether the object was written, and what was done.
        """
        nics = self.discover()
        found = [n.to_dict() for n in nics]
        if not force and found == self._confirmed:
            return False, f"HostInterface {self.node}: NICs unchanged ({len(nics)})"
        self._confirmed = None
        for _ in range(5):
            current = self.read()
            desired = host_interface(self.node, nics, current)
            if desired is None:
                return (
                    False,
                    f"HostInterface {self.node} is unmanaged (multi-nic-unmanaged): left alone",
                )
            if current is not None and current.spec.to_dict() == desired.spec.to_dict():
                self._confirmed = found
                return False, f"HostInterface {self.node} is up to date ({len(nics)} NICs)"
            try:
                action = self._write(current, desired)
            except ApiException as e:
                if e.status == 409:
                    continue  # changed or created meanwhile: read it again
                raise
            self._confirmed = found
            self._record_discovery_time()
            return True, (
                f"{action} HostInterface {self.node} with {len(nics)} NICs: "
                f"{', '.join(f'{n.interface_name} {n.net_address}' for n in nics) or 'none'}"
            )
        raise MultinicError(f"HostInterface {self.node} kept changing under the agent's writes")

    def _write(self, current: HostInterface | None, desired: HostInterface) -> str:
        body = desired.to_dict()
        if current is None:
            body.pop("status", None)
            call_with_retries(
                lambda: self.objects_api.create_cluster_custom_object(
                    GROUP, VERSION, HostInterface.plural, body, _request_timeout=REQUEST_TIMEOUT_S
                ),
                f"create HostInterface {self.node}",
                retry_conflicts=False,
            )
            return "created"
        # The resourceVersion in the body makes a concurrent change a 409.
        call_with_retries(
            lambda: self.objects_api.replace_cluster_custom_object(
                GROUP,
                VERSION,
                HostInterface.plural,
                self.node,
                body,
                _request_timeout=REQUEST_TIMEOUT_S,
            ),
            f"update HostInterface {self.node}",
            retry_conflicts=False,
        )
        return "updated"

    def _record_discovery_time(self) -> None:
        patch = {"status": {"lastDiscoveryTime": now_iso()}}
        try:
            call_with_retries(
                lambda: self.objects_api.patch_cluster_custom_object_status(
                    GROUP,
                    VERSION,
                    HostInterface.plural,
                    self.node,
                    patch,
                    _request_timeout=REQUEST_TIMEOUT_S,
                ),
                f"status of HostInterface {self.node}",
            )
        except (MultinicError, ApiException) as e:
            log.warning("HostInterface %s: last discovery time not written: %s", self.node, e)

    # ------------------------------------------------------------------ async

    async def run(self) -> None:
        """Sync now, on netlink events, and every ``resync_interval`` seconds; until cancelled."""
        loop = asyncio.get_running_loop()
        events = await asyncio.to_thread(open_event_socket, self.netns)
        loop.add_reader(events.fileno(), self._drain, events)
        try:
            failures = 0
            force = True
            while True:
                self.changed.clear()
                try:
                    written, outcome = await asyncio.to_thread(self.sync_once, force=force)
                    failures = 0
                    log.log(
                        logging.INFO if written or not self.syncs else logging.DEBUG, "%s", outcome
                    )
                except (MultinicError, ApiException, OSError) as e:
                    failures += 1
                    log.warning(
                        "HostInterface %s not synced (%s); trying again",
                        self.node,
                        describe_error(e) if isinstance(e, ApiException) else e,
                    )
                self.syncs += 1
                wait = self.resync_interval if not failures else min(30.0, 0.5 * 2**failures)
                force = True  # a periodic resync re-reads the object (repairs edits)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait(), wait)
                    force = bool(failures)
                await asyncio.sleep(DEBOUNCE_S)
        finally:
            loop.remove_reader(events.fileno())
            events.close()

    def _drain(self, events: socket.socket) -> None:
        """Read every pending netlink message; any of them means "look again"."""
        received = False
        while True:
            try:
                if not events.recv(65536):
                    break
                received = True
            except BlockingIOError:
                break
            except OSError as e:
                # ENOBUFS: the kernel dropped events; that is a change too.
                log.debug("netlink event socket: %s", e)
                received = True
                break
        if received:
            self.changed.set()
