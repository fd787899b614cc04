"""The compiled ``multi-nic`` shim (``shim.c``): building and installing it, and
the same request and output as the Python shim for the same input, byte for byte.

The differential tests exec both shims against one fake agent (a unix socket
server in the test) with seeded random environments, stdin and replies, and
check the request against the protocol (:mod:`multinic_agent.wire`).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from multinic_agent.cli import install_shim
from multinic_agent.shim import MAGIC
from multinic_agent.shim_build import (
    PREBUILT_SHIM,
    SHIM_SOURCE,
    build_shim,
    find_compiler,
    is_static_elf,
)
from multinic_agent.wire import REPLY_HEADER

AGENT = str(Path(sys.executable).parent / "multinic-agent")
needs_cc = pytest.mark.skipif(
    find_compiler() is None, reason="no C compiler (cc/gcc/clang): apt-get install gcc libc6-dev"
)
CONFIG = json.dumps({"cniVersion": "0.4.0", "name": "demo", "type": "multi-nic"})
NO_COMPILER_ENV = {"PATH": "/nonexistent", "CC": ""}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [AGENT, *args], capture_output=True, text=True, env=full_env, timeout=300, check=False
    )


# ------------------------------------------------------------------ building


@needs_cc
def test_build_shim_writes_a_static_executable(tmp_path: Path) -> None:
    output = tmp_path / "out" / "multi-nic"
    done = cli("build-shim", "--output", str(output))
    assert (done.returncode, done.stderr) == (0, "")
    assert done.stdout == f"built {output}\n"
    assert output.stat().st_mode & 0o777 == 0o755
    assert is_static_elf(output)
    if shutil.which("file"):
        described = subprocess.run(
            ["file", str(output)], capture_output=True, text=True, check=True
        ).stdout
        assert "statically linked" in described, described
    assert sorted(p.name for p in output.parent.iterdir()) == ["multi-nic"]


def test_build_shim_names_the_compiler_and_its_error(tmp_path: Path) -> None:
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text("#!/bin/sh\necho 'shim.c:1: error: broken on purpose' >&2\nexit 3\n")
    fake_cc.chmod(0o755)
    output = tmp_path / "multi-nic"
    done = cli("build-shim", "--output", str(output), "--cc", str(fake_cc))
    assert done.returncode == 1
    assert done.stderr.startswith("multinic-agent build-shim: error: ")
    assert f"{fake_cc} exited with status 3: shim.c:1: error: broken on purpose" in done.stderr
    assert "Traceback" not in done.stderr
    assert not output.exists()
    assert list(tmp_path.iterdir()) == [fake_cc]  # no temporary left behind
    missing = cli("build-shim", "--output", str(output), "--cc", "no-such-cc")
    assert missing.returncode == 1
    assert "C compiler 'no-such-cc' not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_shim_source_ships_with_the_package() -> None:
    assert SHIM_SOURCE.name == "shim.c"
    assert SHIM_SOURCE.parent == Path(install_shim.__code__.co_filename).parent
    assert "int main(void)" in SHIM_SOURCE.read_text()


def test_is_static_elf_tells_static_from_dynamic(tmp_path: Path) -> None:
    assert not is_static_elf(Path(sys.executable).resolve())  # has PT_INTERP
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    assert not is_static_elf(script)


# ---------------------------------------------------------------- installing


@needs_cc
def test_install_auto_builds_the_compiled_shim_with_a_compiler(tmp_path: Path) -> None:
    done = cli("install-cni", "--bin-dir", str(tmp_path / "bin"))
    assert done.returncode == 0, done.stderr
    shim = tmp_path / "bin" / "multi-nic"
    assert "compiled shim" in done.stdout
    assert "WARNING" not in done.stderr
    assert is_static_elf(shim)
    assert shim.stat().st_mode & 0o777 == 0o755


def test_install_auto_copies_a_prebuilt_binary_without_a_compiler(
    tmp_path: Path, compiled_shim: Path
) -> None:
    prebuilt = compiled_shim
    done = cli(
        "install-cni",
        "--bin-dir",
        str(tmp_path / "bin"),
        "--shim-binary",
        str(prebuilt),
        env=NO_COMPILER_ENV,
    )
    assert done.returncode == 0, done.stderr
    assert (
        done.stdout
        == f"installed {tmp_path / 'bin' / 'multi-nic'} (compiled shim, copied from {prebuilt})\n"
    )
    assert (tmp_path / "bin" / "multi-nic").read_bytes() == prebuilt.read_bytes()


def test_install_auto_without_binary_or_compiler_is_python_with_a_warning(
    tmp_path: Path,
) -> None:
    if PREBUILT_SHIM.exists():
        pytest.skip(f"{PREBUILT_SHIM} exists here: auto would copy it")
    done = cli("install-cni", "--bin-dir", str(tmp_path / "bin"), env=NO_COMPILER_ENV)
    assert done.returncode == 0, done.stderr
    interpreter = os.path.realpath(sys.executable)
    warning = done.stderr.strip()
    assert warning.startswith("WARNING: no prebuilt shim at ")
    assert f"needs {interpreter} on the host" in warning
    assert "\n" not in warning
    assert (tmp_path / "bin" / "multi-nic").read_text().startswith(f"#!{interpreter} -IS\n")


def test_install_auto_falls_back_to_python_when_the_build_fails(tmp_path: Path) -> None:
    if PREBUILT_SHIM.exists():
        pytest.skip(f"{PREBUILT_SHIM} exists here: auto would copy it")
    fake_cc = tmp_path / "fake-cc"
    fake_cc.write_text("#!/bin/sh\necho 'no libc.a' >&2\nexit 1\n")
    fake_cc.chmod(0o755)
    bin_dir = tmp_path / "bin"
    done = cli("install-cni", "--bin-dir", str(bin_dir), "--cc", str(fake_cc))
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("WARNING: cannot build the multi-nic shim: ")
    assert "no libc.a" in done.stderr
    assert "installed the Python shim instead" in done.stderr
    assert (bin_dir / "multi-nic").read_text().startswith("#!")
    assert sorted(p.name for p in bin_dir.iterdir()) == ["multi-nic"]
    strict = cli(
        "install-cni", "--bin-dir", str(tmp_path / "b2"), "--shim", "compiled", "--cc", str(fake_cc)
    )
    assert strict.returncode == 1
    assert "no libc.a" in strict.stderr
    assert not (tmp_path / "b2" / "multi-nic").exists()


def test_install_python_mode_writes_the_python_shim(tmp_path: Path) -> None:
    done = cli("install-cni", "--bin-dir", str(tmp_path / "bin"), "--shim", "python")
    assert (done.returncode, done.stderr) == (0, "")
    assert "Python shim" in done.stdout
    first = (tmp_path / "bin" / "multi-nic").read_text().split("\n", 1)[0]
    assert first == f"#!{os.path.realpath(sys.executable)} -IS"


@pytest.mark.parametrize(
    ("args", "env", "error"),
    [
        (
            ["--shim", "compiled"],
            NO_COMPILER_ENV,
            "no prebuilt shim at /usr/local/lib/multinic/multi-nic and no C compiler",
        ),
        (["--shim-binary", "/nonexistent/multi-nic"], {}, "/nonexistent/multi-nic does not exist"),
        (
            ["--shim", "compiled", "--shim-binary", "/nonexistent/multi-nic"],
            {},
            "/nonexistent/multi-nic does not exist",
        ),
        (["--shim", "python", "--shim-binary", "/bin/sh"], {}, "--shim-binary is for the compiled"),
        (["--shim-binary", "SCRIPT"], {}, "is not an ELF executable"),
    ],
)
def test_install_errors_are_one_line(
    tmp_path: Path, args: list[str], env: dict[str, str], error: str
) -> None:
    if PREBUILT_SHIM.exists() and "no prebuilt shim" in error:
        pytest.skip(f"{PREBUILT_SHIM} exists here")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    args = [str(script) if a == "SCRIPT" else a for a in args]
    done = cli("install-cni", "--bin-dir", str(tmp_path / "bin"), *args, env=env)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("multinic-agent install-cni: error: ")
    assert error in done.stderr
    assert done.stderr.count("\n") == 1
    assert not (tmp_path / "bin" / "multi-nic").exists()


def test_install_rejects_an_unknown_shim_kind(tmp_path: Path) -> None:
    done = cli("install-cni", "--bin-dir", str(tmp_path), "--shim", "java")
    assert done.returncode == 2
    assert "invalid choice: 'java'" in done.stderr


def test_help_explains_the_shim_kinds() -> None:
    done = cli("install-cni", "--help")
    assert done.returncode == 0
    for word in ("--shim", "auto", "compiled", "python", "--shim-binary", "build-shim"):
        assert word in done.stdout


# -------------------------------------------------------------- differential


class FakeAgent:
    """A unix socket server answering each request with ``reply(request)``.

    A request ends where the shim shuts its sending side down.  ``reply``
    returns the bytes to send (then the connection is closed, unless
    ``hold_after_reply``), or None to keep the connection open without
    answering until ``close()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reply: Callable[[bytes], bytes | None] = lambda _request: b""
        self.hold_after_reply = False
        self.requests: list[bytes] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            request = b""
            conn.settimeout(10)
            try:
                while chunk := conn.recv(65536):
                    request += chunk
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    self.held.append(conn)
                    continue
                conn.sendall(answer)
                if self.hold_after_reply:
                    self.held.append(conn)
                    continue
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.server.close()
        for conn in self.held:
            conn.close()


