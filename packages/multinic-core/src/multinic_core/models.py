"""Pydantic models of the six multinic.fms.io/v1 custom resources.

Field names are the API (SPEC section 1): Python attributes are snake_case and
every field serialises under its exact camelCase name.  Unknown fields are kept
(``extra="allow"``) so that reading and writing back an object never drops
something a user or a newer version put there.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable
from typing import Annotated, Any, ClassVar, Literal, TypeVar

import netaddr
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from multinic_core.errors import ConfigError

GROUP = "multinic.fms.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"

CNI_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
DEFAULT_CNI_VERSION = "1.0.0"
VLAN_MODES = ("l2", "l3", "l3s")
L3_VLAN_MODES = ("l3", "l3s")
MULTI_NIC_IPAM: Literal["multi-nic-ipam"] = "multi-nic-ipam"

# Linux IFNAMSIZ is 16 including the NUL; names are one path component.
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\Z")
_HEX_ID = re.compile(r"^[0-9a-f]{4}\Z")


def parse_cidr(value: str) -> netaddr.IPNetwork:
    """Parse a CIDR string strictly: a prefix length is required, no host bits."""
    if not isinstance(value, str) or "/" not in value:
        raise ValueError(f"{value!r} is not a CIDR (expected ADDRESS/PREFIX)")
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise ValueError(f"{value!r} is not a valid CIDR") from e
    if net.ip != net.network:
        raise ValueError(
            f"{value!r} has host bits set; the network is {net.cidr} (write that instead)"
        )
    return net


def _check_cidr(value: str) -> str:
    parse_cidr(value)
    return value


def _check_optional_cidr(value: str) -> str:
    if value:
        parse_cidr(value)
    return value


def _check_host_cidr(value: str) -> str:
    """An interface address with its prefix, e.g. 10.0.1.11/24 (host bits allowed)."""
    if not value:
        return value
    try:
        netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise ValueError(f"{value!r} is not a valid address") from e
    return value


def _check_ip(value: str) -> str:
    if not value:
        return value
    try:
        netaddr.IPAddress(value.split("/", maxsplit=1)[0])
    except (netaddr.AddrFormatError, ValueError, TypeError) as e:
        raise ValueError(f"{value!r} is not a valid IP address") from e
    return value


def _check_ifname(value: str) -> str:
    if not _IFNAME.match(value) or value in (".", ".."):
        raise ValueError(
            f"{value!r} is not an interface name (1-15 characters of letters, digits, _.:@-)"
        )
    return value


def _none_as_empty(value: Any) -> Any:
    # Go's encoding/json writes a nil slice as null; the predecessor's objects have them.
    return [] if value is None else value


T = TypeVar("T")
# A list that also accepts null (as an empty list).
NullableList = Annotated[list[T], BeforeValidator(_none_as_empty)]


def _cel(rule: str, message: str, max_length: int = 64) -> Any:
    """A CRD admission rule (``x-kubernetes-validations``, CEL) for a string type.

    The API server checks it when the object is written, so ``kubectl apply``
    refuses a bad value with ``message``; the bound on the length keeps the
    rule's estimated cost within the API server's budget.
    """
    return Field(
        json_schema_extra={
            "maxLength": max_length,
            "x-kubernetes-validations": [{"rule": rule, "message": message}],
        }
    )


Cidr = Annotated[str, AfterValidator(_check_cidr)]
OptionalCidr = Annotated[str, AfterValidator(_check_optional_cidr)]
HostCidr = Annotated[str, AfterValidator(_check_host_cidr)]
IPAddressStr = Annotated[str, AfterValidator(_check_ip)]
# The same, with an admission rule: for the fields users write (a network, an
# unmanaged HostInterface). Fields only the operator and agents write (CIDR,
# IPPool) carry none: their lists are long, and a rule per item would cost
# more than the API server's budget allows.
UserCidr = Annotated[
    str,
    AfterValidator(_check_cidr),
    _cel("isCIDR(self)", "must be a CIDR, address/prefix (e.g. 192.168.0.0/16)"),
]
OptionalUserCidr = Annotated[
    str,
    AfterValidator(_check_optional_cidr),
    _cel("self == '' || isCIDR(self)", "must be empty or a CIDR (e.g. 10.0.1.0/24)"),
]
UserIPAddress = Annotated[
    str,
    AfterValidator(_check_ip),
    _cel("self == '' || isIP(self)", "must be empty or an IP address (e.g. 10.0.1.11)"),
]
InterfaceName = Annotated[str, AfterValidator(_check_ifname), Field(max_length=15)]


class K8sModel(BaseModel):
    """Base of all models: camelCase on the wire, unknown fields preserved."""

    model_config = ConfigDict(
        extra="allow",
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
    )

    def to_dict(self) -> dict[str, Any]:
        """The object as it is written to the API (camelCase, no unset optionals)."""
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------- metadata


class OwnerReference(K8sModel):
    api_version: str = Field(alias="apiVersion")
    kind: str
    name: str
    uid: str
    controller: bool | None = None
    block_owner_deletion: bool | None = Field(default=None, alias="blockOwnerDeletion")


class ObjectMeta(K8sModel):
    name: str = ""
    namespace: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)
    resource_version: str | None = Field(default=None, alias="resourceVersion")
    uid: str | None = None
    generation: int | None = None
    finalizers: list[str] = Field(default_factory=list)
    owner_references: list[OwnerReference] = Field(default_factory=list, alias="ownerReferences")
    deletion_timestamp: str | None = Field(default=None, alias="deletionTimestamp")
    creation_timestamp: str | None = Field(default=None, alias="creationTimestamp")

    def to_dict(self) -> dict[str, Any]:
        # Empty collections are noise in YAML and in patches.
        return self.model_dump(mode="json", exclude_none=True, exclude_defaults=True)


class Condition(K8sModel):
    """A standard Kubernetes condition (metav1.Condition)."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = Field(default=None, alias="lastTransitionTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")


