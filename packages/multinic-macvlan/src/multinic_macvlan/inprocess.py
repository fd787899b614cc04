"""The reference ``macvlan`` CNI plugin, with static IPAM, done inside the agent.

What the agent would otherwise exec per NIC: containernetworking-plugins'
``macvlan`` (as Debian's containernetworking-plugins 1.1.1 ships it, the
agent image's and the tests' reference), which itself execs the ``static``
IPAM plugin.  The same netlink requests, in the same order, with the same
outcome and the same result JSON and error codes:

ADD
    the master looked up (``Link not found``) and the MTU checked against it
    (``invalid MTU``); a macvlan of the config's ``mode`` created on it
    under a random ``vethXXXXXXXX`` name with ``mtu``, the MAC
    (``mac``, else ``MAC=`` in CNI_ARGS, else ``runtimeConfig.mac``) and
    txqueuelen 0, straight into the pod's namespace (``IFLA_NET_NS_FD``);
    there renamed to CNI_IFNAME (``failed to rename macvlan``: the name is
    taken; the rename also makes ``name_assign_type`` 4, as the plugin's
    links have it), ``arp_notify`` set, the static addresses added (IPv6 enabled on
    ``lo`` and the interface first when an IPv6 address comes), the link set
    up, IPv6 DAD waited for when there is an IPv6 gateway, the routes added
    (gateway: the route's, else the first address gateway of its family).
    Without IPAM the link is only set up.  Result: the interface (name, MAC,
    sandbox), the addresses with ``interface: 0`` and their gateway, the
    routes, and the config's top-level ``dns``.
DEL
    the interface deleted in the pod's namespace; no netns, a namespace
    that is gone, or no such interface is success.
CHECK
    as the plugin checks: the master, the static addresses against
    ``prevResult``, the interface (kind, mode, MAC), its addresses and
    routes in the namespace.

Where it differs from 1.1.1, it does what later releases do: DEL does not
look up the master (1.1.1 fails the DEL of a pod whose master NIC is gone,
fixed in v1.4.0), and an ADD that fails after the link was created deletes
it (1.1.1 leaves it; the agent's rollback DEL removes it either way).  The
``static`` binary is not needed.

It takes only calls it does exactly as the binary (:meth:`accepts`): other
IPAM types, ``runtimeConfig.ips``/``args`` (static's other address
sources), ``linkInContainer``/``bcqueuelen`` (later releases' keys),
values of the wrong JSON type or addresses Go and Python might read
differently go to the binary.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from multinic_core.inprocess import DelegateCall, DelegateError, InProcessPlugin, parse_cni_args
from multinic_macvlan import netlink
from multinic_macvlan.netlink import MACVLAN_MODES, NetlinkError, Rtnl

log = logging.getLogger(__name__)

IPInterface = ipaddress.IPv4Interface | ipaddress.IPv6Interface
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-])[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}\Z")
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})
# Keys only later releases read: with them the binary decides.
_LATER_KEYS = ("linkInContainer", "bcqueuelen")
SETTLE_TIMEOUT_S = 10.0
SETTLE_INTERVAL_S = 0.05


def _ip(text: Any) -> IPAddress | None:
    """``text`` as an address both Go's ``net.ParseIP`` and Python read the same; else None."""
    if not isinstance(text, str) or "%" in text:
        return None
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return None  # Go takes it for IPv4
    return address


def _cidr(text: Any) -> IPInterface | None:
    """``ADDRESS/PREFIX`` as Go's ``net.ParseCIDR`` reads it (host bits kept); else None."""
    if not isinstance(text, str) or text.count("/") != 1:
        return None
    address, prefix = text.split("/")
    if not prefix.isascii() or not prefix.isdigit() or (len(prefix) > 1 and prefix[0] == "0"):
        return None
    ip = _ip(address)
    if ip is None or int(prefix) > ip.max_prefixlen:
        return None
    return ipaddress.ip_interface(f"{ip}/{prefix}")


def _mac(text: Any) -> bool:
    return isinstance(text, str) and bool(_MAC.match(text))


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _dns_ok(dns: Any) -> bool:
    if dns is None:
        return True
    if not isinstance(dns, dict):
        return False
    return all(
        dns.get(key) is None or _strings(dns[key]) for key in ("nameservers", "search", "options")
    ) and (dns.get("domain") is None or isinstance(dns["domain"], str))