@pytest.fixture
def fake_agent(tmp_path: Path) -> Iterator[FakeAgent]:
    agent = FakeAgent(tmp_path / "agent.sock")
    try:
        yield agent
    finally:
        agent.close()


@pytest.fixture
def both_shims(tmp_path: Path, compiled_shim: Path) -> tuple[Path, Path]:
    python = install_shim(tmp_path / "python-bin", "python").path
    compiled = install_shim(tmp_path / "compiled-bin", "compiled", compiled_shim).path
    return python, compiled


Env = dict[bytes, bytes]


def exec_shim(shim: Path, env: Env, stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(shim)], input=stdin, env=env, capture_output=True, timeout=60, check=False
    )


def assert_same(shims: tuple[Path, Path], env: Env, stdin: bytes, label: object = "") -> None:
    """Both shims: the same exit status, stdout and stderr, byte for byte."""
    python, compiled = (exec_shim(shim, env, stdin) for shim in shims)
    assert (python.returncode, python.stdout, python.stderr) == (
        compiled.returncode,
        compiled.stdout,
        compiled.stderr,
    ), (
        f"{label!r}\nenv={env!r}\nstdin={stdin[:300]!r}\n"
        f"python:   {python.returncode} {python.stdout[:700]!r} {python.stderr[-300:]!r}\n"
        f"compiled: {compiled.returncode} {compiled.stdout[:700]!r} {compiled.stderr[-300:]!r}"
    )
    assert b"Traceback" not in python.stdout + python.stderr, label


