"""Finding, loading and calling plugins.

stevedore decides *which* plugin: the entry point whose name is the value the
user wrote (``plugin.type``, ``attachPolicy.strategy``, the ipam ``type``).
pluggy validates the loaded object's hook implementations against
``multinic_core.hookspecs`` at load time and calls them.  Each loaded plugin
gets a ``PluginManager`` of its own, so a call reaches exactly that plugin.

A plugin that fails to import, or whose hooks do not match the specs, is
reported with its name and distribution and never stops other plugins from
loading.  A plugin that is not installed is a ``PluginNotFoundError`` that says
which package to install.
"""

from __future__ import annotations

import functools
import importlib.metadata
import inspect
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pluggy
import stevedore
import stevedore.exception

from multinic_core import hookspecs
from multinic_core.errors import GROUP_KINDS, MultinicError, PluginError, PluginNotFoundError
from multinic_core.hooktypes import (
    ClusterReader,
    DependentObject,
    InProcessDelegate,
    IpamRequest,
    NetworkAttachment,
    NicAttachment,
    SelectedNic,
    SelectionRequest,
)
from multinic_core.models import HostInterface, MultiNicNetwork

log = logging.getLogger(__name__)

MAIN_PLUGINS = "multinic.main_plugins"
POLICIES = "multinic.policies"
IPAM = "multinic.ipam"
GROUPS = (MAIN_PLUGINS, POLICIES, IPAM)

# Which distribution provides a plugin we know of, for "pip install ..." hints.
KNOWN_DISTRIBUTIONS: dict[tuple[str, str], str] = {
    (MAIN_PLUGINS, "ipvlan"): "multinic-ipvlan",
    (MAIN_PLUGINS, "macvlan"): "multinic-macvlan",
    (MAIN_PLUGINS, "ptp"): "multinic-ptp",
    (MAIN_PLUGINS, "sriov"): "multinic-sriov",
    (MAIN_PLUGINS, "host-device"): "multinic-sriov",
    (MAIN_PLUGINS, "mellanox"): "multinic-sriov",
    (MAIN_PLUGINS, "aws-ipvlan"): "multinic-aws",
    (IPAM, "multi-nic-ipam"): "multinic-ipam",
    (IPAM, "multi-config"): "multinic-ipam",
    (IPAM, "host-device-ipam"): "multinic-ipam",
    (IPAM, "host-local"): "multinic-ipam",
    (IPAM, "static"): "multinic-ipam",
    (IPAM, "whereabouts"): "multinic-ipam",
    (IPAM, "dhcp"): "multinic-ipam",
}


def install_hint(group: str, name: str) -> str:
    dist = KNOWN_DISTRIBUTIONS.get((group, name))
    if dist:
        return f"pip install {dist}"
    return f"install a package that registers entry point {name!r} in group {group!r}"


@dataclass(frozen=True)
class PluginInfo:
    """One installed plugin, as ``multinic plugins`` lists it."""

    group: str
    name: str
    distribution: str
    version: str
    hooks: tuple[str, ...] = ()
    error: str = ""
    """Why the plugin could not be loaded; empty when it loaded."""

    @property
    def kind(self) -> str:
        return GROUP_KINDS.get(self.group, self.group)


class LoadedPlugin:
    """A validated plugin with a pluggy manager of its own."""

    def __init__(self, info: PluginInfo, manager: pluggy.PluginManager, plugin: object) -> None:
        self.info = info
        self.manager = manager
        self.plugin = plugin

    @property
    def name(self) -> str:
        return self.info.name

    def call(self, hook_name: str, **kwargs: Any) -> Any:
        """Call one hook of this plugin; a plugin that answers nothing is an error."""
        caller = getattr(self.manager.hook, hook_name)
        try:
            result = caller(**kwargs)
        except Exception as e:
            # Plugin code is third-party: keep its exception (chained) but
            # make sure the message says whose code failed.
            if isinstance(e, MultinicError):
                raise
            raise PluginError(
                f"{self.info.kind} {self.info.name!r} ({self.info.distribution}) "
                f"failed in {hook_name}: {type(e).__name__}: {e}"
            ) from e
        if result is None:
            raise PluginError(
                f"{self.info.kind} {self.info.name!r} ({self.info.distribution}) "
                f"returned nothing from {hook_name}"
            )
        return result

    def implements(self, hook_name: str) -> bool:
        return hook_name in self.info.hooks


