"""pytest plugin: a Kubernetes API for tests (``kube_api``, ``kube_namespace``).

Registered through the ``pytest11`` entry point, so every package's tests can
use the fixtures once multinic-sim is installed:

* ``kube_api`` (session): a :class:`KubeTestApi` for a local API server started
  in a background thread on a free port - or, when ``MULTINIC_TEST_KUBECONFIG``
  is set, for the cluster that kubeconfig points at (no server is started).
* ``kube_namespace`` (function): a fresh namespace, deleted after the test.

Heavy imports (kubernetes, aiohttp, kopf) happen inside the fixtures, not when
pytest loads the plugin.
"""
# Imports inside functions are deliberate here: pytest loads this plugin in every
# test run of every package, and kubernetes/kopf take a second to import.
# ruff: noqa: PLC0415

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import pytest

if TYPE_CHECKING:
    from kubernetes.client import ApiClient

    from multinic_sim.background import ApiServerThread
    from multinic_sim.faults import FaultInjector

log = logging.getLogger(__name__)

KUBECONFIG_ENV = "MULTINIC_TEST_KUBECONFIG"
REAL_CLUSTER_REASON = (
    f"needs the local API server; {KUBECONFIG_ENV} points the tests at a real cluster"
)


class KubeTestApi:
    """A configured Kubernetes client for tests, plus controls of the local server.

    ``api_client`` is a ``kubernetes.client.ApiClient``; ``core_v1``,
    ``custom_objects``, ``apps_v1`` and ``apiextensions_v1`` are ready-made API
    objects on it. ``sim`` is the :class:`ApiServerThread` (None on a real
    cluster); ``faults`` and :meth:`compact` skip the test on a real cluster.
    """

    def __init__(self, kubeconfig: Path, sim: ApiServerThread | None) -> None:
        from kubernetes import client, config

        self.kubeconfig = kubeconfig
        self.sim = sim
        self.api_client: ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
            config_file=str(kubeconfig)
        )
        self.core_v1 = client.CoreV1Api(self.api_client)
        self.apps_v1 = client.AppsV1Api(self.api_client)
        self.custom_objects = client.CustomObjectsApi(self.api_client)
        self.apiextensions_v1 = client.ApiextensionsV1Api(self.api_client)
        self._created_namespaces: set[str] = set()
        self._created_crds: set[str] = set()

    @property
    def is_real_cluster(self) -> bool:
        return self.sim is None

    @property
    def server_url(self) -> str:
        return str(self.api_client.configuration.host)

    # -- local-server-only controls --------------------------------------------

    def require_sim(self) -> ApiServerThread:
        """The local server; skips the calling test on a real cluster."""
        if self.sim is None:
            pytest.skip(REAL_CLUSTER_REASON)
        return self.sim

    @property
    def faults(self) -> FaultInjector:
        """Fault injection (local server only; skips the test otherwise)."""
        return self.require_sim().faults

    def compact(self) -> None:
        """Forget the watch history (local server only; skips the test otherwise)."""
        self.require_sim().compact()

    def drop_watches(self, resource: str | None = None, *, abort: bool = False) -> int:
        return self.require_sim().drop_watches(resource, abort=abort)

    def reset(self) -> None:
        """Start over: the local server forgets everything (including CRDs that
        session-scoped fixtures installed); on a real cluster the namespaces and
        CRDs created through this object are deleted."""
        if self.sim is not None:
            self.sim.reset()
            self._created_namespaces.clear()
            self._created_crds.clear()
            return
        # A real cluster deletes both in the background: the namespaces are not
        # waited for (new_namespace waits for one of the same name if need be), the
        # CRDs are (the next test installs them again).
        for name in list(self._created_namespaces):
            self.delete_namespace(name)
        crds = list(self._created_crds)
        for name in crds:
            # The objects first, their finalizers dropped (their controller, an operator
            # under test, is gone), as the double's reset does: kube-apiserver's CRD
            # cleanup then has nothing left to wait for (it polls every 5 s).
            self._delete_instances(name)
        for name in crds:
            with contextlib.suppress(Exception):
                self.apiextensions_v1.delete_custom_resource_definition(name)
            self._created_crds.discard(name)
        for name in crds:
            self._wait_gone(self.apiextensions_v1.read_custom_resource_definition, name, "CRD")

    def _delete_instances(self, crd_name: str) -> None:
        from kubernetes.client import ApiException

        try:
            crd = self.apiextensions_v1.read_custom_resource_definition(crd_name)
        except ApiException:
            return
        group, plural = crd.spec.group, crd.spec.names.plural
        version = next(v.name for v in crd.spec.versions if v.storage)
        try:
            items = cast(
                "dict[str, Any]",
                self.custom_objects.list_cluster_custom_object(group, version, plural),
            )
        except ApiException:
            return
        co = self.custom_objects
        for item in items.get("items") or []:
            meta = item["metadata"]
            namespace, name = meta.get("namespace"), meta["name"]
            with contextlib.suppress(ApiException):
                if meta.get("finalizers"):
                    patch = {"metadata": {"finalizers": None}}
                    if namespace:
                        co.patch_namespaced_custom_object(
                            group, version, namespace, plural, name, patch
                        )
                    else:
                        co.patch_cluster_custom_object(group, version, plural, name, patch)
                if namespace:
                    co.delete_namespaced_custom_object(group, version, namespace, plural, name)
                else:
                    co.delete_cluster_custom_object(group, version, plural, name)

    def _wait_gone(self, read: Callable[[str], Any], name: str, what: str) -> None:
        from kubernetes.client import ApiException

        def gone() -> bool:
            try:
                read(name)
            except ApiException as e:
                return bool(e.status == 404)
            return False

        wait_for(gone, 120, f"{what} {name} deleted")

    # -- helpers ------------------------------------------------------------

    def new_namespace(self, prefix: str = "test-", *, name: str | None = None) -> str:
        """Create a namespace with a random name (or ``name``) and return the name.

        :meth:`reset` deletes it. A real cluster deletes a namespace in the
        background: one of the given ``name`` still terminating (an earlier test's)
        is waited for, then made again.
        """
        from kubernetes import client
        from kubernetes.client import ApiException

        name = name or f"{prefix}{secrets.token_hex(4)}"
        body = client.V1Namespace(
            metadata=client.V1ObjectMeta(name=name, labels={"multinic.dev/test": "true"})
        )
        try:
            self.core_v1.create_namespace(body)
        except ApiException as e:
            if e.status != 409 or not self.is_real_cluster:
                raise
            meta = self.core_v1.read_namespace(name).metadata
            if meta is None or not meta.deletion_timestamp:
                raise
            self._wait_gone(self.core_v1.read_namespace, name, "namespace")
            self.core_v1.create_namespace(body)
        self._created_namespaces.add(name)
        return name

    def delete_namespace(self, name: str) -> None:
        from kubernetes.client import ApiException

        try:
            self.core_v1.delete_namespace(name)
        except ApiException as e:
            if e.status != 404:
                raise
        self._created_namespaces.discard(name)

    def apply_crd(self, body: dict[str, Any], timeout: float = 30.0) -> None:
        """Create (or replace) a CRD and wait until it is established and served."""
        from kubernetes.client import ApiException

        name = body["metadata"]["name"]
        crds = ("apiextensions.k8s.io", "v1", "customresourcedefinitions")
        try:
            self.custom_objects.create_cluster_custom_object(*crds, body)
        except ApiException as e:
            if e.status != 409:
                raise
            current = cast(
                dict[str, Any], self.custom_objects.get_cluster_custom_object(*crds, name)
            )
            if current["metadata"].get("deletionTimestamp"):
                # Still being deleted (a real cluster removes its objects first).
                self._wait_gone(self.apiextensions_v1.read_custom_resource_definition, name, "CRD")
                self.apply_crd(body, timeout)
                return
            body = {
                **body,
                "metadata": {
                    **body["metadata"],
                    "resourceVersion": current["metadata"]["resourceVersion"],
                },
            }
            self.custom_objects.replace_cluster_custom_object(
                "apiextensions.k8s.io", "v1", "customresourcedefinitions", name, body
            )
        self._created_crds.add(name)
        spec = body["spec"]
        version = next(v["name"] for v in spec["versions"] if v.get("served"))
        plural = spec["names"]["plural"]

        def served() -> bool:
            crd = cast(dict[str, Any], self.custom_objects.get_cluster_custom_object(*crds, name))
            conditions = (crd.get("status") or {}).get("conditions") or []
            if not any(
                c.get("type") == "Established" and c.get("status") == "True" for c in conditions
            ):
                return False
            try:
                self.custom_objects.list_cluster_custom_object(
                    spec["group"], version, plural, limit=1
                )
            except ApiException:
                return False
            return True

        wait_for(served, timeout, f"CRD {name} established")

    def delete_crd(self, name: str, timeout: float = 60.0) -> None:
        """Delete a CRD and wait until it is gone."""
        from kubernetes.client import ApiException

        try:
            self.apiextensions_v1.delete_custom_resource_definition(name)
        except ApiException as e:
            if e.status != 404:
                raise
        self._created_crds.discard(name)

        def gone() -> bool:
            try:
                self.apiextensions_v1.read_custom_resource_definition(name)
            except ApiException as e:
                return bool(e.status == 404)
            return False

        wait_for(gone, timeout, f"CRD {name} deleted")

    # -- kopf ---------------------------------------------------------------

    def kopf_login(self, **_: Any) -> Any:
        """A kopf login handler: ``kopf.on.login(registry=r)(kube_api.kopf_login)``.

        Returns a ``kopf.ConnectionInfo`` for the same server and credentials as
        :attr:`api_client`.
        """
        import kopf

        cfg = self.api_client.configuration
        token: str | None = None
        auth = (cfg.api_key or {}).get("authorization") or (cfg.api_key or {}).get("BearerToken")
        if auth:
            token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
        return kopf.ConnectionInfo(
            server=str(cfg.host),
            ca_path=cfg.ssl_ca_cert or None,
            insecure=not cfg.verify_ssl,
            username=cfg.username or None,
            password=cfg.password or None,
            token=token,
            certificate_path=cfg.cert_file or None,
            private_key_path=cfg.key_file or None,
            default_namespace="default",
        )


