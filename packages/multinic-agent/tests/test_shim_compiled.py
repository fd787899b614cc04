"""The compiled ``multi-nic`` shim (``shim.c``): building and installing it, and
the same output as the Python shim for the same input, byte for byte.

The differential tests exec both shims against one fake agent (a unix socket
server in the test) with seeded random environments, configs and replies.
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
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from multinic_agent.cli import install_shim
from multinic_agent.shim_build import (
    PREBUILT_SHIM,
    SHIM_SOURCE,
    build_shim,
    find_compiler,
    is_static_elf,
)

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
    """A unix socket server answering each request line with ``reply(request)``.

    ``reply`` returns the bytes to send (then the connection is closed), or
    None to keep the connection open without answering until ``close()``.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reply: Callable[[bytes], bytes | None] = lambda _request: b""
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
                while not request.endswith(b"\n"):
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    request += chunk
                self.requests.append(request)
                answer = self.reply(request)
                if answer is None:
                    self.held.append(conn)
                    continue
                conn.sendall(answer)
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


SYSTEM_ERROR = b"returned NULL without setting an exception"
"""The Python shim's message for most JSON syntax errors in a reply: the bare C
scanner raises SystemError naming its own address (json.decoder is not loaded).
The compiled shim names the syntax error as json.loads does instead."""


def same_output(
    python: subprocess.CompletedProcess[bytes], compiled: subprocess.CompletedProcess[bytes]
) -> bool:
    if python.returncode != compiled.returncode:
        return False
    if b"Traceback" in python.stderr:
        # an uncaught exception (a reply the terminal cannot encode, an exit status
        # beyond a C int): the same last line, the one that names it
        last = python.stderr.rstrip(b"\n").rsplit(b"\n", 1)[-1]
        if not compiled.stderr.endswith(last + b"\n"):
            return False
    elif python.stderr != compiled.stderr:
        return False
    if SYSTEM_ERROR in python.stdout:
        theirs, ours = json.loads(python.stdout), json.loads(compiled.stdout)
        prefix = theirs["msg"].split("not JSON: ")[0] + "not JSON: "
        return ours["msg"].startswith(prefix) and {
            k: v for k, v in theirs.items() if k != "msg"
        } == {k: v for k, v in ours.items() if k != "msg"}
    return python.stdout == compiled.stdout


def assert_same(shims: tuple[Path, Path], env: Env, stdin: bytes, label: object = "") -> None:
    python, compiled = (exec_shim(shim, env, stdin) for shim in shims)
    assert same_output(python, compiled), (
        f"{label!r}\nenv={env!r}\nstdin={stdin[:300]!r}\n"
        f"python:   {python.returncode} {python.stdout[:700]!r} {python.stderr[-300:]!r}\n"
        f"compiled: {compiled.returncode} {compiled.stdout[:700]!r} {compiled.stderr[-300:]!r}"
    )


def base_env(agent: FakeAgent, command: bytes = b"ADD") -> Env:
    return {
        b"CNI_COMMAND": command,
        b"CNI_CONTAINERID": b"c1",
        b"CNI_NETNS": b"/var/run/netns/x",
        b"CNI_IFNAME": b"net1",
        b"CNI_PATH": b"/opt/cni/bin",
        b"MULTINIC_AGENT_SOCKET": os.fsencode(agent.path),
    }


def constant(reply: bytes | None) -> Callable[[bytes], bytes | None]:
    return lambda _request: reply


def echo(request: bytes) -> bytes:
    """A well-formed reply holding everything the agent got (config, environment)."""
    message = json.loads(request)
    reply = {
        "exit": len(message["env"]) % 3,
        "stdout": message["stdin"],
        "stderr": json.dumps(message["env"], sort_keys=True),
    }
    return json.dumps(reply).encode() + b"\n"


ALPHABET = (
    [bytes([b]) for b in range(256)]
    + [c.encode() for c in 'é漢😀\u2028\u00a0{}[]":,\\nulltrue-0.5e9 \t\r\n']
    + [b'\\"', b"\\u00e9", b"\\ud83d\\ude00", b"\\ud800", b"\\udcff", b"\r\n", b"\xed\xa0\x80"]
)


def garbage(rng: random.Random, size: int) -> bytes:
    return b"".join(rng.choice(ALPHABET) for _ in range(rng.randrange(size + 1)))


def random_config(rng: random.Random) -> bytes:
    kind = rng.randrange(5)
    if kind == 0:
        return garbage(rng, 40)
    config: dict[str, object] = {"name": "n", "type": "multi-nic"}
    if kind != 1:
        config["cniVersion"] = rng.choice(["0.4.0", "1.0.0", "", 7, None, "1.1.0\u00e9", "\ud800"])
    config["x"] = garbage(rng, 12).decode("utf-8", "surrogateescape")
    text = json.dumps(config, ensure_ascii=rng.random() < 0.5)
    if kind == 3:  # damage it
        cut = rng.randrange(len(text) + 1)
        text = text[:cut] + garbage(rng, 4).decode("utf-8", "surrogateescape") + text[cut:]
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte
        return text.encode("utf-8", "surrogatepass")