class Resource(K8sModel):
    """A top-level custom resource of multinic.fms.io/v1."""

    kind_name: ClassVar[str]
    plural: ClassVar[str]
    short_names: ClassVar[tuple[str, ...]] = ()
    description: ClassVar[str] = ""

    api_version: str = Field(default=API_VERSION, alias="apiVersion")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    @field_validator("api_version")
    @classmethod
    def _known_api_version(cls, value: str) -> str:
        if value != API_VERSION:
            raise ValueError(f"apiVersion must be {API_VERSION!r}, not {value!r}")
        return value

    @property
    def name(self) -> str:
        return self.metadata.name

    def to_dict(self) -> dict[str, Any]:
        dumped = self.model_dump(mode="json", exclude_none=True)
        body = {"apiVersion": dumped.pop("apiVersion"), "kind": dumped.pop("kind")}
        dumped.pop("metadata")
        body["metadata"] = self.metadata.to_dict()
        body.update(dumped)
        return body


# --------------------------------------------------------------------------- MultiNicNetwork


class DNS(K8sModel):
    nameservers: list[str] = Field(default_factory=list)
    domain: str = ""
    search: list[str] = Field(default_factory=list)
    options: list[str] = Field(default_factory=list)


class PluginSpec(K8sModel):
    """The main plugin of a network: ``type`` names the driver (entry point)."""

    cni_version: str = Field(default=DEFAULT_CNI_VERSION, alias="cniVersion")
    type: str = Field(min_length=1)
    args: dict[str, str] = Field(default_factory=dict)
    capabilities: dict[str, bool] = Field(default_factory=dict)
    dns: DNS | None = None

    @field_validator("cni_version")
    @classmethod
    def _known_cni_version(cls, value: str) -> str:
        if value not in CNI_VERSIONS:
            raise ValueError(f"cniVersion {value!r} is not one of {', '.join(CNI_VERSIONS)}")
        return value

    @field_validator("args", mode="before")
    @classmethod
    def _args_as_strings(cls, value: Any) -> Any:
        # YAML turns `mtu: 9000` into an int; the API type is map[string]string.
        if isinstance(value, dict):
            return {k: (json.dumps(v) if not isinstance(v, str) else v) for k, v in value.items()}
        return value

    def typed_args(self) -> dict[str, Any]:
        """``args`` with values that parse as JSON numbers/booleans/objects typed."""
        typed: dict[str, Any] = {}
        for key, raw in self.args.items():
            try:
                value = json.loads(raw)
            except ValueError:
                value = raw
            typed[key] = value if isinstance(value, int | float | bool | dict | list) else raw
        return typed


