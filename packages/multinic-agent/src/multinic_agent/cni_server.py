"""The agent's CNI server: ADD, DEL, CHECK, GC, STATUS for the ``multi-nic`` shim (SPEC 4).

The shim sends one request per connection on the agent's unix socket (wire
format in :mod:`multinic_agent.wire`); :meth:`CniServer.handle` answers it,
VERSION included: the shim parses nothing, every check of the environment
and the config is here.
ADD selects NICs (attach policy plugin), gets addresses (IPAM plugin), builds
one delegate config per NIC (main plugin), execs the delegates (in parallel
when the agent chose the addresses; one at a time, in NIC order, when they
run an allocating IPAM such as whereabouts), programs multipath routes,
records the attachment durably and returns the merged result.  Any failure undoes every step already done.  DEL, CHECK and
GC work from the attachment record, never from a new selection.

Errors leave here as CNI error JSON with the spec's codes; nothing else
escapes (no traceback reaches the runtime).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import re
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import netaddr

from multinic_agent import pod_netns
from multinic_agent.cni_result import AttachResult, CniError, best_common_version, merge_results
from multinic_agent.device_selection import select_devices
from multinic_agent.node_state import NodeState
from multinic_agent.pod_resources import PodDevices, PodResourcesClient, resource_names
from multinic_agent.records import AttachmentRecord, DelegateRecord, RecordStore
from multinic_agent.shim import (
    CODE_DECODE,
    CODE_INCOMPATIBLE_VERSION,
    CODE_INVALID_CONFIG,
    CODE_INVALID_ENV,
    CODE_NOT_AVAILABLE,
    CODE_OTHER,
    CODE_TRY_AGAIN,
    SUPPORTED_VERSIONS,
)
from multinic_core.errors import (
    ConfigError,
    MultinicError,
    NicMissingError,
    PluginNotFoundError,
    SelectionError,
    TryAgainError,
)
from multinic_core.events import EventRecorder, pod_ref
from multinic_core.hooktypes import (
    InProcessDelegate,
    IpamRequest,
    NicAttachment,
    PodArgs,
    PodRef,
    SelectedNic,
    SelectionRequest,
    StaticCluster,
)
from multinic_core.models import (
    IPPoolSpec,
    MultiNicNetwork,
    ippool_name,
    load_resource,
    parse_cidr,
)
from multinic_core.nad import RESOURCE_NAME_ANNOTATION
from multinic_core.plugins import IpamPlugin, MainPlugin, PluginRegistry
from multinic_ipam.journal import (
    AllocationEntry,
    AllocationJournal,
    PoolBlock,
    PoolExhaustedError,
)
from multinic_ipam.plugins import CONTEXT_JOURNAL, CONTEXT_POOLS

log = logging.getLogger(__name__)

COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")
# libcni's rule for container IDs; it also keeps record file names safe.
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}\Z")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:@-]{1,15}\Z")
_PLUGIN_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*\Z")
MAX_CONFIG_BYTES = 1024 * 1024
"""Largest network config (stdin, UTF-8) the agent decodes; a real NAD config is a few KiB."""
MAX_CONFIG_DEPTH = 64
"""Deepest nesting of arrays and objects in a network config; a real one nests 4 levels."""
MAX_INT_DIGITS = 4300
"""Longest integer in a network config (Python's own int/str limit, named here)."""
# What the nesting scan skips in one step: a JSON string (escapes included; an
# unterminated one runs to the end, as does a final lone backslash) or a run of
# characters that are neither brackets nor quotes.  Possessive: nothing is ever
# tried twice, so the scan is linear whatever the input.
_NOT_NESTING = re.compile(r'"(?:[^"\\]++|\\.)*+(?:"|\\?\Z)|[^"\[\]{}]++', re.DOTALL)
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}\Z")
_SHOWN = 120
"""Longest repr of a config value quoted in an error message (and the agent's log)."""
VALID_ATTACHMENTS = "cni.dev/valid-attachments"
DELEGATE_TIMEOUT_S = 120.0
DURABLE_THREADS = 8
"""Threads for the ADDs' IPAM allocations and record writes: each mostly waits
for an fsync, and those waiting together share one (group commit)."""
T = TypeVar("T")
# CNI_ARGS keys that are the agent's business, not the delegates' (static
# IPAM would otherwise add the IP= addresses to every NIC, and macvlan the
# MAC= address, which Multus passes besides runtimeConfig.mac, to every NIC).
_AGENT_ARGS = frozenset({"IP", "GATEWAY", "MAC"})
# Reasons of the Warning Events the agent posts on a pod.
EVENT_POLICY_FALLBACK = "UnknownAttachPolicy"
EVENT_NIC_MISSING = "NICMissing"
EVENT_POOL_EXHAUSTED = "PoolExhausted"
# Built-in attach policies that never look at the pod's devices: with them
# and no network resource, ADD does not ask the kubelet.
_DEVICE_BLIND_POLICIES = frozenset({"none", "devClass", "costOpt", "perfOpt"})


def _allocates_in_delegate(delegate: DelegateRecord) -> bool:
    """Whether the delegate runs an IPAM plugin that allocates (host-local, whereabouts, dhcp).

    Such plugins are written for Multus, which runs a pod's attachments one at
    a time, and some are not safe otherwise: whereabouts (v0.9.2) keeps a
    "reserved by this pod already" flag across its retries, so two interfaces
    of one pod allocating from one range at once can leave one address without
    its cluster-wide OverlappingRangeIPReservation.  Addresses the agent chose
    reach the delegate as ``static`` and need no ordering.
    """
    ipam = delegate.config.get("ipam")
    return isinstance(ipam, Mapping) and ipam.get("type") not in (None, "static")


@dataclass(frozen=True)
class CniRequest:
    """One validated invocation."""

    command: str
    version: str
    config: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    path: tuple[str, ...] = ()
    args: dict[str, str] = field(default_factory=dict)
    raw_args: str = ""

    @property
    def name(self) -> str:
        return str(self.config["name"])

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    @property
    def pod(self) -> PodRef:
        return PodRef(
            name=self.args.get("K8S_POD_NAME", ""),
            namespace=self.args.get("K8S_POD_NAMESPACE", ""),
            uid=self.args.get("K8S_POD_UID", ""),
        )


def log_fields(container_id: str, ifname: str, network: str = "", pod: str = "") -> dict[str, str]:
    """Structured ``extra`` fields of a log record about one attachment."""
    return {"container": container_id, "ifname": ifname, "network": network, "pod": pod}


