"""Fuzzing the CNI path: every input gets a spec-conformant answer with the right
code, never a traceback, and a rejected input leaves no attachment or allocation.

Two targets: the agent's request handler in-process (many cases; ADDs that get
through validation allocate, then fail on a missing delegate and must roll
back), and the installed shim exec'd against a real agent in a host namespace
(fewer cases, one process exec each; ADDs there reach the real macvlan
delegate, which fails on the absent pod namespace).  A third feeds garbage
straight into the agent's socket.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from multinic_agent import wire
from multinic_agent.cni_server import CniServer
from multinic_agent.node_state import FileNodeState
from multinic_agent.records import RecordStore
from multinic_ipam.journal import AllocationJournal

from .cni_inputs import (
    BOUND_KINDS,
    COMMANDS,
    ERROR_CODES,
    MAX_CONFIG_BYTES,
    MAX_CONFIG_DEPTH,
    CniCase,
    broken_invocation,
    check_answer,
    garbage_invocation,
)
from .conftest import FUZZ_EXAMPLES, FUZZ_SEED, node_fixtures

Test = TypeVar("Test", bound=Callable[..., None])


def fuzz_settings(examples: int) -> Callable[[Test], Test]:
    """Seeded: the same cases on every CI run unless MULTINIC_FUZZ_SEED picks others."""
    chosen = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=FUZZ_SEED == 0,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )

    def apply(test: Test) -> Test:
        test = chosen(test)
        return seed(FUZZ_SEED)(test) if FUZZ_SEED else test

    return apply


class Dimensions:
    """The nesting depth and size the cases reached, for the figures."""

    def __init__(self) -> None:
        self.depths: list[int] = []
        self.sizes: list[int] = []

    def add(self, case: CniCase) -> None:
        if case.depth:
            self.depths.append(case.depth)
        if case.what in ("too large", "large within the limit"):
            self.sizes.append(len(case.stdin.encode("utf-8", "surrogateescape")))

    def figures(self) -> dict[str, Any]:
        deep = sum(d > MAX_CONFIG_DEPTH for d in self.depths)
        large = sum(s > MAX_CONFIG_BYTES for s in self.sizes)
        return {
            "depth": {
                "beyond": deep,
                "within": len(self.depths) - deep,
                "max": max(self.depths, default=0),
            },
            "size": {
                "beyond": large,
                "within": len(self.sizes) - large,
                "max": max(self.sizes, default=0),
            },
        }

    def check(self) -> None:
        """Both sides of both limits were reached, the limits themselves included."""
        assert MAX_CONFIG_DEPTH in self.depths, sorted(set(self.depths))[:20]
        assert any(d > MAX_CONFIG_DEPTH for d in self.depths), self.depths
        assert any(s > MAX_CONFIG_BYTES for s in self.sizes), self.sizes
        assert any(s <= MAX_CONFIG_BYTES for s in self.sizes), self.sizes


@pytest.fixture
def server(tmp_path: Path) -> Iterator[CniServer]:
    """An in-process CNI server whose node has NICs and pools but no delegate binaries."""
    state = {"nics": node_fixtures.NICS, "ippools": node_fixtures.POOLS}
    (tmp_path / "node-state.json").write_text(json.dumps(state))
    journal = AllocationJournal(tmp_path)
    yield CniServer(
        node="host-a",
        node_state=FileNodeState(tmp_path / "node-state.json"),
        journal=journal,
        records=RecordStore(tmp_path),
        cni_path=(),
    )
    journal.close()


def test_handler_answers_every_input_by_the_spec(
    server: CniServer, figures: dict[str, Any]
) -> None:
    loop = asyncio.new_event_loop()
    codes: Counter[str] = Counter()
    kinds: Counter[str] = Counter()
    dimensions = Dimensions()

    @fuzz_settings(FUZZ_EXAMPLES * 2)
    @given(st.one_of(broken_invocation(add_code=999), garbage_invocation()))
    def run(case: CniCase) -> None:
        status, stdout, stderr = loop.run_until_complete(server.handle(case.env, case.stdin))
        code = check_answer(case, status, stdout, stderr)
        codes[str(code)] += 1
        kinds[case.what] += 1
        dimensions.add(case)
        # Nothing is left behind: the ADDs that allocated were rolled back.
        assert server.journal.attachments() == [], case
        assert server.records.all() == [], case

    try:
        run()
    finally:
        loop.close()
    figures.update(cases=sum(codes.values()), codes=dict(codes), kinds=len(kinds), leaked=0)
    figures.update(dimensions.figures())
    # The search reached every branch that matters, not only the parser's first check.
    assert {"0", "1", "4", "6", "7", "999"} <= set(codes), codes
    assert kinds["none"] > 0
    assert kinds["garbage"] > 0
    for kind in ("bad number", "not UTF-8", "NUL byte", "large within the limit"):
        assert kinds[kind] > 0, kinds
    dimensions.check()


@pytest.mark.root
def test_shim_and_agent_answer_every_input_by_the_spec(
    runtime: Any, agent: Any, figures: dict[str, Any]
) -> None:
    codes: Counter[str] = Counter()
    dimensions = Dimensions()
    netns = st.sampled_from(
        ["/var/run/netns/multinic-fuzz-absent", "../../x", "/etc/passwd", "eth0; reboot"]
    )

    @fuzz_settings(max(20, FUZZ_EXAMPLES // 20))
    @given(
        st.one_of(
            broken_invocation(netns=netns, cni_path=node_fixtures.SYSTEM_CNI),
            # a third of the execs on the decoding bounds: depth, size, numbers, bytes
            st.sampled_from(BOUND_KINDS).flatmap(
                lambda kind: broken_invocation(
                    netns=netns, cni_path=node_fixtures.SYSTEM_CNI, only=(kind,)
                )
            ),
            garbage_invocation(),
        )
    )
    def run(case: CniCase) -> None:
        env = {
            **case.env,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "MULTINIC_AGENT_SOCKET": str(agent.socket),
        }
        # Bytes, as a runtime writes them: NUL and bytes that are no UTF-8 included.
        done = subprocess.run(
            [str(runtime.shim)],
            input=case.stdin.encode("utf-8", "surrogateescape"),
            env=env,
            capture_output=True,
            timeout=120,
            check=False,
        )
        stdout = done.stdout.decode("utf-8", "surrogateescape")
        stderr = done.stderr.decode("utf-8", "surrogateescape")
        codes[str(check_answer(case, done.returncode, stdout, stderr))] += 1
        dimensions.add(case)
        assert agent.held_addresses() == {}, case
        assert agent.records() == [], case

    run()
    assert agent.process.poll() is None, "the agent died"
    # No delegate left a link behind in the host namespace.
    assert sorted(agent.host.links()) == ["eth1", "eth1p", "eth2", "eth2p", "lo"]
    # Nothing the runtime sent made the agent log a traceback or an internal error.
    log = agent.log()
    assert "Traceback" not in log, log[-3000:]
    assert "failed unexpectedly" not in log, log[-3000:]
    figures.update(cases=sum(codes.values()), codes=dict(codes), leaked=0)
    figures.update(dimensions.figures())


HOSTILE_STDIN = [
    '{"cniVersion": "1.1.0", "x": ' + "[" * 5000 + "]" * 5000 + "}",
    '{"cniVersion": "1.1.0", "x": ' + '{"a": ' * 5000 + "1" + "}" * 5001,
    "[" * 100_000,
    '{"cniVersion": "1.1.0", "x": 1e999999}',
    '{"cniVersion": "1.1.0", "x": ' + "9" * 5000 + "}",
    '{"cniVersion": "1.1.0", "name": "n\udcff"}',
    '{"cniVersion": "1.1.0", "name": "n\ud800"}',
    '{"cniVersion": "1.1.0", "name": "n\x00"}',
    '{"cniVersion": "1.1.0", "x": "' + "a" * MAX_CONFIG_BYTES + '"}',
]
"""Network configs the agent must refuse undecoded (code 6): nested too deep, a
number no float holds, a lone surrogate (no UTF-8), a raw NUL, over 1 MiB."""


def wire_request(command: str, stdin: str) -> bytes:
    """A well-formed request of the shim's wire protocol (a surrogate no pipe can
    carry, U+D800, sent as the bytes of its UTF-8 form)."""
    try:
        raw = stdin.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raw = stdin.encode("utf-8", "surrogatepass")
    return wire.encode_request({"CNI_COMMAND": command, "CNI_CONTAINERID": "c1"}, raw)


@pytest.mark.root
def test_garbage_on_the_agent_socket_is_a_decode_error(
    runtime: Any, agent: Any, figures: dict[str, Any]
) -> None:
    answered = Counter[int | str]()

    @fuzz_settings(max(20, FUZZ_EXAMPLES // 10))
    @given(
        st.binary(max_size=200)
        | st.just(b"{" * 5000)
        # the shims' old JSON-line protocol, and a request cut short
        | st.just(b'{"env": {"CNI_COMMAND": "ADD"}, "stdin": "{}"}\n')
        | st.binary(max_size=30).map(lambda b: wire.encode_request({}, b"{}")[: len(b)])
        | st.builds(wire_request, st.sampled_from(COMMANDS), st.sampled_from(HOSTILE_STDIN))
    )
    def run(garbage: bytes) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(10)
            conn.connect(str(agent.socket))
            conn.sendall(garbage)
            conn.shutdown(socket.SHUT_WR)  # the end of the request, as the shims send it
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
        status, stdout, stderr = wire.decode_reply(reply)
        assert (status, stderr) == (1, b""), reply
        error = json.loads(stdout)
        assert error["code"] in ERROR_CODES, error
        if garbage.startswith(wire.MAGIC + b"CNI_COMMAND="):
            assert error["code"] == 6, (garbage[:200], error)
            assert "\n" not in error["msg"], error
            answered["hostile config"] += 1
        answered[error["code"]] += 1

    run()
    assert agent.process.poll() is None, "the agent died"
    # Still serving real requests afterwards.
    assert runtime.delete("after-garbage", "").status == 0
    log = agent.log()
    assert "Traceback" not in log, log[-3000:]
    assert "failed unexpectedly" not in log, log[-3000:]
    hostile = answered.pop("hostile config", 0)
    assert hostile > 0, answered
    figures.update(
        cases=sum(answered.values()),
        codes={str(k): v for k, v in answered.items()},
        hostile_configs=hostile,
    )
