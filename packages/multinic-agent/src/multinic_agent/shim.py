#!/usr/bin/env python3
"""The ``multi-nic`` CNI plugin executable: a thin shim in front of the node agent.

The container runtime (through Multus) execs this file for every pod start
and stop.  It forwards the ``CNI_*`` environment and the network config on
stdin to the agent over a root-only unix socket, prints the agent's reply on
stdout and exits with the reply's status.  ``VERSION`` is answered here.

It imports only the standard library and runs as ``python -IS`` (installed
by ``multinic-agent install-cni``, as bytecode): its start-up is paid on every
pod start, so it imports no pure-Python module at all, not even ``os``,
``json``, ``socket``, ``typing`` or ``__future__`` (``posix``, ``_stat`` and the
C halves of json and socket suffice), and it leaves with ``_exit`` once its
output is flushed, skipping the interpreter's teardown.

Wire protocol (one request and one reply per connection, each a single line
of UTF-8 JSON terminated by ``\\n``; JSON strings never contain a raw
newline; at most ``MAX_MESSAGE`` bytes):

* request: ``{"env": {"CNI_COMMAND": ..., ...}, "stdin": "<network config>"}``
* reply:   ``{"exit": <int>, "stdout": "<CNI result or error>", "stderr": "..."}``

``shim.c`` is this program in C (static, no interpreter needed on the host;
``multinic-agent install-cni --shim compiled``): change both together, the
tests run them on the same inputs and expect the same bytes.
"""

import _json  # the C half of json: the full module would import re (~10 ms per pod start)
import _socket  # socket.py would import enum and selectors
import _stat  # stat.py is a module to load; S_ISSOCK is this builtin's
import posix  # built in: os (~1 ms: posixpath, _collections_abc) is not loaded under -IS
import sys

TYPE_CHECKING = False  # typing itself costs start-up time; mypy reads the block below
if TYPE_CHECKING:
    from typing import Any

# No ``from __future__ import annotations`` (it imports the __future__ module):
# annotations naming ``Any`` are strings, the others are evaluated (builtins only).

DEFAULT_SOCKET = "/run/multinic/agent.sock"
SOCKET_ENV = "MULTINIC_AGENT_SOCKET"
TIMEOUT_ENV = "MULTINIC_SHIM_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
MAX_MESSAGE = 4 * 1024 * 1024
"""Largest request or reply line; a network config is a few kilobytes."""

# CNI error codes (spec "Error" section) used by the shim and the agent.
CODE_INCOMPATIBLE_VERSION = 1
CODE_INVALID_ENV = 4
CODE_DECODE = 6
CODE_INVALID_CONFIG = 7
CODE_TRY_AGAIN = 11
CODE_NOT_AVAILABLE = 50
CODE_OTHER = 999


class _Literals:
    """The settings ``_json.make_scanner`` reads (those of ``json.loads``).

    ``parse_constant`` accepts NaN/Infinity as ``json.loads`` does.
    """

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = float
    memo: dict[str, str] = {}


# typeshed types the argument as the scanner class itself; any object with these
# attributes is what the C code reads.
_scan = _json.make_scanner(_Literals())  # type: ignore[arg-type]
_quote = _json.encode_basestring_ascii


def encode_message(message: "dict[str, Any]") -> bytes:
    """One wire message: JSON on one line (strings, string maps and ints only)."""

    def value(item: "Any") -> str:
        if isinstance(item, str):
            return str(_quote(item))
        if isinstance(item, bool) or item is None:
            raise TypeError(f"cannot encode {item!r}")
        if isinstance(item, int):
            return str(item)
        if isinstance(item, dict):
            return "{" + ",".join(f"{_quote(str(k))}:{value(v)}" for k, v in item.items()) + "}"
        raise TypeError(f"cannot encode {type(item).__name__}")

    return value(message).encode() + b"\n"


def decode_message(line: bytes) -> "dict[str, Any]":
    """Parse one wire message; raises ValueError when it is not one JSON object."""
    text = line.decode().strip()
    try:
        message, end = _scan(text, 0)
    except StopIteration as e:
        raise ValueError(f"not JSON at offset {e.value}") from None
    except Exception as e:
        # The bare C scanner reports some syntax errors as SystemError.
        raise ValueError(f"not JSON: {e}") from None
    if end != len(text):
        raise ValueError(f"extra data after the JSON value at offset {end}")
    if not isinstance(message, dict):
        raise ValueError("a wire message must be a JSON object")
    return message


def config_version(config: str) -> str:
    """The ``cniVersion`` of a network config, for error formatting; the latest if unknown."""
    try:
        version = decode_message(config.encode()).get("cniVersion")
    except (ValueError, UnicodeError):
        return LATEST_VERSION
    return version if isinstance(version, str) and version else LATEST_VERSION


