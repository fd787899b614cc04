"""The ``sriov`` and ``host-device`` main plugins (SPEC section 8).

Both attach a device that a Kubernetes device plugin allocated to the pod, so
both give the NAD a ``k8s.v1.cni.cncf.io/resourceName`` annotation that makes
Multus pass the allocated PCI address (the NIC's ``device_id``).

**sriov**: the SR-IOV Network Operator creates the VFs.  Unless the args name
an existing ``resourceName``, the driver asks for a ``SriovNetworkNodePolicy``
(VFs on the PFs of the network's NICs) and a ``SriovNetwork`` ``<network>-net``.
Args (all also kept in the NAD plugin block and the delegate config):

* VF settings: ``vlan``, ``vlanQoS``, ``spoofchk``, ``trust``, ``link_state``,
  ``min_tx_rate``, ``max_tx_rate`` (the sriov CNI's keys; the SriovNetwork
  spellings ``spoofChk``, ``linkState``, ``minTxRate``, ``maxTxRate`` are
  accepted too).
* policy: ``numVfs`` (default 1), ``priority``, ``mtu``, ``isRdma``,
  ``needVhostNet``, ``deviceType``, ``nodeSelector`` (JSON object),
  ``sriovOperatorNamespace`` (default ``openshift-sriov-network-operator``).
* ``networkNamespace`` for the SriovNetwork; ``resourceName`` (an existing
  resource: nothing is created) and ``resourcePrefix`` (default ``openshift.io``).

**host-device**: the NVIDIA Network Operator's ``NicClusterPolicy`` lists the
device plugin's resources; the driver picks the one whose selectors match the
network's NICs (or the args' ``resourceName``) and creates nothing itself.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from multinic_core.delegates import PluginArgs, delegate_config, plugin_block
from multinic_core.errors import ConfigError
from multinic_core.hookspecs import hookimpl
from multinic_core.hooktypes import (
    ClusterReader,
    DependentObject,
    NetworkAttachment,
    SelectedNic,
)
from multinic_core.models import (
    API_VERSION,
    HostInterface,
    InterfaceInfo,
    MultiNicNetwork,
)
from multinic_core.nad import RESOURCE_NAME_ANNOTATION

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- sriov

SRIOV_CNI_TYPE = "sriov"
SRIOV_API_VERSION = "sriovnetwork.openshift.io/v1"
SRIOV_OPERATOR_NAMESPACE = "openshift-sriov-network-operator"
SRIOV_RESOURCE_PREFIX = "openshift.io"
SRIOV_NODE_SELECTOR = {"feature.node.kubernetes.io/network-sriov.capable": "true"}
SRIOV_NETWORK_SUFFIX = "-net"
DEFAULT_NUM_VFS = 1

# The SR-IOV operator's webhook accepts resource names matching ^[a-zA-Z0-9_]+$,
# and a Kubernetes extended resource name has at most 63 characters.
_RESOURCE_NAME = re.compile(r"^[A-Za-z0-9_]{1,63}\Z")
_NOT_RESOURCE_CHARS = re.compile(r"[^A-Za-z0-9_]")


@dataclass(frozen=True)
class VfSetting:
    """One VF setting: its sriov CNI key, its SriovNetwork field, and its range."""

    cni_key: str
    crd_key: str
    choices: tuple[str, ...] = ()
    minimum: int = 0
    maximum: int | None = None

    def read(self, args: PluginArgs) -> Any:
        """The validated value from either spelling; ``None`` when neither is given."""
        values = []
        for key in dict.fromkeys((self.cni_key, self.crd_key)):
            if key in args:
                values.append(
                    args.choice(key, self.choices)
                    if self.choices
                    else args.integer(key, self.minimum, self.maximum)
                )
        if len(values) == 2 and values[0] != values[1]:
            raise args.error(
                self.crd_key, f"disagrees with {args.field(self.cni_key)} {values[0]!r}"
            )
        return values[0] if values else None


VF_SETTINGS = (
    VfSetting("vlan", "vlan", maximum=4094),
    VfSetting("vlanQoS", "vlanQoS", maximum=7),
    VfSetting("spoofchk", "spoofChk", choices=("on", "off")),
    VfSetting("trust", "trust", choices=("on", "off")),
    VfSetting("link_state", "linkState", choices=("auto", "enable", "disable")),
    VfSetting("min_tx_rate", "minTxRate"),
    VfSetting("max_tx_rate", "maxTxRate"),
)


def sriov_resource_name(network_name: str) -> str:
    """The device-plugin resource name multinic gives a network's VFs.

    Characters the SR-IOV operator refuses become ``_``; a name longer than
    63 characters is cut and made unique again with a hash of the full name.
    """
    name = _NOT_RESOURCE_CHARS.sub("_", network_name)
    if len(name) > 63:
        digest = hashlib.sha256(network_name.encode()).hexdigest()[:8]
        name = f"{name[:54]}_{digest}"
    return name


@dataclass(frozen=True)
class SriovSettings:
    """A network's ``spec.plugin.args`` read and validated for the sriov driver."""

    resource_name: str
    resource_prefix: str
    existing_resource: bool
    """The user named a resource that exists already: create no policy or SriovNetwork."""
    operator_namespace: str
    network_namespace: str
    node_selector: dict[str, str]
    vf: dict[str, Any]
    """VF settings under the sriov CNI's keys."""
    policy: dict[str, Any]
    """SriovNetworkNodePolicy spec fields given in the args."""

    @classmethod
    def of(cls, network: MultiNicNetwork, args: PluginArgs) -> SriovSettings:
        vf = {s.cni_key: v for s in VF_SETTINGS if (v := s.read(args)) is not None}
        if vf.get("max_tx_rate") and vf.get("min_tx_rate", 0) > vf["max_tx_rate"]:
            raise args.error(
                "min_tx_rate" if "min_tx_rate" in args else "minTxRate",
                f"is above the maximum tx rate {vf['max_tx_rate']}",
            )
        policy: dict[str, Any] = {
            "numVfs": args.integer("numVfs", minimum=1),
            "priority": args.integer("priority", minimum=0, maximum=99),
            "mtu": args.integer("mtu", minimum=68, maximum=65535),
            "isRdma": args.boolean("isRdma"),
            "needVhostNet": args.boolean("needVhostNet"),
            "deviceType": args.choice("deviceType", ("netdevice", "vfio-pci")) or None,
        }
        node_selector = args.string_map("nodeSelector")
        resource = args.text("resourceName")
        prefix = args.text("resourcePrefix", SRIOV_RESOURCE_PREFIX)
        if "/" in resource:
            prefix, _, resource = resource.partition("/")
        if resource and not _RESOURCE_NAME.match(resource):
            raise args.error("resourceName", "is not a resource name (1-63 letters, digits or _)")
        return cls(
            resource_name=resource or sriov_resource_name(network.name),
            resource_prefix=prefix,
            existing_resource=bool(resource),
            operator_namespace=args.text("sriovOperatorNamespace", SRIOV_OPERATOR_NAMESPACE),
            network_namespace=args.text("networkNamespace"),
            # An explicit {} selects every node; only an absent arg takes the default.
            node_selector=dict(SRIOV_NODE_SELECTOR) if node_selector is None else node_selector,
            vf=vf,
            policy={k: v for k, v in policy.items() if v is not None},
        )

    @property
    def qualified_resource(self) -> str:
        return f"{self.resource_prefix}/{self.resource_name}"