class AttachPolicy(K8sModel):
    strategy: str = "none"
    target: str = ""


class IpamRoute(K8sModel):
    dst: Cidr
    gw: IPAddressStr = ""


class IpamConfig(K8sModel):
    """The parsed ``spec.ipam`` JSON string.  ``type`` picks the IPAM plugin."""

    type: str = Field(min_length=1)


class MultiNicIpamConfig(IpamConfig):
    """Config of the built-in ``multi-nic-ipam``."""

    type: Literal["multi-nic-ipam"] = MULTI_NIC_IPAM
    host_block: int = Field(alias="hostBlock", ge=0, le=64)
    interface_block: int = Field(alias="interfaceBlock", ge=0, le=32)
    vlan_mode: str = Field(default="l2", alias="vlanMode")
    exclude_cidrs: NullableList[Cidr] = Field(default_factory=list, alias="excludeCIDRs")
    routes: list[IpamRoute] = Field(default_factory=list)
    dns: DNS | None = None

    @field_validator("vlan_mode")
    @classmethod
    def _known_vlan_mode(cls, value: str) -> str:
        if value not in VLAN_MODES:
            raise ValueError(f"vlanMode {value!r} is not one of {', '.join(VLAN_MODES)}")
        return value


def parse_ipam(raw: str) -> IpamConfig:
    """Parse and validate the ``ipam`` JSON string of a network."""
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise ValueError(f"ipam is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError("ipam must be a JSON object")
    model = MultiNicIpamConfig if data.get("type") == MULTI_NIC_IPAM else IpamConfig
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ValueError(f"ipam {describe_validation_error(e)}") from e


class NetworkResult(K8sModel):
    net_address: str = Field(alias="netAddress")
    num_of_hosts: int = Field(alias="numOfHosts")


class DiscoveryStatus(K8sModel):
    exist_daemon: int = Field(default=0, alias="existDaemon")
    info_available: int = Field(default=0, alias="infoAvailable")
    cidr_processed: int = Field(default=0, alias="cidrProcessed")


class MultiNicNetworkStatus(K8sModel):
    compute_results: list[NetworkResult] = Field(default_factory=list, alias="computeResults")
    discovery: DiscoveryStatus = Field(default_factory=DiscoveryStatus)
    config_status: Literal["WaitForConfig", "Success", "Failed", ""] = Field(
        default="WaitForConfig", alias="configStatus"
    )
    route_status: Literal["N/A", "WaitForRoutes", "Unknown", "Success", "Failed", ""] = Field(
        default="N/A", alias="routeStatus"
    )
    message: str = ""
    last_sync_time: str | None = Field(default=None, alias="lastSyncTime")
    observed_generation: int | None = Field(default=None, alias="observedGeneration")
    conditions: list[Condition] = Field(default_factory=list)


class MultiNicNetworkSpec(K8sModel):
    subnet: OptionalUserCidr = ""
    ipam: str
    multi_nic_ipam: bool = Field(default=False, alias="multiNICIPAM")
    master_nets: list[UserCidr] = Field(default_factory=list, alias="masterNets", max_length=64)
    plugin: PluginSpec
    attach_policy: AttachPolicy = Field(default_factory=AttachPolicy, alias="attachPolicy")
    namespaces: list[str] = Field(default_factory=list)

    @field_validator("subnet", mode="before")
    @classmethod
    def _one_subnet(cls, value: Any) -> Any:
        # Dual-stack (an IPv4 and an IPv6 subnet) is not in the model: the plan,
        # the pools and the host routes are of one family.  Say so, instead of
        # "not a valid CIDR".
        parts = value if isinstance(value, list) else None
        if isinstance(value, str) and ("," in value or len(value.split()) > 1):
            parts = [p for p in value.replace(",", " ").split() if p]
        if parts is not None and len(parts) > 1:
            raise ValueError(
                f"{value!r}: subnet is one CIDR; dual-stack (an IPv4 and an IPv6 subnet on "
                "one network) is not supported: create one MultiNicNetwork per address family"
            )
        return value

    @field_validator("ipam")
    @classmethod
    def _ipam_parses(cls, value: str) -> str:
        parse_ipam(value)
        return value

    @model_validator(mode="after")
    def _blocks_fit_subnet(self) -> MultiNicNetworkSpec:
        ipam = self.ipam_config
        if self.subnet and isinstance(ipam, MultiNicIpamConfig):
            subnet = parse_cidr(self.subnet)
            width = 32 if subnet.version == 4 else 128
            prefix = subnet.prefixlen + ipam.interface_block + ipam.host_block
            # A pod block needs room for at least one address besides its
            # network and last address.
            if prefix > width - 2:
                raise ValueError(
                    f"hostBlock {ipam.host_block} + interfaceBlock {ipam.interface_block} "
                    f"do not fit subnet {self.subnet}: pod blocks would be /{prefix}, "
                    f"at most /{width - 2} leaves room for pod addresses"
                )
            for exclude in ipam.exclude_cidrs:
                if parse_cidr(exclude).version != subnet.version:
                    raise ValueError(
                        f"excludeCIDRs entry {exclude} is not IPv{subnet.version} "
                        f"like subnet {self.subnet}"
                    )
        if len(set(self.master_nets)) != len(self.master_nets):
            raise ValueError("masterNets lists a network twice")
        return self

    @property
    def ipam_config(self) -> IpamConfig:
        return parse_ipam(self.ipam)

    @property
    def multi_nic_ipam_config(self) -> MultiNicIpamConfig | None:
        cfg = self.ipam_config
        return cfg if isinstance(cfg, MultiNicIpamConfig) else None

    @property
    def manages_routes(self) -> bool:
        """L3 host routes are managed only for multi-NIC IPAM in l3/l3s mode (SPEC 1)."""
        cfg = self.multi_nic_ipam_config
        return self.multi_nic_ipam and cfg is not None and cfg.vlan_mode in L3_VLAN_MODES


class MultiNicNetwork(Resource):
    kind_name: ClassVar[str] = "MultiNicNetwork"
    plural: ClassVar[str] = "multinicnetworks"
    short_names: ClassVar[tuple[str, ...]] = ("mnn",)
    description: ClassVar[str] = "A secondary network of several NICs per pod."

    kind: Literal["MultiNicNetwork"] = "MultiNicNetwork"
    spec: MultiNicNetworkSpec
    status: MultiNicNetworkStatus | None = None


# --------------------------------------------------------------------------- CIDR


class PluginConfig(K8sModel):
    """The inputs of a plan, recorded in the CIDR object (``spec.config``)."""

    name: str
    type: str
    subnet: str = ""
    master_nets: NullableList[str] = Field(default_factory=list, alias="masterNets")
    host_block: int = Field(alias="hostBlock")
    interface_block: int = Field(alias="interfaceBlock")
    exclude_cidrs: NullableList[str] = Field(default_factory=list, alias="excludeCIDRs")
    vlan_mode: str = Field(default="", alias="vlanMode")


class HostInterfaceInfo(K8sModel):
    """One host's block on one interface entry of a plan."""

    host_index: int = Field(alias="hostIndex")
    host_name: str = Field(alias="hostName")
    interface_name: str = Field(alias="interfaceName")
    host_ip: str = Field(alias="hostIP")
    pod_cidr: str = Field(alias="podCIDR")
    ippool: str = ""


class CIDREntry(K8sModel):
    net_address: str = Field(alias="netAddress")
    interface_index: int = Field(alias="interfaceIndex")
    vlan_cidr: str = Field(alias="vlanCIDR")
    hosts: NullableList[HostInterfaceInfo] = Field(default_factory=list)


class CIDRSpec(K8sModel):
    config: PluginConfig
    cidr: NullableList[CIDREntry] = Field(default_factory=list)


class CIDRStatus(K8sModel):
    """Problems of the last plan (networks or hosts that could not be placed)."""

    problems: list[str] = Field(default_factory=list)


class CIDR(Resource):
    kind_name: ClassVar[str] = "CIDR"
    plural: ClassVar[str] = "cidrs"
    description: ClassVar[str] = "The address plan of a MultiNicNetwork (written by the operator)."

    kind: Literal["CIDR"] = "CIDR"
    spec: CIDRSpec
    status: CIDRStatus | None = None


# --------------------------------------------------------------------------- IPPool


class Allocation(K8sModel):
    pod: str = ""
    namespace: str = ""
    index: int
    address: IPAddressStr
    container_id: str = Field(default="", alias="containerID")
    if_name: str = Field(default="", alias="ifName")


class IPPoolSpec(K8sModel):
    pod_cidr: Cidr = Field(alias="podCIDR")
    vlan_cidr: Cidr = Field(alias="vlanCIDR")
    net_attach_def: str = Field(alias="netAttachDef")
    host_name: str = Field(alias="hostName")
    interface_name: str = Field(alias="interfaceName")
    excludes: NullableList[Cidr] = Field(default_factory=list)
    allocations: NullableList[Allocation] = Field(default_factory=list)


class IPPool(Resource):
    kind_name: ClassVar[str] = "IPPool"
    plural: ClassVar[str] = "ippools"
    description: ClassVar[str] = "One host's address block on one NIC of a network."

    kind: Literal["IPPool"] = "IPPool"
    spec: IPPoolSpec
    status: dict[str, Any] | None = None


POOL_RETIRED_LABEL = f"{GROUP}/retired"
"""On an IPPool a plan edit replaced while pods still hold its addresses; the
value is the CIDR generation that replaced it.  Nothing more is allocated from it."""
POOL_RETIRED_ACK = f"{GROUP}/retired-ack"
"""Annotation the pool's agent writes (the label's value) once it allocates
nothing more from the pool and the pool lists every address it holds."""


def ippool_name(network: str, pod_cidr: str) -> str:
    """``<network>-<podCIDR with '/' (and ':' for IPv6) replaced by '-'>`` (SPEC 1)."""
    return f"{network}-{pod_cidr.replace('/', '-').replace(':', '-')}"


# --------------------------------------------------------------------------- HostInterface


class InterfaceInfo(K8sModel):
    """A discovered secondary NIC of a host."""

    model_config = ConfigDict(
        **K8sModel.model_config,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.hostIP) || self.hostIP == '' || !has(self.netAddress) "
                    "|| self.netAddress == '' || !isIP(self.hostIP) || !isCIDR(self.netAddress) "
                    "|| cidr(self.netAddress).containsIP(self.hostIP)",
                    "message": "hostIP must be an address inside netAddress",
                }
            ]
        },
    )

    interface_name: InterfaceName = Field(alias="interfaceName")
    net_address: OptionalUserCidr = Field(default="", alias="netAddress")
    host_ip: UserIPAddress = Field(default="", alias="hostIP")
    vendor: str = ""
    product: str = ""
    pci_address: str = Field(default="", alias="pciAddress")
    numa_node: int | None = Field(default=None, alias="numaNode")
    speed: int | None = Field(default=None, description="link speed in Mbit/s")


