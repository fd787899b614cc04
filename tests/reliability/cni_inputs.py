"""CNI invocations for fuzzing, each with the answer SPEC section 4 requires.

A case is a valid invocation with exactly one thing broken (so the spec says
which error code it must get), or arbitrary garbage (any spec error code, but
still a well-formed error).  Valid parts carry random but harmless noise.
"""

from __future__ import annotations

import copy
import json
import string
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from .conftest import node_fixtures

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST = SUPPORTED[-1]
ERROR_CODES = frozenset({1, 4, 6, 7, 11, 50, 999})
"""The codes SPEC section 4 gives the shim and the agent."""
MAX_CONFIG_BYTES = 1024 * 1024
MAX_CONFIG_DEPTH = 64
"""The agent's bounds on a network config (docs/reliability.md section 1): beyond
either, code 6 naming the limit, and the reply in the latest version (the config
is not parsed for its own)."""
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS")
BOUND_KINDS = ("too deep", "deep within the limit", "too large", "large within the limit")
BOUND_KINDS += ("bad number", "not UTF-8", "NUL byte")
"""The kinds of broken config that test how the agent bounds its decoding."""
VALID_CONTAINER_ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,40}\Z")
VALID_IFNAME = st.from_regex(r"\A[a-z][a-z0-9]{0,5}\Z")
HOSTILE_NAMES = [
    "eth0; reboot",
    "../../x",
    "eth0`id`",
    "$(reboot)",
    "eth0 && rm -rf /",
    "a" * 16,
    "abcdefghijklmnopqrstuvwxyz",
    "/etc/passwd",
    "..",
    ".",
    "net1\nx",
    "net 1",
    "",
]
# Text for env values and stdin: what an exec can carry (no NUL, no lone surrogates).
TEXT = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=60)
JSON_SCALARS = st.none() | st.booleans() | st.integers(-(2**40), 2**40) | TEXT
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=8,
)


@dataclass(frozen=True)
class CniCase:
    """One invocation: ``code`` is the required error code, 0 for success, None for
    "any spec error code" (garbage) and -1 for "any answer, success or error"."""

    what: str
    env: dict[str, str]
    stdin: str
    code: int | None
    version: str | None = None
    """The version the answer must be printed in, when not the config's (see below)."""
    depth: int = 0
    """How deep the case nests arrays and objects on purpose (0: not a nesting case)."""

    def reply_version(self) -> str:
        """The version the answer must be printed in: the config's, if it is a supported one."""
        if self.version is not None:
            return self.version
        try:
            config = json.loads(self.stdin)
        except (ValueError, RecursionError):
            return LATEST
        version = config.get("cniVersion") if isinstance(config, dict) else None
        return version if version in SUPPORTED else LATEST


def base_config(version: str) -> dict[str, Any]:
    """The agent tests' demo NAD config, without its routes and daemon settings."""
    config = node_fixtures.netconf(version)
    del config["ipam"]["routes"], config["daemonIP"], config["daemonPort"]
    return config


def spread(choices: list[str]) -> st.SearchStrategy[str]:
    """One of ``choices``, about evenly: ``sampled_from`` favours the first ones
    (hypothesis shrinks towards them), which starves the later branches."""
    return st.randoms(use_true_random=True).map(lambda r: r.choice(choices))


def not_matching(pattern: str) -> st.SearchStrategy[str]:
    import re

    compiled = re.compile(pattern)
    hostile = [name for name in HOSTILE_NAMES if not compiled.match(name)]
    return st.sampled_from(hostile) | TEXT.filter(lambda s: not compiled.match(s))


def not_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return True
    return False


@st.composite
def valid_invocation(
    draw: st.DrawFn, netns: st.SearchStrategy[str], cni_path: str
) -> tuple[str, dict[str, str], dict[str, Any]]:
    command = draw(st.sampled_from(COMMANDS))
    if command in ("GC", "STATUS"):
        version = "1.1.0"
    elif command == "CHECK":
        version = draw(st.sampled_from(SUPPORTED[2:]))
    else:
        version = draw(st.sampled_from(SUPPORTED))
    config = base_config(version)
    # Unknown top-level keys are carried, never a reason to fail.
    for key, value in draw(st.dictionaries(TEXT, JSON_VALUES, max_size=2)).items():
        if key not in config and not key.startswith("cni.dev") and key not in ("args",):
            config[key] = value
    pod = draw(st.from_regex(r"\A[a-z0-9][a-z0-9-]{0,20}\Z"))
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": draw(VALID_CONTAINER_ID),
        "CNI_NETNS": draw(netns),
        "CNI_IFNAME": draw(VALID_IFNAME),
        "CNI_PATH": cni_path,
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}",
    }
    return command, env, config


