"""The protocol between the ``multi-nic`` shim and the agent (``MULTINIC/1``).

One request and one reply per connection on the agent's unix socket.  The
shim parses nothing: it sends bytes, the agent decodes and validates them.

* request: ``MULTINIC/1\\0``, then ``KEY=VALUE\\0`` for every ``CNI_*``
  variable of the shim's environment, then ``\\0``, then stdin's bytes; the
  shim then shuts its sending side down, which ends the request.
* reply: ``MULTINIC/1\\0``, then the exit status, the length of stdout and
  the length of stderr (three 32-bit big-endian numbers), then stdout's and
  stderr's bytes.

Environment and stdin are decoded as UTF-8 with ``surrogateescape`` (a byte
that is no UTF-8 becomes U+DC80..U+DCFF), so the CNI server sees text and
still tells an invalid byte apart.  The shims (``shim.py``, ``shim.c``)
implement the client side; :func:`encode_request` and :func:`decode_reply`
are the same in Python, for tests and tools.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

from multinic_agent.shim import MAGIC, MAX_PART, MAX_STDIN

__all__ = [
    "MAGIC",
    "MAX_REQUEST",
    "REPLY_HEADER",
    "WireError",
    "decode_reply",
    "decode_request",
    "encode_reply",
    "encode_request",
    "is_request_prefix",
]
REPLY_HEADER = struct.Struct(f">{len(MAGIC)}sIII")
"""MAGIC, exit status, stdout length, stderr length."""
MAX_REQUEST = 2 * MAX_STDIN
"""Largest request the agent reads: the shims' largest stdin and room for the
environment (each variable is at most 128 KiB on Linux).  A client that sends
more is answered code 6 and cut off."""


class WireError(ValueError):
    """Bytes that are no ``MULTINIC/1`` request or reply (the message says why)."""


def encode_request(env: Mapping[str, str], stdin: bytes) -> bytes:
    """The request a shim sends for ``env`` (its ``CNI_*`` variables) and ``stdin``."""
    entries = b"".join(
        f"{key}={value}\0".encode("utf-8", "surrogateescape")
        for key, value in env.items()
        if key.startswith("CNI_")
    )
    return MAGIC + entries + b"\0" + stdin


def is_request_prefix(data: bytes) -> bool:
    """Whether ``data`` can be the start of a request (so reading on makes sense)."""
    return data.startswith(MAGIC) or MAGIC.startswith(data)


def decode_request(data: bytes) -> tuple[dict[str, str], str]:
    """(environment, stdin) of a whole request; WireError when it is not one.

    A variable given twice counts once, with its first value (as ``getenv``).
    """
    if not data.startswith(MAGIC):
        raise WireError(
            f"not a multi-nic shim request: it must start with {MAGIC!r}, not {data[:16]!r} "
            "(a shim of another version? reinstall it with multinic-agent install-cni)"
        )
    end = data.find(b"\0\0", len(MAGIC) - 1)
    if end < 0:
        raise WireError("the request's environment does not end (no empty entry)")
    env: dict[str, str] = {}
    for entry in data[len(MAGIC) : end].split(b"\0"):
        key, sep, value = entry.partition(b"=")
        if sep and key:
            env.setdefault(
                key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
            )
    return env, data[end + 2 :].decode("utf-8", "surrogateescape")


def _wire_text(text: str) -> bytes:
    """``text`` as bytes: raw bytes given back as they came (surrogateescape), never an error."""
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace")


def encode_reply(status: int, stdout: str, stderr: str) -> bytes:
    """The reply for one request: exit status (0-255), stdout and stderr."""
    out, err = _wire_text(stdout), _wire_text(stderr)
    if not 0 <= status <= 255:
        raise ValueError(f"exit status {status} is not 0-255")
    if len(out) > MAX_PART or len(err) > MAX_PART:
        raise ValueError(f"a reply part exceeds {MAX_PART} bytes")
    return REPLY_HEADER.pack(MAGIC, status, len(out), len(err)) + out + err


def decode_reply(data: bytes) -> tuple[int, bytes, bytes]:
    """(exit status, stdout, stderr) of a whole reply; WireError when it is not one."""
    if len(data) < REPLY_HEADER.size:
        raise WireError(f"a reply has a {REPLY_HEADER.size}-byte header, not {len(data)} bytes")
    magic, status, out, err = REPLY_HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError(f"not a MULTINIC/1 reply: {data[:16]!r}")
    if len(data) != REPLY_HEADER.size + out + err:
        raise WireError(f"the reply has {len(data)} bytes, its header says {out + err} after it")
    body = data[REPLY_HEADER.size :]
    return status, body[:out], body[out:]
