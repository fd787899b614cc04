"""The ``multi-nic`` shim as a runtime sees it: installed, exec'd, without a working agent.

Every test of an installed shim runs against the Python shim and the compiled
one (``shim.c``), expecting the same (the ``shim`` fixture of conftest.py).
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

import pytest

from multinic_agent import shim as shim_module
from multinic_agent.cli import install_shim, shim_program

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


def test_version_is_answered_without_an_agent(installed: Path, tmp_path: Path) -> None:
    done = run_shim(installed, "VERSION", tmp_path / "absent.sock")
    assert done.returncode == 0
    assert json.loads(done.stdout) == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.parametrize("command", ["ADD", "DEL", "CHECK"])
def test_missing_agent_is_try_again_naming_the_socket(
    installed: Path, tmp_path: Path, command: str
) -> None:
    path = tmp_path / "absent.sock"
    done = run_shim(installed, command, path)
    assert done.returncode == 1
    error = json.loads(done.stdout)
    assert error["code"] == 11
    assert error["cniVersion"] == "0.4.0"
    assert str(path) in error["msg"]
    assert "Traceback" not in done.stdout + done.stderr


def test_stale_socket_without_listener_is_try_again(installed: Path, tmp_path: Path) -> None:
    path = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(path))  # bound, never listening: connect() is refused
        done = run_shim(installed, "DEL", path)
    error = json.loads(done.stdout)
    assert (done.returncode, error["code"]) == (1, 11)
    assert f"agent at {path} is unreachable" in error["msg"]


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


def test_malformed_reply_is_a_cni_error(installed: Path, tmp_path: Path) -> None:
    path = tmp_path / "bad.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        process = subprocess.Popen(
            [str(installed)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={"CNI_COMMAND": "ADD", "MULTINIC_AGENT_SOCKET": str(path)},
        )
        assert process.stdin is not None
        process.stdin.write(CONFIG)
        process.stdin.close()
        conn, _ = server.accept()
        with conn:
            request = json.loads(conn.makefile("rb").readline())
            conn.sendall(b'{"exit": "zero"}\n')
        stdout = process.stdout.read() if process.stdout else ""
        process.wait(timeout=10)
    # the request carried the CNI environment and the config, nothing else
    assert request["env"] == {"CNI_COMMAND": "ADD"}
    assert request["stdin"] == CONFIG
    assert process.returncode == 1
    assert json.loads(stdout)["code"] == 999


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


def test_wire_messages_round_trip_through_the_json_module() -> None:
    tricky = 'line\nbreak "quoted" \\ tab\t nul\x00 é 漢 \U0001f600'
    request = {"env": {"CNI_ARGS": tricky, "CNI_COMMAND": "ADD"}, "stdin": tricky, "exit": 3}
    encoded = shim_module.encode_message(request)
    assert encoded.count(b"\n") == 1
    assert encoded.endswith(b"\n")
    assert json.loads(encoded) == request
    assert shim_module.decode_message(json.dumps(request).encode()) == request
    for garbage in (b"{oops", b"[1]", b'{"a": 1} trailing', b"", b"\xff"):
        with pytest.raises(ValueError, match=r"JSON|utf-8"):
            shim_module.decode_message(garbage)
