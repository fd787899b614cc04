"""``multinic-agent``: run the node agent, or install the ``multi-nic`` CNI shim.

multinic-agent --node NAME [--kubeconfig P] [--netns P] [--resync-interval S] [--leak-interval S]
               [--socket P] [--state-dir D] [--cni-path DIRS] [--pod-resources-socket P]
               [--health-address HOST:PORT|:PORT|off] [run]
multinic-agent install-cni --bin-dir DIR [--shim auto|compiled|python] [--shim-binary PATH] [--cc CC]
multinic-agent build-shim --output PATH [--cc CC]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import marshal
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from multinic_agent import shim
from multinic_agent.shim_build import (
    PREBUILT_SHIM,
    ShimBuildError,
    build_shim,
    find_compiler,
)
from multinic_core.errors import MultinicError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/multinic")
DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"
DEFAULT_HEALTH_ADDRESS = ":11000"
"""Every address, port 11000: the Config's ``daemon.port`` default, which the DaemonSet probes."""
SHIM_NAME = "multi-nic"
SHIM_MODES = ("auto", "compiled", "python")


class InstallError(Exception):
    """The shim cannot be installed as asked."""


@dataclass(frozen=True)
class Installed:
    """What ``install_shim`` wrote: the path, which shim, how, and any warning."""

    path: Path
    kind: str
    """``compiled`` or ``python``"""
    how: str
    warning: str = ""


def shim_program(interpreter: str | None = None) -> str:
    """The shim as an executable for this machine.

    The real interpreter (not the venv's symlink) with ``-IS`` (isolated, no
    ``site``; one shebang argument): the shim needs only the standard
    library, and this halves its start-up.  For the agent's own interpreter
    the shim's code goes in compiled (marshal), as a ``.pyc`` would hold it:
    a script is otherwise compiled again on every exec (~2 ms per pod start).
    The source goes in too and runs if the interpreter at that path changes
    version; for another ``interpreter`` only the source is written.
    """
    own = os.path.realpath(sys.executable)
    python = interpreter or own
    source = Path(shim.__file__).read_text(encoding="utf-8")
    body = source.split("\n", 1)[1] if source.startswith("#!") else source
    if python != own:
        return f"#!{python} -IS\n{body}"
    code = compile(body, shim.__file__, "exec", dont_inherit=True, optimize=2)
    return (
        f"#!{python} -IS\n"
        "# The multi-nic CNI shim (multinic_agent/shim.py), written by `multinic-agent\n"
        "# install-cni`: its code compiled for this interpreter, and its source for any other.\n"
        "import sys\n"
        f"if sys.implementation.cache_tag == {sys.implementation.cache_tag!r}:\n"
        "    import marshal\n"
        f"    exec(marshal.loads({marshal.dumps(code)!r}))\n"
        "else:\n"
        f"    exec(compile({body!r}, {shim.__file__!r}, 'exec'))\n"
    )