def network_nics(network: MultiNicNetwork, hosts: Iterable[HostInterface]) -> list[InterfaceInfo]:
    """The NICs of every host that are in the network's ``masterNets`` (all when empty)."""
    wanted = set(network.spec.master_nets)
    return [
        nic
        for host in hosts
        for nic in host.spec.interfaces
        if nic.net_address and (not wanted or nic.net_address in wanted)
    ]


def pf_root_devices(network: MultiNicNetwork, hosts: Iterable[HostInterface]) -> list[str]:
    """PCI addresses of the network's NICs on every host, sorted, each once."""
    return sorted(
        {nic.pci_address.lower() for nic in network_nics(network, hosts) if nic.pci_address}
    )


def sriov_policy(
    network: MultiNicNetwork, settings: SriovSettings, root_devices: Sequence[str]
) -> DependentObject:
    """The SriovNetworkNodePolicy that creates VFs on the network's PFs."""
    spec: dict[str, Any] = {
        "resourceName": settings.resource_name,
        "nodeSelector": settings.node_selector,
        "numVfs": DEFAULT_NUM_VFS,
        **settings.policy,
        "nicSelector": {"rootDevices": list(root_devices)},
    }
    return DependentObject(
        body={
            "apiVersion": SRIOV_API_VERSION,
            "kind": "SriovNetworkNodePolicy",
            "metadata": {"name": network.name, "namespace": settings.operator_namespace},
            "spec": spec,
        }
    )