class HostInterfaceSpec(K8sModel):
    host_name: str = Field(alias="hostName")
    interfaces: NullableList[InterfaceInfo] = Field(default_factory=list, max_length=128)


class RouteSyncStatus(K8sModel):
    """The result of this node's last route reconcile for one network (agent-written)."""

    network: str
    status: Literal["Success", "Failed", "WaitForRoutes"]
    message: str = ""
    cidr_generation: int | None = Field(default=None, alias="cidrGeneration")
    """``metadata.generation`` of the CIDR object the routes were computed from."""
    last_sync_time: str | None = Field(default=None, alias="lastSyncTime")


class HostInterfaceStatus(K8sModel):
    conditions: list[Condition] = Field(default_factory=list)
    routes: list[RouteSyncStatus] = Field(default_factory=list)
    last_discovery_time: str | None = Field(default=None, alias="lastDiscoveryTime")


class HostInterface(Resource):
    kind_name: ClassVar[str] = "HostInterface"
    plural: ClassVar[str] = "hostinterfaces"
    short_names: ClassVar[tuple[str, ...]] = ("hif",)
    description: ClassVar[str] = "The secondary NICs of one node (written by its agent)."

    kind: Literal["HostInterface"] = "HostInterface"
    spec: HostInterfaceSpec
    status: HostInterfaceStatus | None = None

    UNMANAGED_LABEL: ClassVar[str] = "multi-nic-unmanaged"

    @property
    def unmanaged(self) -> bool:
        return self.metadata.labels.get(self.UNMANAGED_LABEL) == "true"


