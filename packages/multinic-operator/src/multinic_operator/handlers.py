"""The kopf handlers: translate Kubernetes events into service calls.

Handlers are thin: they pick what to reconcile and translate errors (a
transient API error becomes ``kopf.TemporaryError``, retried later).  The
work is done by plain objects (``NetworkReconciler``, ``AgentDeployer``,
``ReconcileBatcher``) that tests drive without kopf.

* MultiNicNetwork create/update/resume -> reconcile that network now;
  delete -> clean up everything made for it, then kopf drops the finalizer.
* HostInterface changes, Node additions/deletions, new namespaces (seen by
  the list/watch caches of ``multinic_operator.cache``) and Config changes
  -> a batched reconcile of every network.
* Config ``multi-nicd`` create/update/resume -> the agent DaemonSet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import kopf

from multinic_core.errors import ConfigError
from multinic_core.events import EventRecorder
from multinic_core.models import GROUP, VERSION, Config
from multinic_core.plugins import PluginRegistry
from multinic_core.shards import SHARD_ENTRIES
from multinic_operator.agent import DEFAULT_AGENT_IMAGE, AgentDeployer
from multinic_operator.batching import DEFAULT_WINDOW, ReconcileBatcher
from multinic_operator.cache import ClusterCache
from multinic_operator.events import operator_event_recorder
from multinic_operator.kube import KubeApi, KubeApiError
from multinic_operator.reconciler import NetworkReconciler

log = logging.getLogger(__name__)

FINALIZER = "multinic.fms.io/cleanup"
COMPONENT = "multinic-operator"
RETRY_DELAY = 5.0
RESYNC_SECONDS = 300.0
CACHE_SYNC_SECONDS = 60.0


@dataclass
class OperatorServices:
    """The service objects the handlers call; built once per operator process."""

    api: KubeApi
    namespace: str
    reconciler: NetworkReconciler
    deployer: AgentDeployer
    batcher: ReconcileBatcher
    events: EventRecorder | None = None
    cache: ClusterCache | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @classmethod
    def create(
        cls,
        api: KubeApi,
        namespace: str,
        *,
        agent_image: str = DEFAULT_AGENT_IMAGE,
        batch_window: float = DEFAULT_WINDOW,
        registry: PluginRegistry | None = None,
        shard_entries: int = SHARD_ENTRIES,
    ) -> OperatorServices:
        # A client of its own: Events, written in the background, stay out of
        # the request counts by which a reconcile's API work is measured.
        events = operator_event_recorder(KubeApi(api.configuration))
        # The informers' watches hold their connections: a pool of their own.
        cache = ClusterCache(KubeApi(api.configuration, metrics=api.metrics))
        reconciler = NetworkReconciler(
            api, registry, events=events, view=cache, shard_entries=shard_entries
        )
        batcher = ReconcileBatcher(
            reconciler.reconcile_many, window=batch_window, observe=api.metrics.batch_reconciled
        )
        cache.listen(batcher.request_threadsafe)
        api.metrics.watch_queue(lambda: batcher.depth)
        return cls(
            api=api,
            namespace=namespace,
            reconciler=reconciler,
            deployer=AgentDeployer(api, namespace, agent_image),
            batcher=batcher,
            events=events,
            cache=cache,
        )


def configure(settings: kopf.OperatorSettings) -> kopf.OperatorSettings:
    """Operator settings: our finalizer and annotations, posting, no kopf peering.

    Progress and diff-base go to annotations (the status schema is the API's,
    not kopf's).  Replicas are kept apart by the Lease (``leader.py``), which,
    unlike kopf's peering, never lets two replicas act while they discover
    each other.
    """
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix="multinic.fms.io"
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="multinic.fms.io", key="last-handled-configuration"
    )
    # Warnings and handler failures show up in `kubectl describe` of the object.
    settings.posting.loggers = True
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = COMPONENT
    settings.watching.server_timeout = 300
    settings.peering.standalone = True
    return settings


def _retry(error: KubeApiError) -> kopf.TemporaryError:
    return kopf.TemporaryError(str(error), delay=RETRY_DELAY)


def build_registry(services: OperatorServices) -> kopf.OperatorRegistry:
    """A kopf registry with every handler of the operator, bound to ``services``."""
    registry = kopf.OperatorRegistry()
    _register_lifecycle(registry, services)
    _register_networks(registry, services.reconciler)
    _register_cluster_events(registry, services.batcher)
    _register_config(registry, services)
    return registry


def _register_lifecycle(registry: kopf.OperatorRegistry, services: OperatorServices) -> None:
    @kopf.on.startup(registry=registry)
    async def start(**_: Any) -> None:
        try:
            await asyncio.to_thread(services.deployer.ensure_default_config)
        except KubeApiError as e:
            raise _retry(e) from e
        if services.cache is not None:
            # One list of each kind, then watches: reconciles read these caches.
            services.cache.start()
            if not await asyncio.to_thread(services.cache.wait_synced, CACHE_SYNC_SECONDS):
                log.warning("caches not listed within %.0fs: reconciles wait", CACHE_SYNC_SECONDS)
        # A re-plan of every network from a fresh read once started: readiness
        # (caught up) waits for it to succeed.
        services.batcher.request()
        services.tasks.append(asyncio.create_task(services.batcher.run(), name="multinic-batcher"))

    @kopf.on.cleanup(registry=registry)
    async def stop(**_: Any) -> None:
        for task in services.tasks:
            task.cancel()
        for task in services.tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        services.tasks.clear()
        if services.cache is not None:
            await asyncio.to_thread(services.cache.stop)
        if services.events is not None:
            await asyncio.to_thread(services.events.close)


def _register_networks(registry: kopf.OperatorRegistry, reconciler: NetworkReconciler) -> None:
    # Explicit ids: kopf keeps a handler's progress in an annotation named after
    # it, and a nested function's default id ("_register_networks.<locals>...")
    # is not a valid annotation key for a real API server.
    @kopf.on.resume(GROUP, VERSION, "multinicnetworks", id="network-changed", registry=registry)
    @kopf.on.create(GROUP, VERSION, "multinicnetworks", id="network-changed", registry=registry)
    @kopf.on.update(GROUP, VERSION, "multinicnetworks", id="network-changed", registry=registry)
    async def network_changed(name: str, **_: Any) -> None:
        try:
            result = await asyncio.to_thread(reconciler.reconcile, name)
        except KubeApiError as e:
            if e.transient:
                raise _retry(e) from e
            raise kopf.PermanentError(str(e)) from e
        if result is not None:
            log.info(
                "network %s reconciled: %s, %d write(s)",
                name,
                result.config_status,
                result.writes,
            )

    @kopf.timer(
        GROUP,
        VERSION,
        "multinicnetworks",
        interval=RESYNC_SECONDS,
        initial_delay=RESYNC_SECONDS,
        idle=RESYNC_SECONDS,
        id="network-resync",
        registry=registry,
    )
    async def network_resync(name: str, **_: Any) -> None:
        # A periodic level check: whatever changed behind the operator's back
        # without an event it reacts to (a NAD edited by hand) is put back.
        try:
            await asyncio.to_thread(reconciler.reconcile, name)
        except KubeApiError as e:
            log.warning("network %s: periodic resync failed: %s", name, e)

    @kopf.on.delete(GROUP, VERSION, "multinicnetworks", id="network-deleted", registry=registry)
    async def network_deleted(name: str, **_: Any) -> None:
        try:
            await asyncio.to_thread(reconciler.cleanup, name)
        except KubeApiError as e:
            raise _retry(e) from e


def _register_cluster_events(registry: kopf.OperatorRegistry, batcher: ReconcileBatcher) -> None:
    # HostInterfaces, Nodes, namespaces and IPPools are watched by the
    # operator's caches (multinic_operator.cache), whose events request the
    # batched re-plans: one watch per kind, not one for kopf and one for the cache.

    # The host-device driver takes its NAD resource name from the NVIDIA
    # Network Operator's policy (watched only where that CRD is installed).
    @kopf.on.event("mellanox.com", "v1alpha1", "nicclusterpolicies", registry=registry)
    async def nic_cluster_policy_event(**_: Any) -> None:
        batcher.request()


def _is_default_config(name: str, **_: Any) -> bool:
    return name == Config.DEFAULT_NAME


def _register_config(registry: kopf.OperatorRegistry, services: OperatorServices) -> None:
    @kopf.on.resume(
        GROUP, VERSION, "configs", when=_is_default_config, id="config-changed", registry=registry
    )
    @kopf.on.create(
        GROUP, VERSION, "configs", when=_is_default_config, id="config-changed", registry=registry
    )
    @kopf.on.update(
        GROUP, VERSION, "configs", when=_is_default_config, id="config-changed", registry=registry
    )
    async def config_changed(body: kopf.Body, **_: Any) -> None:
        try:
            await asyncio.to_thread(services.deployer.apply, dict(body))
        except ConfigError as e:
            raise kopf.PermanentError(str(e)) from e
        except KubeApiError as e:
            raise _retry(e) from e
        # cniType and the daemon port are part of every NAD.
        services.batcher.request()

    @kopf.on.event(GROUP, VERSION, "configs", when=_is_default_config, registry=registry)
    async def config_event(type: str | None, **_: Any) -> None:
        # The agents cannot be configured without it: put the defaults back.
        if type == "DELETED":
            try:
                await asyncio.to_thread(services.deployer.ensure_default_config)
            except KubeApiError as e:
                log.warning("could not recreate the default Config: %s", e)


def run_operator(
    services: OperatorServices,
    *,
    login: Any,
    stop_flag: threading.Event,
    ready_flag: threading.Event | None = None,
    on_loop: Callable[[asyncio.AbstractEventLoop], None] | None = None,
) -> None:
    """Run the operator until ``stop_flag`` is set or a signal stops kopf (blocking).

    Owns an event loop.  kopf is given an ``asyncio.Event`` that a daemon
    thread sets when ``stop_flag`` is set.  When kopf stops for another reason
    (a signal), its waiter for that flag stays pending and kopf waits 5 s for
    it as a "hung" task before exiting: a cleanup handler sets the event, so
    the operator exits at once.  ``stop_flag`` is set on the way out, which
    ends the daemon thread.  ``on_loop`` is given kopf's event loop (liveness)
    and ``ready_flag`` is set once kopf's startup handlers are done.
    """
    registry = build_registry(services)
    kopf.on.login(registry=registry)(login)
    settings = configure(kopf.OperatorSettings())
    loop = asyncio.new_event_loop()
    if on_loop is not None:
        on_loop(loop)
    stop_event = asyncio.Event()

    @kopf.on.cleanup(registry=registry)
    async def release_stop_waiter(**_: Any) -> None:
        stop_event.set()

    def relay_stop() -> None:
        stop_flag.wait()
        with contextlib.suppress(RuntimeError):  # the loop is closed already
            loop.call_soon_threadsafe(stop_event.set)

    threading.Thread(target=relay_stop, name="stop-flag relay", daemon=True).start()
    try:
        loop.run_until_complete(
            kopf.operator(
                registry=registry,
                settings=settings,
                standalone=True,
                clusterwide=True,
                stop_flag=stop_event,
                ready_flag=ready_flag,
            )
        )
    finally:
        stop_flag.set()
        loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