def sriov_network(network: MultiNicNetwork, settings: SriovSettings) -> DependentObject:
    """The SriovNetwork ``<network>-net`` for the resource, with the VF settings."""
    spec: dict[str, Any] = {"resourceName": settings.resource_name}
    if settings.network_namespace:
        spec["networkNamespace"] = settings.network_namespace
    for setting in VF_SETTINGS:
        if setting.cni_key in settings.vf:
            spec[setting.crd_key] = settings.vf[setting.cni_key]
    capabilities = network.spec.plugin.capabilities
    if capabilities:
        # The SriovNetwork API holds capabilities as a JSON string.
        spec["capabilities"] = json.dumps(dict(sorted(capabilities.items())), separators=(",", ":"))
    return DependentObject(
        body={
            "apiVersion": SRIOV_API_VERSION,
            "kind": "SriovNetwork",
            "metadata": {
                "name": f"{network.name}{SRIOV_NETWORK_SUFFIX}",
                "namespace": settings.operator_namespace,
            },
            "spec": spec,
        }
    )


class SriovDriver:
    """Main plugin ``sriov``: one SR-IOV VF per selected NIC."""

    nic_keys = ("deviceID",)

    @hookimpl
    def multinic_network_attachment(self, network: MultiNicNetwork) -> NetworkAttachment:
        args = PluginArgs.of(network, self.nic_keys)
        settings = SriovSettings.of(network, args)
        return NetworkAttachment(
            plugin=plugin_block(network, SRIOV_CNI_TYPE, args, **settings.vf),
            annotations={RESOURCE_NAME_ANNOTATION: settings.qualified_resource},
        )

    @hookimpl
    def multinic_dependent_objects(
        self, network: MultiNicNetwork, hosts: Sequence[HostInterface]
    ) -> list[DependentObject]:
        settings = SriovSettings.of(network, PluginArgs.of(network, self.nic_keys))
        if settings.existing_resource:
            log.info(
                "network %s uses existing SR-IOV resource %s; nothing to create",
                network.name,
                settings.qualified_resource,
            )
            return []
        objects = []
        root_devices = pf_root_devices(network, hosts)
        if root_devices:
            objects.append(sriov_policy(network, settings, root_devices))
        else:
            # The operator's webhook refuses a policy that selects no NIC.
            log.warning(
                "network %s: no host reports a NIC with a PCI address in masterNets yet; "
                "the SriovNetworkNodePolicy waits for one",
                network.name,
            )
        objects.append(sriov_network(network, settings))
        return objects

    @hookimpl
    def multinic_delegate_config(
        self, netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
    ) -> dict[str, Any]:
        if not nic.device_id:
            raise ConfigError(
                f"network {netconf.get('name')!r}: no SR-IOV VF allocated for NIC {nic.name!r}; "
                f"the pod must request the network's resource ({RESOURCE_NAME_ANNOTATION})"
            )
        return delegate_config(netconf, ipam, deviceID=nic.device_id)


# --------------------------------------------------------------------------- host-device

