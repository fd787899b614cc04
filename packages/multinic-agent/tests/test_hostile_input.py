"""Hostile network configs: whatever bytes a runtime writes on the shim's stdin,
the answer is a one-line CNI error, code 6 (decoding failure) for anything that
is not bounded UTF-8 JSON, never 999, and the agent logs one line for it, never
a traceback.

The agent's bounds, checked before any parsing: at most 1 MiB of stdin and 64
levels of nested arrays/objects (``json.loads`` recurses once per level and
raised RecursionError on a few thousand, which came back as 999 "internal
error"); no NaN/Infinity and no number beyond a 64-bit float (``1e999999`` is
not infinity); no integer over 4300 digits; UTF-8 only.  In-process tests pin
the limits to the byte and level; the root tests send the same inputs through
both installed shims and the real agent socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from multinic_agent import agent as agent_module
from multinic_agent import wire
from multinic_agent.cni_server import CniServer, nests_deeper_than

from .conftest import CNI_ENV, NICS, POOLS, SERVER_NETCONF, Agent, Runtime, cni_server

MIB = 1024 * 1024
MAX_BYTES = MIB
MAX_DEPTH = 64
SHIM_LIMIT = 4 * MIB
"""The shims' own bound on stdin (bytes), answered by the shim itself."""
CONFIG = json.dumps({**SERVER_NETCONF, "cniVersion": "1.1.0"})
COMMANDS = ("ADD", "DEL", "CHECK", "STATUS", "GC", "VERSION")
DEPTH_WORDS = f"network config nests arrays and objects more than {MAX_DEPTH} levels deep"
SIZE_WORDS = f"network config exceeds {MAX_BYTES} bytes"


def with_member(raw: bytes | str, config: str = CONFIG) -> bytes:
    """``config`` with one more top-level member ``"x"``, its value the raw JSON text ``raw``."""
    value = raw if isinstance(raw, bytes) else raw.encode()
    return config[:-1].encode() + b', "x": ' + value + b"}"


def nested(levels: int, kind: str = "arrays") -> str:
    """Arrays, or objects, nested ``levels`` deep (raw JSON text)."""
    if kind == "arrays":
        return "[" * levels + "]" * levels
    return '{"a": ' * levels + "1" + "}" * levels