def _dns(dns: Any) -> dict[str, Any]:
    """``types.DNS`` as Go prints it: its four fields, the empty ones left out."""
    dns = dns or {}
    return {k: dns[k] for k in ("nameservers", "domain", "search", "options") if dns.get(k)}


@dataclass(frozen=True)
class StaticAddress:
    address: IPInterface
    gateway: IPAddress | None


@dataclass(frozen=True)
class StaticRoute:
    dst: IPInterface
    gw: IPAddress | None

    @property
    def text(self) -> str:
        return f"{self.dst.ip}/{self.dst.network.prefixlen}"


@dataclass(frozen=True)
class MacvlanConf:
    master: str
    mode: str
    mtu: int
    mac: str
    layer3: bool
    addresses: tuple[StaticAddress, ...]
    routes: tuple[StaticRoute, ...]
    dns: dict[str, Any]


def _static_ok(ipam: Mapping[str, Any]) -> bool:
    # (list key, the entry's CIDR key, its optional address key)
    for key, cidr, address in (("addresses", "address", "gateway"), ("routes", "dst", "gw")):
        entries = ipam.get(key)
        if entries is not None and not isinstance(entries, list):
            return False
        for entry in entries or []:
            if not isinstance(entry, dict) or set(entry) - {cidr, address}:
                return False
            if _cidr(entry.get(cidr)) is None:
                return False
            if entry.get(address) is not None and _ip(entry[address]) is None:
                return False
    return _dns_ok(ipam.get("dns"))


def _args_ok(raw: str) -> bool:
    """CNI_ARGS that the plugin and static read the way :func:`load_conf` does."""
    try:
        args = parse_cni_args(raw)
    except DelegateError:
        return False
    if "IP" in args or "GATEWAY" in args:
        return False  # static's CNI_ARGS addresses
    ignore = args.get("IgnoreUnknown", "false")
    if ignore not in _TRUE | _FALSE:
        return False
    if set(args) - {"IgnoreUnknown", "MAC"} and ignore not in _TRUE:
        return False  # the binary refuses them: let it say so
    return "MAC" not in args or _mac(args["MAC"])


def load_conf(config: Mapping[str, Any], args: Mapping[str, str]) -> MacvlanConf:
    """The plugin's NetConf (and static's addresses) from an accepted config."""
    ipam = config.get("ipam") or {}
    layer3 = bool(ipam.get("type"))
    runtime = config.get("runtimeConfig") or {}
    mac = config.get("mac") or ""
    mac = args.get("MAC") or mac
    mac = runtime.get("mac") or mac
    addresses = tuple(
        StaticAddress(_required(_cidr(a.get("address"))), _ip(a.get("gateway")))
        for a in (ipam.get("addresses") or [] if layer3 else [])
    )
    routes = tuple(
        StaticRoute(_required(_cidr(r.get("dst"))), _ip(r.get("gw")))
        for r in (ipam.get("routes") or [] if layer3 else [])
    )
    return MacvlanConf(
        master=str(config["master"]),
        mode=str(config.get("mode") or ""),
        mtu=int(config.get("mtu") or 0),
        mac=str(mac),
        layer3=layer3,
        addresses=addresses,
        routes=routes,
        dns=_dns(config.get("dns")),
    )


def _required(value: IPInterface | None) -> IPInterface:
    if value is None:
        raise DelegateError("failed to load netconf: not an accepted config")
    return value


class NotNetnsError(OSError):
    """The path is a file, but not a network namespace."""


def _netns_error(path: str, error: OSError) -> str:
    if isinstance(error, NotNetnsError):
        return str(error.strerror)
    return f'failed to Statfs "{path}": {netlink.go_strerror(error.errno or 0)}'