HOST_DEVICE_CNI_TYPE = "host-device"
NIC_CLUSTER_POLICY_API_VERSION = "mellanox.com/v1alpha1"
NIC_CLUSTER_POLICY_KIND = "NicClusterPolicy"
NIC_CLUSTER_POLICY_NAME = "nic-cluster-policy"
NVIDIA_RESOURCE_PREFIX = "nvidia.com"
DEVICE_PLUGIN_CONFIG = "spec.sriovDevicePlugin.config"

# Selector keys of the SR-IOV device plugin that a HostInterface can answer,
# and the NIC attribute each compares with; other keys (drivers, isRdma...)
# describe the host's driver state, which is not known here, and do not exclude.
_SELECTOR_ATTRIBUTES = {
    "vendors": "vendor",
    "devices": "product",
    "pfNames": "interface_name",
    "rootDevices": "pci_address",
    "pciAddresses": "pci_address",
}


def _normalised(key: str, value: str) -> str:
    value = value.strip().lower()
    if key in ("vendors", "devices"):
        return value.removeprefix("0x")
    if key == "pfNames":
        # "ens1f0#0-3" selects VFs 0..3 of PF ens1f0.
        return value.split("#", 1)[0]
    return value


@dataclass(frozen=True)
class DevicePluginResource:
    """One entry of the device plugin's ``resourceList``."""

    name: str
    prefix: str
    selectors: tuple[Mapping[str, Any], ...]

    @property
    def qualified_name(self) -> str:
        return f"{self.prefix}/{self.name}"

    def selects(self, nic: InterfaceInfo) -> bool:
        """True when one of the selectors matches everything it says about ``nic``."""
        return any(self._selector_matches(selector, nic) for selector in self.selectors)

    @staticmethod
    def _selector_matches(selector: Mapping[str, Any], nic: InterfaceInfo) -> bool:
        for key, attribute in _SELECTOR_ATTRIBUTES.items():
            wanted = selector.get(key)
            if not wanted or not isinstance(wanted, list):
                continue
            have = _normalised(key, str(getattr(nic, attribute) or ""))
            if not have or have not in {_normalised(key, str(w)) for w in wanted}:
                return False
        return True


def nic_cluster_policy_resources(cluster: ClusterReader) -> list[DevicePluginResource]:
    """The resources in the NicClusterPolicy's device plugin config, in order.

    Raises ``ConfigError`` saying what to create when the policy, its config
    or its resource list is missing or malformed.
    """
    where = (
        f"{NIC_CLUSTER_POLICY_KIND} {NIC_CLUSTER_POLICY_NAME} ({NIC_CLUSTER_POLICY_API_VERSION})"
    )
    policy = cluster.get(
        NIC_CLUSTER_POLICY_API_VERSION, NIC_CLUSTER_POLICY_KIND, NIC_CLUSTER_POLICY_NAME
    )
    if policy is None:
        raise ConfigError(
            f"host-device needs {where}: install the NVIDIA Network Operator and create it "
            f"with {DEVICE_PLUGIN_CONFIG} listing the host devices in a resourceList"
        )
    raw = (policy.get("spec") or {}).get("sriovDevicePlugin", {}) or {}
    raw = raw.get("config") if isinstance(raw, dict) else None
    if not raw:
        raise ConfigError(
            f"{where} has no {DEVICE_PLUGIN_CONFIG}: set it to the SR-IOV device plugin "
            'config, e.g. {"resourceList": [{"resourceName": "hostdev", '
            '"selectors": {"vendors": ["15b3"]}}]}'
        )
    try:
        config = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as e:
        raise ConfigError(f"{where} {DEVICE_PLUGIN_CONFIG} is not valid JSON: {e}") from e
    entries = config.get("resourceList") if isinstance(config, dict) else None
    if not isinstance(entries, list) or not entries:
        raise ConfigError(
            f"{where} {DEVICE_PLUGIN_CONFIG} has no resourceList: add the host devices "
            "as resources (resourceName, selectors)"
        )
    resources = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("resourceName"), str):
            raise ConfigError(
                f"{where} {DEVICE_PLUGIN_CONFIG} resourceList[{index}] has no resourceName"
            )
        selectors = entry.get("selectors") or []
        # The device plugin takes one selector object or (since v3.6) a list of them.
        selectors = [selectors] if isinstance(selectors, dict) else selectors
        resources.append(
            DevicePluginResource(
                name=entry["resourceName"],
                prefix=str(entry.get("resourcePrefix") or NVIDIA_RESOURCE_PREFIX),
                selectors=tuple(s for s in selectors if isinstance(s, dict)),
            )
        )
    return resources