def base_env(agent: FakeAgent, command: bytes = b"ADD") -> Env:
    return {
        b"CNI_COMMAND": command,
        b"CNI_CONTAINERID": b"c1",
        b"CNI_NETNS": b"/var/run/netns/x",
        b"CNI_IFNAME": b"net1",
        b"CNI_PATH": b"/opt/cni/bin",
        b"MULTINIC_AGENT_SOCKET": os.fsencode(agent.path),
    }


def expected_request(env: Env, stdin: bytes) -> bytes:
    """What the protocol says a shim sends: the CNI_* variables in order, then stdin."""
    entries = b"".join(k + b"=" + v + b"\0" for k, v in env.items() if k.startswith(b"CNI_"))
    return MAGIC + entries + b"\0" + stdin


def frame(status: int, out: bytes, err: bytes) -> bytes:
    return REPLY_HEADER.pack(MAGIC, status, len(out), len(err)) + out + err


def constant(reply: bytes | None) -> Callable[[bytes], bytes | None]:
    return lambda _request: reply


def echo(request: bytes) -> bytes:
    """A reply holding everything the agent got: stdin on stdout, the environment on stderr."""
    end = request.index(b"\0\0", len(MAGIC) - 1)
    return frame(request.count(b"\0") % 3, request[end + 2 :], request[len(MAGIC) : end])


ALPHABET = (
    [bytes([b]) for b in range(256)]
    + [c.encode() for c in 'é漢😀\u2028\u00a0{}[]":,\\nulltrue-0.5e9 \t\r\n']
    + [b"\\u00e9", b"\r\n", b"\xed\xa0\x80", b"MULTINIC/1\0", b"\0\0", b"CNI_X=1\0"]
)


def garbage(rng: random.Random, size: int) -> bytes:
    return b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(size + 1)))