def random_env(rng: random.Random, agent: FakeAgent) -> Env:
    env = base_env(agent, rng.choice([b"ADD", b"DEL", b"CHECK", b"GC", b"STATUS", b"", b"add"]))
    for _ in range(rng.randrange(4)):
        key = b"CNI_" + garbage(rng, 6).replace(b"=", b"").replace(b"\0", b"")
        env[key] = garbage(rng, 20).replace(b"\0", b"")
    if rng.random() < 0.3:
        env[b"CNI_ARGS"] = garbage(rng, 30).replace(b"\0", b"")
    if rng.random() < 0.2:
        env[b"MULTINIC_UNRELATED"] = b"not forwarded"
    return env


@needs_cc
def test_same_request_and_output_for_random_input(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent
) -> None:
    """Seeded random environments and configs (invalid UTF-8, CRLF, damaged
    JSON, escapes) through an echoing agent: the same request on the wire and
    the same stdout, stderr and exit status."""
    rng = random.Random(20261130)
    fake_agent.reply = echo
    for case in range(300):
        env, stdin = random_env(rng, fake_agent), random_config(rng)
        if case % 10 == 0:
            env[b"CNI_COMMAND"] = b"VERSION"
        fake_agent.requests.clear()
        assert_same(both_shims, env, stdin, case)
        if env[b"CNI_COMMAND"] != b"VERSION":
            assert len(fake_agent.requests) == 2, case
            assert fake_agent.requests[0] == fake_agent.requests[1], case


REPLIES = [
    b'{"exit": "zero"}\n',
    b'{"exit": 0, "stdout": "ok", "stderr": "warn"}\n',
    b'{"exit": 0, "stdout": "ok"}',
    b"",
    b"\n",
    b"   \n",
    b"{oops\n",
    b"[1]\n",
    b'"text"\n',
    b'{"a": 1} trailing\n',
    b"\xff\n",
    b"\xe2\x82\n",
    b'{"a": "\xed\xa0\x80"}\n',
    b'{"a": "\xf0\x9f\x98',
    b'{"exit": 1.5, "stdout": ""}\n',
    b'{"exit": 3, "stdout": "\\ud800"}\n',
    b'{"exit": 3, "stdout": "a\\udcff\\u00e9", "stderr": "\\udcff\\ud800\\u00e9"}\n',
    b'{"exit": 99999999999, "stdout": "big"}\n',
    b'{"exit": -1, "stdout": "x"}\n',
    b'{"exit": 256, "stdout": "x"}\n',
    b'{"exit": -0, "stdout": "x"}\n',
    b'{"exit": true, "stdout": "x"}\n',
    b'{"exit": false, "stdout": "x", "stderr": null}\n',
    b'{"exit": 0, "stdout": "\\u00e9\\ud83d\\ude00", "a": [1, 2.5, {"b": null}], "a": NaN}\n',
    b'{"exit": [1e400, -0, 1e-7, 123456789012345678, 0.1, 1e16, 1.5e-5, -Infinity], "x": "it\'s"}\n',
    b'{"exit": {"a": 1, "a": 2, "b": "\\"\'"}, "stdout": 5}\n',
    b'{"stdout": "' + b"x" * 700 + b'"}\n',
    b'{"exit": 0 "stdout": ""}\n',
    b'{"exit" 0}\n',
    b'{"exit": 0,}\n',
    b'{"a": "\\x"}\n',
    b'{"a": "\\u12"}\n',
    b'{"a": [1,]}\n',
    b'{"a": -}\n',
    b'{"a": nul}\n',
    b' \x0b{"exit":0,"stdout":"s"}\x0c \n',
    b'\xc2\x85{"exit":0,"stdout":"s"}\xe3\x80\x80\n',
    b'{"exit": 0, "stdout": "a"}\n{"exit": 1}\n',
    b'{"exit": 7, "stdout": "line\\nbreak", "stderr": "tab\\t"}\r\n',
    b'{"exit": 0, "stdout": "' + b"\\u0041" * 100 + b'"}\n',
    b'{"exit": ' + b"1" * 4301 + b', "stdout": ""}\n',
    b'{"x": ' + b"[" * 991 + b"]" * 991 + b', "exit": 0, "stdout": "deep"}\n',
    # malformed and large: repr() of the reply in the details, of its first 500 characters
    b'{"exit": "x", "d": ' + b"[" * 900 + b'"' + b"y" * 1_000_000 + b'"' + b"]" * 900 + b"}\n",
    b"{" + b'"a": 1, ' * 20_000 + b'"b": {"c": [1, {"c": 2, "c": 3}]}, "a": 2, "exit": null}\n',
    b'{"exit": "x", "k": {"\\u00e9\\u0085\\u00ad\\ud800\\x7f\\u2028": "\'\\"\\\\\\u0001"}}\n',
    b'{"exit": "x", "f": [1.0, 0.0001, 0.00001, 1e15, 123456789.125, -0.0, 5e-324, 1.7976931348623157e308, 2.5E+3]}\n',
    b'{"x": ' + b"[" * 992 + b"]" * 992 + b', "exit": 0, "stdout": "deep"}\n',
]