def _write_atomically(target: Path, write: Callable[[Path], object]) -> None:
    """``write(temporary)`` next to ``target``, then mode 0755 and one rename onto it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    os.close(fd)
    try:
        write(Path(temporary))
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        # A CNI plugin must be executable by the runtime; it holds no secret.
        os.chmod(temporary, 0o755)  # noqa: S103
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _is_elf(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == b"\x7fELF"


def install_shim(
    bin_dir: Path,
    mode: str = "auto",
    shim_binary: Path | None = None,
    cc: str | None = None,
    interpreter: str | None = None,
) -> Installed:
    """Install the shim into ``bin_dir`` as ``multi-nic`` (atomically, mode 0755).

    ``compiled``: a copy of ``shim_binary`` (default ``PREBUILT_SHIM``, filled
    by the image build with ``build-shim``) or, when the default is absent,
    ``shim.c`` compiled with the C compiler (``cc``, ``$CC``, cc/gcc/clang).
    ``python``: the Python shim for ``interpreter`` (default: this one), which
    the host must then have.  ``auto``: ``compiled`` when a prebuilt binary or
    a compiler is there, else ``python`` with a warning.  Raises
    ``InstallError`` when the asked-for shim cannot be installed.
    """
    if mode not in SHIM_MODES:
        raise InstallError(f"unknown shim kind {mode!r}: expected one of {', '.join(SHIM_MODES)}")
    target = bin_dir / SHIM_NAME
    if mode == "python":
        if shim_binary is not None:
            raise InstallError("--shim-binary is for the compiled shim, not --shim python")
        _write_atomically(target, lambda path: path.write_text(shim_program(interpreter)))
        python = interpreter or os.path.realpath(sys.executable)
        return Installed(target, "python", f"Python shim, run by {python}")
    binary = shim_binary if shim_binary is not None else PREBUILT_SHIM
    if binary.exists():
        if not binary.is_file() or not _is_elf(binary):
            raise InstallError(f"shim binary {binary} is not an ELF executable")
        _write_atomically(target, lambda path: shutil.copyfile(binary, path))
        return Installed(target, "compiled", f"compiled shim, copied from {binary}")
    if shim_binary is not None:
        raise InstallError(f"shim binary {shim_binary} does not exist")
    compiler = find_compiler(cc)
    if compiler is not None:
        try:
            build_shim(target, compiler)
        except ShimBuildError as e:
            if mode == "compiled":
                raise InstallError(str(e)) from None
            return _python_instead(bin_dir, interpreter, f"{e}; installed the Python shim instead")
        return Installed(target, "compiled", f"compiled shim, built with {compiler}")
    if mode == "compiled":
        raise InstallError(
            f"no prebuilt shim at {binary} and no C compiler (tried $CC, cc, gcc, clang): "
            "run `multinic-agent build-shim` where gcc is installed, or pass --cc"
        )
    return _python_instead(
        bin_dir,
        interpreter,
        f"no prebuilt shim at {binary} and no C compiler: installed the Python shim",
    )


def _python_instead(bin_dir: Path, interpreter: str | None, why: str) -> Installed:
    """The Python shim, with the warning that the host now needs its interpreter."""
    fallback = install_shim(bin_dir, "python", interpreter=interpreter)
    python = interpreter or os.path.realpath(sys.executable)
    return Installed(
        fallback.path,
        fallback.kind,
        fallback.how,
        f"{why}, which needs {python} on the host for pods to start",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="multinic-agent", description=__doc__.split("\n")[1])
    parser.add_argument("--node", default=os.environ.get("NODE_NAME") or socket.gethostname())
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG", ""),
        help="cluster access; without it the in-cluster config when run in a pod, "
        "else no cluster (node state from <state-dir>/node-state.json)",
    )
    parser.add_argument(
        "--netns",
        default="",
        help="network namespace (path) of the host's NICs and routes, when the agent "
        "runs outside it; default: the agent's own",
    )
    parser.add_argument(
        "--resync-interval",
        type=float,
        default=60.0,
        help="seconds between full NIC discovery and route reconciles",
    )
    parser.add_argument(
        "--leak-interval",
        type=float,
        default=300.0,
        help="seconds between checks for attachments of pods that are gone",
    )
    parser.add_argument(
        "--socket", type=Path, default=Path(os.environ.get(shim.SOCKET_ENV) or shim.DEFAULT_SOCKET)
    )
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR)
    parser.add_argument(
        "--cni-path",
        default=DEFAULT_CNI_PATH,
        help="directories of delegate plugins, searched after the request's CNI_PATH",
    )
    parser.add_argument(
        "--exec-delegates",
        action="store_true",
        default=os.environ.get("MULTINIC_EXEC_DELEGATES", "").lower() in ("1", "true", "yes"),
        help="exec every delegate CNI plugin binary, also those a driver runs in the agent's "
        "process (macvlan with static IPAM); env MULTINIC_EXEC_DELEGATES=1",
    )
    parser.add_argument(
        "--pod-resources-socket",
        type=Path,
        default=Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        help="the kubelet's PodResources API (device allocations of pods); "
        "absent: no allocations from the kubelet",
    )
    parser.add_argument(
        "--health-address",
        default=os.environ.get("MULTINIC_HEALTH_ADDRESS", DEFAULT_HEALTH_ADDRESS),
        help="HOST:PORT, :PORT (every address) or off: the TCP port that serves /healthz, "
        "/readyz and /metrics, and nothing else (CNI stays on the unix socket); "
        "default %(default)s",
    )
    parser.add_argument("--log-level", default=os.environ.get("MULTINIC_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="serve the CNI shim (default)")
    install = commands.add_parser(
        "install-cni",
        help="write the multi-nic shim into a CNI bin dir",
        description="Write the multi-nic CNI shim into a CNI bin dir (atomically, mode 0755). "
        "The container runtime execs it on the host for every pod: the compiled shim is a "
        "static executable that needs nothing there; the Python shim needs the interpreter "
        "that runs this command, at the same path, on the host.",
    )
    install.add_argument("--bin-dir", type=Path, required=True, help="the host's CNI bin dir")
    install.add_argument(
        "--shim",
        choices=SHIM_MODES,
        default="auto",
        help="compiled: copy --shim-binary, or build shim.c with the C compiler when the "
        f"default {PREBUILT_SHIM} is absent; python: the Python shim; auto (default): "
        "compiled when a prebuilt binary or a C compiler is there, else python (with a "
        "warning)",
    )
    install.add_argument(
        "--shim-binary",
        type=Path,
        help=f"the prebuilt compiled shim to copy (default {PREBUILT_SHIM}, where the agent "
        "image keeps the one `build-shim` made); given, it must exist",
    )
    install.add_argument("--cc", help="C compiler when building (default $CC, cc, gcc, clang)")
    build = commands.add_parser(
        "build-shim",
        help="compile the multi-nic shim (shim.c) into a static executable",
        description="Compile the multi-nic CNI shim (shim.c, shipped with multinic-agent) "
        "into a static executable, atomically, mode 0755. The agent image runs "
        f"`multinic-agent build-shim --output {PREBUILT_SHIM}`, where install-cni finds it.",
    )
    build.add_argument("--output", type=Path, required=True, help="the executable to write")
    build.add_argument("--cc", help="C compiler (default $CC, cc, gcc, clang)")
    return parser


def run_agent(options: argparse.Namespace) -> int:
    # Imported here so that install-cni works without loading the plugin stack.
    from multinic_agent.agent import serve  # noqa: PLC0415
    from multinic_agent.health import AgentHealth, start_health_port  # noqa: PLC0415
    from multinic_agent.kube_api import load_api_client  # noqa: PLC0415
    from multinic_agent.metrics import AgentMetrics, MeasuredCniServer, stranded_in  # noqa: PLC0415
    from multinic_agent.node_state import (  # noqa: PLC0415
        NODE_STATE_FILE,
        FileNodeState,
        NodeState,
    )
    from multinic_agent.pod_resources import PodResourcesClient  # noqa: PLC0415
    from multinic_agent.records import RecordStore  # noqa: PLC0415
    from multinic_ipam.journal import AllocationJournal  # noqa: PLC0415

    state_dir: Path = options.state_dir
    state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    metrics = AgentMetrics()
    api = load_api_client(options.kubeconfig, observe=metrics.api_response)
    cluster = None
    events = None
    node_state: NodeState
    if api is not None:
        from multinic_agent.cluster_sync import ClusterSync  # noqa: PLC0415
        from multinic_agent.kube_events import agent_event_recorder  # noqa: PLC0415

        events = agent_event_recorder(api, options.node)

        cluster = ClusterSync(
            api,
            options.node,
            state_dir,
            netns=options.netns or None,
            resync_interval=options.resync_interval,
            leak_interval=options.leak_interval,
            metrics=metrics,
        )
        node_state = cluster.node_state
        source = f"the Kubernetes API at {api.configuration.host}"
    else:
        node_state = FileNodeState(state_dir / NODE_STATE_FILE)
        source = str(state_dir / NODE_STATE_FILE)
    health = AgentHealth(cluster)
    # Before the journal is replayed: /readyz says 503 meanwhile, /healthz 200.
    health_port = start_health_port(options.health_address, health, metrics)
    server = MeasuredCniServer(
        metrics=metrics,
        node=options.node,
        node_state=node_state,
        journal=AllocationJournal(state_dir),
        records=RecordStore(state_dir),
        cni_path=[p for p in options.cni_path.split(os.pathsep) if p],
        pod_resources=PodResourcesClient(options.pod_resources_socket),
        events=events,
        exec_delegates=options.exec_delegates,
    )
    server.preload()
    server.reserve_known_addresses()
    health.journal_ready = True
    metrics.watch_pools(
        node_state, server.journal, stranded_in(cluster.node_state.pools) if cluster else None
    )
    log.info("agent for node %s, state in %s, node state from %s", options.node, state_dir, source)
    background = (lambda: cluster.run(server)) if cluster is not None else None
    try:
        asyncio.run(serve(server, options.socket, background, listening=health.listening))
    finally:
        if health_port is not None:
            health_port.stop()
        if events is not None:
            events.close()  # what is queued gets a moment to be written
        if api is not None:
            api.close()  # type: ignore[no-untyped-call]
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    logging.basicConfig(
        level=options.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # Their debug output is one line per netlink message / entry point.
    for noisy in ("pyroute2", "stevedore"):
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLogger().level))
    if options.command == "install-cni":
        try:
            installed = install_shim(options.bin_dir, options.shim, options.shim_binary, options.cc)
        except (InstallError, OSError) as e:
            print(f"multinic-agent install-cni: error: {e}", file=sys.stderr)
            return 1
        if installed.warning:
            print(f"WARNING: {installed.warning}", file=sys.stderr)
        print(f"installed {installed.path} ({installed.how})")
        return 0
    if options.command == "build-shim":
        try:
            output = build_shim(options.output, options.cc)
        except (ShimBuildError, OSError) as e:
            print(f"multinic-agent build-shim: error: {e}", file=sys.stderr)
            return 1
        print(f"built {output}")
        return 0
    try:
        return run_agent(options)
    except (OSError, ValueError, MultinicError) as e:
        log.error("agent cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