# --------------------------------------------------------------------------- Config


class HostPathMount(K8sModel):
    name: str
    podpath: str
    hostpath: str


class DaemonSpec(K8sModel):
    image: str = ""
    port: int = 11000
    node_selector: dict[str, str] = Field(default_factory=dict, alias="nodeSelector")
    image_pull_secret_name: str = Field(default="", alias="imagePullSecretName")
    image_pull_policy: str = Field(default="", alias="imagePullPolicy")
    security_context: dict[str, Any] | None = Field(default=None, alias="securityContext")
    env: list[dict[str, Any]] = Field(default_factory=list)
    env_from: list[dict[str, Any]] = Field(default_factory=list, alias="envFrom")
    mounts: list[HostPathMount] = Field(default_factory=list)
    resources: dict[str, Any] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class ConfigSpec(K8sModel):
    cni_type: str = Field(default="multi-nic", alias="cniType")
    ipam_type: str = Field(default=MULTI_NIC_IPAM, alias="ipamType")
    log_level: int = Field(default=0, alias="logLevel")
    daemon: DaemonSpec = Field(default_factory=DaemonSpec)
    urgent_reconcile_seconds: int | None = Field(default=None, alias="urgentReconcileSeconds")
    normal_reconcile_minutes: int | None = Field(default=None, alias="normalReconcileMinutes")
    long_reconcile_minutes: int | None = Field(default=None, alias="longReconcileMinutes")
    context_timeout_minutes: int | None = Field(default=None, alias="contextTimeoutMinutes")
    # The predecessor's daemon route paths: accepted so old objects validate, ignored.
    join_path: str | None = Field(default=None, alias="joinPath")
    get_interface_path: str | None = Field(default=None, alias="getInterfacePath")
    add_route_path: str | None = Field(default=None, alias="addRoutePath")
    delete_route_path: str | None = Field(default=None, alias="deleteRoutePath")


