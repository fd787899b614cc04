"""``multinic-sim apiserver --real``: a real control plane in place of the API server double.

Runs the programs ``scripts/build-counterparts`` builds: etcd, kube-apiserver
(TLS with a CA made here, one bearer token, RBAC) and a kube-controller-manager
with only the controllers a control plane without nodes needs (garbage
collection, namespace deletion, the ``default`` ServiceAccount of every
namespace), so objects behave as in a cluster. Everything lives in one work
directory (certificates, etcd's data, the logs), and every process names it
on its command line, so ``multinic-sim down`` finds them by the state
directory like any daemon of the simulated cluster.

Like the double, it is reachable on ``127.0.0.1:<port>`` inside every
``--netns`` namespace too: there a listener splices each connection to the
kube-apiserver in the root namespace (TLS passes through untouched).

``pods/exec``: kube-apiserver dials the kubelet of the pod's node over https
at the node's address. The simulated kubelet serves plain HTTP on 127.0.0.1 of
the root namespace, so kube-apiserver's egress to the cluster (nodes) goes
through an HTTP CONNECT proxy on a unix socket here (an
``EgressSelectorConfiguration``, as konnectivity does), which terminates TLS
and forwards to ``127.0.0.1:<the node's kubelet port>``. Nodes that declare
the ``ExtendWebSocketsToKubelet`` feature get the client's WebSocket stream
proxied as it is, which is what the simulated kubelet speaks.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import aiohttp

from multinic_sim.errors import SimError
from multinic_sim.kubeconfig import write_kubeconfig
from multinic_sim.server import bind_in_netns

log = logging.getLogger(__name__)

COUNTERPARTS_ENV = "MULTINIC_COUNTERPARTS_BIN"
PROGRAMS = ("etcd", "kube-apiserver", "kube-controller-manager")
BUILD_HINT = "scripts/build-counterparts kube-apiserver kube-controller-manager etcd"
CONTROLLERS = ",".join(
    (
        "garbage-collector-controller",
        "namespace-controller",
        "serviceaccount-controller",
        # Pods bound to a Node that does not exist (tests bind pods to made-up
        # nodes): deleted after its quarantine, as in a cluster.
        "pod-garbage-collector-controller",
    )
)
ADMIN = ("admin", "admin-uid", "system:masters")
SERVICE_CIDR = "10.0.0.0/24"
SERVING_NAMES = ("DNS:localhost", "DNS:kubernetes.default.svc", "IP:127.0.0.1", "IP:10.0.0.1")
DEFAULT_READY_TIMEOUT = 90.0
STOP_GRACE_S = 10.0
_PR_SET_PDEATHSIG = 1


# -- the programs -----------------------------------------------------------------


def counterparts_bin_dir() -> Path:
    """``$MULTINIC_COUNTERPARTS_BIN``, else ``<repo>/.cache/counterparts/bin`` of this checkout."""
    configured = os.environ.get(COUNTERPARTS_ENV)
    if configured:
        return Path(configured)
    for parent in Path(__file__).resolve().parents:
        if (parent / "scripts" / "build-counterparts").is_file():
            return parent / ".cache" / "counterparts" / "bin"
    raise SimError(
        f"cannot tell where the counterparts are: set {COUNTERPARTS_ENV} to the directory "
        f"`{BUILD_HINT}` built them into (run from a multinic checkout, it is found by itself)"
    )


def find_programs() -> dict[str, Path]:
    """etcd, kube-apiserver and kube-controller-manager; SimError naming the build step."""
    directory = counterparts_bin_dir()
    found = {name: directory / name for name in PROGRAMS}
    missing = [name for name, path in found.items() if not os.access(path, os.X_OK)]
    if missing:
        raise SimError(
            f"{', '.join(missing)} not found in {directory}: build them with `{BUILD_HINT}` "
            f"(the first build takes several minutes), or set {COUNTERPARTS_ENV}"
        )
    return found


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the program given it binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """In a child: SIGTERM when the ``apiserver --real`` process dies (even by SIGKILL)."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


# -- certificates -------------------------------------------------------------------