@needs_cc
@pytest.mark.parametrize("index", range(len(REPLIES)))
def test_same_output_for_odd_replies(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, index: int
) -> None:
    fake_agent.reply = constant(REPLIES[index])
    assert_same(both_shims, base_env(fake_agent), CONFIG.encode(), REPLIES[index][:80])


@needs_cc
def test_same_output_for_random_replies(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent
) -> None:
    rng = random.Random(7)
    pieces = [
        b"{",
        b"}",
        b"[",
        b"]",
        b'"exit"',
        b'"stdout"',
        b'"stderr"',
        b":",
        b",",
        b" ",
        b"0",
        b"-1",
        b"2.5e3",
        b"true",
        b"null",
        b"NaN",
        b'"s"',
        b'"\\u00e9"',
        b'"\\ud800"',
        b"\n",
        b"\xff",
        b"\\",
        b'"',
        b"x",
    ]
    for case in range(150):
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(12)))
        if rng.random() < 0.5:
            body = b'{"exit": 0, "stdout": ' + body + b"}\n"
        fake_agent.reply = constant(body)
        assert_same(both_shims, base_env(fake_agent), CONFIG.encode(), (case, body))


def nested(depth: int) -> bytes:
    return b'{"cniVersion": "0.3.1", "x": ' + b"[" * depth + b"]" * depth + b"}"


CONFIGS = [
    b'{"cniVersion": "0.3.1", "cniVersion": "1.0.0"}',
    b'{"cniVersion": "0.3.1", "cniVersion": 1}',
    b'\x0b\r\n {"cniVersion": "0.3.1"}\xe3\x80\x80',
    b'\xef\xbb\xbf{"cniVersion": "0.3.1"}',
    b'{"cniVersion": "\\ud800"}',
    b'{"cniVersion": "\\u00e9\\ud83d\\ude00\\"\\n"}',
    b'{"cniVersion": "0.3.1", "n": NaN, "i": -Infinity, "f": 1.5e-3}',
    b'{"cniVersion": "0.3.1", "n": ' + b"9" * 4301 + b"}",
    b'{"cniVersion": "0.3.1", "n": ' + b"9" * 4300 + b"}",
    b'{"cniVersion": "0.3.1"} {}',
    b'["cniVersion", "0.3.1"]',
    b'{"cniVersion": "0.3.1\xff"}',
    b'{"cniVersion": "0.3.1", "raw": "tab\tinside"}',
    nested(989),
    nested(990),
    nested(991),
    nested(992),
]


@needs_cc
@pytest.mark.parametrize("command", [b"VERSION", b"ADD"])
def test_same_output_for_odd_configs(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, command: bytes
) -> None:
    fake_agent.reply = echo
    for config in CONFIGS:
        assert_same(both_shims, base_env(fake_agent, command), config, config[:60])


@needs_cc
@pytest.mark.parametrize("timeout", ["0.3", "-1", "nan", "inf", "1e10", "abc", "", " 0.2 ", "1_0"])
def test_same_output_for_timeouts(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, timeout: str
) -> None:
    fake_agent.reply = constant(None)  # never answers
    env = {**base_env(fake_agent), b"MULTINIC_SHIM_TIMEOUT": timeout.encode()}
    if timeout in ("", "abc", "1_0"):  # the default 300 s: answer after all
        fake_agent.reply = echo
    assert_same(both_shims, env, CONFIG.encode(), timeout)


@needs_cc
def test_same_output_for_large_and_odd_stdin(
    both_shims: tuple[Path, Path], fake_agent: FakeAgent, tmp_path: Path
) -> None:
    fake_agent.reply = constant(b'{"exit": 0, "stdout": "fine"}\n')
    env = base_env(fake_agent)
    limit = 4 * 1024 * 1024
    for stdin in (
        b"x" * limit,
        b"x" * (limit + 1),
        "é".encode() * limit,
        "é".encode() * (limit + 1),
        b"\r\n" * limit + b"\r",
        b"\xff" * (limit + 1),
        b"",
        b"\0\0{}",
    ):
        assert_same(both_shims, env, stdin, stdin[:10] + b"... %d" % len(stdin))


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
            b"/tmp/\xff\xfe-absent.sock",
        ):
            for command in (b"ADD", b"DEL", b"CHECK", b"\xe9"):
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
