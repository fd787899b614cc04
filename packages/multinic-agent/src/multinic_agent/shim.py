#!/usr/bin/env python3
"""The ``multi-nic`` CNI plugin executable: a pipe in front of the node agent.

The container runtime (through Multus) execs this file for every pod start
and stop.  The ``CNI_*`` environment and stdin go to the agent over a
root-only unix socket, as bytes; the agent's stdout and stderr come back and
are written out, and the shim exits with the agent's status.  Every CNI
command, ``VERSION`` included, is parsed and answered by the agent
(:mod:`multinic_agent.wire` has the protocol); the shim reads no JSON.

It answers on its own only what the agent cannot: stdin unreadable or too
large (6), the agent's socket absent, refused or unreachable, or a reply
in another protocol (11; for ``VERSION`` the fixed list of supported
versions instead), a reply with numbers out of range (999).  Its errors are printed in the latest CNI version (the one
format every supported version shares) and quote nothing but the socket
path, ``CNI_COMMAND`` and the OS's error text, each byte outside printable
ASCII as ``\\xHH``.

It imports only built-in modules and runs as ``python -IS`` (installed by
``multinic-agent install-cni``, as bytecode): its start-up is paid on every
pod start, so it loads no pure-Python module at all, not even ``os`` or
``socket`` (``posix``, ``_socket`` and ``_stat`` suffice), and it leaves
with ``_exit``, skipping the interpreter's teardown.

``shim.c`` is this program in C (static, no interpreter needed on the host;
``multinic-agent install-cni --shim compiled``): change both together, the
tests run them on the same inputs and expect the same bytes.
"""

import _socket  # socket.py would import enum and selectors
import _stat  # stat.py is a module to load; S_ISSOCK is this builtin's
import posix  # built in: os (~1 ms: posixpath, _collections_abc) is not loaded under -IS

# No ``from __future__ import annotations`` (it imports the __future__ module):
# annotations are evaluated, so they name builtins only.

MAGIC = b"MULTINIC/1\0"
"""Starts a request and a reply: the protocol and its version."""
HEADER = len(MAGIC) + 12
"""A reply's header: MAGIC, exit status, stdout length, stderr length (32-bit, big-endian)."""
DEFAULT_SOCKET = "/run/multinic/agent.sock"
SOCKET_ENV = "MULTINIC_AGENT_SOCKET"
TIMEOUT_ENV = "MULTINIC_SHIM_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
MAX_TIMEOUT_S = 1e6
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
MAX_STDIN = 4 * 1024 * 1024
"""Largest stdin (bytes) the shim forwards; the agent's own limit is lower."""
MAX_PART = 4 * 1024 * 1024
"""Largest stdout, and stderr, of a reply."""
VERSIONS = b'{"cniVersion":"1.1.0","supportedVersions":["0.3.0","0.3.1","0.4.0","1.0.0","1.1.0"]}'
"""The answer to VERSION when the agent is out of reach (the agent's own echoes the config's)."""

# CNI error codes (spec "Error" section) used by the shim and the agent.
CODE_INCOMPATIBLE_VERSION = 1
CODE_INVALID_ENV = 4
CODE_DECODE = 6
CODE_INVALID_CONFIG = 7
CODE_TRY_AGAIN = 11
CODE_NOT_AVAILABLE = 50
CODE_OTHER = 999


class ShimError(Exception):
    """An answer of the shim's own: ``code`` and the message (bytes)."""

    def __init__(self, code: int, message: bytes) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message


def quote(data: bytes) -> bytes:
    """A JSON string of bytes: printable ASCII as is, the rest (and ``\\``) as the text ``\\xHH``."""
    out = bytearray(b'"')
    for byte in data:
        if byte == 0x22:
            out += b'\\"'
        elif 0x20 <= byte < 0x7F and byte != 0x5C:
            out.append(byte)
        else:
            out += b"\\\\x%02x" % byte
    return bytes(out + b'"')


def error_json(code: int, message: bytes, command: bytes) -> bytes:
    """One of the shim's own errors, in the latest version."""
    return b'{"cniVersion":"1.1.0","code":%d,"msg":%s,"details":%s}' % (
        code,
        quote(message),
        quote(b"CNI_COMMAND=" + command),
    )


def os_error(error: OSError) -> bytes:
    """``str(error)``: "[Errno N] text", or the message of a timeout or a path too long."""
    return str(error).encode("ascii", "backslashreplace")


def timeout(environ: dict[bytes, bytes]) -> float:
    """``MULTINIC_SHIM_TIMEOUT``: digits and a point, above 0 and at most 1e6; else the default."""
    text = environ.get(TIMEOUT_ENV.encode(), b"")
    if text and not text.strip(b"0123456789."):
        try:
            value = float(text)
        except ValueError:
            value = 0.0
        if 0 < value <= MAX_TIMEOUT_S:
            return value
    return DEFAULT_TIMEOUT_S


def read_stdin() -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = posix.read(0, 65536)
        except OSError as e:
            raise ShimError(CODE_DECODE, b"cannot read stdin: " + os_error(e)) from None
        if not chunk:
            return bytes(data)
        data += chunk
        if len(data) > MAX_STDIN:
            raise ShimError(CODE_DECODE, b"network config exceeds 4194304 bytes (the shim's limit)")