def _openssl(*args: str) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        raise SimError("openssl is not installed (scripts/install-system-deps installs it)")
    done = subprocess.run([openssl, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SimError(f"openssl {' '.join(args[:2])} failed: {done.stderr.strip()}")


def make_pki(directory: Path) -> None:
    """A CA, kube-apiserver's serving certificate signed by it, the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    d = directory
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    _openssl("req", "-x509", *ec, "-keyout", str(d / "ca.key"), "-out", str(d / "ca.crt"),
             "-days", "3650", "-subj", "/CN=multinic-sim-ca")  # fmt: skip
    _openssl("req", "-new", *ec, "-keyout", str(d / "apiserver.key"),
             "-out", str(d / "apiserver.csr"), "-subj", "/CN=kube-apiserver")  # fmt: skip
    (d / "apiserver.ext").write_text(
        "basicConstraints=CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        f"subjectAltName={','.join(SERVING_NAMES)}\n"
    )
    _openssl("x509", "-req", "-in", str(d / "apiserver.csr"), "-CA", str(d / "ca.crt"),
             "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "3650",
             "-extfile", str(d / "apiserver.ext"), "-out", str(d / "apiserver.crt"))  # fmt: skip
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:prime256v1",
             "-out", str(d / "sa.key"))  # fmt: skip
    _openssl("pkey", "-in", str(d / "sa.key"), "-pubout", "-out", str(d / "sa.pub"))
    for key in d.glob("*.key"):
        key.chmod(0o600)


# -- byte splicing ----------------------------------------------------------------------


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    b: tuple[asyncio.StreamReader, asyncio.StreamWriter],
) -> None:
    """Copy bytes both ways until both directions ended; then close both."""
    try:
        await asyncio.gather(_pipe(a[0], b[1]), _pipe(b[0], a[1]))
    finally:
        for writer in (a[1], b[1]):
            writer.close()
        for writer in (a[1], b[1]):
            with contextlib.suppress(ConnectionError, OSError, ssl.SSLError):
                await writer.wait_closed()


# -- the control plane ------------------------------------------------------------------


class RealApiServer:
    """etcd, kube-apiserver and kube-controller-manager in ``work_dir``.

    ``await start()`` returns once kube-apiserver is ready and the controllers
    run (namespace ``default`` has its ServiceAccount); ``await stop()`` ends
    all three. ``port=0`` picks a free port; ``token=None`` a random token.
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        port: int = 0,
        token: str | None = None,
        netns: Sequence[str] = (),
        ready_timeout: float = DEFAULT_READY_TIMEOUT,
        audit_log: Path | None = None,
    ) -> None:
        self.work_dir = work_dir.resolve()
        self.audit_log = audit_log
        self.port = port
        self.token = token or secrets.token_urlsafe(32)
        self.netns = list(netns)
        self.ready_timeout = ready_timeout
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self._servers: list[asyncio.Server] = []
        self._connections: set[asyncio.Task[None]] = set()
        self._tunnel_tls: ssl.SSLContext | None = None

    # -- where things are ---------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def pki(self) -> Path:
        return self.work_dir / "pki"

    @property
    def tunnel_socket(self) -> Path:
        return self.work_dir / "kubelet-tunnel.sock"

    def log_path(self, name: str) -> Path:
        return self.work_dir / f"{name}.log"

    @property
    def certificate_authority_data(self) -> str:
        return base64.b64encode((self.pki / "ca.crt").read_bytes()).decode()

    def write_kubeconfig(self, path: Path) -> Path:
        return write_kubeconfig(
            path,
            self.url,
            self.token,
            certificate_authority_data=self.certificate_authority_data,
        )

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        programs = find_programs()
        self.work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if not (self.pki / "apiserver.crt").exists():
            make_pki(self.pki)
        (self.work_dir / "tokens.csv").write_text(
            f'{self.token},{ADMIN[0]},{ADMIN[1]},"{ADMIN[2]}"\n'
        )
        (self.work_dir / "tokens.csv").chmod(0o600)
        if self.port == 0:
            self.port = free_port()
        try:
            await self._start_tunnel()
            self._start_etcd(programs["etcd"])
            self._start_apiserver(programs["kube-apiserver"])
            await self._wait_ready("kube-apiserver ready (/readyz)", self._apiserver_ready)
            self._start_controller_manager(programs["kube-controller-manager"])
            await self._wait_ready(
                "controllers running (ServiceAccount default/default)", self._controllers_ready
            )
            for netns in self.netns:
                await self._forward_in_netns(netns)
        except BaseException:
            await self.stop()
            raise
        log.info("kube-apiserver ready on %s (work directory %s)", self.url, self.work_dir)

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for task in list(self._connections):
            task.cancel()
        self._servers.clear()
        # Clients first, the store last.
        for name in ("kube-controller-manager", "kube-apiserver", "etcd"):
            process = self.processes.pop(name, None)
            if process is not None:
                await asyncio.to_thread(_terminate, process)
        self.tunnel_socket.unlink(missing_ok=True)

    def exited(self) -> str | None:
        """The name of a program that has exited, if any."""
        for name, process in self.processes.items():
            if process.poll() is not None:
                return name
        return None

    def log_tail(self, name: str, lines: int = 15) -> str:
        try:
            text = self.log_path(name).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def _exit_error(self, name: str) -> SimError:
        code = self.processes[name].returncode
        return SimError(
            f"{name} exited (status {code}); last lines of {self.log_path(name)}:\n"
            f"{self.log_tail(name)}"
        )

    # -- the three programs ------------------------------------------------------------

    def _spawn(self, name: str, argv: list[str]) -> None:
        with self.log_path(name).open("ab") as out:
            self.processes[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - prctl only
            )
        log.debug("started %s (pid %d): %s", name, self.processes[name].pid, " ".join(argv))

    def _start_etcd(self, program: Path) -> None:
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self.etcd_url = client
        self._spawn(
            "etcd",
            [
                str(program),
                "--name=default",
                "--data-dir", str(self.work_dir / "etcd"),
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--log-level=warn",
                # A throw-away store: no fsync per write.
                "--unsafe-no-fsync",
            ],
        )  # fmt: skip

    def _start_apiserver(self, program: Path) -> None:
        pki = self.pki
        egress = self.work_dir / "egress-selector.yaml"
        egress.write_text(
            "apiVersion: apiserver.k8s.io/v1beta1\n"
            "kind: EgressSelectorConfiguration\n"
            "egressSelections:\n"
            "- name: cluster\n"
            "  connection:\n"
            "    proxyProtocol: HTTPConnect\n"
            "    transport:\n"
            "      uds:\n"
            f"        udsName: {self.tunnel_socket}\n"
        )
        self._spawn(
            "kube-apiserver",
            [
                str(program),
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                "--advertise-address=127.0.0.1",
                "--endpoint-reconciler-type=none",
                "--tls-cert-file", str(pki / "apiserver.crt"),
                "--tls-private-key-file", str(pki / "apiserver.key"),
                "--client-ca-file", str(pki / "ca.crt"),
                "--token-auth-file", str(self.work_dir / "tokens.csv"),
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                "--service-account-key-file", str(pki / "sa.pub"),
                "--service-account-signing-key-file", str(pki / "sa.key"),
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--cert-dir", str(self.work_dir / "cert-dir"),
                "--anonymous-auth=false",
                # The agent DaemonSet is privileged, as in every cluster that runs it.
                "--allow-privileged=true",
                "--egress-selector-config-file", str(egress),
                *self._audit_flags(),
            ],
        )  # fmt: skip

    def _audit_flags(self) -> list[str]:
        """Every request's metadata, one JSON line each (what benchmarks count by user agent)."""
        if self.audit_log is None:
            return []
        policy = self.work_dir / "audit-policy.yaml"
        policy.write_text(
            "apiVersion: audit.k8s.io/v1\n"
            "kind: Policy\n"
            "omitStages: [RequestReceived]\n"
            "rules:\n"
            "- level: Metadata\n"
        )
        return [
            f"--audit-policy-file={policy}",
            f"--audit-log-path={self.audit_log}",
            "--audit-log-format=json",
            "--audit-log-mode=blocking",
        ]

    def _start_controller_manager(self, program: Path) -> None:
        kubeconfig = self.write_kubeconfig(self.work_dir / "controller-manager.kubeconfig")
        self._spawn(
            "kube-controller-manager",
            [
                str(program),
                "--kubeconfig", str(kubeconfig),
                f"--controllers={CONTROLLERS}",
                "--leader-elect=false",
                "--secure-port=0",
                "--root-ca-file", str(self.pki / "ca.crt"),
            ],
        )  # fmt: skip

    # -- readiness -----------------------------------------------------------------------

    def _client_tls(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    async def _get(self, path: str) -> int:
        headers = {"Authorization": f"Bearer {self.token}"}
        timeout = aiohttp.ClientTimeout(total=5)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(self.url + path, headers=headers, ssl=self._client_tls()) as response,
        ):
            await response.read()
            return response.status

    async def _apiserver_ready(self) -> bool:
        return await self._get("/readyz") == 200

    async def _controllers_ready(self) -> bool:
        return await self._get("/api/v1/namespaces/default/serviceaccounts/default") == 200

    async def _wait_ready(self, what: str, probe: object) -> None:
        deadline = time.monotonic() + self.ready_timeout
        started = time.monotonic()
        while True:
            name = self.exited()
            if name is not None:
                raise self._exit_error(name)
            try:
                if await probe():  # type: ignore[operator]
                    log.info("%s after %.1fs", what, time.monotonic() - started)
                    return
            except (TimeoutError, aiohttp.ClientError, OSError):
                pass
            if time.monotonic() > deadline:
                raise SimError(
                    f"not {what} within {self.ready_timeout:.0f}s; last lines of "
                    f"{self.log_path('kube-apiserver')}:\n{self.log_tail('kube-apiserver')}"
                )
            await asyncio.sleep(0.1)

    # -- listeners ---------------------------------------------------------------------------

    def _track(self) -> None:
        """Remember the calling connection handler, so that stop() can end it."""
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _forward_in_netns(self, netns: str) -> None:
        sock = await asyncio.get_running_loop().run_in_executor(
            None, bind_in_netns, netns, "127.0.0.1", self.port
        )

        async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._track()
            try:
                upstream = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError as e:
                log.warning("cannot reach kube-apiserver for a client in %s: %s", netns, e)
                writer.close()
                return
            await splice((reader, writer), upstream)

        self._servers.append(await asyncio.start_server(forward, sock=sock, backlog=2048))
        log.info("kube-apiserver also reachable on 127.0.0.1:%d in %s", self.port, netns)

    async def _start_tunnel(self) -> None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.pki / "apiserver.crt", self.pki / "apiserver.key")
        self._tunnel_tls = context
        self.tunnel_socket.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._tunnel, path=str(self.tunnel_socket))
        self.tunnel_socket.chmod(0o600)
        self._servers.append(server)

    async def _tunnel(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One kube-apiserver -> kubelet connection: CONNECT, then TLS to plain HTTP."""
        self._track()
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ")[:2]
            port = int(target.rpartition(":")[2])
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
            writer.close()
            return
        if method != "CONNECT":
            writer.write(b"HTTP/1.1 405 Method Not Allowed\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        try:
            # Every simulated kubelet listens on the root namespace's loopback.
            upstream = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            log.info("no kubelet on 127.0.0.1:%d (CONNECT %s): %s", port, target, e)
            writer.write(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        try:
            await writer.drain()
            assert self._tunnel_tls is not None
            await writer.start_tls(self._tunnel_tls)
        except (ConnectionError, OSError, ssl.SSLError) as e:
            log.info("TLS towards kube-apiserver failed (CONNECT %s): %s", target, e)
            writer.close()
            upstream[1].close()
            return
        await splice((reader, writer), upstream)


class RealApiServerThread:
    """A :class:`RealApiServer` whose event loop (the kubelet tunnel) runs in a daemon thread.

    For synchronous tools such as the benchmarks: ``start()`` returns once the
    control plane is ready, ``stop()`` ends it.
    """

    def __init__(self, server: RealApiServer) -> None:
        self.server = server
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="multinic-sim-real-apiserver", daemon=True
        )

    @property
    def url(self) -> str:
        return self.server.url

    def start(self) -> RealApiServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self._loop).result()
        return self

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.server.stop(), self._loop).result()
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()


def _terminate(process: subprocess.Popen[bytes], grace: float = STOP_GRACE_S) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


async def serve(
    *,
    kubeconfig: Path | None,
    data_dir: Path | None,
    port: int,
    token: str | None,
    netns: Sequence[str],
) -> int:
    """``multinic-sim apiserver --real``: start, print the kubeconfig path, serve until a signal."""
    temporary = data_dir is None
    import tempfile  # noqa: PLC0415

    work_dir = data_dir or Path(tempfile.mkdtemp(prefix="multinic-sim-real-"))
    server = RealApiServer(work_dir, port=port, token=token, netns=netns)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        starting = asyncio.create_task(server.start())
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            return 0
        stopping.cancel()
        starting.result()
        try:
            path = server.write_kubeconfig(kubeconfig or work_dir / "kubeconfig")
        except OSError as e:
            raise SimError(f"cannot write kubeconfig: {e}") from e
        print(path, flush=True)
        log.info("kubeconfig written to %s; stop with Ctrl-C", path)
        while not stop.is_set():
            name = server.exited()
            if name is not None:
                raise server._exit_error(name)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.5)
        log.info("stopping")
    finally:
        await server.stop()
        if temporary:
            shutil.rmtree(work_dir, ignore_errors=True)
    return 0
