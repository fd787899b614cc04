"""``multinic-operator [--kubeconfig P] [--namespace NS] [--health-address A]``: run the operator."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import uuid
from collections.abc import Sequence
from typing import Any

import kopf
from kubernetes import client

from multinic_core.errors import ConfigError, MultinicError
from multinic_core.shards import SHARD_ENTRIES
from multinic_operator.agent import DEFAULT_AGENT_IMAGE
from multinic_operator.batching import DEFAULT_WINDOW
from multinic_operator.handlers import OperatorServices, run_operator
from multinic_operator.health import OperatorHealth, start_health_port
from multinic_operator.kube import KubeApi, load_client_configuration
from multinic_operator.leader import LeaderElection
from multinic_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "multinic-system"
DEFAULT_HEALTH_ADDRESS = ":9740"


def connection_info(configuration: client.Configuration) -> kopf.ConnectionInfo:
    """kopf's credentials from the same client settings the services use."""
    api_key = configuration.api_key or {}
    auth = api_key.get("authorization") or api_key.get("BearerToken") or ""
    token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    return kopf.ConnectionInfo(
        server=str(configuration.host),
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        token=token or None,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        default_namespace=None,
    )


def _positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {number}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="multinic-operator",
        description="Run the multinic operator: CIDR plans, IPPools, NADs, driver objects "
        "and the agent DaemonSet from MultiNicNetworks and the Config.",
    )
    parser.add_argument(
        "--kubeconfig",
        default=os.environ.get("KUBECONFIG") or None,
        help="kubeconfig file (default: in-cluster, then ~/.kube/config)",
    )
    parser.add_argument(
        "--namespace",
        default=os.environ.get("POD_NAMESPACE", DEFAULT_NAMESPACE),
        help="namespace of the agent DaemonSet (default: $POD_NAMESPACE or %(default)s)",
    )
    parser.add_argument(
        "--agent-image",
        default=os.environ.get("MULTINIC_AGENT_IMAGE", DEFAULT_AGENT_IMAGE),
        help="agent image when the Config names none (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-window",
        type=float,
        default=DEFAULT_WINDOW,
        help="seconds to collect host events before re-planning (default: %(default)s)",
    )
    parser.add_argument(
        "--standalone",
        action="store_true",
        help="no leader election (only when exactly one replica runs)",
    )
    parser.add_argument(
        "--health-address",
        default=os.environ.get("MULTINIC_HEALTH_ADDRESS", DEFAULT_HEALTH_ADDRESS),
        help="HOST:PORT, :PORT (every address) or off: the port serving /healthz, /readyz and "
        "/metrics (default %(default)s)",
    )
    parser.add_argument(
        "--cidr-shard-entries",
        type=_positive_int,
        default=os.environ.get("MULTINIC_CIDR_SHARD_ENTRIES", str(SHARD_ENTRIES)),
        metavar="N",
        help="host blocks (hosts x NICs) per CIDR object: a larger plan is split into "
        "<network>.shard-<k> objects, so that none outgrows what etcd stores "
        "(default: $MULTINIC_CIDR_SHARD_ENTRIES or %(default)s)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def run_with_leader_election(
    services: OperatorServices,
    configuration: client.Configuration,
    namespace: str,
    health: OperatorHealth | None = None,
) -> int:
    """Wait for the Lease, act while holding it; 1 when leadership was lost."""
    identity = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
    election = LeaderElection(services.api, namespace, identity)
    if health is not None:
        health.waiting_for_lease(election)
    waiting = threading.Event()

    def stop_waiting(signum: int, _frame: Any) -> None:
        log.info("signal %d while waiting for the Lease: stopping", signum)
        waiting.set()

    # kopf installs its own handlers once it runs; these cover the wait before.
    previous = {s: signal.signal(s, stop_waiting) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if not election.acquire(waiting):
            return 0
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    stop_operator = threading.Event()
    stop_renewing = threading.Event()
    lost = threading.Event()

    def on_lost() -> None:
        lost.set()
        stop_operator.set()

    election.keep(on_lost, stop_renewing)
    if health is not None:
        health.acts()
    try:
        run_operator(
            services,
            login=lambda **_: connection_info(configuration),
            stop_flag=stop_operator,
            ready_flag=health.kopf_ready if health else None,
            on_loop=health.kopf_loop if health else None,
        )
    finally:
        stop_renewing.set()
        if not lost.is_set():
            election.release()
    if lost.is_set():
        log.error("lost the Lease: stopped acting; exiting so that this replica starts over")
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        configuration = load_client_configuration(args.kubeconfig)
    except Exception as e:  # the kubernetes client raises several unrelated types here
        print(f"multinic-operator: cannot load Kubernetes credentials: {e}", file=sys.stderr)
        return 2
    api = KubeApi(configuration, metrics=OperatorMetrics())
    services = OperatorServices.create(
        api,
        args.namespace,
        agent_image=args.agent_image,
        batch_window=args.batch_window,
        shard_entries=args.cidr_shard_entries,
    )
    health = OperatorHealth(services.batcher, api.metrics)
    try:
        health_port = start_health_port(args.health_address, health)
    except ConfigError as e:
        print(f"multinic-operator: {e}", file=sys.stderr)
        api.close()
        return 2
    try:
        if args.standalone:
            health.acts()
            run_operator(
                services,
                login=lambda **_: connection_info(configuration),
                stop_flag=threading.Event(),
                ready_flag=health.kopf_ready,
                on_loop=health.kopf_loop,
            )
            return 0
        return run_with_leader_election(services, configuration, args.namespace, health)
    except MultinicError as e:
        print(f"multinic-operator: {e}", file=sys.stderr)
        return 1
    finally:
        if health_port is not None:
            health_port.stop()
        api.close()


if __name__ == "__main__":
    sys.exit(main())