class MainPlugin(LoadedPlugin):
    """A driver from ``multinic.main_plugins`` (ipvlan, macvlan, sriov, ...)."""

    def network_attachment(
        self, network: MultiNicNetwork, cluster: ClusterReader
    ) -> NetworkAttachment:
        result: NetworkAttachment = self.call(
            "multinic_network_attachment", network=network, cluster=cluster
        )
        return result

    def dependent_objects(
        self, network: MultiNicNetwork, hosts: Sequence[HostInterface], cluster: ClusterReader
    ) -> list[DependentObject]:
        if not self.implements("multinic_dependent_objects"):
            return []
        result: list[DependentObject] = self.call(
            "multinic_dependent_objects", network=network, hosts=hosts, cluster=cluster
        )
        return result

    def delegate_config(
        self, netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
    ) -> dict[str, Any]:
        result: dict[str, Any] = self.call(
            "multinic_delegate_config", netconf=netconf, nic=nic, ipam=ipam
        )
        return result

    def nics_attached(self, attachments: Sequence[NicAttachment]) -> list[dict[str, Any]]:
        """The driver's side effects of an ADD; one state per NIC (``{}`` when it has none)."""
        if not self.implements("multinic_nics_attached"):
            return [{} for _ in attachments]
        result: list[dict[str, Any]] = self.call(
            "multinic_nics_attached", attachments=tuple(attachments)
        )
        if len(result) != len(attachments) or not all(isinstance(s, dict) for s in result):
            raise PluginError(
                f"{self.info.kind} {self.name!r} ({self.info.distribution}) returned "
                f"{result!r} from multinic_nics_attached, not one dict per NIC "
                f"({len(attachments)})"
            )
        return result

    def nics_detached(self, attachments: Sequence[NicAttachment]) -> None:
        """Undo ``nics_attached``; nothing when the driver has no such hook."""
        if self.implements("multinic_nics_detached"):
            self.call("multinic_nics_detached", attachments=tuple(attachments))

    def inprocess_delegate(self, plugin_type: str) -> InProcessDelegate | None:
        """The driver's in-process stand-in for delegate ``plugin_type``; None when it has none."""
        if not self.implements("multinic_inprocess_delegate"):
            return None
        try:
            found = self.manager.hook.multinic_inprocess_delegate(plugin_type=plugin_type)
        except Exception as e:
            raise PluginError(
                f"{self.info.kind} {self.name!r} ({self.info.distribution}) failed in "
                f"multinic_inprocess_delegate: {type(e).__name__}: {e}"
            ) from e
        if found is not None and not (
            callable(getattr(found, "run", None)) and callable(getattr(found, "accepts", None))
        ):
            raise PluginError(
                f"{self.info.kind} {self.name!r} ({self.info.distribution}) returned "
                f"{found!r} from multinic_inprocess_delegate, not an object with accepts and run"
            )
        return found  # type: ignore[no-any-return]


class AttachPolicyPlugin(LoadedPlugin):
    """An attach policy from ``multinic.policies`` (none, costOpt, ...)."""

    def select_nics(self, request: SelectionRequest) -> list[SelectedNic]:
        result: list[SelectedNic] = self.call("multinic_select_nics", request=request)
        return result


class IpamPlugin(LoadedPlugin):
    """An IPAM plugin from ``multinic.ipam``."""

    def add(self, request: IpamRequest) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.call("multinic_ipam_add", request=request)
        if len(result) != len(request.nics):
            raise PluginError(
                f"IPAM plugin {self.name!r} returned {len(result)} ipam sections "
                f"for {len(request.nics)} NICs"
            )
        return result

    def delete(self, request: IpamRequest) -> None:
        self.call("multinic_ipam_del", request=request)


P = TypeVar("P", bound=LoadedPlugin)
WRAPPERS: dict[str, type[LoadedPlugin]] = {
    MAIN_PLUGINS: MainPlugin,
    POLICIES: AttachPolicyPlugin,
    IPAM: IpamPlugin,
}


@functools.cache
def _entry_point_owners() -> dict[tuple[str, str, str], tuple[str, str]]:
    """(group, name, value) -> (distribution, version) of every installed entry point.

    stevedore's cached entry points do not carry their distribution, so the
    owner is looked up once in the installed distributions' metadata.
    """
    owners: dict[tuple[str, str, str], tuple[str, str]] = {}
    for dist in importlib.metadata.distributions():
        for ep in dist.entry_points:
            if ep.group in GROUPS:
                owners.setdefault((ep.group, ep.name, ep.value), (dist.name, dist.version))
    return owners


def _distribution(entry_point: Any) -> tuple[str, str]:
    key = (entry_point.group, entry_point.name, entry_point.value)
    return _entry_point_owners().get(key, ("unknown", ""))


def _instantiate(obj: object) -> object:
    # An entry point may name a module, an instance, or a class to instantiate.
    return obj() if inspect.isclass(obj) else obj


def validate_plugin(group: str, name: str, obj: object, dist: str, version: str) -> LoadedPlugin:
    """Register ``obj`` with a fresh pluggy manager and check it against the specs."""
    where = f"{GROUP_KINDS.get(group, group)} {name!r} from {dist}"
    manager = pluggy.PluginManager(hookspecs.PROJECT)
    manager.add_hookspecs(hookspecs)
    try:
        manager.register(obj, name=f"{group}:{name}")
        manager.check_pending()
    except pluggy.PluginValidationError as e:
        detail = "; ".join(line.strip() for line in str(e).splitlines() if line.strip())
        raise PluginError(f"{where} does not match the hook specifications: {detail}") from e
    hooks = tuple(sorted(c.name for c in manager.get_hookcallers(obj) or []))
    missing = [h for h in hookspecs.REQUIRED_HOOKS.get(group, ()) if h not in hooks]
    if missing:
        raise PluginError(f"{where} does not implement required hook(s): {', '.join(missing)}")
    paired = {"multinic_nics_attached", "multinic_nics_detached"}
    if len(paired & set(hooks)) == 1:
        raise PluginError(f"{where} must implement both or neither of {', '.join(sorted(paired))}")
    info = PluginInfo(group=group, name=name, distribution=dist, version=version, hooks=hooks)
    return WRAPPERS.get(group, LoadedPlugin)(info, manager, obj)