def random_env(rng: random.Random, agent: FakeAgent) -> Env:
    commands = [b"ADD", b"DEL", b"CHECK", b"GC", b"STATUS", b"VERSION", b"", b"add"]
    env = base_env(agent, rng.choice(commands))
    for _ in range(rng.randrange(4)):
        key = b"CNI_" + garbage(rng, 6).replace(b"=", b"").replace(b"\0", b"")
        env[key] = garbage(rng, 20).replace(b"\0", b"")
    if rng.random() < 0.3:
        env[b"CNI_ARGS"] = garbage(rng, 30).replace(b"\0", b"")
    if rng.random() < 0.2:
        env[b"MULTINIC_UNRELATED"] = b"not forwarded"
    if rng.random() < 0.1:
        del env[b"CNI_COMMAND"]
    return env


@needs_cc
def test_same_request_and_output_for_random_input(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent
) -> None:
    """Seeded random environments and stdin (any bytes: NUL, invalid UTF-8, the
    protocol's own separators) through an echoing agent: both shims send the
    protocol's request byte for byte and print the same stdout, stderr and status."""
    rng = random.Random(20261130)
    fake_agent.reply = echo
    for case in range(300):
        env, stdin = random_env(rng, fake_agent), garbage(rng, 200)
        fake_agent.requests.clear()
        assert_same(both_shims, env, stdin, case)
        assert fake_agent.requests == [expected_request(env, stdin)] * 2, case


VALID = frame(0, b'{"cniVersion":"1.0.0"}', b"")
REPLIES = [
    VALID,
    frame(0, b"", b""),
    frame(1, b'{"code": 7}', b"warning\n"),
    frame(255, b"\xff\xfe\0 raw", b"\xed\xa0\x80 raw"),
    frame(0, b"x" * (4 * 1024 * 1024), b"y" * (4 * 1024 * 1024)),
    VALID + b"trailing bytes are not read",
    b"",
    b"\n",
    b'{"exit": 0, "stdout": "ok", "stderr": ""}\n',  # the JSON-line protocol of older agents
    b"MULTINIC/2\0" + VALID[11:],
    b"X" + VALID[1:],
    REPLY_HEADER.pack(MAGIC, 256, 0, 0),
    REPLY_HEADER.pack(MAGIC, 2**32 - 1, 0, 0),
    REPLY_HEADER.pack(MAGIC, 0, 4 * 1024 * 1024 + 1, 0),
    REPLY_HEADER.pack(MAGIC, 0, 0, 2**32 - 1),
    REPLY_HEADER.pack(MAGIC, 0, 10, 10) + b"short",
    *(VALID[:cut] for cut in range(1, len(VALID))),
]


@needs_cc
@pytest.mark.parametrize("index", range(len(REPLIES)))
def test_same_output_for_odd_replies(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, index: int
) -> None:
    fake_agent.reply = constant(REPLIES[index])
    assert_same(both_shims, base_env(fake_agent), CONFIG.encode(), REPLIES[index][:80])


@needs_cc
def test_a_whole_reply_is_enough(both_shims: tuple[Path, Path], fake_agent: FakeAgent) -> None:
    """The shim stops reading at the end of the reply: an agent that keeps the
    connection open (or sends more) does not hold it."""
    fake_agent.reply = constant(VALID + b"more")
    fake_agent.hold_after_reply = True
    for shim in both_shims:
        done = exec_shim(shim, base_env(fake_agent), CONFIG.encode())
        assert (done.returncode, done.stdout, done.stderr) == (0, b'{"cniVersion":"1.0.0"}', b"")


@needs_cc
def test_same_output_for_random_replies(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent
) -> None:
    """Valid replies cut short, grown, or with a byte changed anywhere."""
    rng = random.Random(7)
    for case in range(150):
        reply = bytearray(frame(rng.randrange(256), garbage(rng, 30), garbage(rng, 30)))
        change = rng.randrange(3)
        if change == 0:
            del reply[rng.randrange(len(reply) + 1) :]
        elif change == 1:
            reply += garbage(rng, 10)
        else:
            reply[rng.randrange(len(reply))] = rng.randrange(256)
        fake_agent.reply = constant(bytes(reply))
        assert_same(both_shims, base_env(fake_agent), CONFIG.encode(), (case, bytes(reply)))


@needs_cc
@pytest.mark.parametrize("timeout", ["0.3", ".2", "0.25", "1."])
def test_same_output_when_the_agent_does_not_answer(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, timeout: str
) -> None:
    fake_agent.reply = constant(None)  # never answers
    env = {**base_env(fake_agent), b"MULTINIC_SHIM_TIMEOUT": timeout.encode()}
    assert_same(both_shims, env, CONFIG.encode(), timeout)
    error = json.loads(exec_shim(both_shims[1], env, CONFIG.encode()).stdout)
    assert error["code"] == 11
    assert error["msg"].endswith(" is unreachable: timed out")
    # VERSION too: the shim's own list, the agent being out of reach
    version = {**env, b"CNI_COMMAND": b"VERSION"}
    assert_same(both_shims, version, CONFIG.encode(), timeout)
    assert json.loads(exec_shim(both_shims[0], version, b"{}").stdout)["cniVersion"] == "1.1.0"


