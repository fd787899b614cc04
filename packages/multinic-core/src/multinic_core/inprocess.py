"""A delegate CNI plugin run inside the agent: the plumbing every in-process plugin shares.

A driver may offer, through ``multinic_inprocess_delegate``, an object that
does what a reference CNI plugin binary does, without the exec: the agent
then calls :meth:`InProcessPlugin.run` in a worker thread with the
environment and stdin it would have given the binary, and reads the answer
as it reads the binary's.  This module is the part of the binary that is not
the plugin's own (what libcni's ``skel`` does): the environment a command
needs, the config decoded, the config's version against the plugin's, the
result or the error printed as JSON with the CNI error codes.  A driver
subclasses :class:`InProcessPlugin` and writes ``accepts``, ``add``,
``delete`` and ``check``.

Standard library only: the netlink work is the driver's.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from multinic_core.errors import MultinicError

log = logging.getLogger(__name__)

# CNI error codes (the spec's; the reference plugins answer 999 for their own errors).
CODE_INCOMPATIBLE_VERSION = 1
CODE_INVALID_ENV = 4
CODE_DECODE = 6
CODE_INTERNAL = 999

# The environment libcni's skel requires per command.
_REQUIRED_ENV = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
}


class DelegateError(MultinicError):
    """A CNI error of an in-process plugin: printed as the binary prints its error."""

    def __init__(self, msg: str, code: int = CODE_INTERNAL, details: str = "") -> None:
        super().__init__(msg)
        self.code = code
        self.msg = msg
        self.details = details

    def to_json(self) -> str:
        error: dict[str, Any] = {"code": self.code, "msg": self.msg}
        if self.details:
            error["details"] = self.details
        return json.dumps(error)


def parse_cni_args(raw: str) -> dict[str, str]:
    """``CNI_ARGS`` (``K=V;K2=V2``) as a dict; DelegateError for a pair without ``=``."""
    args: dict[str, str] = {}
    for pair in filter(None, raw.split(";")):
        key, sep, value = pair.partition("=")
        if not sep:
            raise DelegateError(f"ARGS: invalid pair {pair!r}")
        args[key] = value
    return args


@dataclass(frozen=True)
class DelegateCall:
    """One CNI command for an in-process plugin, as the binary would have read it."""

    command: str
    container_id: str
    netns: str
    ifname: str
    config: Mapping[str, Any]
    args: Mapping[str, str] = field(default_factory=dict)
    path: str = ""

    @property
    def version(self) -> str:
        return str(self.config.get("cniVersion") or "0.1.0")


class InProcessPlugin:
    """Base of a driver's in-process delegate (see ``multinic_inprocess_delegate``)."""

    plugin_type: ClassVar[str] = ""
    """The delegate ``type`` it stands in for (``macvlan``)."""
    versions: ClassVar[tuple[str, ...]] = ()
    """The ``cniVersion`` values it reads and prints results in."""

    def accepts(self, env: Mapping[str, str], config: Mapping[str, Any]) -> bool:
        """Whether this call is one it does exactly as the binary does (else: exec)."""
        return False

    def add(self, call: DelegateCall) -> dict[str, Any]:
        """ADD: the result object, in ``call.version``; DelegateError on failure."""
        raise DelegateError(f"{self.plugin_type}: ADD is not implemented in process")

    def delete(self, call: DelegateCall) -> None:
        """DEL: idempotent (a missing netns or interface is success)."""
        raise DelegateError(f"{self.plugin_type}: DEL is not implemented in process")

    def check(self, call: DelegateCall) -> None:
        """CHECK against ``call.config["prevResult"]``; DelegateError when it does not hold."""
        raise DelegateError(f"{self.plugin_type}: CHECK is not implemented in process")

    def run(self, env: Mapping[str, str], stdin: str) -> tuple[int, str, str]:
        """One CNI call as the binary answers it: ``(exit status, stdout, stderr)``."""
        command = env.get("CNI_COMMAND", "")
        try:
            call = self._call(command, env, stdin)
            if command == "ADD":
                return 0, json.dumps(self.add(call)), ""
            if command == "DEL":
                self.delete(call)
            else:
                self.check(call)
            return 0, "", ""
        except DelegateError as e:
            return 1, e.to_json(), ""
        except Exception as e:  # a bug here must not take the agent's request down with it
            log.exception("in-process %s %s failed unexpectedly", self.plugin_type, command)
            error = DelegateError(f"internal error: {type(e).__name__}: {e}")
            return 1, error.to_json(), ""

    def _call(self, command: str, env: Mapping[str, str], stdin: str) -> DelegateCall:
        if command not in _REQUIRED_ENV:
            raise DelegateError(f"unknown CNI_COMMAND: {command}", CODE_INVALID_ENV)
        missing = [name for name in _REQUIRED_ENV[command] if not env.get(name)]
        if missing:
            raise DelegateError(
                f"required env variables [{','.join(missing)}] missing", CODE_INVALID_ENV
            )
        try:
            config = json.loads(stdin)
        except ValueError as e:
            raise DelegateError(f"error reading from stdin: {e}", CODE_DECODE) from e
        if not isinstance(config, dict):
            raise DelegateError("network config must be a JSON object", CODE_DECODE)
        call = DelegateCall(
            command=command,
            container_id=env.get("CNI_CONTAINERID", ""),
            netns=env.get("CNI_NETNS", ""),
            ifname=env.get("CNI_IFNAME", ""),
            config=config,
            args=parse_cni_args(env.get("CNI_ARGS", "")),
            path=env.get("CNI_PATH", ""),
        )
        if call.version not in self.versions:
            raise DelegateError(
                "incompatible CNI versions",
                CODE_INCOMPATIBLE_VERSION,
                f"config is {call.version!r}, plugin supports {list(self.versions)!r}",
            )
        if command == "CHECK" and call.version in ("0.1.0", "0.2.0", "0.3.0", "0.3.1"):
            raise DelegateError("config version does not allow CHECK", CODE_INCOMPATIBLE_VERSION)
        return call