def error_json(version: str, code: int, msg: str, details: str = "") -> str:
    """A CNI error result."""
    return (
        encode_message({"cniVersion": version, "code": code, "msg": msg, "details": details})
        .decode()
        .rstrip("\n")
    )


def version_reply(config: str) -> str:
    """The answer to ``CNI_COMMAND=VERSION``."""
    versions = ",".join(_quote(v) for v in SUPPORTED_VERSIONS)
    return f'{{"cniVersion":{_quote(config_version(config))},"supportedVersions":[{versions}]}}'


def check_socket(path: str) -> str:
    """Why ``path`` must not be used as the agent's socket; "" when it is fine.

    A socket planted by someone else would receive every pod's config, so
    when running as root only a root-owned socket (not a symlink) is used.
    """
    try:
        info = posix.lstat(path)
    except FileNotFoundError:
        return f"agent socket {path} does not exist (is multinic-agent running?)"
    except OSError as e:
        return f"agent socket {path} cannot be inspected: {e.strerror}"
    if not _stat.S_ISSOCK(info.st_mode):
        return f"refusing agent socket {path}: it is not a unix socket"
    if posix.geteuid() == 0 and info.st_uid != 0:
        return f"refusing agent socket {path}: owned by uid {info.st_uid}, not root"
    return ""


def call_agent(path: str, request: "dict[str, Any]", timeout: float) -> "dict[str, Any]":
    """Send one request to the agent and return its reply; raises OSError/ValueError."""
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(timeout)
        conn.connect(path)
        conn.sendall(encode_message(request))
        received = bytearray()
        while not received.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            received += chunk
            if len(received) > MAX_MESSAGE:
                raise ValueError(f"agent reply exceeds {MAX_MESSAGE} bytes")
    finally:
        conn.close()
    if not received:
        raise ValueError("agent closed the connection without a reply")
    return decode_message(bytes(received))


def run(environ: dict[str, str], config: str) -> tuple[int, str, str]:
    """Handle one CNI invocation: (exit status, stdout, stderr)."""
    command = environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        return 0, version_reply(config), ""
    version = config_version(config)
    path = environ.get(SOCKET_ENV) or DEFAULT_SOCKET
    problem = check_socket(path)
    if problem:
        return 1, error_json(version, CODE_TRY_AGAIN, problem, f"CNI_COMMAND={command}"), ""
    try:
        timeout = float(environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S)
    except ValueError:
        timeout = DEFAULT_TIMEOUT_S
    request: dict[str, Any] = {
        "env": {k: v for k, v in environ.items() if k.startswith("CNI_")},
        "stdin": config,
    }
    try:
        reply = call_agent(path, request, timeout)
    except (OSError, ValueError) as e:
        message = f"multinic agent at {path} is unreachable: {e}"
        return 1, error_json(version, CODE_TRY_AGAIN, message, f"CNI_COMMAND={command}"), ""
    status, stdout, stderr = reply.get("exit"), reply.get("stdout"), reply.get("stderr", "")
    if not isinstance(status, int) or not isinstance(stdout, str) or not isinstance(stderr, str):
        message = f"multinic agent at {path} sent a malformed reply"
        return 1, error_json(version, CODE_OTHER, message, repr(reply)[:500]), ""
    return status, stdout, stderr


def environment() -> dict[str, str]:
    """The process environment, decoded as ``os.environ`` does."""
    encoding = sys.getfilesystemencoding()
    return {
        key.decode(encoding, "surrogateescape"): value.decode(encoding, "surrogateescape")
        for key, value in posix.environ.items()
    }


def main() -> int:
    try:
        config = sys.stdin.read(MAX_MESSAGE + 1)
    except (OSError, UnicodeDecodeError) as e:
        sys.stdout.write(error_json(LATEST_VERSION, CODE_DECODE, f"cannot read stdin: {e}"))
        return 1
    if len(config) > MAX_MESSAGE:
        sys.stdout.write(
            error_json(LATEST_VERSION, CODE_DECODE, f"network config exceeds {MAX_MESSAGE} bytes")
        )
        return 1
    try:
        status, stdout, stderr = run(environment(), config)
    except Exception as e:
        # The runtime must get a CNI error, never a traceback.
        message = f"multi-nic shim failed: {type(e).__name__}: {e}"
        status, stdout, stderr = 1, error_json(LATEST_VERSION, CODE_OTHER, message), ""
    if stderr:
        sys.stderr.write(stderr)
    sys.stdout.write(stdout)
    sys.stdout.flush()
    return status


if __name__ == "__main__":
    exit_status = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is written: the interpreter's teardown (~2 ms per pod start)
    # would only free memory.
    posix._exit(exit_status)