def parse_cni_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K2=V2``) as a dict; raises CniError(4) when malformed."""
    args: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise CniError(CODE_INVALID_ENV, f"CNI_ARGS entry {pair!r} is not KEY=VALUE")
        args[key] = value
    return args


def _require(env: Mapping[str, str], name: str, pattern: re.Pattern[str] | None = None) -> str:
    value = env.get(name, "")
    if not value:
        raise CniError(CODE_INVALID_ENV, f"{name} is required for CNI_COMMAND={env['CNI_COMMAND']}")
    if pattern and not pattern.match(value):
        raise CniError(CODE_INVALID_ENV, f"{name} {value!r} is not valid")
    return value


def _loggable(value: str) -> str:
    """``value`` for a log line: as is when printable, else quoted (one line, always)."""
    return value if value.isprintable() else repr(value)[:1000]


def _brief(value: Any) -> str:
    """``repr(value)``, cut short: a hostile config must not come back, or be logged, whole."""
    text = repr(value)
    return text if len(text) <= _SHOWN else f"{text[: _SHOWN - 3]}..."


def nests_deeper_than(text: str, limit: int) -> bool:
    """Whether arrays and objects in ``text`` nest more than ``limit`` levels deep.

    Brackets inside JSON strings do not count.  One linear pass and no
    recursion, for any text, JSON or not: this is what keeps ``json.loads``
    (which recurses once per level) from ever meeting a deep input.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for bracket in _NOT_NESTING.sub("", text):
        if bracket in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is out of range (not a finite 64-bit float)")
    return value


def _bounded_int(text: str) -> int:
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise ValueError(
            f"an integer of {digits} digits exceeds the limit of {MAX_INT_DIGITS} digits"
        )
    return int(text)


def _no_constant(name: str) -> float:
    raise ValueError(f"{name} is not a JSON number")


def _stdin_bytes(stdin: str) -> int:
    """The size of stdin as the runtime wrote it (the shims decode it with surrogateescape)."""
    try:
        return len(stdin.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:  # a surrogate no shim makes: not from a pipe
        return len(stdin.encode("utf-8", "surrogatepass"))


def config_problem(stdin: str) -> CniError | None:
    """Why ``stdin`` is not decoded at all (code 6): too large, not UTF-8, nested too deep.

    Checked before any parsing, in time linear in the (bounded) size.
    """
    if len(stdin) > MAX_CONFIG_BYTES or (
        not stdin.isascii() and _stdin_bytes(stdin) > MAX_CONFIG_BYTES
    ):
        return CniError(
            CODE_DECODE, f"network config exceeds {MAX_CONFIG_BYTES} bytes (the agent's limit)"
        )
    if not stdin.isascii():
        try:
            stdin.encode()
        except UnicodeEncodeError as e:
            # The shims decode stdin with surrogateescape: U+DC80..U+DCFF is a raw byte.
            bad = ord(stdin[e.start])
            what = f"byte 0x{bad - 0xDC00:02x}" if 0xDC80 <= bad <= 0xDCFF else f"U+{bad:04X}"
            return CniError(
                CODE_DECODE, f"network config is not valid UTF-8 ({what} at char {e.start})"
            )
    if nests_deeper_than(stdin, MAX_CONFIG_DEPTH):
        return CniError(
            CODE_DECODE,
            f"network config nests arrays and objects more than {MAX_CONFIG_DEPTH} levels deep "
            "(the agent's limit)",
        )
    return None


def decode_config(stdin: str) -> Any:
    """The JSON value of a network config; CniError(6) for anything but bounded UTF-8 JSON.

    JSON as RFC 8259 has it: no NaN or Infinity, and no number beyond a
    64-bit float (``1e999999`` is not read as infinity).
    """
    problem = config_problem(stdin)
    if problem is not None:
        raise problem
    try:
        return json.loads(
            stdin,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            parse_constant=_no_constant,
        )
    except ValueError as e:
        raise CniError(CODE_DECODE, f"network config is not valid JSON: {e}") from e


def config_version(stdin: str) -> str:
    """The config's ``cniVersion`` (any non-empty string); the latest version if it has none.

    A config beyond a bound (:func:`config_problem`) is not parsed for it
    (the latest); one that holds NaN or a number beyond a float still names
    its version (it is JSON, only not accepted).
    """
    latest = SUPPORTED_VERSIONS[-1]
    if config_problem(stdin) is not None:
        return latest
    try:
        config = json.loads(stdin)
    except ValueError:
        return latest
    version = config.get("cniVersion") if isinstance(config, dict) else None
    return version if isinstance(version, str) and version else latest


def version_reply(stdin: str) -> str:
    """The answer to ``CNI_COMMAND=VERSION``, for any config: in the config's version."""
    return json.dumps(
        {"cniVersion": config_version(stdin), "supportedVersions": list(SUPPORTED_VERSIONS)},
        separators=(",", ":"),
    )


def reply_version(stdin: str) -> str:
    """The version an error reply is printed in: the config's if it is a supported one.

    A config the agent does not decode (:func:`config_problem`) is not parsed
    for it either: the latest version.
    """
    version = config_version(stdin)
    return version if version in SUPPORTED_VERSIONS else SUPPORTED_VERSIONS[-1]


def parse_request(env: Mapping[str, str], stdin: str) -> CniRequest:
    """Validate environment and config; raises CniError with the spec's code."""
    command = env.get("CNI_COMMAND", "")
    if command not in COMMANDS:
        raise CniError(
            CODE_INVALID_ENV, f"CNI_COMMAND {command!r} is not one of {', '.join(COMMANDS)}"
        )
    config = decode_config(stdin)
    if not isinstance(config, dict):
        raise CniError(CODE_DECODE, "network config must be a JSON object")
    version = config.get("cniVersion")
    if not isinstance(version, str) or not version:
        raise CniError(CODE_INVALID_CONFIG, "network config has no cniVersion")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            CODE_INCOMPATIBLE_VERSION,
            f"cniVersion {_brief(version)} is not supported "
            f"(supported: {', '.join(SUPPORTED_VERSIONS)})",
        )
    if command in ("GC", "STATUS") and version != "1.1.0":
        raise CniError(
            CODE_INCOMPATIBLE_VERSION, f"{command} needs cniVersion 1.1.0, not {version}"
        )
    if command == "CHECK" and version in ("0.3.0", "0.3.1"):
        raise CniError(
            CODE_INCOMPATIBLE_VERSION, f"CHECK needs cniVersion 0.4.0 or later, not {version}"
        )
    name = config.get("name")
    if not isinstance(name, str) or not name:
        raise CniError(CODE_INVALID_CONFIG, "network config has no 'name'")
    plugin = config.get("plugin")
    if not isinstance(plugin, dict) or not isinstance(plugin.get("type"), str):
        raise CniError(
            CODE_INVALID_CONFIG,
            f"network config 'plugin' must be an object with a 'type', not {_brief(plugin)}",
        )
    if not _PLUGIN_TYPE.match(plugin["type"]):
        raise CniError(
            CODE_INVALID_CONFIG, f"plugin.type {_brief(plugin['type'])} is not a plugin name"
        )
    ipam = config.get("ipam")
    if not isinstance(ipam, dict) or not isinstance(ipam.get("type"), str) or not ipam["type"]:
        raise CniError(
            CODE_INVALID_CONFIG,
            f"network config 'ipam' must be an object with a 'type', not {_brief(ipam)}",
        )
    if command in ("VERSION", "GC", "STATUS"):
        return CniRequest(command=command, version=version, config=config)
    container_id = _require(env, "CNI_CONTAINERID", _CONTAINER_ID)
    ifname = _require(env, "CNI_IFNAME", _IFNAME)
    netns = _require(env, "CNI_NETNS") if command in ("ADD", "CHECK") else env.get("CNI_NETNS", "")
    raw_args = env.get("CNI_ARGS", "")
    return CniRequest(
        command=command,
        version=version,
        config=config,
        container_id=container_id,
        netns=netns,
        ifname=ifname,
        path=tuple(p for p in env.get("CNI_PATH", "").split(os.pathsep) if p),
        args=parse_cni_args(raw_args),
        raw_args=raw_args,
    )