def check_socket(path: bytes) -> None:
    """Raise why ``path`` must not be used as the agent's socket.

    A socket planted by someone else would receive every pod's config, so
    when running as root only a root-owned socket (not a symlink) is used.
    """
    try:
        info = posix.lstat(path)
    except FileNotFoundError:
        message = b"agent socket %s does not exist (is multinic-agent running?)" % path
        raise ShimError(CODE_TRY_AGAIN, message) from None
    except OSError as e:
        message = b"agent socket %s cannot be inspected: %s" % (path, (e.strerror or "").encode())
        raise ShimError(CODE_TRY_AGAIN, message) from None
    if not _stat.S_ISSOCK(info.st_mode):
        message = b"refusing agent socket %s: it is not a unix socket" % path
        raise ShimError(CODE_TRY_AGAIN, message)
    if posix.geteuid() == 0 and info.st_uid != 0:
        message = b"refusing agent socket %s: owned by uid %d, not root" % (path, info.st_uid)
        raise ShimError(CODE_TRY_AGAIN, message)


def call_agent(path: bytes, request: bytes, seconds: float) -> bytes:
    """Send the request, return the reply (header and parts); ShimError otherwise."""
    unreachable = b"multinic agent at %s is unreachable: " % path
    conn = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        conn.settimeout(seconds)
        try:
            conn.connect(path)
        except OSError as e:
            raise ShimError(CODE_TRY_AGAIN, unreachable + os_error(e)) from None
        # A send that fails may still have an answer behind it (the agent refused early).
        send_error: OSError | None = None
        try:
            conn.sendall(request)
            conn.shutdown(_socket.SHUT_WR)
        except OSError as e:
            send_error = e
        reply = bytearray()
        want = HEADER
        while len(reply) < want:
            error = send_error
            try:
                chunk = conn.recv(65536)
            except OSError as e:
                chunk, error = b"", send_error or e
            if not chunk:
                if error is not None:
                    why = os_error(error)
                elif reply:
                    why = b"agent closed the connection in mid-reply"
                else:
                    why = b"agent closed the connection without a reply"
                raise ShimError(CODE_TRY_AGAIN, unreachable + why)
            reply += chunk
            # Another protocol is an agent of another version (being upgraded): try again.
            if not reply.startswith(MAGIC[: len(reply)]):
                why = b"not MULTINIC/1 (an agent of another version?)"
                malformed(CODE_TRY_AGAIN, path, why)
            if want == HEADER and len(reply) >= HEADER:
                status, out, err = numbers(reply)
                if status > 255 or out > MAX_PART or err > MAX_PART:
                    malformed(CODE_OTHER, path, b"its exit status or a length is out of range")
                want = HEADER + out + err
        return bytes(reply)
    finally:
        conn.close()


def numbers(header: bytes | bytearray) -> tuple[int, int, int]:
    """A reply header's exit status, stdout length and stderr length."""
    at = len(MAGIC)
    status, out, err = (int.from_bytes(header[i : i + 4], "big") for i in (at, at + 4, at + 8))
    return status, out, err


def malformed(code: int, path: bytes, why: bytes) -> None:
    raise ShimError(code, b"multinic agent at %s sent a malformed reply: %s" % (path, why))


def run(environ: dict[bytes, bytes]) -> tuple[int, bytes, bytes]:
    """Handle one CNI invocation: (exit status, stdout, stderr)."""
    stdin = read_stdin()
    path = environ.get(SOCKET_ENV.encode()) or DEFAULT_SOCKET.encode()
    check_socket(path)
    forwarded = b"".join(
        b"%s=%s\0" % (key, value) for key, value in environ.items() if key.startswith(b"CNI_")
    )
    reply = call_agent(path, MAGIC + forwarded + b"\0" + stdin, timeout(environ))
    status, out, err = numbers(reply)
    body = reply[HEADER:]
    return status, body[:out], body[out : out + err]


def write_all(fd: int, data: bytes) -> None:
    while data:  # (Python retries a write interrupted by a signal)
        data = data[posix.write(fd, data) :]


def main() -> int:
    environ = posix.environ
    command = environ.get(b"CNI_COMMAND", b"")
    try:
        status, stdout, stderr = run(environ)
    except ShimError as e:
        if e.code == CODE_TRY_AGAIN and command == b"VERSION":
            status, stdout, stderr = 0, VERSIONS, b""
        else:
            status, stdout, stderr = 1, error_json(e.code, e.message, command), b""
    except Exception as e:
        # The runtime must get a CNI error, never a traceback.
        text = f"multi-nic shim failed: {type(e).__name__}: {e}".encode("utf-8", "backslashreplace")
        status, stdout, stderr = 1, error_json(CODE_OTHER, text, command), b""
    try:
        write_all(2, stderr)
        write_all(1, stdout)
    except OSError:
        return 1
    return status


if __name__ == "__main__":
    # Everything is written: the interpreter's teardown (~2 ms per pod start)
    # would only free memory.
    posix._exit(main())
