"""Fault injection: answer chosen requests with errors or delays.

A :class:`FaultRule` matches requests by verb, resource and/or a regular
expression on the path, for a number of times or with a probability, and
answers them with an HTTP error (409, 429, 500, ...) or a delay ("timeout")
instead of serving them. Rules are set through the Python API
(:attr:`ApiServer.faults`) or over HTTP at ``/_sim/faults``; open watch streams
are dropped with :meth:`ApiServer.drop_watches` or ``POST /_sim/watches/drop``.
The injector is thread-safe: tests call it from outside the server's loop.
"""

from __future__ import annotations

import itertools
import logging
import random
import re
import threading
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

VERBS = frozenset(
    {"get", "list", "watch", "create", "update", "patch", "delete", "deletecollection"}
)
ACTIONS = frozenset({"error", "timeout"})
_ids = itertools.count(1)


class FaultRuleError(ValueError):
    """A fault rule that cannot be used (bad verb, regex, status ...)."""


@dataclass
class FaultRule:
    """Answer matching requests with ``status`` (action ``error``) or hang for
    ``delay`` seconds and then answer 504 (action ``timeout``).

    ``count`` limits how many requests are hit (None: unlimited); ``probability``
    hits each matching request with that chance. ``resource`` is the plural
    (``pods``, ``multinicnetworks``), optionally with ``/status``.
    """

    status: int = 500
    action: str = "error"
    verb: str | None = None
    resource: str | None = None
    path: str | None = None
    count: int | None = 1
    probability: float = 1.0
    delay: float = 30.0
    retry_after: int | None = None
    message: str | None = None
    id: int = field(default_factory=lambda: next(_ids))
    hits: int = 0

    def __post_init__(self) -> None:
        if self.verb is not None and self.verb not in VERBS:
            raise FaultRuleError(f"unknown verb {self.verb!r}; expected one of {sorted(VERBS)}")
        if self.action not in ACTIONS:
            raise FaultRuleError(
                f"unknown action {self.action!r}; expected one of {sorted(ACTIONS)}"
            )
        if not 100 <= int(self.status) <= 599:
            raise FaultRuleError(f"status must be an HTTP error code, not {self.status!r}")
        if not 0.0 <= float(self.probability) <= 1.0:
            raise FaultRuleError("probability must be between 0 and 1")
        if self.count is not None and int(self.count) < 1:
            raise FaultRuleError("count must be at least 1 (or null for unlimited)")
        self._regex: re.Pattern[str] | None = None
        if self.path is not None:
            try:
                self._regex = re.compile(self.path)
            except re.error as e:
                raise FaultRuleError(f"path is not a regular expression: {e}") from e

    def matches(self, verb: str, resource: str, path: str) -> bool:
        if self.verb is not None and self.verb != verb:
            return False
        if self.resource is not None and self.resource != resource:
            return False
        return not (self._regex is not None and not self._regex.search(path))

    def exhausted(self) -> bool:
        return self.count is not None and self.hits >= self.count

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "status": self.status,
            "action": self.action,
            "verb": self.verb,
            "resource": self.resource,
            "path": self.path,
            "count": self.count,
            "probability": self.probability,
            "delay": self.delay,
            "retryAfter": self.retry_after,
            "message": self.message,
            "hits": self.hits,
        }

    @classmethod
    def from_json(cls, data: Any) -> FaultRule:
        if not isinstance(data, dict):
            raise FaultRuleError("a fault rule must be a JSON object")
        known = {
            "status",
            "action",
            "verb",
            "resource",
            "path",
            "count",
            "probability",
            "delay",
            "retryAfter",
            "message",
        }
        unknown = set(data) - known
        if unknown:
            raise FaultRuleError(f"unknown fault rule fields: {sorted(unknown)}")
        try:
            return cls(
                status=int(data.get("status", 500)),
                action=str(data.get("action", "error")),
                verb=data.get("verb"),
                resource=data.get("resource"),
                path=data.get("path"),
                count=None if data.get("count", 1) is None else int(data.get("count", 1)),
                probability=float(data.get("probability", 1.0)),
                delay=float(data.get("delay", 30.0)),
                retry_after=None if data.get("retryAfter") is None else int(data["retryAfter"]),
                message=data.get("message"),
            )
        except (TypeError, ValueError) as e:
            if isinstance(e, FaultRuleError):
                raise
            raise FaultRuleError(f"bad fault rule: {e}") from e


class FaultInjector:
    """The active fault rules; the first matching rule answers a request."""

    def __init__(self, seed: int | None = None) -> None:
        self._rules: list[FaultRule] = []
        self._lock = threading.Lock()
        self._random = random.Random(seed)  # noqa: S311 - test faults, not crypto

    def add(self, rule: FaultRule | None = None, **kwargs: Any) -> FaultRule:
        """Add *rule* (or one built from keyword arguments) and return it."""
        rule = rule if rule is not None else FaultRule(**kwargs)
        with self._lock:
            self._rules.append(rule)
        log.info("fault injection: added rule %s", rule.to_json())
        return rule

    def remove(self, rule_id: int) -> bool:
        with self._lock:
            before = len(self._rules)
            self._rules = [r for r in self._rules if r.id != rule_id]
            return len(self._rules) != before

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[FaultRule]:
        with self._lock:
            return list(self._rules)

    def match(self, verb: str, resource: str, path: str) -> FaultRule | None:
        with self._lock:
            if not self._rules:
                return None
            for rule in self._rules:
                if rule.exhausted() or not rule.matches(verb, resource, path):
                    continue
                if rule.probability < 1.0 and self._random.random() >= rule.probability:
                    continue
                rule.hits += 1
                log.info("fault injection: rule %d hits %s %s", rule.id, verb, path)
                return rule
            return None