def _open_netns(path: str) -> int:
    """An fd of network namespace ``path``; FileNotFoundError when it is gone."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not netlink.is_netns(fd):
            raise NotNetnsError(errno.EINVAL, f'unknown FS magic on "{path}"')
    except BaseException:
        os.close(fd)
        raise
    return fd


def _sysctl(name: str, value: str | None = None) -> str:
    """Read sysctl ``name``, or write ``value`` to it (the calling thread's netns)."""
    path = f"/proc/sys/{name}"
    if value is not None:
        with open(path, "w") as f:
            f.write(value)
        return value
    with open(path) as f:
        return f.read().strip()


def render(
    version: str,
    interface: Mapping[str, str],
    addresses: Sequence[StaticAddress],
    routes: Sequence[StaticRoute],
    dns: Mapping[str, Any],
) -> dict[str, Any]:
    """The result as libcni prints it in ``version`` (types 100 for 1.x, 040 before)."""
    result: dict[str, Any] = {"cniVersion": version, "interfaces": [dict(interface)]}
    if addresses:
        ips = []
        for entry in addresses:
            ip: dict[str, Any] = {}
            if not version.startswith("1."):
                ip["version"] = str(entry.address.version)
            ip["interface"] = 0
            ip["address"] = str(entry.address)
            if entry.gateway is not None:
                ip["gateway"] = str(entry.gateway)
            ips.append(ip)
        result["ips"] = ips
    if routes:
        result["routes"] = [
            {"dst": r.text, **({"gw": str(r.gw)} if r.gw is not None else {})} for r in routes
        ]
    result["dns"] = dict(dns)
    return result


class MacvlanInProcess(InProcessPlugin):
    """``macvlan`` with ``static`` IPAM (or none), in the calling thread."""

    plugin_type = "macvlan"
    versions = VERSIONS

    def accepts(self, env: Mapping[str, str], config: Mapping[str, Any]) -> bool:
        if config.get("type") != "macvlan" or config.get("cniVersion") not in VERSIONS:
            return False
        master = config.get("master")
        if not isinstance(master, str) or not master:
            return False  # the default-route interface: the binary's own lookup
        mtu = config.get("mtu")
        if mtu is not None and (not isinstance(mtu, int) or isinstance(mtu, bool)):
            return False
        if config.get("mode") is not None and not isinstance(config["mode"], str):
            return False
        if config.get("mac") not in (None, "") and not _mac(config["mac"]):
            return False
        if any(key in config for key in _LATER_KEYS) or config.get("args") not in (None, {}):
            return False
        runtime = config.get("runtimeConfig")
        if runtime is not None and (
            not isinstance(runtime, dict)
            or runtime.get("ips")
            or (runtime.get("mac") not in (None, "") and not _mac(runtime["mac"]))
        ):
            return False
        if not _dns_ok(config.get("dns")):
            return False
        ipam = config.get("ipam")
        if ipam is not None and not isinstance(ipam, dict):
            return False
        kind = (ipam or {}).get("type")
        if kind not in (None, "", "static") or (kind == "static" and not _static_ok(ipam or {})):
            return False
        return _args_ok(env.get("CNI_ARGS", ""))

    # ------------------------------------------------------------ ADD

    def add(self, call: DelegateCall) -> dict[str, Any]:
        conf = load_conf(call.config, call.args)
        with Rtnl() as host:
            master = _master_index(host, conf)
            try:
                nsfd = _open_netns(call.netns)
            except OSError as e:
                raise DelegateError(
                    f'failed to open netns "{call.netns}": {_netns_error(call.netns, e)}'
                ) from e
            try:
                mode = MACVLAN_MODES.get(conf.mode or "bridge")
                if mode is None:
                    raise DelegateError(f'unknown macvlan mode: "{conf.mode}"')
                mac = bytes.fromhex(conf.mac.replace(":", "").replace("-", ""))
                # Under a random name, renamed in the pod, as the plugin does:
                # created under its final name at once it would save a rename
                # (~240 us of rtnl time) but differ in name_assign_type (3,
                # user, instead of 4, renamed) -- not the same link any more.
                temporary = f"veth{secrets.token_hex(4)}"
                try:
                    host.new_macvlan(temporary, master, mode, netns_fd=nsfd, mtu=conf.mtu, mac=mac)
                except NetlinkError as e:
                    raise DelegateError(f"failed to create macvlan: {e}") from e
                with netlink.in_netns(nsfd), Rtnl() as pod:
                    interface = self._configure(pod, call, conf, temporary)
            finally:
                os.close(nsfd)
        return render(call.version, interface, conf.addresses, conf.routes, conf.dns)

    def _configure(
        self, pod: Rtnl, call: DelegateCall, conf: MacvlanConf, temporary: str
    ) -> dict[str, str]:
        """In the pod's namespace: rename ``temporary``, then addresses, up,
        routes; the link gone on failure."""
        index = _index_quietly(pod, temporary)
        if index is None:
            raise DelegateError(f'failed to rename macvlan to "{call.ifname}": Link not found')
        try:
            pod.set_name(index, call.ifname)
        except NetlinkError as e:
            _delete_quietly(pod, index)
            raise DelegateError(f'failed to rename macvlan to "{call.ifname}": {e}') from e
        # The plugin fetches the link again after the rename, for its MAC.
        try:
            address = pod.mac(call.ifname)
        except OSError as e:
            _delete_quietly(pod, index)
            why = "Link not found" if e.errno == errno.ENODEV else netlink.go_strerror(e.errno or 0)
            raise DelegateError(f'failed to refetch macvlan "{call.ifname}": {why}') from e
        try:
            if conf.layer3:
                if not conf.addresses:
                    raise DelegateError("IPAM plugin returned missing IP config")
                try:
                    _sysctl(f"net/ipv4/conf/{call.ifname}/arp_notify", "1")
                except OSError as e:
                    log.debug("arp_notify on %s: %s", call.ifname, e)
                configure_iface(pod, index, call.ifname, conf.addresses, conf.routes)
            else:
                try:
                    pod.set_up(index)
                except NetlinkError as e:
                    raise DelegateError(f'failed to set "{call.ifname}" UP: {e}') from e
        except BaseException:
            _delete_quietly(pod, index)
            raise
        return {"name": call.ifname, "mac": address, "sandbox": call.netns}

    # ------------------------------------------------------------ DEL

    def delete(self, call: DelegateCall) -> None:
        if not call.netns:
            return
        try:
            nsfd = _open_netns(call.netns)
        except FileNotFoundError:
            return  # the namespace is gone, and the interface with it
        except OSError as e:
            raise DelegateError(_netns_error(call.netns, e)) from e
        try:
            with netlink.in_netns(nsfd), Rtnl() as pod:
                try:
                    pod.delete_link(name=call.ifname)
                except NetlinkError as e:
                    if e.errno != errno.ENODEV:
                        raise DelegateError(f'failed to delete "{call.ifname}": {e}') from e
        finally:
            os.close(nsfd)

    # ------------------------------------------------------------ CHECK

    def check(self, call: DelegateCall) -> None:
        conf = load_conf(call.config, call.args)
        with Rtnl() as host:
            master = host.link(conf.master)
        if master is None:
            raise DelegateError("Link not found")
        if conf.mtu < 0 or conf.mtu > master.mtu:
            raise DelegateError(f"invalid MTU {conf.mtu}, must be [0, master MTU({master.mtu})]")
        try:
            nsfd = _open_netns(call.netns)
        except OSError as e:
            raise DelegateError(
                f'failed to open netns "{call.netns}": {_netns_error(call.netns, e)}'
            ) from e
        try:
            if conf.layer3:
                check_static(call, conf)
            prev = call.config.get("prevResult")
            if prev is None:
                raise DelegateError("Required prevResult missing")
            interfaces, addresses, routes = parse_prev_result(prev)
            container = next(
                (
                    i
                    for i in interfaces
                    if i.get("name") == call.ifname and i.get("sandbox") == call.netns
                ),
                {},
            )
            if call.netns != container.get("sandbox", ""):
                raise DelegateError(
                    f"Sandbox in prevResult {container.get('sandbox', '')} doesn't match "
                    f"configured netns: {call.netns}"
                )
            with Rtnl() as host:
                if host.link(conf.master) is None:
                    raise DelegateError(f'failed to lookup master "{conf.master}": Link not found')
            with netlink.in_netns(nsfd), Rtnl() as pod:
                check_interface(pod, container, conf.mode)
                check_addresses(pod, call.ifname, addresses)
                check_routes(pod, routes)
        finally:
            os.close(nsfd)


def _master_index(host: Rtnl, conf: MacvlanConf) -> int:
    """The master's index, checked as the plugin checks it (``Link not found``, the MTU).

    Without an MTU to compare, the index alone is asked for (an ioctl: no
    netlink message built and parsed, no rtnl lock); with one, or for a name
    the ioctl refuses, the plugin's own lookup.
    """
    if conf.mtu == 0:
        try:
            index = host.index(conf.master)
        except OSError:
            index = 0  # the lookup below says what the plugin says
        if index is None:
            raise DelegateError("Link not found")
        if index:
            return index
    master = host.link(conf.master)
    if master is None:
        raise DelegateError("Link not found")
    if conf.mtu < 0 or conf.mtu > master.mtu:
        raise DelegateError(f"invalid MTU {conf.mtu}, must be [0, master MTU({master.mtu})]")
    return master.index


def _index_quietly(pod: Rtnl, name: str) -> int | None:
    try:
        return pod.index(name)
    except OSError:
        return None


def _delete_quietly(pod: Rtnl, index: int) -> None:
    try:
        pod.delete_link(index=index)
    except NetlinkError as e:
        log.debug("deleting link %d after a failed ADD: %s", index, e)


def configure_iface(
    pod: Rtnl,
    index: int,
    ifname: str,
    addresses: Sequence[StaticAddress],
    routes: Sequence[StaticRoute],
) -> None:
    """``ipam.ConfigureIface``: addresses, link up, DAD settled for IPv6 gateways, routes."""
    v4gw: IPAddress | None = None
    v6gw: IPAddress | None = None
    ipv6_enabled = False
    for entry in addresses:
        if entry.address.version == 6 and not ipv6_enabled:
            for iface in ("lo", ifname):
                name = f"net/ipv6/conf/{iface}/disable_ipv6"
                try:
                    value = _sysctl(name)
                except OSError as e:
                    log.debug("ipam_linux: failed to read sysctl %r: %s", name, e)
                    continue
                if value == "0":
                    continue
                try:
                    _sysctl(name, "0")
                except OSError as e:
                    raise DelegateError(
                        f'failed to enable IPv6 for interface "{iface}" ({name}={value}): '
                        f"{netlink.go_strerror(e.errno or 0)}"
                    ) from e
            ipv6_enabled = True
        try:
            pod.add_address(index, entry.address)
        except NetlinkError as e:
            raise DelegateError(f'failed to add IP addr {entry.address} to "{ifname}": {e}') from e
        gateway = entry.gateway
        if gateway is not None and gateway.version == 4:
            v4gw = v4gw or gateway
        elif v6gw is None:
            v6gw = gateway
    try:
        pod.set_up(index)
    except NetlinkError as e:
        raise DelegateError(f'failed to set "{ifname}" UP: {e}') from e
    if v6gw is not None:
        settle_addresses(pod, index)  # 1.1.1 does not fail the ADD when DAD does not end
    for route in routes:
        gw = route.gw or (v4gw if route.dst.version == 4 else v6gw)
        where = f"failed to add route '{route.text} via {gw or '<nil>'} dev {ifname}'"
        if gw is not None and gw.version != route.dst.version:
            raise DelegateError(
                f"{where}: gateway, source, and destination ip are not the same IP family"
            )
        family = socket.AF_INET if route.dst.version == 4 else socket.AF_INET6
        try:
            pod.add_route(
                index,
                route.dst.ip.packed,
                route.dst.network.prefixlen,
                family=family,
                gateway=gw.packed if gw is not None else b"",
            )
        except NetlinkError as e:
            raise DelegateError(f"{where}: {e}") from e


def settle_addresses(pod: Rtnl, index: int, timeout: float = SETTLE_TIMEOUT_S) -> bool:
    """Wait until no address of the link is tentative (IPv6 DAD); False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        flags = [a.flags for a in pod.addresses(index)]
        if not any(f & (netlink.IFA_F_TENTATIVE | netlink.IFA_F_DADFAILED) for f in flags):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(SETTLE_INTERVAL_S)


# ---------------------------------------------------------------- CHECK


def parse_prev_result(
    prev: Any,
) -> tuple[list[dict[str, Any]], list[StaticAddress], list[StaticRoute]]:
    """``prevResult`` of any supported version: interfaces, addresses, routes."""
    problem = DelegateError(f"failed to parse prevResult: {str(prev)[:200]}")
    if not isinstance(prev, dict):
        raise problem
    interfaces = [i for i in prev.get("interfaces") or [] if isinstance(i, dict)]
    addresses = []
    for ip in prev.get("ips") or []:
        address = _cidr(ip.get("address")) if isinstance(ip, dict) else None
        if address is None:
            raise problem
        addresses.append(StaticAddress(address, _ip(ip.get("gateway"))))
    routes = []
    for route in prev.get("routes") or []:
        dst = _cidr(route.get("dst")) if isinstance(route, dict) else None
        if dst is None:
            raise problem
        routes.append(StaticRoute(dst, _ip(route.get("gw"))))
    return interfaces, addresses, routes


def check_static(call: DelegateCall, conf: MacvlanConf) -> None:
    """static's CHECK: each configured address that is in prevResult has its gateway."""
    prev = call.config.get("prevResult")
    if prev is None:
        raise DelegateError("Required prevResult missing")
    _interfaces, found, _routes = parse_prev_result(prev)
    for configured in conf.addresses:
        for entry in found:
            if configured.address.ip == entry.address.ip:
                if configured.gateway is None or configured.gateway == entry.gateway:
                    break
                raise DelegateError(
                    f"static: Failed to match addr {entry.address.ip} on interface {call.ifname}"
                )


_MODE_NAMES = {value: name for name, value in MACVLAN_MODES.items()}


def check_interface(pod: Rtnl, container: Mapping[str, Any], mode: str) -> None:
    """``validateCniContainerInterface``: the interface is a macvlan of the mode, with the MAC."""
    name = container.get("name", "")
    if not name:
        raise DelegateError("Container interface name missing in prevResult: ")
    link = pod.link(name)
    if link is None:
        raise DelegateError(f"Container Interface name in prevResult: {name} not found")
    if link.kind != "macvlan":
        raise DelegateError(f"Error: Container interface {name} not of type macvlan")
    expected = MACVLAN_MODES.get(mode or "bridge")
    if expected is None:
        raise DelegateError(f'unknown macvlan mode: "{mode}"')
    if link.macvlan_mode != expected:
        current = _MODE_NAMES.get(link.macvlan_mode or 0)
        if current is None:
            raise DelegateError(f'unknown macvlan mode: "{link.macvlan_mode}"')
        raise DelegateError(
            f"Container macvlan mode {current} does not match expected value: "
            f"{_MODE_NAMES[expected]}"
        )
    mac = container.get("mac", "")
    if mac and mac != link.address:
        raise DelegateError(
            f"Interface {name} Mac {mac} doesn't match container Mac: {link.address}"
        )


def _main_routes(pod: Rtnl, version: int) -> list[netlink.Route]:
    family = socket.AF_INET if version == 4 else socket.AF_INET6
    return [r for r in pod.routes(family) if r.table == netlink.RT_TABLE_MAIN]


def check_addresses(pod: Rtnl, ifname: str, addresses: Sequence[StaticAddress]) -> None:
    """``ValidateExpectedInterfaceIPs``: each address on the interface, its prefix routed."""
    for entry in addresses:
        link = pod.link(ifname)
        if link is None:
            raise DelegateError(f"Cannot find container link {ifname}")
        present = {(a.ip, a.prefixlen) for a in pod.addresses(link.index)}
        if (entry.address.ip, entry.address.network.prefixlen) not in present:
            raise DelegateError(f"Failed to match addr {entry.address} on interface {ifname}")
        network = entry.address.network
        if not any(
            r.dst == network.network_address and r.dst_len == network.prefixlen
            for r in _main_routes(pod, entry.address.version)
        ):
            raise DelegateError(
                f"Failed to find Gateway {entry.gateway or '<nil>'} for interface {ifname}"
            )


def check_routes(pod: Rtnl, routes: Sequence[StaticRoute]) -> None:
    """``ValidateExpectedRoute``: each route in the main table (a default one by destination)."""
    for route in routes:
        default = route.dst.network.prefixlen == 0 and int(route.dst.ip) == 0
        table = _main_routes(pod, route.dst.version)
        if default:
            found = any(r.dst is None for r in table)
        else:
            found = any(
                r.dst == route.dst.ip
                and r.dst_len == route.dst.network.prefixlen
                and r.gateway == route.gw
                for r in table
            )
        if not found:
            gw = f" via {route.gw}" if route.gw is not None else ""
            raise DelegateError(f"Expected Route {route.text}{gw} not found in routing table")