class PluginRegistry:
    """Loads plugins by name on first use and keeps them.

    Create one per process (the agent, the operator, a CLI run); there is no
    module-level registry built at import time.
    """

    def __init__(self) -> None:
        self._loaded: dict[tuple[str, str], LoadedPlugin] = {}
        self._inprocess: dict[str, InProcessDelegate | None] = {}

    def load(self, group: str, name: str) -> LoadedPlugin:
        """Load, validate and keep the plugin ``name`` of ``group``."""
        key = (group, name)
        if key in self._loaded:
            return self._loaded[key]
        if group not in GROUPS:
            raise ValueError(f"unknown entry-point group {group!r}")
        failures: list[tuple[Any, BaseException]] = []
        try:
            driver: stevedore.DriverManager[Any] = stevedore.DriverManager(
                namespace=group,
                name=name,
                invoke_on_load=False,
                on_load_failure_callback=lambda _m, ep, exc: failures.append((ep, exc)),
                on_missing_entrypoints_callback=None,
            )
        except stevedore.exception.NoMatches:
            if failures:
                entry_point, exc = failures[0]
                dist, _ = _distribution(entry_point)
                raise PluginError(
                    f"{GROUP_KINDS[group]} {name!r} from {dist} failed to load: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
            raise PluginNotFoundError(group, name, install_hint(group, name)) from None
        except stevedore.exception.MultipleMatches as e:
            raise PluginError(
                f"{GROUP_KINDS[group]} {name!r} is registered by more than one package "
                f"({e}); uninstall all but one"
            ) from e
        extension = driver.extensions[0]
        dist, version = _distribution(extension.entry_point)
        log.debug("plugin %s %r configured, loading from %s", GROUP_KINDS[group], name, dist)
        plugin = validate_plugin(group, name, _instantiate(extension.plugin), dist, version)
        self._loaded[key] = plugin
        log.info(
            "plugin %s %r loaded and registered from %s %s",
            plugin.info.kind,
            name,
            plugin.info.distribution,
            plugin.info.version,
        )
        return plugin

    def main_plugin(self, name: str) -> MainPlugin:
        return self._typed(MAIN_PLUGINS, name, MainPlugin)

    def policy(self, name: str) -> AttachPolicyPlugin:
        return self._typed(POLICIES, name, AttachPolicyPlugin)

    def ipam(self, name: str) -> IpamPlugin:
        return self._typed(IPAM, name, IpamPlugin)

    def inprocess_delegate(self, plugin_type: str) -> InProcessDelegate | None:
        """The in-process stand-in some installed main plugin offers for ``plugin_type``.

        Asked once per type (the answer is kept), of the main plugin named
        like the type first, then of the others by name; a main plugin that
        fails to load is skipped (it is reported where it is used).  None:
        no driver offers one, the delegate is exec'd.
        """
        if plugin_type in self._inprocess:
            return self._inprocess[plugin_type]
        names = sorted(
            {
                ep.name
                for ep in stevedore.ExtensionManager(namespace=MAIN_PLUGINS).list_entry_points()
            }
        )
        if plugin_type in names:
            names.remove(plugin_type)
            names.insert(0, plugin_type)
        found: InProcessDelegate | None = None
        for name in names:
            try:
                found = self.main_plugin(name).inprocess_delegate(plugin_type)
            except PluginError as e:
                log.debug("main plugin %r: no in-process delegate %r: %s", name, plugin_type, e)
                continue
            if found is not None:
                log.info("delegate %r runs in process, from main plugin %r", plugin_type, name)
                break
        self._inprocess[plugin_type] = found
        return found

    def _typed(self, group: str, name: str, cls: type[P]) -> P:
        plugin = self.load(group, name)
        assert isinstance(plugin, cls)
        return plugin

    def discover(self) -> list[PluginInfo]:
        """Every installed plugin of every group, loaded and validated.

        A plugin that fails is listed with its ``error``; the others still load.
        """
        found: list[PluginInfo] = []
        for group in GROUPS:
            entry_points = stevedore.ExtensionManager(namespace=group).list_entry_points()
            for entry_point in sorted(entry_points, key=lambda ep: ep.name):
                try:
                    found.append(self.load(group, entry_point.name).info)
                except PluginError as e:
                    log.warning("%s", e)
                    dist, version = _distribution(entry_point)
                    found.append(PluginInfo(group, entry_point.name, dist, version, error=str(e)))
        return found
