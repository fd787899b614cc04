"""``multinic-sim``: the local simulation's command line."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from multinic_sim.errors import SimError
from multinic_sim.fabric import DEFAULT_PREFIX, FabricError, FabricLayout
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.progress import ProgressLog
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

With --real it runs kube-apiserver, etcd and kube-controller-manager instead
(built by scripts/build-counterparts; ready in about 3.5 s): https with its
own CA and a bearer token, both in the kubeconfig it prints.

  MULTINIC_TEST_KUBECONFIG=$(multinic-sim apiserver --real &) pytest ...
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multinic-sim",
        description="multinic local simulation tools.",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="log verbosity on standard error (default: INFO for apiserver and kubelet, "
        "WARNING for the cluster commands, whose progress is on standard output)",
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
    api.add_argument(
        "--real",
        action="store_true",
        help="run the real kube-apiserver, etcd and kube-controller-manager built by "
        "scripts/build-counterparts instead of the double (https with its own CA, a random "
        "token unless --token; --state and --history do not apply)",
    )
    api.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="with --real: certificates, etcd data and logs (default: a new temporary "
        "directory, removed at exit)",
    )
    _add_cluster_commands(commands)
    return parser


def _state_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="the simulated cluster's state directory (default: $MULTINIC_SIM_STATE_DIR, "
        "else /run/multinic-sim as root, /tmp/multinic-sim otherwise)",
    )
    return common


def _layout_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--hosts", type=int, default=3, help="simulated hosts (default: 3)")
    common.add_argument("--nics", type=int, default=2, help="secondary NICs per host (default: 2)")
    common.add_argument(
        "--prefix",
        default=DEFAULT_PREFIX,
        help="name prefix of every network namespace (default: %(default)s)",
    )
    common.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for each component (default: %(default)s)",
    )
    common.add_argument(
        "--apiserver",
        choices=("double", "real"),
        default="double",
        help="double: the project's local API server (starts in well under a second); "
        "real: kube-apiserver and etcd built by scripts/build-counterparts (TLS, a token) "
        "(default: %(default)s)",
    )
    common.add_argument(
        "--multus",
        choices=("sim", "real"),
        default="sim",
        help="sim: the simulated kubelet does Multus' part; real: it execs the Multus thin "
        "plugin built by scripts/build-counterparts, which reads the pod and its NADs from "
        "the API and execs the multi-nic shim (default: %(default)s)",
    )
    return common


def _add_cluster_commands(commands: Any) -> None:
    state, layout = _state_options(), _layout_options()
    commands.add_parser(
        "up",
        parents=[state, layout],
        help="build a simulated cluster: host namespaces, fabric, API server, operator, agents",
        description="Build a simulated cluster and return once its daemons are ready.",
    )
    stop = commands.add_parser(
        "down",
        parents=[state],
        help="remove every process, namespace and file of the simulated cluster",
        description="Remove the simulated cluster; also after a crash (finds leftovers by "
        "namespace prefix and by the state directory on processes' command lines).",
    )
    stop.add_argument(
        "--prefix",
        default=None,
        help="namespace prefix when the cluster record is lost (default: recorded, else "
        f"{DEFAULT_PREFIX})",
    )
    pod = commands.add_parser("pod", help="pods on the simulated hosts, made through the API")
    pod_commands = pod.add_subparsers(dest="pod_command", metavar="ACTION")
    pod_commands.required = True
    add = pod_commands.add_parser(
        "add",
        parents=[state],
        help="create a pod on a host with a network; wait until the kubelet attached it",
        description="Create a Pod bound to a simulated host with the network selection "
        "annotation, and wait until the simulated kubelet has attached it through the CNI "
        "shim (CNI ADD) and set it Running.",
    )
    add.add_argument("name")
    add.add_argument("--host", required=True, help="node name (host-0) or index (0)")
    add.add_argument("--network", required=True, help="MultiNicNetwork (its NAD in the namespace)")
    add.add_argument("--nics", type=int, default=None, help="cni-args nics: how many NICs")
    add.add_argument("--namespace", default="default")
    add.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="S",
        help="keep waiting while the agent answers 'try again' (default: %(default)s)",
    )
    delete = pod_commands.add_parser(
        "del",
        parents=[state],
        help="delete a pod; wait until the kubelet detached it (CNI DEL) and it is gone",
    )
    delete.add_argument("name")
    delete.add_argument("--namespace", default="default")
    listing = pod_commands.add_parser(
        "list", parents=[state], help="pods on the simulated hosts, their interfaces and addresses"
    )
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    host = commands.add_parser(
        "host", help="hosts joining and leaving the running simulated cluster"
    )
    host_commands = host.add_subparsers(dest="host_command", metavar="ACTION")
    host_commands.required = True
    timeout = argparse.ArgumentParser(add_help=False)
    timeout.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for each step (default: %(default)s)",
    )
    host_commands.add_parser(
        "add",
        parents=[state, timeout],
        help="join one more host: namespace on every NIC rail, Node, agent, kubelet",
        description="Join a host to the running cluster, as a new node would: its namespace "
        "(the lowest free host index) plugged into every NIC rail, the API server on its "
        "loopback, its Node, its agent (which reports its NICs); returns once the kubelet "
        "runs its pods. The operator then plans its blocks and the other hosts' agents add "
        "routes to them.",
    )
    remove = host_commands.add_parser(
        "remove",
        parents=[state, timeout],
        help="drain a host and take it out: pods deleted, agent stopped, Node deleted",
        description="Take a host out of the running cluster: its pods are deleted (CNI DEL "
        "releases their addresses), its agent stops, its Node is deleted (the operator "
        "removes its HostInterface and replans; the other hosts drop their routes to it) "
        "and its namespace is unplugged and deleted.",
    )
    remove.add_argument("name", help="node name (host-3) or index (3)")
    forward = commands.add_parser(
        "api-forward",
        parents=[state],
        help="the API server's port inside one host namespace (started by `host add`)",
        description="Listen on the API server's loopback port inside a host's network "
        "namespace and splice each connection to the API server. `multinic-sim host add` "
        "starts it for the host it adds; run it by hand only to debug.",
    )
    forward.add_argument("--netns", required=True, help="the host's network namespace")
    commands.add_parser(
        "kubelet",
        parents=[state],
        help="the simulated hosts' kubelet and Multus (started by `up`)",
        description="Run the pods bound to the simulated hosts: attach them through their "
        "networks' CNI plugins, report them Running, detach deleted ones, serve pods/exec. "
        "`multinic-sim up` starts it; run it by hand only to debug.",
    )
    check = commands.add_parser(
        "concheck",
        parents=[state],
        help="ping (and iperf3) between pods of every host pair on every NIC",
        description="For every network, every pair of hosts and every NIC, ping from a pod on "
        "one to a pod on the other through the API's pods/exec (and measure bandwidth with "
        "iperf3 when the pods have it). Uses a Running pod of the network per host, else "
        "creates one (and deletes it afterwards). Works on the simulated cluster (default) and "
        "on a real one (--kubeconfig). Exit status 1 when any pair is not connected on every NIC.",
    )
    check.add_argument("--network", default=None, help="only this network")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.add_argument(
        "--no-bandwidth", action="store_true", help="skip the iperf3 bandwidth measurement"
    )
    check.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="FILE",
        help="check a real cluster through this kubeconfig (default: the simulated cluster)",
    )
    check.add_argument(
        "--namespace", default="default", help="where the pods are (default: %(default)s)"
    )
    check.add_argument(
        "--image",
        default=None,
        help="image of the pods concheck creates; needs sleep and ping, iperf3 for bandwidth "
        "(default: nicolaka/netshoot; ignored by the simulated kubelet)",
    )
    check.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        metavar="S",
        help="seconds to wait for a created pod to run (default: %(default)s)",
    )
    check.add_argument(
        "--keep-pods", action="store_true", help="do not delete the pods concheck created"
    )
    demo = commands.add_parser(
        "demo",
        parents=[state, layout],
        help="up, a macvlan network, a pod per host, concheck, the plan and routes, down",
        description="The one-command demo: builds a simulated cluster, applies a sample "
        "network, starts a pod per host, proves connectivity on every NIC between hosts, "
        "shows the network status, the CIDR plan and the hosts' routes, and tears everything "
        "down (unless --keep).",
    )
    demo.add_argument("--keep", action="store_true", help="leave the cluster running")
    demo.add_argument(
        "--no-bandwidth", action="store_true", help="skip the iperf3 bandwidth measurement"
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level or ("INFO" if args.command in ("apiserver", "kubelet") else "WARNING"),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        if args.command == "apiserver":
            return asyncio.run(_run_apiserver(args))
        return _run_cluster_command(args)
    except (SimError, FabricError, ValueError) as e:
        print(f"multinic-sim: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader went away (`... | head`): nothing left to say, and the
        # interpreter's final flush must not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return 2


def _run_cluster_command(args: argparse.Namespace) -> int:
    # Imported here: `apiserver` must not pay for the kubernetes client and the
    # cluster builder's imports.
    from kubernetes.client import ApiException  # noqa: PLC0415
    from urllib3.exceptions import HTTPError  # noqa: PLC0415

    from multinic_sim import cluster_builder  # noqa: PLC0415

    state_dir: Path = (args.state_dir or cluster_builder.default_state_dir()).resolve()
    try:
        return _cluster_command(args, state_dir)
    except ApiException as e:
        raise SimError(f"the API server answered {e.status} {e.reason}: {e.body}") from e
    except HTTPError as e:
        if getattr(args, "kubeconfig", None) is not None and args.command == "concheck":
            raise SimError(f"the API server of {args.kubeconfig} does not answer ({e})") from e
        raise SimError(
            f"the simulated cluster's API server does not answer ({e}); its log is "
            f"{state_dir / 'logs' / 'apiserver.log'}"
        ) from e


def _cluster_command(args: argparse.Namespace, state_dir: Path) -> int:
    from multinic_sim import cluster_builder, demo, pods  # noqa: PLC0415

    if args.command == "down":
        removed = cluster_builder.down(state_dir, args.prefix)
        print(
            f"stopped {len(removed.processes)} processes, removed {len(removed.namespaces)} "
            f"namespaces" + (f" and {removed.state_dir}" if removed.state_dir else "")
        )
        return 0
    if args.command in ("up", "demo"):
        layout = FabricLayout(hosts=args.hosts, nics=args.nics, prefix=args.prefix)
        if args.command == "demo":
            return demo.run_demo(
                state_dir,
                layout,
                keep=args.keep,
                bandwidth=not args.no_bandwidth,
                timeout=args.timeout,
                apiserver=args.apiserver,
                multus=args.multus,
            )
        cluster = cluster_builder.up(
            state_dir,
            layout,
            ProgressLog(),
            args.timeout,
            apiserver=args.apiserver,
            multus=args.multus,
        )
        print(f"cluster up: KUBECONFIG={cluster.kubeconfig}")
        return 0
    if args.command == "concheck" and args.kubeconfig is not None:
        return _concheck(args, args.kubeconfig)
    if args.command == "host":
        return _host_command(args, state_dir)
    if args.command == "api-forward":
        from multinic_sim.hosts import run_forwarder  # noqa: PLC0415

        return run_forwarder(state_dir, args.netns)
    cluster = cluster_builder.SimCluster.load(state_dir)
    if args.command == "kubelet":
        from multinic_sim.kubelet import run_kubelet  # noqa: PLC0415

        return run_kubelet(state_dir)
    if args.command == "concheck":
        return _concheck(args, cluster.kubeconfig)
    runtime = pods.PodRuntime(cluster)
    if args.pod_command == "add":
        view = runtime.add(
            args.name,
            args.host,
            args.network,
            nics=args.nics,
            namespace=args.namespace,
            timeout=args.timeout,
        )
        addresses = ", ".join(f"{i.name} {i.ip}" for i in view.interfaces)
        print(f"pod {view.namespace}/{view.name} on {view.node}: {addresses}")
    elif args.pod_command == "del":
        runtime.delete(args.name, args.namespace)
        print(f"pod {args.namespace}/{args.name} deleted")
    elif args.json:
        print(json.dumps([_pod_json(view) for view in runtime.list()], indent=2))
    else:
        print(demo.pod_table(runtime.list()))
    return 0


def _host_command(args: argparse.Namespace, state_dir: Path) -> int:
    from multinic_sim import hosts  # noqa: PLC0415
    from multinic_sim.cluster_builder import SimCluster  # noqa: PLC0415

    progress = ProgressLog()
    if args.host_command == "add":
        host = hosts.add_host(state_dir, progress, args.timeout)
        cluster = SimCluster.load(state_dir)
        print(
            f"{cluster.layout.host_name(host)} joined ({cluster.layout.host_netns(host)}); "
            f"hosts: {', '.join(cluster.layout.host_name(h) for h in cluster.hosts)}"
        )
        return 0
    host = hosts.remove_host(state_dir, args.name, progress, args.timeout)
    cluster = SimCluster.load(state_dir)
    print(
        f"{cluster.layout.host_name(host)} removed; "
        f"hosts: {', '.join(cluster.layout.host_name(h) for h in cluster.hosts)}"
    )
    return 0


def _concheck(args: argparse.Namespace, kubeconfig: Path) -> int:
    from kubernetes import config  # noqa: PLC0415

    from multinic_sim import concheck  # noqa: PLC0415

    if not kubeconfig.is_file():
        raise SimError(f"no kubeconfig {kubeconfig}")
    options = concheck.CheckOptions(
        namespace=args.namespace,
        bandwidth=not args.no_bandwidth,
        image=args.image or concheck.DEFAULT_IMAGE,
        timeout=args.timeout,
        keep_pods=args.keep_pods,
    )
    api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    try:
        results = concheck.run_concheck(
            api, args.network, options, say=lambda line: print(line, file=sys.stderr)
        )
    finally:
        api.close()
    if args.json:
        print(json.dumps(concheck.as_json(results), indent=2))
    else:
        print(concheck.render(results))
    return 0 if concheck.all_connected(results) else 1


def _pod_json(view: Any) -> dict[str, Any]:
    return {
        "name": view.name,
        "namespace": view.namespace,
        "node": view.node,
        "phase": view.phase,
        "networks": view.networks,
        "netns": view.netns,
        "interfaces": [
            {"name": i.name, "ip": i.ip, "mac": i.mac, "network": i.network, "nic": i.nic_index}
            for i in view.interfaces
        ],
    }


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
    if args.real:
        if args.state:
            raise SimError("--state is for the double; the real server keeps etcd in --data-dir")
        from multinic_sim import realapi  # noqa: PLC0415

        return await realapi.serve(
            kubeconfig=Path(args.kubeconfig) if args.kubeconfig else None,
            data_dir=args.data_dir,
            port=args.port,
            token=args.token,
            netns=args.netns,
        )
    if args.data_dir is not None:
        raise SimError("--data-dir needs --real")
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