def _cidr_key(value: str) -> tuple[int, int, int] | None:
    """(IP version, network, prefix) of a CIDR, to compare spellings; None if not one."""
    try:
        net = netaddr.IPNetwork(value)
    except (netaddr.AddrFormatError, ValueError, TypeError):
        return None
    return (net.version, int(net.network), net.prefixlen)


def passed_device_ids(config: Mapping[str, Any]) -> list[str]:
    """The PCI devices the runtime passed for this attachment, in order; [] for none.

    ``runtimeConfig.deviceID`` (the ``deviceID`` capability, a string or a
    list), else Multus' top-level ``deviceID`` (or ``pciBusID``), which
    Multus writes into the config when the NAD names a device-plugin resource
    and the pod holds a device of it.  Raises CniError(7) for a value that is
    not a string (or list of strings).
    """
    runtime = _runtime_config(config)
    for where, value in (
        ("runtimeConfig.deviceID", runtime.get("deviceID")),
        ("deviceID", config.get("deviceID")),
        ("pciBusID", config.get("pciBusID")),
    ):
        if value in (None, "", []):
            continue
        found = [value] if isinstance(value, str) else value
        if not isinstance(found, list) or not all(isinstance(d, str) and d for d in found):
            raise CniError(
                CODE_INVALID_CONFIG,
                f"{where} must be a PCI address (or a list), not {_brief(value)}",
            )
        return list(found)
    return []


def _runtime_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    runtime = config.get("runtimeConfig") or {}
    if not isinstance(runtime, Mapping):
        raise CniError(
            CODE_INVALID_CONFIG, f"runtimeConfig must be an object, not {_brief(runtime)}"
        )
    return runtime


def requested_ips(config: Mapping[str, Any]) -> tuple[str, ...]:
    """``runtimeConfig.ips`` (the CNI ``ips`` capability): the addresses the pod asks for.

    Entries are ``ADDRESS`` or ``ADDRESS/PREFIX``, as Multus passes them from
    the pod's annotation; the IPAM plugin maps them to NICs.  CniError(7) for
    anything but a list of strings.
    """
    ips = _runtime_config(config).get("ips")
    if ips in (None, []):
        return ()
    if not isinstance(ips, list) or not all(isinstance(ip, str) and ip for ip in ips):
        raise CniError(
            CODE_INVALID_CONFIG, f"runtimeConfig.ips must be a list of addresses, not {_brief(ips)}"
        )
    return tuple(ips)


def requested_mac(config: Mapping[str, Any], args: Mapping[str, str] | None = None) -> str:
    """The MAC the pod asks for, lowercase with colons; "" for none.

    ``runtimeConfig.mac`` (the CNI ``mac`` capability), else CNI_ARGS ``MAC=``
    (which Multus passes too, and older runtimes only).  CniError(7) for
    anything but a unicast 48-bit MAC address.
    """
    mac = _runtime_config(config).get("mac") or (args or {}).get("MAC")
    if mac in (None, ""):
        return ""
    if not isinstance(mac, str) or not _MAC.match(mac):
        raise CniError(
            CODE_INVALID_CONFIG,
            f"runtimeConfig.mac {_brief(mac)} is not a MAC address (6 hex octets, e.g. "
            "02:00:00:00:00:01)",
        )
    normal = mac.replace("-", ":").lower()
    if int(normal[:2], 16) & 1:
        raise CniError(
            CODE_INVALID_CONFIG,
            f"runtimeConfig.mac {mac} is a multicast address; an interface needs a unicast one",
        )
    return normal


def check_requested_mac(mac: str, delegate: DelegateRecord, result: AttachResult) -> None:
    """CniError unless the delegate gave its pod interface the requested MAC.

    A driver whose delegate cannot set a MAC (ipvlan shares its master's)
    is refused here, and the ADD rolled back, rather than the pod started with
    another address than it asked for.
    """
    given = [
        str(i.get("mac", "")).lower()
        for i in result.interfaces
        if i.get("sandbox") and i.get("name") == delegate.ifname
    ]
    if given != [mac]:
        kind = delegate.config.get("type")
        raise CniError(
            CODE_OTHER,
            f"runtimeConfig.mac {mac} was asked for {delegate.ifname} (NIC {delegate.nic}), but "
            f"delegate {kind} gave it {given[0] if given and given[0] else 'another MAC'}: "
            f"the {kind} plugin does not set a requested MAC",
        )


def network_of(config: Mapping[str, Any], known: MultiNicNetwork | None) -> MultiNicNetwork:
    """The MultiNicNetwork a NAD config stands for (attach policy from ``known``)."""
    plugin = config["plugin"]
    policy = known.spec.attach_policy.to_dict() if known else config.get("attachPolicy") or {}
    body = {
        "metadata": {"name": config["name"]},
        "spec": {
            "subnet": config.get("subnet") or "",
            "ipam": json.dumps(config["ipam"]),
            "multiNICIPAM": bool(config.get("multiNICIPAM", False)),
            "masterNets": config.get("masterNets") or [],
            "plugin": {
                "cniVersion": plugin.get("cniVersion") or config["cniVersion"],
                "type": plugin["type"],
            },
            "attachPolicy": policy,
        },
    }
    return load_resource(MultiNicNetwork, body, f"NAD config {config['name']!r}")


def split_multipath(
    configs: Sequence[dict[str, Any]], ifnames: Sequence[str]
) -> list[dict[str, Any]]:
    """Take destinations reached through several gateways out of the delegates' IPAM.

    A delegate would install its own single-path route and the second one
    would collide; the agent installs one multipath route instead.
    :returns: ``{"dst", "nexthops": [{"gw", "dev"}]}`` for each such destination.
    """
    hops: dict[str, list[dict[str, str]]] = defaultdict(list)
    for config, ifname in zip(configs, ifnames, strict=True):
        for route in config.get("ipam", {}).get("routes") or []:
            if route.get("gw"):
                hops[route["dst"]].append({"gw": route["gw"], "dev": ifname})
    shared = {dst: via for dst, via in hops.items() if len(via) > 1}
    if not shared:
        return []
    for config in configs:
        ipam = config.get("ipam", {})
        if ipam.get("routes"):
            ipam["routes"] = [r for r in ipam["routes"] if r.get("dst") not in shared]
    return [{"dst": dst, "nexthops": via} for dst, via in shared.items()]