def cluster_hosts(cluster: ClusterReader) -> list[HostInterface]:
    """The valid HostInterface objects; a broken one is skipped with a warning."""
    hosts = []
    for body in cluster.list(API_VERSION, HostInterface.kind_name):
        try:
            hosts.append(HostInterface.model_validate(body))
        except ValidationError as e:
            name = (body.get("metadata") or {}).get("name")
            log.warning("ignoring invalid HostInterface %s: %s", name, e)
    return hosts


def host_device_resource(
    network: MultiNicNetwork,
    args: PluginArgs,
    resources: Sequence[DevicePluginResource],
    nics: Sequence[InterfaceInfo],
) -> DevicePluginResource:
    """The resource the network's devices come from.

    The one the args' ``resourceName`` names (plain or with its prefix); else
    the one selecting most of the network's NICs, the first listed on a tie.
    """
    names = ", ".join(r.qualified_name for r in resources)
    if "resourceName" in args:
        wanted = args.text("resourceName")
        for resource in resources:
            if wanted in (resource.name, resource.qualified_name):
                return resource
        raise args.error(
            "resourceName", f"is not in the {NIC_CLUSTER_POLICY_KIND} resourceList ({names})"
        )
    if not nics and len(resources) == 1:
        return resources[0]
    scores = [sum(resource.selects(nic) for nic in nics) for resource in resources]
    best = max(scores)
    if best == 0:
        described = (
            ", ".join(
                f"{n.interface_name} ({n.vendor or '?'}:{n.product or '?'} {n.pci_address or '?'})"
                for n in nics
            )
            or "none reported yet"
        )
        raise ConfigError(
            f"MultiNicNetwork {network.name}: no resource of {NIC_CLUSTER_POLICY_KIND} "
            f"{NIC_CLUSTER_POLICY_NAME} ({names}) selects the network's NICs ({described}); "
            f"add a resource whose selectors match them to {DEVICE_PLUGIN_CONFIG}, "
            f"or name one in {args.field('resourceName')}"
        )
    return resources[scores.index(best)]


class HostDeviceDriver:
    """Main plugin ``host-device``: the allocated device itself moves into the pod."""

    nic_keys = ("device", "deviceID", "pciBusID")

    @hookimpl
    def multinic_network_attachment(
        self, network: MultiNicNetwork, cluster: ClusterReader
    ) -> NetworkAttachment:
        args = PluginArgs.of(network, self.nic_keys)
        resources = nic_cluster_policy_resources(cluster)
        nics = network_nics(network, cluster_hosts(cluster))
        resource = host_device_resource(network, args, resources, nics)
        log.debug(
            "network %s: host devices from resource %s", network.name, resource.qualified_name
        )
        return NetworkAttachment(
            plugin=plugin_block(network, HOST_DEVICE_CNI_TYPE, args),
            annotations={RESOURCE_NAME_ANNOTATION: resource.qualified_name},
        )

    @hookimpl
    def multinic_delegate_config(
        self, netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
    ) -> dict[str, Any]:
        if nic.device_id:
            # The host-device CNI reads the PCI address as pciBusID; Multus
            # passes it under both names, and so do we.
            return delegate_config(netconf, ipam, deviceID=nic.device_id, pciBusID=nic.device_id)
        return delegate_config(netconf, ipam, device=nic.name)