ABSENT_NETNS = st.just("/var/run/netns/multinic-fuzz-absent")
BASE_CODE = {"ADD": None, "DEL": 0, "CHECK": 999, "GC": 0, "STATUS": 0}
"""What an unbroken invocation gets when ADD cannot complete (no pod netns or no
delegate), no attachment exists, and the node has its pools."""


@st.composite
def broken_invocation(
    draw: st.DrawFn,
    netns: st.SearchStrategy[str] = ABSENT_NETNS,
    cni_path: str = "",
    add_code: int | None = None,
    only: tuple[str, ...] = (),
) -> CniCase:
    """A valid invocation with one thing broken (or none), and the code it must get.

    ``only``: break one of these kinds only (e.g. ``BOUND_KINDS``).
    """
    command, env, config = draw(valid_invocation(netns, cni_path))
    per_pod = command in ("ADD", "DEL", "CHECK")
    kinds = ["none", "command", "not json", "json not object", "no version", "bad version"]
    kinds += ["no name", "bad plugin", "bad ipam"]
    kinds += ["too deep", "deep within the limit", "too large", "large within the limit"]
    kinds += ["bad number", "not UTF-8", "NUL byte"]
    if per_pod:
        kinds += ["container id", "ifname", "cni args"]
    if command in ("ADD", "CHECK"):
        kinds += ["no netns"]
    if command in ("GC", "STATUS", "CHECK"):
        kinds += ["version too old"]
    if command == "ADD":
        kinds += ["ifname too long for the NICs", "unknown ipam", "unknown plugin"]
        kinds += ["bad block", "bad subnet", "bad nics", "unknown master", "bad device id"]
    kind = draw(spread([k for k in kinds if k in only] if only else kinds))
    code: int | None = add_code if command == "ADD" else BASE_CODE[command]
    stdin: str | None = None
    version: str | None = None
    depth = 0
    if kind == "command":
        env["CNI_COMMAND"] = draw(TEXT.filter(lambda s: s not in (*COMMANDS, "VERSION")))
        code = 4
    elif kind == "container id":
        env["CNI_CONTAINERID"] = draw(not_matching(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}\Z"))
        code = 4
    elif kind == "ifname":
        env["CNI_IFNAME"] = draw(not_matching(r"\A[A-Za-z0-9_.:@-]{1,15}\Z"))
        code = 4
    elif kind == "ifname too long for the NICs":
        env["CNI_IFNAME"] = draw(st.from_regex(r"\A[a-z]{14,15}\Z"))
        code = 4
    elif kind == "cni args":
        env["CNI_ARGS"] += ";" + draw(
            st.sampled_from(["K8S_POD_UID", "=x", "reboot", "a;b"]) | st.from_regex(r"\A[a-z]+\Z")
        )
        code = 4
    elif kind == "no netns":
        env["CNI_NETNS"] = ""
        code = 4
    elif kind == "not json":
        stdin = draw(TEXT.filter(not_json))
        code = 6
    elif kind == "json not object":
        stdin = json.dumps(draw(st.lists(JSON_VALUES, max_size=3) | JSON_SCALARS))
        code = 6
    elif kind == "no version":
        if draw(st.booleans()):
            del config["cniVersion"]
        else:
            config["cniVersion"] = draw(st.sampled_from(["", None, 1, 1.0, [], {}]))
        code = 7
    elif kind == "bad version":
        config["cniVersion"] = draw(TEXT.filter(lambda s: s not in SUPPORTED and s != ""))
        code = 1
    elif kind == "version too old":
        old = SUPPORTED[:2] if command == "CHECK" else SUPPORTED[:4]
        config["cniVersion"] = draw(st.sampled_from(old))
        code = 1
    elif kind == "no name":
        config["name"] = draw(st.sampled_from(["", None, 7, [], {"a": 1}]))
        code = 7
    elif kind == "bad plugin":
        config["plugin"] = draw(
            st.sampled_from(["macvlan", None, [], {"mode": "l2"}, {"type": 5}])
            | not_matching(r"\A[A-Za-z0-9][A-Za-z0-9_.\-]*\Z").map(lambda name: {"type": name})
        )
        code = 7
    elif kind == "bad ipam":
        config["ipam"] = draw(st.sampled_from([None, "multi-nic-ipam", [], {}, {"type": ""}]))
        code = 7
    elif kind == "unknown ipam":
        config["ipam"] = {"type": "nosuch-" + draw(st.from_regex(r"\A[a-z]{1,8}\Z"))}
        code = 7
    elif kind == "unknown plugin":
        config["plugin"]["type"] = "nosuch-" + draw(st.from_regex(r"\A[a-z]{1,8}\Z"))
        code = 7
    elif kind == "bad block":
        block = draw(st.sampled_from(["hostBlock", "interfaceBlock"]))
        config["ipam"][block] = draw(st.sampled_from(["six", -1, 99, None, [], 2.5]))
        code = 7
    elif kind == "bad subnet":
        config["subnet"] = draw(
            st.sampled_from(["192.168.0.0/33", "192.168.0.1/16", "x", "10.0.0.0", "::/200"])
        )
        code = 7
    elif kind == "bad nics":
        config["args"] = {"cni": {"nics": draw(st.sampled_from([-1, "two", 1.5, [], {}]))}}
        code = 7
    elif kind == "unknown master":
        master = draw(st.sampled_from(HOSTILE_NAMES[:-1]) | st.from_regex(r"\Aeth[3-9]\Z"))
        config["args"] = {"cni": {"masters": [master]}}
        code = 999
    elif kind == "bad device id":
        config["runtimeConfig"] = {
            "deviceID": draw(st.sampled_from([[1], [None], {"a": 1}, 7, [["x"]]]))
        }
        code = 7
    elif kind in ("too deep", "deep within the limit"):
        # The top-level object is one level; the rest nests under an unknown key.
        if kind == "too deep":
            depth = draw(st.sampled_from([65, 66, 991, 992, 5000, 100_000]) | st.integers(65, 3000))
        else:
            depth = draw(st.sampled_from([2, MAX_CONFIG_DEPTH]) | st.integers(2, MAX_CONFIG_DEPTH))
        stdin = with_key(json.dumps(config), "nested", draw(nested_text(depth - 1, kind)))
        if kind == "too deep":
            code, version = 6, LATEST
    elif kind in ("too large", "large within the limit"):
        filler = draw(spread(list(FILLERS)))
        if kind == "large within the limit":
            size = draw(st.sampled_from([MAX_CONFIG_BYTES]) | st.integers(16_384, MAX_CONFIG_BYTES))
        elif FILLERS[filler][1] == 1 and draw(st.booleans()):
            # Beyond the shim's own limit (bytes): the shim answers, naming it.
            size = SHIM_LIMIT + draw(st.integers(1, 1024))
        else:
            # At most 1.25 MiB: even escaped 3-fold on the wire, the request stays
            # within the socket's line limit (see docs/reliability.md, section 1).
            size = draw(
                st.sampled_from([MAX_CONFIG_BYTES + 1])
                | st.integers(MAX_CONFIG_BYTES + 1, MAX_CONFIG_BYTES + 256 * 1024)
            )
        stdin = padded(json.dumps(config), size, filler)
        if kind == "too large":
            code, version = 6, LATEST
    elif kind == "bad number":
        place = draw(st.sampled_from(["{}", "[1, {}]", '{"x": {}}']))
        stdin = with_key(json.dumps(config), "n", place.replace("{}", draw(spread(BAD_NUMBERS))))
        code = 6
    elif kind == "not UTF-8":
        # Bytes that are no UTF-8, as the shims hand them on (surrogateescape).
        bad = draw(st.sampled_from(NOT_UTF8)).decode("utf-8", "surrogateescape")
        text = json.dumps(config)
        at = draw(st.integers(0, len(text)))
        stdin = text[:at] + bad + text[at:]
        code, version = 6, LATEST
    elif kind == "NUL byte":
        text = json.dumps(config)
        at = draw(st.integers(0, len(text)))
        stdin = text[:at] + "\x00" + text[at:]
        code = 6
    return CniCase(kind, env, json.dumps(config) if stdin is None else stdin, code, version, depth)


FILLERS = {
    "ascii string": ("x", 1),
    "2-byte string": ("\u00e9", 2),
    "3-byte string": ("\u6f22", 3),
    "4-byte string": ("\U0001f600", 4),
    "whitespace": (" \n\t\r", 1),
    "escapes": ('\\"', 2),
}
"""How a case grows to its size (filler, bytes each): a long string of 1-4-byte
characters (the limit counts bytes), whitespace between tokens, or escaped quotes."""
SHIM_LIMIT = 4 * 1024 * 1024
"""The shims' own bound on stdin (bytes; ``multinic_agent.shim.MAX_STDIN``)."""
BAD_NUMBERS = ["1e999999", "-1e999999", "1E400", "NaN", "Infinity", "-Infinity"]
BAD_NUMBERS += ["9" * 4301, "-" + "1" * 5000]
"""Not a JSON number a 64-bit float or the agent's integers hold (or no JSON at all)."""
NOT_UTF8 = [
    b"\xff",
    b"\x80",
    b"\xc3",
    b"\xc0\xaf",
    b"\xed\xa0\x80",
    b"\xf4\x90\x80\x80",
    b"\xfe\xff",
]
"""A stray byte, a lone continuation or lead byte, an overlong '/', a UTF-16
surrogate, a code point beyond U+10FFFF, a UTF-16 BOM."""


def with_key(text: str, key: str, raw: str) -> str:
    """``text`` (a JSON object) with one more member ``key``, its value ``raw`` JSON text."""
    return f'{text[:-1]}, "{key}": {raw}}}'


@st.composite
def nested_text(draw: st.DrawFn, levels: int, kind: str) -> str:
    """Arrays and/or objects nested ``levels`` deep, closed, or (too deep only) not."""
    shape = draw(spread(["arrays", "objects", "mixed"]))
    openers = {"arrays": ["["], "objects": ['{"a": '], "mixed": ["[", '{"a": ']}[shape]
    random = draw(st.randoms(use_true_random=False))
    chosen = [random.choice(openers) for _ in range(levels)]
    if kind == "too deep" and draw(st.booleans()):
        return "".join(chosen)  # never closed: still code 6, never a recursion
    inner = draw(st.sampled_from(["1", '"x"', "null", "[]", "{}"]))
    if inner in ("[]", "{}"):
        chosen.pop()  # the empty container is the innermost level
    closers = "".join("]" if o == "[" else "}" for o in reversed(chosen))
    return "".join(chosen) + inner + closers


def padded(text: str, size: int, filler: str) -> str:
    """``text`` (a JSON object) grown to ``size`` bytes of UTF-8 by ``filler``."""
    piece, width = FILLERS[filler]
    room = size - len(text.encode())
    if filler == "whitespace":
        pad = (piece * (room // len(piece) + 1))[:room]
        return text[:-1] + pad + "}"
    room -= len(', "pad": ""')
    count, rest = divmod(room, width)
    return f'{text[:-1]}, "pad": "{piece * count}{"x" * rest}"}}'


@st.composite
def garbage_invocation(draw: st.DrawFn) -> CniCase:
    """Arbitrary environment and stdin: any spec error code, never anything else."""
    env = draw(
        st.dictionaries(
            st.sampled_from(
                ["CNI_COMMAND", "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_ARGS"]
            ),
            TEXT,
        )
    )
    if env.get("CNI_COMMAND") == "VERSION":
        env["CNI_COMMAND"] = "VERSIONX"
    if draw(st.booleans()):
        stdin = draw(
            TEXT
            | st.binary(max_size=60).map(lambda b: b.decode("latin-1").replace("\x00", ""))
            # any bytes at all, as the shims hand them on: NUL, no UTF-8
            | st.binary(max_size=60).map(lambda b: b.decode("utf-8", "surrogateescape"))
        )
    else:
        config = copy.deepcopy(base_config(draw(st.sampled_from(SUPPORTED))))
        for key in draw(st.lists(st.sampled_from(sorted(config)), max_size=4)):
            config[key] = draw(JSON_VALUES)
        stdin = json.dumps(config)
    return CniCase("garbage", env, stdin, None)


def check_answer(case: CniCase, status: int, stdout: str, stderr: str) -> int:
    """Assert the answer is what SPEC section 4 requires; returns the code (0: success)."""
    assert "Traceback" not in stdout + stderr, (case, stdout, stderr)
    if status == 0:
        assert case.code in (0, -1), f"{case.what}: succeeded, expected code {case.code}: {case}"
        if stdout:
            assert isinstance(json.loads(stdout), dict), stdout
        return 0
    error = json.loads(stdout)
    assert isinstance(error, dict), stdout
    assert {"cniVersion", "code", "msg"} <= set(error), error
    code = error["code"]
    assert isinstance(code, int), error
    assert not isinstance(code, bool), error
    assert code in ERROR_CODES, (case, error)
    assert isinstance(error["msg"], str), error
    assert error["msg"].strip(), error
    assert error["cniVersion"] == case.reply_version(), (case, error)
    if case.code not in (None, -1):
        assert code == case.code, f"{case.what}: got {error}, expected code {case.code}: {case}"
    if code == 6:
        # A decoding failure is one line, and names the limit the input broke.
        assert "\n" not in error["msg"], error
        if case.what == "too deep":
            assert f"more than {MAX_CONFIG_DEPTH} levels deep" in error["msg"], error
        elif case.what == "too large":
            limits = (f"exceeds {MAX_CONFIG_BYTES} bytes", f"exceeds {SHIM_LIMIT} bytes")
            assert any(words in error["msg"] for words in limits), error
    return int(code)


PRINTABLE_HOSTILE = [n for n in HOSTILE_NAMES if n and all(c in string.printable for c in n)]
