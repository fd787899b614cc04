"""docs/metrics.md lists every metric the agent and the operator export, with its
type and labels, and nothing they do not export."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from multinic_agent.metrics import AgentMetrics
from multinic_agent.node_state import FileNodeState
from multinic_ipam.journal import AllocationJournal
from multinic_operator.metrics import OperatorMetrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "metrics.md"
ROW = re.compile(r"^\| `(multinic_\w+)` \| (\w+) \|([^|]*)\|", re.MULTILINE)


def documented() -> dict[str, tuple[str, set[str]]]:
    """name -> (type, label names) from the tables of docs/metrics.md."""
    rows = {}
    for name, kind, labels in ROW.findall(DOC.read_text()):
        rows[name] = (kind, set(re.findall(r"`(\w+)`", labels)))
    return rows


def exported(text: str) -> dict[str, tuple[str, set[str]]]:
    found: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(text):
        if not family.name.startswith("multinic_"):
            continue
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        name = family.name + ("_total" if family.type == "counter" else "")
        found[name] = (family.type, labels)
    return found


def test_every_exported_metric_is_documented_with_its_type_and_labels(tmp_path: Path) -> None:
    agent = AgentMetrics()
    # A pool, so that the pool gauges have a series (and labels) to show.
    (tmp_path / "node-state.json").write_text(
        json.dumps(
            {
                "nics": [],
                "ippools": [
                    {
                        "podCIDR": "192.168.0.0/24",
                        "vlanCIDR": "192.168.0.0/18",
                        "netAttachDef": "demo",
                        "hostName": "h",
                        "interfaceName": "eth1",
                    }
                ],
            }
        )
    )
    journal = AllocationJournal(tmp_path)
    agent.watch_pools(FileNodeState(tmp_path / "node-state.json"), journal)
    # One of each labelled counter, so that their label names show.
    agent.cni_request({"CNI_COMMAND": "ADD"}, 1, '{"code": 7, "msg": "x"}', 0.01)
    agent.api_response("GET", "https://api/apis/multinic.fms.io/v1/ippools?watch=true", 500)
    agent.route_failed("net")
    agent.route_changes.labels("net", "added").inc()
    operator = OperatorMetrics()
    operator.api_response("get", 404)
    exports = exported(agent.render()[0].decode()) | exported(operator.render()[0].decode())
    journal.close()
    docs = documented()
    assert sorted(exports) == sorted(docs)
    for name, (kind, labels) in exports.items():
        assert docs[name][0] == kind, name
        assert labels <= docs[name][1], (name, labels)