class Config(Resource):
    kind_name: ClassVar[str] = "Config"
    plural: ClassVar[str] = "configs"
    description: ClassVar[str] = "Operator and agent settings; the default object is multi-nicd."

    DEFAULT_NAME: ClassVar[str] = "multi-nicd"

    kind: Literal["Config"] = "Config"
    spec: ConfigSpec = Field(default_factory=ConfigSpec)
    status: dict[str, Any] | None = None


# --------------------------------------------------------------------------- DeviceClass


class DeviceID(K8sModel):
    vendor: str
    products: list[str] = Field(default_factory=list)

    @field_validator("vendor")
    @classmethod
    def _hex_vendor(cls, value: str) -> str:
        if not _HEX_ID.match(value):
            raise ValueError(f"vendor {value!r} is not a 4-digit lowercase hex PCI id")
        return value

    @field_validator("products")
    @classmethod
    def _hex_products(cls, values: list[str]) -> list[str]:
        for value in values:
            if not _HEX_ID.match(value):
                raise ValueError(f"product {value!r} is not a 4-digit lowercase hex PCI id")
        return values


class DeviceClassSpec(K8sModel):
    ids: list[DeviceID] = Field(default_factory=list)

    def matches(self, vendor: str, product: str) -> bool:
        vendor, product = vendor.lower().removeprefix("0x"), product.lower().removeprefix("0x")
        return any(d.vendor == vendor and product in d.products for d in self.ids)