def wait_for(
    predicate: Callable[[], bool],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.05,
) -> None:
    """Poll *predicate* until it is true; fail the test after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def kopf_operator(
    registry: Any, login: Callable[..., Any], *, settings: Any = None, timeout: float = 30.0
) -> Iterator[None]:
    """Run a kopf operator (clusterwide, standalone) in a thread for the block.

    *registry* is a ``kopf.OperatorRegistry`` with the handlers under test;
    *login* is registered as its login handler (e.g. ``kube_api.kopf_login``).
    """
    import asyncio

    import kopf

    kopf.on.login(registry=registry)(login)
    if settings is None:
        settings = kopf.OperatorSettings()
        settings.watching.server_timeout = 60
        settings.posting.level = logging.WARNING
    stop = threading.Event()
    ready = threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(
                kopf.operator(
                    registry=registry,
                    settings=settings,
                    standalone=True,
                    clusterwide=True,
                    stop_flag=stop,
                    ready_flag=ready,
                )
            )
        except BaseException as e:
            errors.append(e)
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="kopf-operator", daemon=True)
    thread.start()
    try:
        if not ready.wait(timeout):
            raise TimeoutError("the kopf operator did not become ready")
        yield
    finally:
        stop.set()
        thread.join(timeout)
    if errors:
        raise errors[0]


@pytest.fixture(scope="session")
def kube_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KubeTestApi]:
    """A Kubernetes API for the test session (local server, or MULTINIC_TEST_KUBECONFIG)."""
    configured = os.environ.get(KUBECONFIG_ENV)
    if configured:
        api = KubeTestApi(Path(configured), None)
        try:
            yield api
        finally:
            api.reset()
            api.api_client.close()  # type: ignore[no-untyped-call]
        return
    from multinic_sim.background import ApiServerThread
    from multinic_sim.kubeconfig import write_kubeconfig

    sim = ApiServerThread(bookmark_interval=1.0).start()
    try:
        path = write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig", sim.url)
        api = KubeTestApi(path, sim)
        try:
            yield api
        finally:
            api.api_client.close()  # type: ignore[no-untyped-call]
    finally:
        sim.stop()


@pytest.fixture
def kube_namespace(kube_api: KubeTestApi) -> Iterator[str]:
    """A fresh namespace for one test; deleted (with its content) afterwards."""
    name = kube_api.new_namespace()
    try:
        yield name
    finally:
        kube_api.delete_namespace(name)
