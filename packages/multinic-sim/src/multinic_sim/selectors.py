"""Label and field selectors, parsed from the query string as Kubernetes does."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from multinic_sim.errors import bad_request

_TOKEN = re.compile(
    r"\s*(?:(?P<op>!=|==|=|,|\(|\)|!|>|<)|(?P<word>\bin\b|\bnotin\b)|(?P<ident>[^\s,=!()<>]+))"
)


@dataclass(frozen=True)
class Requirement:
    key: str
    op: str  # "=", "!=", "in", "notin", "exists", "!exists", "gt", "lt"
    values: tuple[str, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        present = self.key in labels
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return present and value in self.values
        if self.op in ("!=", "notin"):
            return not present or value not in self.values
        if self.op == "exists":
            return present
        if self.op == "!exists":
            return not present
        if not present or value is None:
            return False
        try:
            number = int(value)
        except ValueError:
            return False
        bound = int(self.values[0])
        return number > bound if self.op == "gt" else number < bound


class LabelSelector:
    """A parsed ``labelSelector``: all requirements must hold."""

    def __init__(self, requirements: list[Requirement]) -> None:
        self.requirements = requirements

    @classmethod
    def parse(cls, text: str | None) -> LabelSelector:
        if not text or not text.strip():
            return cls([])
        try:
            return cls(_parse_label_selector(text))
        except ValueError as e:
            raise bad_request(f"unable to parse requirement: {e}") from e

    def matches(self, labels: Mapping[str, str] | None) -> bool:
        labels = labels or {}
        return all(r.matches(labels) for r in self.requirements)

    @property
    def empty(self) -> bool:
        return not self.requirements


def _tokens(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise ValueError(f"unexpected character at {pos} in {text!r}")
        out.append(match.group("op") or match.group("word") or match.group("ident"))
        pos = match.end()
    return out


def _parse_label_selector(text: str) -> list[Requirement]:
    tokens = _tokens(text)
    reqs: list[Requirement] = []
    i = 0

    def expect_value(j: int) -> str:
        if j >= len(tokens) or tokens[j] in {",", "(", ")", "=", "==", "!=", "!"}:
            # An empty value is allowed: "a=" selects a="".
            return ""
        return tokens[j]

    while i < len(tokens):
        if tokens[i] == "!":
            if i + 1 >= len(tokens):
                raise ValueError("missing key after '!'")
            reqs.append(Requirement(_check_key(tokens[i + 1]), "!exists"))
            i += 2
        else:
            key = _check_key(tokens[i])
            nxt = tokens[i + 1] if i + 1 < len(tokens) else ","
            if nxt == ",":
                reqs.append(Requirement(key, "exists"))
                i += 1
            elif nxt in ("=", "==", "!="):
                value = expect_value(i + 2)
                op = "!=" if nxt == "!=" else "="
                reqs.append(Requirement(key, op, (value,)))
                i += 3 if value else 2
            elif nxt in (">", "<"):
                value = expect_value(i + 2)
                if not value.lstrip("-").isdigit():
                    raise ValueError(
                        f"for 'gt', 'lt' operators, exactly one integer value: {value!r}"
                    )
                reqs.append(Requirement(key, "gt" if nxt == ">" else "lt", (value,)))
                i += 3
            elif nxt in ("in", "notin"):
                if i + 2 >= len(tokens) or tokens[i + 2] != "(":
                    raise ValueError(
                        f"found '{tokens[i + 2] if i + 2 < len(tokens) else ''}', expected: '('"
                    )
                j = i + 3
                values: list[str] = []
                while j < len(tokens) and tokens[j] != ")":
                    if tokens[j] != ",":
                        values.append(tokens[j])
                    j += 1
                if j >= len(tokens):
                    raise ValueError("found '', expected: ')'")
                reqs.append(Requirement(key, nxt, tuple(values)))
                i = j + 1
            else:
                raise ValueError(f"found '{nxt}', expected: '=', '!=', '==', 'in', notin'")
        if i < len(tokens):
            if tokens[i] != ",":
                raise ValueError(f"found '{tokens[i]}', expected: ',' or 'end of string'")
            i += 1
            if i >= len(tokens):
                raise ValueError("found '', expected: identifier after ','")
    return reqs


_LABEL_KEY = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)


def _check_key(key: str) -> str:
    if not _LABEL_KEY.match(key):
        raise ValueError(f"invalid label key {key!r}")
    return key


@dataclass(frozen=True)
class FieldRequirement:
    path: str
    negate: bool
    value: str


class FieldSelector:
    """A parsed ``fieldSelector`` (``=``, ``==`` and ``!=`` terms, comma-joined)."""

    def __init__(self, requirements: list[FieldRequirement]) -> None:
        self.requirements = requirements

    @classmethod
    def parse(cls, text: str | None, allowed: tuple[str, ...], kind: str) -> FieldSelector:
        if not text or not text.strip():
            return cls([])
        reqs: list[FieldRequirement] = []
        for raw_term in text.split(","):
            term = raw_term.strip()
            if not term:
                continue
            match = re.match(r"^([^=!]+)(!=|==|=)(.*)$", term)
            if not match:
                raise bad_request(f"invalid selector: '{text}'; can't understand '{term}'")
            path, op, value = match.group(1).strip(), match.group(2), match.group(3).strip()
            if path not in ("metadata.name", "metadata.namespace") and path not in allowed:
                raise bad_request(
                    f'"{path}" is not a known field selector: only '
                    f'"metadata.name", "metadata.namespace"' + "".join(f', "{a}"' for a in allowed)
                )
            reqs.append(FieldRequirement(path, op == "!=", value))
        return cls(reqs)

    def matches(self, obj: Mapping[str, Any]) -> bool:
        for req in self.requirements:
            actual = _field_value(obj, req.path)
            if (actual == req.value) == req.negate:
                return False
        return True

    @property
    def empty(self) -> bool:
        return not self.requirements

    def exact_name(self) -> str | None:
        for req in self.requirements:
            if req.path == "metadata.name" and not req.negate:
                return req.value
        return None


def _field_value(obj: Mapping[str, Any], path: str) -> str:
    current: Any = obj
    for part in path.split("."):
        if not isinstance(current, Mapping):
            current = None
            break
        current = current.get(part)
    if current is None:
        return ""
    if isinstance(current, bool):
        return "true" if current else "false"
    return str(current)
