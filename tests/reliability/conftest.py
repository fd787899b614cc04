"""Fixtures of the reliability suite: the agent's node fixtures and the operator's
cluster harness (reused from their packages' tests, not copied), run sizes, and
the figures each test reports.

Sizes come from the environment so that the default ``pytest`` run (CI) is
short and ``tox -e fuzz`` / ``tox -e chaos`` run the long versions:

* ``MULTINIC_FUZZ_EXAMPLES``: hypothesis examples of each cheap in-process
  fuzz target (the shim-exec target runs a twentieth of it);
* ``MULTINIC_CHAOS_OPS``: CNI operations of the crash storm;
* ``MULTINIC_CHAOS_HOSTS``: hosts of the API fault-injection cluster;
* ``MULTINIC_CHAOS_FAULTS``: multiplier of the injected API faults' counts.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import sys
from collections import defaultdict
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

FUZZ_EXAMPLES = int(os.environ.get("MULTINIC_FUZZ_EXAMPLES", "2100"))
CHAOS_OPS = int(os.environ.get("MULTINIC_CHAOS_OPS", "60"))
CHAOS_HOSTS = int(os.environ.get("MULTINIC_CHAOS_HOSTS", "3"))
CHAOS_FAULTS = int(os.environ.get("MULTINIC_CHAOS_FAULTS", "1"))
FUZZ_SEED = int(os.environ.get("MULTINIC_FUZZ_SEED", "0"))
"""0: hypothesis' derandomized (fixed) search; any other value seeds a different one."""


def load_test_module(name: str, path: Path) -> ModuleType:
    """Import another package's test module (a conftest) under its own name."""
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


node_fixtures = load_test_module(
    "multinic_reliability_node_fixtures",
    REPO / "packages" / "multinic-agent" / "tests" / "conftest.py",
)
# The agent tests' own copy of the module counts from 0 too: a distinct range
# keeps namespace names apart when both suites run in one session.
node_fixtures._counter = itertools.count(100_000)
operator_fixtures = load_test_module(
    "multinic_reliability_operator_fixtures",
    REPO / "packages" / "multinic-operator" / "tests" / "conftest.py",
)

# Re-exported fixtures (pytest finds fixtures among a conftest's attributes).
host = node_fixtures.host
agent = node_fixtures.agent
shim = node_fixtures.shim
installed_shim = node_fixtures.installed_shim
runtime = node_fixtures.runtime
pods = node_fixtures.pods
netconf = node_fixtures.netconf_factory
cluster = operator_fixtures.cluster
operator_runner = operator_fixtures.operator_runner

FIGURES: dict[str, dict[str, Any]] = defaultdict(dict)
"""Per test: the figures it reports (cases run, crashes injected, ...)."""


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> dict[str, Any]:
    """A dict the test fills with its result figures; printed at the end of the run."""
    return FIGURES[request.node.name]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not FIGURES:
        return
    terminalreporter.section("multinic reliability figures")
    for test, values in sorted(FIGURES.items()):
        terminalreporter.write_line(f"{test}: {json.dumps(values, sort_keys=True)}")
    target = os.environ.get("MULTINIC_RELIABILITY_FIGURES")
    if target:
        Path(target).write_text(json.dumps(FIGURES, indent=2, sort_keys=True) + "\n")
