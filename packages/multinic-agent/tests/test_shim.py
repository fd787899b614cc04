"""The ``multi-nic`` shim as a runtime sees it: installed, exec'd, without a working agent.

Every test of an installed shim runs against the Python shim and the compiled
one (``shim.c``), expecting the same (the ``shim`` fixture of conftest.py).
The shim is a pipe (:mod:`multinic_agent.wire`); what it answers on its own
is only what the agent cannot: no agent, a refused socket, a malformed reply.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from multinic_agent import shim as shim_module
from multinic_agent import wire
from multinic_agent.cli import install_shim, shim_program
from multinic_agent.shim import SUPPORTED_VERSIONS

from .conftest import Agent, Runtime

CONFIG = json.dumps({"cniVersion": "0.4.0", "name": "demo", "type": "multi-nic"})


def run_shim(
    path: Path,
    command: str,
    socket_path: Path,
    stdin: str = CONFIG,
) -> subprocess.CompletedProcess[str]:
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": "/var/run/netns/none",
        "CNI_IFNAME": "net1",
        "CNI_PATH": "/usr/lib/cni",
        "MULTINIC_AGENT_SOCKET": str(socket_path),
    }
    return subprocess.run(
        [str(path)], input=stdin, env=env, capture_output=True, text=True, timeout=30, check=False
    )


@pytest.fixture
def installed(shim: Path) -> Path:
    """The installed shim, Python and compiled (conftest's parametrized ``shim``)."""
    return shim


@pytest.fixture
def python_shim(tmp_path: Path) -> Path:
    return install_shim(tmp_path / "bin", "python").path


def test_install_writes_an_executable_with_the_real_interpreter(python_shim: Path) -> None:
    installed = python_shim
    first_line = installed.read_text().splitlines()[0]
    assert first_line == f"#!{os.path.realpath(sys.executable)} -IS"
    assert installed.stat().st_mode & 0o777 == 0o755
    # Reinstalling replaces the file in one step and leaves no temporary behind.
    install_shim(installed.parent, "python")
    assert sorted(p.name for p in installed.parent.iterdir()) == ["multi-nic"]


def test_reinstalling_leaves_only_the_shim(installed: Path, tmp_path: Path) -> None:
    assert installed.stat().st_mode & 0o777 == 0o755
    if installed.read_bytes()[:4] == b"\x7fELF":
        prebuilt = tmp_path / "prebuilt-multi-nic"
        shutil.copyfile(installed, prebuilt)
        install_shim(installed.parent, "compiled", prebuilt)
        assert installed.read_bytes() == prebuilt.read_bytes()
    else:
        install_shim(installed.parent, "python")
    assert installed.stat().st_mode & 0o777 == 0o755
    assert sorted(p.name for p in installed.parent.iterdir()) == ["multi-nic"]


def test_installed_shim_is_compiled_and_falls_back_to_its_source(
    python_shim: Path, tmp_path: Path
) -> None:
    installed = python_shim
    program = installed.read_text()
    assert "marshal.loads(" in program  # no compile on every pod start
    # An interpreter of another version at the same path runs the embedded source.
    tag = repr(sys.implementation.cache_tag)
    assert program.count(tag) == 1
    installed.write_text(program.replace(tag, "'cpython-0'"))
    version = run_shim(installed, "VERSION", tmp_path / "absent.sock")
    assert (version.returncode, version.stderr) == (0, "")
    assert json.loads(version.stdout)["supportedVersions"][-1] == "1.1.0"
    add = run_shim(installed, "ADD", tmp_path / "absent.sock")
    assert (add.returncode, json.loads(add.stdout)["code"]) == (1, 11)


def test_shim_for_another_interpreter_is_its_source() -> None:
    program = shim_program("/opt/other/python3")
    assert program.startswith("#!/opt/other/python3 -IS\n")
    assert program.split("\n", 1)[1] == Path(shim_module.__file__).read_text().split("\n", 1)[1]


def test_version_without_an_agent_is_the_fixed_list(installed: Path, tmp_path: Path) -> None:
    """The shim reads no config: out of the agent's reach it answers in the latest version."""
    done = run_shim(installed, "VERSION", tmp_path / "absent.sock")
    assert (done.returncode, done.stderr) == (0, "")
    assert json.loads(done.stdout) == {
        "cniVersion": "1.1.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }
    assert list(json.loads(shim_module.VERSIONS)["supportedVersions"]) == list(SUPPORTED_VERSIONS)
    # A socket that is refused is out of reach too; an unreadable stdin is not.
    plain = tmp_path / "plain.sock"
    plain.write_text("")
    assert run_shim(installed, "VERSION", plain).stdout == done.stdout
    too_large = run_shim(
        installed, "VERSION", tmp_path / "absent.sock", "x" * (4 * 1024 * 1024 + 1)
    )
    assert (too_large.returncode, json.loads(too_large.stdout)["code"]) == (1, 6)


@pytest.mark.root
def test_version_is_the_agents_answer(shim: Path, agent: Agent) -> None:
    """With the agent there, VERSION is parsed and answered by it, in the config's version."""
    runtime = Runtime(shim, agent)
    for config, version in [
        ({"cniVersion": "0.4.0"}, "0.4.0"),
        ({"cniVersion": "0.3.1", "name": "x"}, "0.3.1"),
        ("{not json", "1.1.0"),
        ({"cniVersion": "1.0.0", "x": [[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]}, "1.0.0"),
    ]:
        done = runtime.run(runtime.env("VERSION", ""), config)
        assert (done.status, done.stderr) == (0, ""), done
        assert json.loads(done.stdout) == {
            "cniVersion": version,
            "supportedVersions": list(SUPPORTED_VERSIONS),
        }
    assert "Traceback" not in agent.log()


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_missing_agent_is_try_again_naming_the_socket(
    installed: Path, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "absent.sock"
    done = run_shim(installed, command, path)
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error == {
        # The shim reads no config: its own errors are in the latest version.
        "cniVersion": "1.1.0",
        "code": 11,
        "msg": f"agent socket {path} does not exist (is multinic-agent running?)",
        "details": f"CNI_COMMAND={command}",
    }
    assert done.stderr == ""


@pytest.mark.root
def test_the_request_of_a_shim_of_another_version_is_answered_at_once(agent: Agent) -> None:
    """An older shim sends one JSON line and waits, never ending its request: the
    agent answers at the first bytes that start no MULTINIC/1 request (code 6,
    naming the fix), instead of waiting for an end that does not come."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(10)
        conn.connect(str(agent.socket))
        conn.sendall(b'{"env": {"CNI_COMMAND": "ADD"}, "stdin": "{}"}\n')
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    status, stdout, stderr = wire.decode_reply(reply)
    error = json.loads(stdout)
    assert (status, stderr, error["code"]) == (1, b"", 6)
    assert error["msg"].startswith("not a multi-nic shim request: it must start with ")
    assert "reinstall it with multinic-agent install-cni" in error["msg"]
    assert "Traceback" not in agent.log()


def test_a_hostile_socket_path_is_quoted_safely(installed: Path, tmp_path: Path) -> None:
    """The path is the only user data the shim quotes: every byte outside printable
    ASCII, and the backslash, is written as the text \\xHH; the error stays one JSON line."""
    path = os.fsencode(tmp_path) + b'/a"b\\c\nd\xff\x01' + "é.sock".encode()
    env = {b"CNI_COMMAND": b"ADD\n\xfe", b"MULTINIC_AGENT_SOCKET": path}
    done = subprocess.run(
        [str(installed)],
        input=CONFIG.encode(),
        env=env,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stdout.isascii()
    assert done.stdout.count(b"\n") == 0
    error = json.loads(done.stdout)
    shown = os.fsdecode(tmp_path) + '/a"b\\x5cc\\x0ad\\xff\\x01\\xc3\\xa9.sock'
    assert error["msg"] == f"agent socket {shown} does not exist (is multinic-agent running?)"
    assert error["details"] == "CNI_COMMAND=ADD\\x0a\\xfe"


def test_stale_socket_without_listener_is_try_again(installed: Path, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # bound, never listening: connect() is refused
        done = run_shim(installed, "DEL", path)
    error = json.loads(done.stdout)
    assert (done.returncode, error["code"]) == (1, 11)
    assert (
        error["msg"] == f"multinic agent at {path} is unreachable: [Errno 111] Connection refused"
    )


def test_refuses_a_regular_file_and_a_symlink(installed: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.sock"
    plain.write_text("")
    assert "not a unix socket" in json.loads(run_shim(installed, "ADD", plain).stdout)["msg"]
    real = tmp_path / "real.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(real))
        s.listen()
        link = tmp_path / "link.sock"
        link.symlink_to(real)
        error = json.loads(run_shim(installed, "ADD", link).stdout)
    assert error["code"] == 11
    assert "not a unix socket" in error["msg"]


@pytest.mark.root
def test_refuses_a_socket_not_owned_by_root(installed: Path, tmp_path: Path) -> None:
    path = tmp_path / "foreign.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))
        s.listen()
        os.chown(path, 65534, 65534)
        error = json.loads(run_shim(installed, "ADD", path).stdout)
        s.settimeout(0.2)
        with pytest.raises(TimeoutError):
            s.accept()  # the shim never connected
    assert error["code"] == 11
    assert "owned by uid 65534, not root" in error["msg"]


def exchange(shim: Path, path: Path, env: dict[str, str], reply: bytes) -> tuple[bytes, Any]:
    """(the request the shim sent, its (status, stdout, stderr)) for one ``reply``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        process = subprocess.Popen(
            [str(shim)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env={**env, "MULTINIC_AGENT_SOCKET": str(path)},
        )
        assert process.stdin is not None
        process.stdin.write(CONFIG.encode())
        process.stdin.close()
        conn, _ = server.accept()
        with conn:
            conn.settimeout(10)
            request = b""
            while chunk := conn.recv(65536):  # the shim ends its request
                request += chunk
            conn.sendall(reply)
        assert process.stdout is not None
        assert process.stderr is not None
        stdout, stderr = process.stdout.read(), process.stderr.read()  # a few bytes each
        process.wait(timeout=10)
    path.unlink()
    return request, (process.returncode, stdout, stderr)


def test_the_request_is_the_environment_and_stdin_as_bytes(installed: Path, tmp_path: Path) -> None:
    env = {"CNI_COMMAND": "ADD", "CNI_ARGS": "K8S_POD_NAME=p", "OTHER": "not forwarded"}
    reply = wire.encode_reply(3, '{"code": 7}', "warning\n")
    request, outcome = exchange(installed, tmp_path / "agent.sock", env, reply)
    # only CNI_* is forwarded, in the environment's order; stdin as it came
    assert request in (
        b"MULTINIC/1\0CNI_COMMAND=ADD\0CNI_ARGS=K8S_POD_NAME=p\0\0" + CONFIG.encode(),
        b"MULTINIC/1\0CNI_ARGS=K8S_POD_NAME=p\0CNI_COMMAND=ADD\0\0" + CONFIG.encode(),
    )
    assert wire.decode_request(request) == ({k: v for k, v in env.items() if k != "OTHER"}, CONFIG)
    # the reply's status, stdout and stderr as they came, nothing added
    assert outcome == (3, b'{"code": 7}', b"warning\n")


@pytest.mark.parametrize(
    ("reply", "code", "words"),
    [
        # an agent of the JSON-line protocol: another version, being upgraded
        (b'{"exit": "zero"}\n', 11, "sent a malformed reply: not MULTINIC/1 (an agent of"),
        (b"MULTINIC/2\0" + bytes(12), 11, "not MULTINIC/1"),
        (b"MULTINIC/1\0" + bytes(4) + b"\xff" * 8, 999, "a length is out of range"),
        (b"MULTINIC/1\0\0\0\1\0" + bytes(8), 999, "its exit status or a length"),
        (b"", 11, "is unreachable: agent closed the connection without a reply"),
        (b"MULTINIC/1\0", 11, "is unreachable: agent closed the connection in mid-reply"),
        (wire.encode_reply(0, "result", "")[:-1], 11, "in mid-reply"),
    ],
)
def test_malformed_reply_is_a_cni_error(
    installed: Path, tmp_path: Path, reply: bytes, code: int, words: str
) -> None:
    _, (status, stdout, stderr) = exchange(
        installed, tmp_path / "bad.sock", {"CNI_COMMAND": "ADD"}, reply
    )
    error = json.loads(stdout)
    assert (status, stderr, error["code"]) == (1, b"", code), error
    assert words in error["msg"], error
    assert error["msg"].startswith(f"multinic agent at {tmp_path / 'bad.sock'} "), error


def test_shim_imports_only_the_standard_library() -> None:
    source = Path(shim_module.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "the shim must not import relative modules"
            imported.add((node.module or "").split(".")[0])
    assert imported, "no imports found: the check itself is broken"
    assert imported <= set(sys.stdlib_module_names), imported - set(sys.stdlib_module_names)


def test_shim_starts_fast(installed: Path, tmp_path: Path) -> None:
    """-IS start-up: a site-packages import would roughly double this."""
    timings = []
    for _ in range(7):
        start = time.perf_counter()
        run_shim(installed, "VERSION", tmp_path / "absent.sock")
        timings.append(time.perf_counter() - start)
    assert statistics.median(timings) < 0.25, timings


def test_wire_requests_and_replies_round_trip() -> None:
    tricky = 'line\nbreak "quoted" \\ tab\t é 漢 \U0001f600 \udcff'
    env = {"CNI_ARGS": tricky, "CNI_COMMAND": "ADD", "CNI_IFNAME": "", "PATH": "/bin"}
    stdin = b"\0{}\0\xff\r\n" + tricky.encode("utf-8", "surrogateescape")
    request = wire.encode_request(env, stdin)
    assert request.startswith(shim_module.MAGIC)
    decoded_env, decoded_stdin = wire.decode_request(request)
    assert decoded_env == {k: v for k, v in env.items() if k.startswith("CNI_")}
    assert decoded_stdin.encode("utf-8", "surrogateescape") == stdin
    assert wire.decode_request(shim_module.MAGIC + b"\0") == ({}, "")
    # the first of a variable given twice, as getenv() has it
    twice = shim_module.MAGIC + b"CNI_COMMAND=DEL\0CNI_COMMAND=ADD\0\0{}"
    assert wire.decode_request(twice) == ({"CNI_COMMAND": "DEL"}, "{}")
    for garbage in (b"", b"{oops\n", b'{"env": {}, "stdin": ""}\n', shim_module.MAGIC + b"CNI_X=1"):
        with pytest.raises(wire.WireError):
            wire.decode_request(garbage)
    reply = wire.encode_reply(7, tricky, tricky)
    assert wire.decode_reply(reply) == (7, *[tricky.encode("utf-8", "surrogateescape")] * 2)
    for broken in (b"", reply[:-1], reply + b"x", b"MULTINIC/2" + reply[10:]):
        with pytest.raises(wire.WireError):
            wire.decode_reply(broken)
    with pytest.raises(ValueError, match="0-255"):
        wire.encode_reply(256, "", "")
