"""``multinic-agent``: run the node agent, or install the ``multi-nic`` CNI shim.

multinic-agent --node NAME [--kubeconfig P] [--netns P] [--resync-interval S] [--leak-interval S]
               [--socket P] [--state-dir D] [--cni-path DIRS] [--pod-resources-socket P] [run]
multinic-agent install-cni --bin-dir DIR
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import marshal
import os
import socket
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from multinic_agent import shim
from multinic_core.errors import MultinicError

log = logging.getLogger(__name__)

DEFAULT_STATE_DIR = Path("/var/lib/multinic")
DEFAULT_CNI_PATH = "/opt/cni/bin:/usr/lib/cni"
SHIM_NAME = "multi-nic"


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


def install_cni(bin_dir: Path, interpreter: str | None = None) -> Path:
    """Write the shim into ``bin_dir`` as ``multi-nic`` (atomically, mode 0755)."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    target = bin_dir / SHIM_NAME
    fd, temporary = tempfile.mkstemp(prefix=f".{SHIM_NAME}.", dir=bin_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(shim_program(interpreter))
            out.flush()
            os.fsync(out.fileno())
        # A CNI plugin must be executable by the runtime; it holds no secret.
        os.chmod(temporary, 0o755)  # noqa: S103
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


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
        "--pod-resources-socket",
        type=Path,
        default=Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
        help="the kubelet's PodResources API (device allocations of pods); "
        "absent: no allocations from the kubelet",
    )
    parser.add_argument("--log-level", default=os.environ.get("MULTINIC_LOG_LEVEL", "INFO"))
    commands = parser.add_subparsers(dest="command")
    commands.add_parser("run", help="serve the CNI shim (default)")
    install = commands.add_parser("install-cni", help="write the multi-nic shim into a CNI bin dir")
    install.add_argument("--bin-dir", type=Path, required=True)
    return parser


def run_agent(options: argparse.Namespace) -> int:
    # Imported here so that install-cni works without loading the plugin stack.
    from multinic_agent.agent import serve  # noqa: PLC0415
    from multinic_agent.cni_server import CniServer  # noqa: PLC0415
    from multinic_agent.kube_api import load_api_client  # noqa: PLC0415
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
    api = load_api_client(options.kubeconfig)
    cluster = None
    node_state: NodeState
    if api is not None:
        from multinic_agent.cluster_sync import ClusterSync  # noqa: PLC0415

        cluster = ClusterSync(
            api,
            options.node,
            state_dir,
            netns=options.netns or None,
            resync_interval=options.resync_interval,
            leak_interval=options.leak_interval,
        )
        node_state = cluster.node_state
        source = f"the Kubernetes API at {api.configuration.host}"
    else:
        node_state = FileNodeState(state_dir / NODE_STATE_FILE)
        source = str(state_dir / NODE_STATE_FILE)
    server = CniServer(
        node=options.node,
        node_state=node_state,
        journal=AllocationJournal(state_dir),
        records=RecordStore(state_dir),
        cni_path=[p for p in options.cni_path.split(os.pathsep) if p],
        pod_resources=PodResourcesClient(options.pod_resources_socket),
    )
    server.preload()
    log.info("agent for node %s, state in %s, node state from %s", options.node, state_dir, source)
    background = (lambda: cluster.run(server)) if cluster is not None else None
    try:
        asyncio.run(serve(server, options.socket, background))
    finally:
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
        target = install_cni(options.bin_dir)
        print(f"installed {target}")
        return 0
    try:
        return run_agent(options)
    except (OSError, ValueError, MultinicError) as e:
        log.error("agent cannot start: %s", e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