HOSTILE: dict[str, tuple[bytes, str]] = {
    "deep arrays": (with_member(nested(5000)), DEPTH_WORDS),
    "deep objects": (with_member(nested(5000, "objects")), DEPTH_WORDS),
    # within Python's recursion limit: refused by the agent's own bound
    "65 levels": (with_member(nested(64)), DEPTH_WORDS),
    "deep and never closed": (b"[" * 200_000, DEPTH_WORDS),
    "huge string": (with_member(b'"' + b"a" * (2 * MIB) + b'"'), SIZE_WORDS),
    "huge multi-byte string": (with_member('"' + "\u00e9" * (MIB // 2) + '"'), SIZE_WORDS),
    "huge number": (with_member("1e999999"), "number 1e999999 is out of range"),
    "huge negative number": (with_member("[1, -1e999999]"), "number -1e999999 is out of range"),
    "NaN": (with_member("NaN"), "NaN is not a JSON number"),
    "Infinity": (with_member('{"a": -Infinity}'), "-Infinity is not a JSON number"),
    "huge integer": (with_member("9" * 5000), "integer of 5000 digits exceeds the limit of 4300"),
    "invalid UTF-8 in a string": (
        CONFIG.replace('"demo"', '"demo\xff"').encode("latin-1"),
        "not valid UTF-8 (byte 0xff at char",
    ),
    "a UTF-16 surrogate in UTF-8": (with_member(b'"\xed\xa0\x80"'), "not valid UTF-8 (byte 0xed"),
    "invalid UTF-8 between tokens": (with_member(b"\xc0\xaf1"), "not valid UTF-8 (byte 0xc0"),
    "NUL in a string": (with_member(b'"a\x00b"'), "Invalid control character"),
    "NUL between tokens": (b"\x00" + CONFIG.encode(), "not valid JSON: Expecting value"),
    "NUL after the config": (CONFIG.encode() + b"\x00", "not valid JSON: Extra data"),
}
"""Name: (stdin as the runtime writes it, words the error message must hold)."""


def as_stdin(raw: bytes) -> str:
    """stdin as the shims hand it to the agent (UTF-8, invalid bytes surrogate-escaped)."""
    return raw.decode("utf-8", "surrogateescape")


@pytest.fixture
def server(tmp_path: Path) -> CniServer:
    return cni_server(tmp_path, {"nics": NICS, "ippools": POOLS})


def handle(server: CniServer, command: str, stdin: str) -> tuple[int, Any]:
    """(exit status, reply JSON or None) of one request to the in-process agent."""
    env = {**CNI_ENV, "CNI_COMMAND": command}
    if command != "ADD":
        env["CNI_NETNS"] = "" if command == "DEL" else env["CNI_NETNS"]
    status, stdout, _ = asyncio.run(server.handle(env, stdin))
    return status, json.loads(stdout) if stdout else None


def assert_decode_error(status: int, reply: Any, words: str, version: str = "1.1.0") -> None:
    assert status == 1, reply
    assert reply["code"] == 6, reply
    assert words in reply["msg"], reply
    assert "\n" not in reply["msg"], reply
    assert len(reply["msg"]) < 300, reply["msg"][:300]
    assert reply["cniVersion"] == version, reply


# ------------------------------------------------------------------ in-process


@pytest.mark.parametrize("what", list(HOSTILE))
def test_hostile_config_is_a_one_line_decode_error_for_every_command(
    server: CniServer, caplog: pytest.LogCaptureFixture, what: str
) -> None:
    raw, words = HOSTILE[what]
    caplog.set_level(logging.DEBUG)
    for command in COMMANDS:
        caplog.clear()
        status, reply = handle(server, command, as_stdin(raw))
        if command == "VERSION":
            # VERSION answers any config, as it answers one that is no JSON at all.
            assert (status, reply) == handle(server, "VERSION", "{not json")
            continue
        assert_decode_error(status, reply, words)
        # One log line for the refusal, no traceback, nothing above INFO.
        assert [r for r in caplog.records if r.exc_info] == []
        assert [r.getMessage()[:200] for r in caplog.records if r.levelno > logging.INFO] == []
        refusals = [r.getMessage() for r in caplog.records if ": error 6: " in r.getMessage()]
        assert len(refusals) == 1, refusals
        assert "\n" not in refusals[0]
    assert server.journal.attachments() == []
    assert server.records.all() == []


def test_the_depth_limit_is_64_levels(server: CniServer) -> None:
    # The top-level object is the first level.
    for kind in ("arrays", "objects"):
        at_limit = with_member(nested(63, kind))
        assert handle(server, "DEL", at_limit.decode()) == (0, None), kind
        beyond = with_member(nested(64, kind))
        assert_decode_error(*handle(server, "DEL", beyond.decode()), DEPTH_WORDS)
    # Mixed arrays and objects count alike.
    mixed = with_member('[{"a": ' * 32 + "1" + "}]" * 32)  # 1 + 64 levels
    assert_decode_error(*handle(server, "DEL", mixed.decode()), DEPTH_WORDS)


def test_brackets_in_strings_do_not_count(server: CniServer) -> None:
    accepted = [
        '"' + "[" * 10_000 + '"',
        '"\\"' + "{" * 10_000 + '\\""',  # an escaped quote does not end the string
        '["\\\\", ' + "[" * 62 + "]" * 62 + "]",  # an escaped backslash does
        '"\\u005b\\"]]]][[[["',
    ]
    for raw in accepted:
        assert handle(server, "DEL", with_member(raw).decode()) == (0, None), raw[:40]
    # Counting resumes after each string: real nesting past the limit is still found.
    beyond = '["\\\\", "[[[", ' + "[" * 63 + "]" * 63 + "]"
    assert_decode_error(*handle(server, "DEL", with_member(beyond).decode()), DEPTH_WORDS)
    assert nests_deeper_than('"' + "[" * 100, 64) is False  # an unterminated string
    assert nests_deeper_than('"\\' + "[" * 100, 64) is False  # ... ending in a backslash
    assert nests_deeper_than("[" * 65 + '"', 64) is True


def test_the_size_limit_is_1_mib_of_utf8(server: CniServer) -> None:
    for char in ("a", "\u00e9", "\U0001f600"):
        base = len(with_member('""'))
        count, rest = divmod(MAX_BYTES - base, len(char.encode()))
        at_limit = with_member('"' + char * count + "a" * rest + '"')
        assert len(at_limit) == MAX_BYTES
        assert handle(server, "DEL", at_limit.decode()) == (0, None), char
        beyond = with_member('"' + char * count + "a" * (rest + 1) + '"')
        assert_decode_error(*handle(server, "DEL", beyond.decode()), SIZE_WORDS)
    # Whitespace counts as much as anything else.
    padded = CONFIG[:-1] + " " * (MAX_BYTES + 1 - len(CONFIG)) + "}"
    assert_decode_error(*handle(server, "GC", padded), SIZE_WORDS)


def test_numbers_a_float_or_the_agent_cannot_hold_are_refused(server: CniServer) -> None:
    for number in ("1e308", "-1.7976931348623157e308", "1e-999999", "9" * 4300, "-" + "9" * 4300):
        assert handle(server, "DEL", with_member(number).decode()) == (0, None), number[:20]
    for number, words in [
        ("1e309", "number 1e309 is out of range (not a finite 64-bit float)"),
        ("-1E400", "number -1E400 is out of range"),
        ("9" * 4301, "an integer of 4301 digits exceeds the limit of 4300 digits"),
        ("-" + "9" * 4301, "an integer of 4301 digits"),
        ("Infinity", "Infinity is not a JSON number"),
    ]:
        assert_decode_error(*handle(server, "DEL", with_member(number).decode()), words)


def test_the_error_is_in_the_configs_version_unless_it_is_not_decoded(server: CniServer) -> None:
    config = json.dumps({**SERVER_NETCONF, "cniVersion": "1.0.0"})
    huge_number = with_member("1e999999", config).decode()
    assert_decode_error(*handle(server, "DEL", huge_number), "out of range", version="1.0.0")
    # Beyond a limit, the config is not parsed for its version either.
    deep = with_member(nested(100), config).decode()
    assert_decode_error(*handle(server, "DEL", deep), DEPTH_WORDS, version="1.1.0")


def test_a_huge_value_is_not_echoed_back_whole(server: CniServer) -> None:
    config = {**SERVER_NETCONF, "cniVersion": "1.1.0", "plugin": "\\" * (MAX_BYTES // 3)}
    status, reply = handle(server, "DEL", json.dumps(config))
    assert (status, reply["code"]) == (1, 7)
    assert reply["msg"].startswith("network config 'plugin' must be an object with a 'type'")
    assert len(reply["msg"]) < 300


@pytest.mark.parametrize(
    "stdin",
    [
        # one unterminated string of escaped quotes, ending in a lone backslash
        "[" * 65 + '"' + '\\"' * ((MAX_BYTES - 67) // 2) + "\\",
        "[]" * (MAX_BYTES // 2),
        '[""]' * (MAX_BYTES // 4),
        "[" * 65 + '"' * (MAX_BYTES - 65),
        "[" * MAX_BYTES,
        '["' * (MAX_BYTES // 2),
    ],
    ids=["escapes", "pairs", "strings in pairs", "quotes", "openers", "strings in arrays"],
)
def test_the_limits_are_checked_in_linear_time(server: CniServer, stdin: str) -> None:
    """1 MiB built against the scan (a quadratic one would take minutes here)."""
    assert len(stdin) <= MAX_BYTES
    start = time.perf_counter()
    status, reply = handle(server, "ADD", stdin)
    elapsed = time.perf_counter() - start
    assert status == 1
    assert_decode_error(status, reply, "network config")
    assert elapsed < 2.0, elapsed


def test_a_request_never_finished_is_dropped_and_the_socket_serves_on(
    server: CniServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that starts a request and never ends it holds its connection for
    REQUEST_TIMEOUT_S at most (no reply: it sent no request); the others are served."""
    monkeypatch.setattr(agent_module, "REQUEST_TIMEOUT_S", 0.3)
    listener = agent_module.AgentSocket(server, tmp_path / "run" / "agent.sock")

    async def scenario() -> tuple[bytes, float, bytes]:
        await listener.start()
        try:
            stalled_reader, stalled = await asyncio.open_unix_connection(str(listener.path))
            stalled.write(wire.MAGIC + b"CNI_COMMAND=DEL\0")  # ... and nothing more
            reader, writer = await asyncio.open_unix_connection(str(listener.path))
            writer.write(wire.encode_request({"CNI_COMMAND": "VERSION"}, b"{}"))
            writer.write_eof()
            served = await reader.read()
            start = time.perf_counter()
            dropped = await asyncio.wait_for(stalled_reader.read(), 10)
            waited = time.perf_counter() - start
            stalled.close()
            writer.close()
            return dropped, waited, served
        finally:
            await listener.stop()

    dropped, waited, served = asyncio.run(scenario())
    assert dropped == b""
    assert waited < 5, waited
    status, stdout, _ = wire.decode_reply(served)
    assert (status, json.loads(stdout)["cniVersion"]) == (0, "1.1.0")


# ------------------------------------------------------------------ through the shim

LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ \S+: ")


def exec_shim(shim: Path, env: dict[str, str], stdin: bytes) -> tuple[int, str, str]:
    done = subprocess.run(
        [str(shim)], input=stdin, env=env, capture_output=True, timeout=120, check=False
    )
    return done.returncode, done.stdout.decode(), done.stderr.decode()


@pytest.mark.root
def test_hostile_config_through_the_shim_and_the_agent_socket(shim: Path, agent: Agent) -> None:
    """Both installed shims, the real agent: code 6 naming the problem for every
    command, one log line per refusal and no traceback, and the agent serves on."""
    runtime = Runtime(shim, agent)
    cases = {**HOSTILE, "beyond the shim's limit": (b"x" * (SHIM_LIMIT + 1), "exceeds 4194304")}
    refused_by_agent = 0
    for what, (raw, words) in cases.items():
        for command in COMMANDS:
            env = runtime.env(command, "c1", "/var/run/netns/none")
            status, stdout, stderr = exec_shim(shim, env, raw)
            label = f"{what} {command}: {status} {stdout[:300]!r} {stderr[-300:]!r}"
            assert stderr == "", label
            assert stdout.count("\n") == 0, label
            if command == "VERSION" and what != "beyond the shim's limit":
                assert status == 0, label
                assert json.loads(stdout)["supportedVersions"][-1] == "1.1.0", label
                continue
            assert_decode_error(status, json.loads(stdout), words)
            refused_by_agent += what != "beyond the shim's limit"
    assert agent.process is not None
    assert agent.process.poll() is None, "the agent died"
    # The agent still serves a real request.
    assert runtime.delete("after-hostile", "").status == 0
    log = agent.log()
    assert "Traceback" not in log, log[-3000:]
    assert "failed unexpectedly" not in log, log[-3000:]
    assert "error 999" not in log, log[-3000:]
    # One line per refusal: every line of the log is a log record of its own.
    lines = log.splitlines()
    assert [line[:200] for line in lines if not LOG_LINE.match(line)] == []
    refusals = [line for line in lines if "container c1 ifname net1: error 6: " in line]
    assert len(refusals) == refused_by_agent
    assert max(len(line) for line in refusals) < 500


@pytest.mark.root
def test_an_endless_request_on_the_socket_is_cut_off_with_a_decode_error(
    agent: Agent, installed_shim: Path
) -> None:
    """The agent reads a request up to its limit (8 MiB: twice the shims' largest
    stdin) and stops: a client that never ends its request gets code 6, and its
    writes then fail."""
    sent = 0
    failure: list[OSError] = []
    reply = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(60)
        conn.connect(str(agent.socket))

        def flood() -> None:
            nonlocal sent
            chunk = b"x" * 65536
            try:
                conn.sendall(wire.encode_request({"CNI_COMMAND": "ADD"}, b'{"x": "'))
                while sent < 64 * MIB:
                    conn.sendall(chunk)
                    sent += len(chunk)
            except OSError as e:
                failure.append(e)

        writer = threading.Thread(target=flood)
        writer.start()
        # The reply is read first; then the agent's close of a connection it did
        # not read to the end resets it.
        with contextlib.suppress(ConnectionResetError):
            while data := conn.recv(65536):
                reply += data
        writer.join(60)
    assert not writer.is_alive()
    status, stdout, _ = wire.decode_reply(reply)
    assert status == 1
    error = json.loads(stdout)
    assert error["code"] == 6, error
    assert error["msg"] == (
        f"network config exceeds {MAX_BYTES} bytes (the agent's limit): "
        f"its request is over {wire.MAX_REQUEST} bytes"
    )
    # The agent stopped reading: the flood ended with a closed connection, not at 64 MiB.
    assert failure, f"the agent read all {sent} bytes"
    assert isinstance(failure[0], (BrokenPipeError, ConnectionResetError)), failure
    assert sent < 16 * MIB, sent
    assert agent.process is not None
    assert agent.process.poll() is None
    assert Runtime(installed_shim, agent).delete("after-flood", "").status == 0


@pytest.mark.root
def test_a_config_within_the_shims_limit_is_refused_by_the_agents(shim: Path, agent: Agent) -> None:
    """2.5 MiB of escaped quotes (within the shims' 4 MiB) reaches the agent whole,
    which refuses it by its own 1 MiB bound, naming it."""
    raw = with_member(b'"' + b'\\"' * (1280 * 1024) + b'"')
    assert MAX_BYTES < len(raw) <= SHIM_LIMIT
    env = Runtime(shim, agent).env("ADD", "c1", "/var/run/netns/none")
    status, stdout, _ = exec_shim(shim, env, raw)
    assert_decode_error(status, json.loads(stdout), SIZE_WORDS)


def test_a_newline_in_an_id_cannot_forge_a_log_line(
    server: CniServer, caplog: pytest.LogCaptureFixture
) -> None:
    env = {**CNI_ENV, "CNI_COMMAND": "DEL", "CNI_IFNAME": "net1\nINFO forged: released everything"}
    with caplog.at_level(logging.INFO, logger="multinic_agent.cni_server"):
        asyncio.run(server.handle(env, "{"))
    lines = [r.getMessage() for r in caplog.records]
    assert lines, "the refusal is logged"
    assert all("\n" not in line for line in lines), lines
    assert any("'net1\\nINFO forged: released everything'" in line for line in lines), lines
