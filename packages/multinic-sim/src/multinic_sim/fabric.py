"""The simulated data centre: host namespaces wired to one bridge per secondary network.

* a *fabric* namespace holds one Linux bridge per secondary network (``br1``,
  ``br2``...), standing in for the switches of a GPU cluster's NIC rails;
* each *host* is a network namespace whose secondary NICs ``eth1``, ``eth2``...
  are veth pairs plugged into those bridges, with host addresses
  ``10.0.<nic>.<10 + host>/24`` (the worked example's 10.0.1.11, .12, .13).

Every namespace name starts with a prefix the simulation owns, so that
``teardown`` finds and removes everything, even after a crash left no record.
Deleting a namespace deletes the veth ends inside it, and with them their peers.
Only ``ip`` (iproute2) is used, with argv lists.
"""

from __future__ import annotations

import logging
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "mnsim"
_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}\Z")
MAX_HOSTS = 200
MAX_NICS = 8


class FabricError(RuntimeError):
    """The fabric could not be built or removed; the message says which step failed."""


def run_ip(*args: str) -> str:
    """Run ``ip ARGS``; raise FabricError with iproute2's own message on failure."""
    try:
        done = subprocess.run(["ip", *args], capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise FabricError("the `ip` command (iproute2) is not installed") from e
    if done.returncode != 0:
        raise FabricError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


@dataclass(frozen=True)
class FabricLayout:
    """Names and addresses of a simulated cluster's network, derived from its size."""

    hosts: int = 3
    nics: int = 2
    prefix: str = DEFAULT_PREFIX

    def __post_init__(self) -> None:
        if not _PREFIX.match(self.prefix):
            raise ValueError(f"prefix {self.prefix!r}: 1-8 lowercase letters/digits, letter first")
        if not 1 <= self.hosts <= MAX_HOSTS:
            raise ValueError(f"hosts must be 1..{MAX_HOSTS}, not {self.hosts}")
        if not 1 <= self.nics <= MAX_NICS:
            raise ValueError(f"nics must be 1..{MAX_NICS}, not {self.nics}")

    @property
    def fabric_netns(self) -> str:
        return f"{self.prefix}-fabric"

    def host_name(self, host: int) -> str:
        """The Kubernetes node name of host ``host`` (0-based)."""
        return f"host-{host}"

    def host_netns(self, host: int) -> str:
        return f"{self.prefix}-host-{host}"

    def nic_name(self, nic: int) -> str:
        return f"eth{nic + 1}"

    def nic_network(self, nic: int) -> str:
        return f"10.0.{nic + 1}.0/24"

    def nic_address(self, host: int, nic: int) -> str:
        return f"10.0.{nic + 1}.{10 + host + 1}"

    def bridge_name(self, nic: int) -> str:
        return f"br{nic + 1}"

    def fabric_port(self, host: int, nic: int) -> str:
        return f"h{host}n{nic + 1}"

    @property
    def all_netns(self) -> list[str]:
        return [self.fabric_netns, *(self.host_netns(h) for h in range(self.hosts))]


def existing_netns() -> list[str]:
    names = []
    for line in run_ip("netns", "list").splitlines():
        if line.strip():
            names.append(line.split()[0])
    return names


def leftovers(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Namespaces of a simulation with this prefix that still exist."""
    return sorted(n for n in existing_netns() if n.startswith(f"{prefix}-"))


def build(layout: FabricLayout) -> None:
    """Create the fabric and host namespaces; on any failure remove what was made."""
    taken = set(existing_netns()) & set(layout.all_netns)
    if taken:
        raise FabricError(
            f"namespaces {', '.join(sorted(taken))} already exist: "
            f"run `multinic-sim down` (prefix {layout.prefix}) first"
        )
    try:
        _build(layout)
    except BaseException:
        teardown(layout.prefix)
        raise
    log.info(
        "fabric built: %d hosts x %d NICs (namespaces %s-*)",
        layout.hosts,
        layout.nics,
        layout.prefix,
    )


def _build(layout: FabricLayout) -> None:
    fabric = layout.fabric_netns
    run_ip("netns", "add", fabric)
    run_ip("-n", fabric, "link", "set", "lo", "up")
    for nic in range(layout.nics):
        bridge = layout.bridge_name(nic)
        run_ip("-n", fabric, "link", "add", bridge, "type", "bridge")
        run_ip("-n", fabric, "link", "set", bridge, "up")
    for host in range(layout.hosts):
        _add_host(layout, host)


def _add_host(layout: FabricLayout, host: int) -> None:
    fabric, netns = layout.fabric_netns, layout.host_netns(host)
    run_ip("netns", "add", netns)
    run_ip("-n", netns, "link", "set", "lo", "up")
    for nic in range(layout.nics):
        name, port = layout.nic_name(nic), layout.fabric_port(host, nic)
        run_ip("-n", netns, "link", "add", name, "type", "veth", "peer", "name", port,
               "netns", fabric)  # fmt: skip
        run_ip("-n", netns, "addr", "add", f"{layout.nic_address(host, nic)}/24", "dev", name)
        run_ip("-n", netns, "link", "set", name, "up")
        run_ip("-n", fabric, "link", "set", port, "master", layout.bridge_name(nic))
        run_ip("-n", fabric, "link", "set", port, "up")


def add_host(layout: FabricLayout, host: int) -> None:
    """Plug one more host namespace into the running fabric; on failure remove it again."""
    netns = layout.host_netns(host)
    if netns in existing_netns():
        raise FabricError(f"namespace {netns} already exists")
    try:
        _add_host(layout, host)
    except BaseException:
        remove_host(layout, host)
        raise
    log.info("fabric: %s plugged into %d rails", netns, layout.nics)


def remove_host(layout: FabricLayout, host: int) -> None:
    """Unplug a host from the fabric and delete its namespace (idempotent).

    The fabric ports go first: a socket some process still holds in the
    namespace would keep it, and with it the NICs, alive after ``netns del``.
    """
    present = existing_netns()
    if layout.fabric_netns in present:
        for nic in range(layout.nics):
            try:
                run_ip("-n", layout.fabric_netns, "link", "del", layout.fabric_port(host, nic))
            except FabricError as e:
                if "Cannot find device" not in str(e):
                    raise
    if layout.host_netns(host) in present:
        teardown(layout.prefix, [layout.host_netns(host)])


def teardown(prefix: str = DEFAULT_PREFIX, netns: Sequence[str] | None = None) -> list[str]:
    """Delete every namespace of the simulation with ``prefix``; returns what was deleted."""
    if not _PREFIX.match(prefix):
        raise ValueError(f"prefix {prefix!r}: 1-8 lowercase letters/digits, letter first")
    names = list(netns) if netns is not None else leftovers(prefix)
    deleted = []
    for name in names:
        try:
            run_ip("netns", "del", name)
        except FabricError as e:
            if "No such file" not in str(e):
                raise
        deleted.append(name)
    if deleted:
        log.info("removed namespaces: %s", ", ".join(deleted))
    return deleted