@needs_cc
@pytest.mark.parametrize(
    "timeout", ["", "0", "-1", "nan", "inf", "1e10", "1e6.5", "abc", " 0.2 ", "1_0", "0x1", "."]
)
def test_an_invalid_timeout_is_the_default(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, timeout: str
) -> None:
    """Anything but digits and a point, above 0 and at most 1e6, is the default 300 s:
    the agent, answering after 0.5 s, is waited for."""

    def late(request: bytes) -> bytes:
        time.sleep(0.5)
        return echo(request)

    fake_agent.reply = late
    env = {**base_env(fake_agent), b"MULTINIC_SHIM_TIMEOUT": timeout.encode()}
    assert_same(both_shims, env, CONFIG.encode(), timeout)
    assert exec_shim(both_shims[1], env, CONFIG.encode()).stdout == CONFIG.encode()


@needs_cc
def test_same_output_for_large_and_odd_stdin(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent
) -> None:
    fake_agent.reply = constant(frame(0, b"fine", b""))
    env = base_env(fake_agent)
    limit = 4 * 1024 * 1024
    for stdin in (
        b"x" * limit,
        b"x" * (limit + 1),
        "é".encode() * (limit // 2),
        "é".encode() * (limit // 2) + b"x",
        b"\xff" * (limit + 1),
        b"",
        b"\0\0{}",
    ):
        fake_agent.requests.clear()
        assert_same(both_shims, env, stdin, stdin[:10] + b"... %d" % len(stdin))
        forwarded = len(stdin) <= limit
        assert fake_agent.requests == [expected_request(env, stdin)] * 2 * forwarded


@needs_cc
def test_same_output_for_socket_problems(both_shims: tuple[Path, Path], tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_text("")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    stale = tmp_path / "stale.sock"
    bound = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    bound.bind(str(stale))
    link = tmp_path / "link.sock"
    link.symlink_to(stale)
    long_dir = tmp_path / ("d" * 100)
    long_dir.mkdir()
    too_long = long_dir / "agent.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    cwd = Path.cwd()
    try:
        os.chdir(long_dir)
        listener.bind("agent.sock")  # a path longer than sun_path, bound relatively
        listener.listen()
    finally:
        os.chdir(cwd)
    try:
        for path in (
            tmp_path / "absent.sock",
            plain,
            fifo,
            stale,
            link,
            tmp_path / "plain" / "below",
            tmp_path,
            too_long,
            "",
            "relative-absent.sock",
            b'/tmp/\xff\xfe-"absent\\\n.sock',
        ):
            for command in (b"ADD", b"DEL", b"VERSION", b'\xe9"\\'):
                env = {
                    b"CNI_COMMAND": command,
                    b"MULTINIC_AGENT_SOCKET": os.fsencode(path),
                }
                assert_same(both_shims, env, CONFIG.encode(), path)
    finally:
        bound.close()
        listener.close()


@needs_cc
@pytest.mark.root
def test_same_output_for_a_socket_not_owned_by_root(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent
) -> None:
    os.chown(fake_agent.path, 65534, 65534)
    assert_same(both_shims, base_env(fake_agent), CONFIG.encode())
    assert fake_agent.requests == []
    assert stat.S_ISSOCK(os.lstat(fake_agent.path).st_mode)


@needs_cc
def test_sanitized_build_compiles(tmp_path: Path) -> None:
    """The flags the sanitizer run uses still build (MULTINIC_SHIM_SANITIZE=1 runs them all)."""
    flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all"]
    try:
        built = build_shim(tmp_path / "multi-nic-asan", static=False, extra_flags=flags)
    except Exception as e:
        pytest.skip(f"no sanitizer runtime here: {e}")
    done = subprocess.run(
        [str(built)], input=b"{}", env={"CNI_COMMAND": "VERSION"}, capture_output=True, check=False
    )
    assert (done.returncode, done.stderr) == (0, b"")
    assert json.loads(done.stdout)["supportedVersions"][-1] == "1.1.0"
