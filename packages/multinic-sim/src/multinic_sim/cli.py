"""``multinic-sim``: the local simulation's command line."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
import tempfile
from pathlib import Path

from multinic_sim.errors import SimError
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.server import ApiServer

log = logging.getLogger(__name__)

APISERVER_EPILOG = """\
The server speaks plain HTTP on 127.0.0.1 only. It prints the path of a
kubeconfig for it on the first line of standard output, then serves until
SIGINT or SIGTERM:

  KUBECONFIG=$(multinic-sim apiserver --port 6443 &) ...
  multinic-sim apiserver --state /var/tmp/sim.json   # resume where it stopped

It is a test double, not a cluster: no authorization, no admission webhooks,
no controllers besides garbage collection and namespace/CRD cleanup
(see the multinic-sim README, "Where it differs from Kubernetes").
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multinic-sim",
        description="multinic local simulation tools.",
    )
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity on standard error (default: INFO)",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    api = commands.add_parser(
        "apiserver",
        help="run a local Kubernetes API server (a test double) and print its kubeconfig path",
        description="Run a local, in-memory Kubernetes API server for development and tests.",
        epilog=APISERVER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    api.add_argument(
        "--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: 0, a free port)"
    )
    api.add_argument(
        "--state",
        metavar="FILE",
        help="load objects from FILE at start and save them to it (JSON, written "
        "atomically) so a later run resumes; default: memory only",
    )
    api.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="where to write the kubeconfig (default: next to --state, else a "
        "new temporary directory)",
    )
    api.add_argument(
        "--token",
        metavar="TOKEN",
        help="require 'Authorization: Bearer TOKEN' on every request (default: no authentication)",
    )
    api.add_argument(
        "--netns",
        action="append",
        default=[],
        metavar="NAME",
        help="also listen on 127.0.0.1 (same port) inside network namespace NAME "
        "(repeatable; for agents running in simulated hosts)",
    )
    api.add_argument(
        "--history",
        type=int,
        default=50_000,
        metavar="N",
        help="watch events kept for resuming watches (default: 50000); older "
        "resourceVersions get 410 Gone",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "apiserver":
            return asyncio.run(_run_apiserver(args))
    except SimError as e:
        print(f"multinic-sim: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2


def _kubeconfig_path(args: argparse.Namespace) -> Path:
    if args.kubeconfig:
        return Path(args.kubeconfig)
    if args.state:
        state = Path(args.state)
        return state.with_name(f"{state.stem}.kubeconfig")
    return Path(tempfile.mkdtemp(prefix="multinic-sim-")) / "kubeconfig"


async def _run_apiserver(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise SimError(f"--port must be between 0 and 65535, not {args.port}")
    if args.history < 1:
        raise SimError("--history must be at least 1")
    server = ApiServer(
        port=args.port, token=args.token, state_file=args.state, history_limit=args.history
    )
    await server.start()
    try:
        for netns in args.netns:
            await server.listen_in_netns(netns)
        try:
            path = write_kubeconfig(_kubeconfig_path(args), server.url, args.token)
        except OSError as e:
            raise SimError(f"cannot write kubeconfig: {e}") from e
        print(path, flush=True)
        log.info("kubeconfig written to %s; stop with Ctrl-C", path)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        log.info("stopping")
    finally:
        await server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
