"""The real Multus thin plugin as the simulated pods' CNI (``multinic-sim up --multus real``).

In this mode the simulated kubelet does not do Multus' part: it execs Multus
(``gopkg.in/k8snetworkplumbingwg/multus-cni.v4``, ``cmd/multus``, built into
``.cache/counterparts/bin`` by ``scripts/build-counterparts``) as a container
runtime execs the pod network's plugin, with the host's Multus config on
stdin. Multus then reads the pod and its ``k8s.v1.cni.cncf.io/networks``
annotation and each NetworkAttachmentDefinition from the API server (with the
host's kubeconfig), execs the NAD's plugin (the ``multi-nic`` shim) for each
network, writes the ``k8s.v1.cni.cncf.io/network-status`` annotation (GET
the pod, PUT ``pods/status``) and records ``AddedInterface`` Events.

Each host gets ``<state>/<host>/multus/00-multus.conf`` (what a Multus
install writes to ``/etc/cni/net.d``), a scratch and result cache
(``cniDir``) next to it, and a log in ``<state>/logs/multus-<host>.log``. The
default network (Multus' "delegates") is the reference ``loopback`` plugin:
the simulated pods have no cluster network, and loopback only sets the pod's
``lo`` up (the kubelet does that anyway), so Multus' first delegate changes
nothing. The ``multus`` binary is linked into ``<state>/cni-bin`` next to
the shim, where a runtime would find it by the config's ``type``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from multinic_sim.errors import SimError

if TYPE_CHECKING:
    from multinic_sim.cluster_builder import SimCluster

BINARY_ENV = "MULTINIC_SIM_MULTUS"
"""The Multus binary to use instead of the one scripts/build-counterparts built."""
COUNTERPARTS_ENV = "COUNTERPARTS_DIR"
BUILD_HINT = "scripts/build-counterparts multus"
NETWORK_NAME = "multus-cni-network"
CONFIG_FILE = "00-multus.conf"
POD_IFNAME = "eth0"
LOG_LEVEL = "verbose"
"""Multus logs each delegate ADD/DEL (with its result) at "verbose"; "debug" dumps everything."""
DEFAULT_NETWORK: dict[str, Any] = {
    "cniVersion": "1.0.0",
    "name": "sim-loopback",
    "type": "loopback",
}


def repo_root() -> Path | None:
    """The checkout this package runs from (the folder with scripts/build-counterparts)."""
    for folder in Path(__file__).resolve().parents:
        if (folder / "scripts" / "build-counterparts").is_file():
            return folder
    return None


def counterparts_bin_dir() -> Path | None:
    """Where scripts/build-counterparts puts its binaries (``$COUNTERPARTS_DIR/bin``)."""
    configured = os.environ.get(COUNTERPARTS_ENV)
    if configured:
        return Path(configured) / "bin"
    root = repo_root()
    return root / ".cache" / "counterparts" / "bin" if root is not None else None


def find_binary() -> Path:
    """The Multus thin plugin binary; SimError saying how to build it when there is none."""
    configured = os.environ.get(BINARY_ENV)
    if configured:
        path = Path(configured)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise SimError(f"${BINARY_ENV}={configured} is not an executable file")
        return path.resolve()
    bin_dir = counterparts_bin_dir()
    found = bin_dir / "multus" if bin_dir is not None else None
    if found is None or not (found.is_file() and os.access(found, os.X_OK)):
        where = str(found) if found is not None else "the counterparts cache (no checkout found)"
        raise SimError(
            f"--multus real needs the Multus thin plugin, not found at {where}: build it with "
            f"`{BUILD_HINT}` (or name a binary in ${BINARY_ENV})"
        )
    return found.resolve()


def host_dir(cluster: SimCluster, host: int) -> Path:
    return cluster.host_dir(host) / "multus"


def config_path(cluster: SimCluster, host: int) -> Path:
    return host_dir(cluster, host) / CONFIG_FILE


def log_path(cluster: SimCluster, host: int) -> Path:
    return cluster.logs_dir / f"multus-{cluster.layout.host_name(host)}.log"


def host_config(cluster: SimCluster, host: int, delegate_dirs: list[Path]) -> dict[str, Any]:
    """Host ``host``'s Multus config (see the module docstring)."""
    folder = host_dir(cluster, host)
    return {
        "cniVersion": "1.0.0",
        "name": NETWORK_NAME,
        "type": "multus",
        "kubeconfig": str(cluster.host_kubeconfig(host)),
        "confDir": str(folder / "net.d"),
        "cniDir": str(folder / "cache"),
        # Multus looks here first, then in CNI_PATH (the shim's dir and the reference plugins).
        "binDir": str(delegate_dirs[0]),
        "logFile": str(log_path(cluster, host)),
        "logLevel": LOG_LEVEL,
        "logToStderr": False,
        "delegates": [DEFAULT_NETWORK],
    }


def install(cluster: SimCluster, delegate_dirs: list[Path]) -> None:
    """Link the binary into the shim's bin dir and write every host's config (idempotent)."""
    binary = find_binary()
    link = cluster.cni_bin_dir / "multus"
    cluster.cni_bin_dir.mkdir(parents=True, exist_ok=True)
    if not (link.is_symlink() and link.resolve() == binary):
        temporary = link.with_name(".multus.tmp")
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(binary)
        temporary.replace(link)
    for host in cluster.hosts:
        folder = host_dir(cluster, host)
        (folder / "net.d").mkdir(parents=True, exist_ok=True, mode=0o700)
        path = config_path(cluster, host)
        text = json.dumps(host_config(cluster, host, delegate_dirs), indent=2) + "\n"
        if not path.is_file() or path.read_text() != text:
            temporary = path.with_suffix(".tmp")
            temporary.write_text(text)
            temporary.replace(path)


def read_config(cluster: SimCluster, host: int) -> dict[str, Any]:
    """The config a runtime would read from the host's CNI config dir."""
    path = config_path(cluster, host)
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SimError(f"cannot read the Multus config {path}: {e}") from e
    return config