def nic_attachments(
    network: str, container_id: str, delegates: Sequence[DelegateRecord]
) -> list[NicAttachment]:
    """What a main plugin's ``multinic_nics_attached``/``_detached`` is told of each NIC."""
    return [
        NicAttachment(
            network=network,
            container_id=container_id,
            ifname=d.ifname,
            nic=d.nic,
            config=d.config,
            addresses=tuple(ip["address"] for ip in AttachResult.parse(d.result, d.ifname).ips),
            device_id=d.device_id,
            state=d.plugin_state,
        )
        for d in delegates
    ]


class CniServer:
    """Answers the shim's requests for one node."""

    def __init__(
        self,
        *,
        node: str,
        node_state: NodeState,
        journal: AllocationJournal,
        records: RecordStore,
        registry: PluginRegistry | None = None,
        cni_path: Sequence[str] = ("/opt/cni/bin", "/usr/lib/cni"),
        pod_resources: PodResourcesClient | None = None,
        events: EventRecorder | None = None,
        exec_delegates: bool = False,
    ) -> None:
        self.node = node
        self.node_state = node_state
        self.journal = journal
        self.records = records
        self.registry = registry or PluginRegistry()
        self.cni_path = tuple(cni_path)
        self.pod_resources = pod_resources
        self.events = events
        """Where Events on pods go (best-effort, off the request path); None: nowhere."""
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._lock_users: dict[tuple[str, str], int] = {}
        self._busy: set[tuple[str, str]] = set()
        self._delegate_versions: dict[str, tuple[str, ...]] = {}
        self._adopted_from: dict[str, IPPoolSpec] = {}
        self.exec_delegates = exec_delegates
        """Exec every delegate binary, even where a driver offers it in process."""
        self._durable_io = ThreadPoolExecutor(DURABLE_THREADS, thread_name_prefix="durable")
        """Where IPAM allocations and record writes wait for their fsyncs: off the
        event loop, several at once, so that concurrent ADDs share them."""

    async def _durably(self, work: Callable[..., T], *args: Any) -> T:
        """``work(*args)`` (which returns once its change is on disk) in a durable-I/O thread."""
        return await asyncio.get_running_loop().run_in_executor(self._durable_io, work, *args)

    def preload(self) -> None:
        """Load and validate every installed plugin once, before the first pod."""
        for info in self.registry.discover():
            if info.error:
                log.warning("plugin %s %r unusable: %s", info.kind, info.name, info.error)

    def reserve_known_addresses(self) -> None:
        """Before the first ADD: hold every address a record or a pool says is live.

        Attachment records on disk whose addresses the journal lost are held
        again, and the IPPools' allocations that no agent wrote (the
        predecessor's) are adopted, so no ADD can hand them out.
        """
        restored = self.restore_recorded()
        adopted = self.adopt_foreign()
        log.info(
            "addresses reserved before serving: %d restored from attachment records, "
            "%d adopted from IPPools",
            restored,
            adopted,
        )

    def restore_recorded(self) -> int:
        pools = self.node_state.all_pools()
        restored = 0
        for record in self.records.all():
            if record.ipam_type != "multi-nic-ipam" or self.journal.entries(
                record.network, record.container_id, record.ifname
            ):
                continue
            entries = []
            for delegate, address in zip(record.delegates, record.addresses, strict=False):
                ip = netaddr.IPAddress(address.split("/")[0])
                # The pool the address came from, if the node still has it
                # (else the entry only holds the address: no pool lists it).
                pool, index = "", -1
                for spec in pools:
                    block = parse_cidr(spec.pod_cidr)
                    if (spec.net_attach_def, spec.interface_name) == (
                        record.network,
                        delegate.nic,
                    ) and ip in block:
                        pool, index = (
                            ippool_name(record.network, spec.pod_cidr),
                            int(ip) - block.first,
                        )
                entries.append(
                    AllocationEntry(
                        network=record.network,
                        pool=pool,
                        interface_name=delegate.nic,
                        index=index,
                        address=str(ip),
                        container_id=record.container_id,
                        if_name=record.ifname,
                        pod=record.pod,
                        namespace=record.namespace,
                    )
                )
            restored += len(self.journal.restore(entries))
        return restored

    def adopt_foreign(self) -> int:
        """Adopt the allocations no agent wrote, of every pool of this node that changed."""
        adopted = 0
        for spec in self.node_state.all_pools():
            block = PoolBlock.from_spec(spec)
            if self._adopted_from.get(block.name) is spec:
                continue
            foreign = [a.model_dump(by_alias=True) for a in spec.allocations if not a.container_id]
            if foreign:
                adopted += len(self.journal.adopt(spec.net_attach_def, block, foreign))
            self._adopted_from[block.name] = spec
        return adopted

    # ------------------------------------------------------------------ entry

    async def handle(self, env: Mapping[str, str], stdin: str) -> tuple[int, str, str]:
        """One shim request: (exit status, stdout, stderr).  Never raises."""
        try:
            if env.get("CNI_COMMAND") == "VERSION":
                return 0, version_reply(stdin), ""
            request = parse_request(env, stdin)
            result = await self.dispatch(request)
            return 0, json.dumps(result) if result is not None else "", ""
        except CniError as e:
            error = e
        except TryAgainError as e:
            error = CniError(CODE_TRY_AGAIN, str(e))
        except (ConfigError, PluginNotFoundError) as e:
            error = CniError(CODE_INVALID_CONFIG, str(e))
        except MultinicError as e:
            error = CniError(CODE_OTHER, str(e))
        except Exception as e:
            log.exception("CNI %s failed unexpectedly", env.get("CNI_COMMAND"))
            error = CniError(CODE_OTHER, f"internal error: {type(e).__name__}: {e}")
        log.info(
            "CNI %s container %s ifname %s: error %d: %s",
            _loggable(env.get("CNI_COMMAND", "")),
            _loggable(env.get("CNI_CONTAINERID", "")),
            _loggable(env.get("CNI_IFNAME", "")),
            error.code,
            _loggable(error.msg),
            extra=log_fields(env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")),
        )
        return 1, json.dumps(error.to_dict(reply_version(stdin))), ""

    async def dispatch(self, request: CniRequest) -> dict[str, Any] | None:
        if request.command == "ADD":
            return await self.add(request)
        if request.command == "DEL":
            await self.delete(request)
        elif request.command == "CHECK":
            await self.check(request)
        elif request.command == "GC":
            await self.gc(request)
        elif request.command == "STATUS":
            self.status(request)
        return None

    @contextlib.asynccontextmanager
    async def _exclusive(self, key: tuple[str, str]) -> AsyncIterator[None]:
        """Serialise commands for one (containerID, ifname); GC skips busy keys."""
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._lock_users[key] = self._lock_users.get(key, 0) + 1
        try:
            async with lock:
                self._busy.add(key)
                try:
                    yield
                finally:
                    self._busy.discard(key)
        finally:
            # Forget the lock with its last user, so that the table does not
            # grow with every container the node ever ran.
            self._lock_users[key] -= 1
            if not self._lock_users[key]:
                del self._lock_users[key]
                del self._locks[key]

    # ------------------------------------------------------------------ ADD

    async def add(self, request: CniRequest) -> dict[str, Any]:
        async with self._exclusive(request.key):
            existing = self.records.get(*request.key)
            if existing is not None:
                if existing.network != request.name:
                    raise CniError(
                        CODE_INVALID_CONFIG,
                        f"container {request.container_id} ifname {request.ifname} is already "
                        f"attached to network {existing.network!r}",
                    )
                log.info("ADD %s/%s repeated: returning the recorded result", *request.key)
                result = AttachResult.parse(existing.result, "recorded result")
                return result.render(request.version)
            return await self._attach(request)

    def _network_resources(self, request: CniRequest) -> tuple[str, ...]:
        """The device-plugin resources the network's NADs name (``resourceName`` annotation).

        The NAD's annotations are not in its config, so they are asked of the
        main plugin that writes them, with the network object the agent knows.
        A driver that needs more of the cluster than the agent holds names none.
        """
        known = self.node_state.network(request.name)
        if known is None:
            return ()
        try:
            plugin = self.registry.main_plugin(request.config["plugin"]["type"])
            attachment = plugin.network_attachment(known, StaticCluster())
        except MultinicError as e:
            log.debug("network %s: no resource name from its main plugin: %s", request.name, e)
            return ()
        return resource_names(attachment.annotations.get(RESOURCE_NAME_ANNOTATION, ""))

    async def _pod_devices(
        self, request: CniRequest, network: MultiNicNetwork, resources: Sequence[str]
    ) -> PodDevices | None:
        """The pod's device allocations from the kubelet, when selection may use them."""
        strategy = network.spec.attach_policy.strategy or "none"
        if self.pod_resources is None or (not resources and strategy in _DEVICE_BLIND_POLICIES):
            return None
        if passed_device_ids(request.config):
            return None  # Multus already passed the allocation; it wins.
        pod = request.pod
        try:
            return await self.pod_resources.pod_devices_async(pod.namespace, pod.name)
        except TryAgainError as e:
            if resources:
                # The network's devices are the selection: without them ADD
                # would attach the wrong NICs.
                raise TryAgainError(
                    f"network {network.name} needs the pod's {', '.join(resources)} devices: {e}"
                ) from e
            log.warning("network %s: pod %s/%s: %s", network.name, pod.namespace, pod.name, e)
            return None

    def _select(
        self,
        request: CniRequest,
        network: MultiNicNetwork,
        resources: Sequence[str] = (),
        pod_devices: PodDevices | None = None,
    ) -> list[SelectedNic]:
        cni_args = (request.config.get("args") or {}).get("cni")
        try:
            pod_args = PodArgs.from_cni_args(cni_args if isinstance(cni_args, dict) else None)
        except ValueError as e:
            raise CniError(CODE_INVALID_CONFIG, str(e)) from e
        device_ids = passed_device_ids(request.config)
        if not device_ids and pod_devices is not None:
            device_ids = pod_devices.device_ids(resources)
        if device_ids:
            # Device-plugin allocations win: no attach policy runs.
            try:
                nics = select_devices(device_ids, self.node_state.nics())
            except SelectionError as e:
                raise self._selection_failed(request, network, e) from e
            self._check_ifnames(request, nics)
            return nics
        strategy = network.spec.attach_policy.strategy or "none"
        try:
            policy = self.registry.policy(strategy)
        except PluginNotFoundError as e:
            log.warning("network %s: %s; using attach policy 'none'", network.name, e)
            self._pod_event(
                request,
                EVENT_POLICY_FALLBACK,
                f"network {network.name}: attachPolicy.strategy {strategy!r}: {e}; "
                "the NICs were chosen by attach policy 'none'",
            )
            policy = self.registry.policy("none")
            strategy = "none"
        selection = SelectionRequest(
            network=network,
            nics=self.node_state.nics(),
            pod=request.pod,
            args=pod_args,
            usage=self.records.usage(),
            device_classes=self.node_state.device_class,
        )
        if pod_devices is not None:
            selection = replace(
                selection,
                device_ids=tuple(pod_devices.other_device_ids(resources)),
                numa_node_of=pod_devices.numa_node_of,
            )
        try:
            nics = policy.select_nics(selection)
        except SelectionError as e:
            raise self._selection_failed(request, network, e) from e
        if not nics:
            raise self._selection_failed(
                request,
                network,
                NicMissingError(f"attach policy {strategy!r} selected no NIC on node {self.node}"),
            )
        self._check_ifnames(request, nics)
        if strategy == "none" and not (pod_args.masters or pod_args.nics):
            self._report_missing_master_nets(request, network, nics)
        return nics

    def _pod_event(self, request: CniRequest, reason: str, message: str) -> None:
        """A Warning Event on the request's pod, when the agent has a cluster and a pod name.

        Queued, never waited for: the recorder writes it in its own thread.
        """
        pod = request.pod
        if self.events is not None and pod.name and pod.namespace:
            self.events.warning(pod_ref(pod.namespace, pod.name, pod.uid), reason, message)

    def _selection_failed(
        self, request: CniRequest, network: MultiNicNetwork, error: SelectionError
    ) -> CniError:
        """The CNI error of a failed selection; a missing NIC is an Event on the pod too."""
        message = f"network {network.name}: {error}"
        if isinstance(error, NicMissingError):
            self._pod_event(request, EVENT_NIC_MISSING, f"node {self.node}: {message}")
        return CniError(CODE_OTHER, message)

    def _report_missing_master_nets(
        self, request: CniRequest, network: MultiNicNetwork, nics: Sequence[SelectedNic]
    ) -> None:
        """An Event when the pod gets fewer NICs than masterNets because the node lacks some."""
        present = {_cidr_key(n.net_address) for n in self.node_state.nics()}
        missing = [m for m in network.spec.master_nets if _cidr_key(m) not in present]
        if missing:
            self._pod_event(
                request,
                EVENT_NIC_MISSING,
                f"node {self.node} has no NIC on masterNets {', '.join(missing)} of network "
                f"{network.name}: the pod got {len(nics)} NIC(s) "
                f"({', '.join(n.name for n in nics)}) instead of {len(network.spec.master_nets)}",
            )

    def _check_ifnames(self, request: CniRequest, nics: Sequence[SelectedNic]) -> None:
        longest = f"{request.ifname}-{len(nics) - 1}"
        if len(longest) > 15:
            raise CniError(
                CODE_INVALID_ENV,
                f"CNI_IFNAME {request.ifname!r} is too long: "
                f"the NIC names ({longest!r}) exceed 15 characters",
            )

    def _ipam_request(
        self, request: CniRequest, network: MultiNicNetwork, nics: Sequence[SelectedNic]
    ) -> IpamRequest:
        if request.config["ipam"].get("type") == "multi-nic-ipam":
            # Structural, not per path: no address is chosen before every
            # allocation the node's pools list is held in the journal.
            self.adopt_foreign()
        pools = {p.interface_name: p for p in self.node_state.pools_for(network.name)}
        static_ips = [ip for ip in request.args.get("IP", "").split(",") if ip]
        return IpamRequest(
            network=network,
            ipam=request.config["ipam"],
            nics=tuple(nics),
            container_id=request.container_id,
            if_name=request.ifname,
            pod=request.pod,
            static_ips=tuple(static_ips),
            requested_ips=requested_ips(request.config),
            context={CONTEXT_JOURNAL: self.journal, CONTEXT_POOLS: pools, "node": self.node},
        )

    async def _attach(self, request: CniRequest) -> dict[str, Any]:
        network = network_of(request.config, self.node_state.network(request.name))
        mac = requested_mac(request.config, request.args)
        requested_ips(request.config)  # refused before any work when malformed
        resources = self._network_resources(request)
        nics = self._select(
            request, network, resources, await self._pod_devices(request, network, resources)
        )
        ipam_plugin = self.registry.ipam(request.config["ipam"]["type"])
        main_plugin = self.registry.main_plugin(request.config["plugin"]["type"])
        ipam_request = self._ipam_request(request, network, nics)
        ifnames = [f"{request.ifname}-{i}" for i in range(len(nics))]
        async with contextlib.AsyncExitStack() as undo:
            try:
                # Durable before it returns (the hook's contract), so before any
                # delegate puts an address in the pod; in a thread, so that the
                # fsyncs of concurrent ADDs are shared and the loop goes on.
                sections = await self._durably(ipam_plugin.add, ipam_request)
            except PoolExhaustedError as e:
                self._pod_event(
                    request,
                    EVENT_POOL_EXHAUSTED,
                    f"network {network.name} on node {self.node}: {e}",
                )
                raise
            undo.callback(self._release, ipam_plugin, ipam_request)
            configs = [
                main_plugin.delegate_config(request.config, nic, section)
                for nic, section in zip(nics, sections, strict=True)
            ]
            if mac:
                # The first NIC's interface takes it, through the delegate's own
                # runtimeConfig.mac (the CNI "mac" capability); checked below.
                configs[0]["runtimeConfig"] = {
                    **(configs[0].get("runtimeConfig") or {}),
                    "mac": mac,
                }
            multipath = split_multipath(configs, ifnames)
            binaries = self._find_binaries(configs, request.path)
            for config, binary in zip(configs, binaries, strict=True):
                config["cniVersion"] = await self._delegate_version(binary, request.version)
            delegates = [
                DelegateRecord(ifname=i, nic=n.name, binary=b, config=c, device_id=n.device_id)
                for i, n, b, c in zip(ifnames, nics, binaries, configs, strict=True)
            ]
            for delegate in delegates:
                # Registered before the exec: a delegate that failed half-way
                # gets its DEL too (DEL is idempotent), as a runtime would do.
                undo.push_async_callback(self._delegate_cleanup, request, delegate)
            outcomes = await self._exec_delegates("ADD", request, delegates, request.netns)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome
            results = []
            for delegate, outcome in zip(delegates, outcomes, strict=True):
                assert isinstance(outcome, dict)
                delegate.result = outcome
                results.append(
                    AttachResult.parse(
                        outcome, f"delegate {delegate.config['type']} ({delegate.ifname})"
                    )
                )
            if mac:
                check_requested_mac(mac, delegates[0], results[0])
            if main_plugin.implements("multinic_nics_attached"):
                # The driver's side effects outside the pod (a cloud API): in a
                # thread, since they block; undone first on a later failure.
                attachments = nic_attachments(request.name, request.container_id, delegates)
                states = await asyncio.to_thread(main_plugin.nics_attached, attachments)
                for delegate, state in zip(delegates, states, strict=True):
                    delegate.plugin_state = state
                undo.push_async_callback(self._nics_cleanup, main_plugin, request, delegates)
            if multipath:
                try:
                    await asyncio.to_thread(pod_netns.program_multipath, request.netns, multipath)
                except Exception as e:  # pyroute2's NetlinkError is not an OSError
                    dsts = ", ".join(r["dst"] for r in multipath)
                    raise CniError(
                        CODE_OTHER, f"multipath route(s) {dsts} in {request.netns} failed: {e}"
                    ) from e
            extra = [{"dst": r["dst"], "gw": h["gw"]} for r in multipath for h in r["nexthops"]]
            merged = merge_results(results, extra_routes=extra, dns=request.config.get("dns"))
            record = AttachmentRecord(
                container_id=request.container_id,
                ifname=request.ifname,
                netns=request.netns,
                network=request.name,
                cni_version=request.version,
                ipam_type=request.config["ipam"]["type"],
                ipam=request.config["ipam"],
                delegates=delegates,
                addresses=[ip["address"] for ip in merged.ips],
                pod=request.pod.name,
                namespace=request.pod.namespace,
                pod_uid=request.pod.uid,
                multipath=multipath,
                result=merged.render(SUPPORTED_VERSIONS[-1]),
                main_plugin=main_plugin.name,
            )
            await self._store(record)
            undo.pop_all()
        log.info(
            "ADD %s/%s network %s: %s on %s",
            request.container_id,
            request.ifname,
            request.name,
            ", ".join(record.addresses),
            ", ".join(n.name for n in nics),
            extra=log_fields(
                *request.key, request.name, f"{request.pod.namespace}/{request.pod.name}"
            ),
        )
        return merged.render(request.version)

    async def _store(self, record: AttachmentRecord) -> None:
        """The record on disk (before the reply, as the journal entry is), then in memory."""
        await self._durably(self.records.write, record)
        self.records.keep(record)

    def _release(self, plugin: IpamPlugin, ipam_request: IpamRequest) -> None:
        plugin.delete(ipam_request)

    async def _nics_cleanup(
        self, plugin: MainPlugin, request: CniRequest, delegates: Sequence[DelegateRecord]
    ) -> None:
        attachments = nic_attachments(request.name, request.container_id, delegates)
        try:
            await asyncio.to_thread(plugin.nics_detached, attachments)
        except MultinicError as e:
            log.error("rollback: main plugin %s could not undo its ADD: %s", plugin.name, e)

    async def _delegate_cleanup(self, request: CniRequest, delegate: DelegateRecord) -> None:
        try:
            await self._exec("DEL", request, delegate, request.netns)
        except (CniError, OSError) as e:
            log.error("rollback: DEL of %s (%s) failed: %s", delegate.ifname, delegate.nic, e)

    # ------------------------------------------------------------------ delegates

    def _find_binaries(
        self, configs: Sequence[Mapping[str, Any]], request_path: Sequence[str]
    ) -> list[str]:
        """Each config's delegate binary, looked up once per plugin type (NICs share one)."""
        found = {
            kind: self._find_binary(kind, request_path)
            for kind in dict.fromkeys(str(c["type"]) for c in configs)
        }
        return [found[str(c["type"])] for c in configs]

    def _find_binary(self, plugin_type: str, request_path: Sequence[str]) -> str:
        if not _PLUGIN_TYPE.match(plugin_type):
            raise CniError(
                CODE_INVALID_CONFIG, f"delegate type {plugin_type!r} is not a plugin name"
            )
        directories = [*request_path, *self.cni_path]
        for directory in directories:
            candidate = os.path.join(directory, plugin_type)
            if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
                return candidate
        raise CniError(
            CODE_OTHER,
            f"delegate plugin {plugin_type!r} not found in {os.pathsep.join(directories)}",
        )

    async def _delegate_version(self, binary: str, requested: str) -> str:
        """The version to give the delegate: the highest it supports not above ``requested``."""
        supported = self._delegate_versions.get(binary)
        if supported is None:
            out = await self._run(
                binary, {"CNI_COMMAND": "VERSION"}, json.dumps({"cniVersion": requested})
            )
            try:
                supported = tuple(json.loads(out[1])["supportedVersions"])
            except (ValueError, KeyError, TypeError) as e:
                raise CniError(
                    CODE_OTHER, f"delegate {binary} answered VERSION with {out[1]!r}"
                ) from e
            self._delegate_versions[binary] = supported
        version = best_common_version(requested, supported)
        if version is None:
            raise CniError(
                CODE_INCOMPATIBLE_VERSION,
                f"delegate {binary} supports {', '.join(supported)}, nothing up to {requested}",
            )
        return version

    def _inprocess(
        self, env: Mapping[str, str], config: Mapping[str, Any]
    ) -> InProcessDelegate | None:
        """The driver's in-process stand-in for this delegate call, if one takes it."""
        if self.exec_delegates:
            return None
        plugin = self.registry.inprocess_delegate(str(config.get("type")))
        return plugin if plugin is not None and plugin.accepts(env, config) else None

    async def _run(self, binary: str, env: Mapping[str, str], stdin: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            binary,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"), **env},
        )
        try:
            # A deadline on this task, not wait_for's extra task per delegate.
            async with asyncio.timeout(DELEGATE_TIMEOUT_S):
                out, err = await process.communicate(stdin.encode())
        except TimeoutError as e:
            process.kill()
            await process.wait()
            raise CniError(
                CODE_OTHER, f"delegate {binary} did not answer in {DELEGATE_TIMEOUT_S:.0f} s"
            ) from e
        return process.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace")

    async def _exec_delegates(
        self, command: str, request: CniRequest, delegates: Sequence[DelegateRecord], netns: str
    ) -> list[dict[str, Any] | BaseException]:
        """Every delegate's verb: its result or its error, in NIC order.

        At once when the agent chose every address; one after another when a
        delegate runs an allocating IPAM plugin itself (see
        :func:`_allocates_in_delegate`).  Then an ADD stops at the first
        failure, as Multus does; a DEL runs every delegate (each releases its own).
        """
        if not any(_allocates_in_delegate(d) for d in delegates):
            return await asyncio.gather(
                *(self._exec(command, request, d, netns) for d in delegates),
                return_exceptions=True,
            )
        outcomes: list[dict[str, Any] | BaseException] = []
        for delegate in delegates:
            try:
                outcomes.append(await self._exec(command, request, delegate, netns))
            except Exception as e:
                outcomes.append(e)
                if command == "ADD":
                    break
        return outcomes

    async def _exec(
        self,
        command: str,
        request: CniRequest,
        delegate: DelegateRecord,
        netns: str,
        config: Mapping[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Run one delegate verb; its result, or CniError carrying the delegate's code."""
        forwarded = {
            k: v for k, v in parse_cni_args(request.raw_args).items() if k not in _AGENT_ARGS
        }
        if forwarded:
            # The reference plugins refuse CNI_ARGS keys they do not know (K8S_POD_*)
            # unless told to ignore them; not every runtime says so.
            forwarded = {"IgnoreUnknown": "1", **forwarded}
        args = ";".join(f"{k}={v}" for k, v in forwarded.items())
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": request.container_id,
            "CNI_NETNS": netns,
            "CNI_IFNAME": delegate.ifname,
            "CNI_PATH": os.pathsep.join([*request.path, *self.cni_path]),
            "CNI_ARGS": args,
        }
        stdin = json.dumps(config if config is not None else delegate.config)
        inprocess = self._inprocess(env, delegate.config)
        if inprocess is not None:
            status, out, err = await asyncio.to_thread(inprocess.run, env, stdin)
        else:
            status, out, err = await self._run(delegate.binary, env, stdin)
        kind = delegate.config.get("type")
        what = f"delegate {kind} {command} for {delegate.ifname} (NIC {delegate.nic})"
        if status != 0:
            try:
                reply = json.loads(out)
                code, msg = int(reply.get("code", CODE_OTHER)), str(reply.get("msg", ""))
                details = str(reply.get("details", ""))
            except (ValueError, TypeError, AttributeError):
                code, msg, details = CODE_OTHER, (out or err).strip()[:500], ""
            raise CniError(code, f"{what} failed: {msg}", details)
        if not out.strip():
            return {}
        try:
            result = json.loads(out)
        except ValueError as e:
            raise CniError(CODE_OTHER, f"{what} printed invalid JSON: {out[:200]!r}") from e
        if not isinstance(result, dict):
            raise CniError(CODE_OTHER, f"{what} printed {out[:200]!r}, not a result object")
        return result

    # ------------------------------------------------------------------ DEL

    async def delete(self, request: CniRequest) -> None:
        async with self._exclusive(request.key):
            self._release_adopted(request)
            record = self.records.get(*request.key)
            if record is None:
                # Nothing recorded: an ADD that failed or was cut short by a
                # crash.  Its addresses (if any) are still released.
                released = self.journal.release(request.name, request.container_id, request.ifname)
                log.info(
                    "DEL %s/%s: no attachment recorded%s",
                    *request.key,
                    f"; released {', '.join(e.address for e in released)}" if released else "",
                    extra=log_fields(*request.key, request.name),
                )
                return
            await self._detach(record, request)

    def _release_adopted(self, request: CniRequest) -> None:
        """A DEL of a pod also frees what the predecessor allocated to it on this network."""
        pod = request.pod
        released = self.journal.release_adopted(request.name, pod.namespace, pod.name)
        if released:
            log.info(
                "DEL %s/%s: released %s adopted from the predecessor for pod %s/%s",
                *request.key,
                ", ".join(e.address for e in released),
                pod.namespace,
                pod.name,
                extra=log_fields(*request.key, request.name, f"{pod.namespace}/{pod.name}"),
            )

    async def _detach(self, record: AttachmentRecord, request: CniRequest | None = None) -> None:
        """Undo a recorded attachment: delegates' DEL, addresses, record."""
        netns = (request.netns if request and request.netns else "") or record.netns
        if netns and not os.path.exists(netns):
            # The namespace (and the interfaces in it) is gone; the delegates
            # still run DEL with no netns so that their own IPAM releases.
            netns = ""
        base = request or CniRequest(
            command="DEL",
            version=record.cni_version,
            config={},
            container_id=record.container_id,
            ifname=record.ifname,
        )
        outcomes = await self._exec_delegates("DEL", base, record.delegates, netns)
        failures = [o for o in outcomes if isinstance(o, BaseException)]
        if failures:
            # Keep the record: the runtime retries DEL until it succeeds.
            first = failures[0]
            raise first if isinstance(first, CniError) else CniError(CODE_OTHER, str(first))
        # Before the addresses are released: none may be reused while the
        # driver's side effects (e.g. a cloud assignment) still hold it.
        await self._nics_detached(record)
        released = await self._durably(
            self.journal.release, record.network, record.container_id, record.ifname
        )
        if record.ipam_type != "multi-nic-ipam":
            self._release_other(record)
        self.records.delete(*record.key)
        log.info(
            "DEL %s/%s network %s: released %s",
            record.container_id,
            record.ifname,
            record.network,
            ", ".join(e.address for e in released) or "no agent-held address",
            extra=log_fields(*record.key, record.network, f"{record.namespace}/{record.pod}"),
        )

    async def _nics_detached(self, record: AttachmentRecord) -> None:
        """The main plugin's ``multinic_nics_detached`` for a recorded attachment."""
        if not record.main_plugin:
            return
        try:
            plugin = self.registry.main_plugin(record.main_plugin)
        except MultinicError as e:
            if any(d.plugin_state for d in record.delegates):
                # It did something outside the pod that only it can undo.
                raise CniError(
                    CODE_OTHER,
                    f"attachment {record.container_id}/{record.ifname} needs main plugin "
                    f"{record.main_plugin!r} to undo its ADD: {e}",
                ) from e
            return
        attachments = nic_attachments(record.network, record.container_id, record.delegates)
        await asyncio.to_thread(plugin.nics_detached, attachments)

    async def release_attachment(self, network: str, container_id: str, ifname: str) -> list[str]:
        """Release one attachment whose pod is known to be gone (leak collection).

        As GC does for one key: a recorded attachment is DELeted (delegates,
        addresses, record); addresses journaled without a record are released.
        An attachment with a command in flight is left alone.
        :returns: the released addresses.
        """
        key = (container_id, ifname)
        if key in self._busy:
            return []
        async with self._exclusive(key):
            record = self.records.get(*key)
            if record is not None and record.network == network:
                await self._detach(record)
                return list(record.addresses)
            return [e.address for e in self.journal.release(network, container_id, ifname)]

    def _release_other(self, record: AttachmentRecord) -> None:
        try:
            plugin = self.registry.ipam(record.ipam_type)
            network = load_resource(
                MultiNicNetwork,
                {
                    "metadata": {"name": record.network},
                    "spec": {
                        "ipam": json.dumps(record.ipam),
                        "plugin": {
                            "type": record.delegates[0].config.get("type", "unknown")
                            if record.delegates
                            else "unknown"
                        },
                    },
                },
                "attachment record",
            )
            plugin.delete(
                IpamRequest(
                    network=network,
                    ipam=record.ipam,
                    nics=tuple(
                        SelectedNic(name=d.nic, device_id=d.device_id) for d in record.delegates
                    ),
                    container_id=record.container_id,
                    if_name=record.ifname,
                    context={CONTEXT_JOURNAL: self.journal, "node": self.node},
                )
            )
        except MultinicError as e:
            log.warning("IPAM %s release of %s/%s: %s", record.ipam_type, *record.key, e)

    # ------------------------------------------------------------------ CHECK

    async def check(self, request: CniRequest) -> None:
        async with self._exclusive(request.key):
            record = self.records.get(*request.key)
            if record is None or record.network != request.name:
                raise CniError(
                    CODE_OTHER,
                    f"no attachment of container {request.container_id} ifname {request.ifname} "
                    f"to network {request.name!r} is recorded on node {self.node}",
                )
            expected = [
                (d.ifname, [ip["address"] for ip in AttachResult.parse(d.result).ips])
                for d in record.delegates
            ]
            problems = await asyncio.to_thread(
                pod_netns.check_pod_netns, request.netns, expected, record.multipath
            )
            if problems:
                raise CniError(CODE_OTHER, "; ".join(problems))
            checks = [
                self._exec("CHECK", request, d, request.netns, {**d.config, "prevResult": d.result})
                for d in record.delegates
                if d.config.get("cniVersion") not in ("0.3.0", "0.3.1")
            ]
            outcomes = await asyncio.gather(*checks, return_exceptions=True)
            for outcome in outcomes:
                if isinstance(outcome, BaseException):
                    raise outcome

    # ------------------------------------------------------------------ GC, STATUS

    async def gc(self, request: CniRequest) -> None:
        valid_raw = request.config.get(VALID_ATTACHMENTS, [])
        if not isinstance(valid_raw, list):
            raise CniError(
                CODE_INVALID_CONFIG, f"{VALID_ATTACHMENTS} must be a list, not {valid_raw!r}"
            )
        valid = set()
        for entry in valid_raw:
            if (
                not isinstance(entry, dict)
                or not isinstance(entry.get("containerID"), str)
                or not isinstance(entry.get("ifname"), str)
            ):
                raise CniError(
                    CODE_INVALID_CONFIG,
                    f"{VALID_ATTACHMENTS} entry {entry!r} needs containerID and ifname",
                )
            valid.add((entry["containerID"], entry["ifname"]))
        stale = [
            r
            for r in self.records.of_network(request.name)
            if r.key not in valid and r.key not in self._busy
        ]
        for record in stale:
            async with self._exclusive(record.key):
                if self.records.get(*record.key) is record:
                    await self._detach(record)
        leaked = 0
        for network, container_id, ifname in self.journal.attachments(request.name):
            key = (container_id, ifname)
            if not container_id:
                # Adopted from the predecessor: no attachment the runtime could
                # list names it, so only its pod's DEL or leak collection frees it.
                continue
            if key in valid or key in self._busy or self.records.get(*key) is not None:
                continue
            leaked += len(self.journal.release(network, container_id, ifname))
        log.info(
            "GC network %s: %d attachments and %d unrecorded addresses released",
            request.name,
            len(stale),
            leaked,
        )

    def status(self, request: CniRequest) -> None:
        ipam_type = request.config["ipam"]["type"]
        if ipam_type == "multi-nic-ipam" and not self.node_state.pools_for(request.name):
            raise CniError(
                CODE_NOT_AVAILABLE,
                f"network {request.name!r} has no IPPool on node {self.node} yet",
            )