class DeviceClass(Resource):
    kind_name: ClassVar[str] = "DeviceClass"
    plural: ClassVar[str] = "deviceclasses"
    description: ClassVar[str] = "A class of NICs by PCI vendor/product id (devClass policy)."

    kind: Literal["DeviceClass"] = "DeviceClass"
    spec: DeviceClassSpec
    status: dict[str, Any] | None = None


R = TypeVar("R", bound=Resource)

RESOURCES: tuple[type[Resource], ...] = (
    MultiNicNetwork,
    CIDR,
    IPPool,
    HostInterface,
    Config,
    DeviceClass,
)
RESOURCES_BY_KIND: dict[str, type[Resource]] = {r.kind_name: r for r in RESOURCES}


# --------------------------------------------------------------------------- errors


def describe_validation_error(error: ValidationError, prefix: str = "") -> str:
    """One line per problem, each naming the field by its API path."""
    lines = []
    for item in error.errors():
        path = ""
        for part in item["loc"]:
            if isinstance(part, int):
                path += f"[{part}]"
            elif part != "function-after":
                path += f".{part}" if path else str(part)
        if prefix:
            path = f"{prefix}.{path}" if path else prefix
        message = item["msg"].removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "; ".join(lines)


def load_resource(cls: type[R], data: Any, source: str = "") -> R:
    """Validate ``data`` as ``cls``; raise ConfigError naming the object and field."""
    where = source or cls.kind_name
    if isinstance(data, dict):
        name = (data.get("metadata") or {}).get("name")
        if name and not source:
            where = f"{cls.kind_name} {name}"
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{where}: {describe_validation_error(e)}") from e


def load_resources(cls: type[R], items: Iterable[Any], source: str = "") -> list[R]:
    return [load_resource(cls, item, source) for item in items]


# --------------------------------------------------------------------------- compact copies

M = TypeVar("M", bound=BaseModel)
_SHARED_FIELD_SETS: dict[frozenset[str], frozenset[str]] = {}


def _shared_field_set(fields: Iterable[str]) -> frozenset[str]:
    key = frozenset(fields)
    return _SHARED_FIELD_SETS.setdefault(key, key)


def compact(model: M) -> M:
    """``model`` (and every model inside it) made smaller in place, for caches of thousands.

    Pydantic keeps, per instance, the set of the fields given (a 5-field set
    is 728 bytes, more than the rest of a small model): here one frozen set
    is shared by every instance with the same fields, and strings are
    interned (the NIC names, networks, vendors of 10,000 hosts are a few
    values).  Equality, validation of new objects and dumps are unchanged
    (pydantic compares ``__dict__``, not the field set); a compacted model is
    read-only: setting an attribute raises ``AttributeError`` (the shared
    set is frozen), so a cached object cannot be changed by accident.
    """
    _compact(model)
    return model


def _compact(value: Any) -> Any:
    if type(value) is str:  # not a subclass: those cannot be interned
        return sys.intern(value)
    if isinstance(value, BaseModel):
        fields = value.__dict__
        for key, item in fields.items():
            fields[key] = _compact(item)
        object.__setattr__(
            value, "__pydantic_fields_set__", _shared_field_set(value.__pydantic_fields_set__)
        )
        extra = value.__pydantic_extra__
        if extra:
            for key, item in extra.items():
                extra[key] = _compact(item)
        return value
    if isinstance(value, list):
        for i, item in enumerate(value):
            value[i] = _compact(item)
        return value
    if isinstance(value, dict):
        for key, item in value.items():
            value[key] = _compact(item)
        return value
    return value
