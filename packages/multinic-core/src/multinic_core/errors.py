"""The one error hierarchy of multinic.

Library code raises these; only the edges translate them (CNI error codes in the
CNI server, kopf errors in operator handlers, exit codes in the CLI).
"""

from __future__ import annotations


class MultinicError(Exception):
    """Base of every error multinic raises on purpose."""


class ConfigError(MultinicError):
    """A user-supplied object or file is invalid; the message names the field."""


class PlanError(MultinicError):
    """The CIDR plan cannot be computed from the given inputs."""


class PluginError(MultinicError):
    """A plugin is broken: it failed to import, or its hooks do not match the specs."""


class PluginNotFoundError(PluginError):
    """No plugin of that name is installed in that entry-point group."""

    def __init__(self, group: str, name: str, hint: str = "") -> None:
        self.group = group
        self.name = name
        self.hint = hint
        kind = GROUP_KINDS.get(group, group)
        message = f"no {kind} {name!r} installed"
        if hint:
            message += f": {hint}"
        super().__init__(message)


class SelectionError(MultinicError):
    """An attach policy cannot select NICs for a pod (bad pod args, missing class...)."""


class NicMissingError(SelectionError):
    """The NICs a pod needs are not on its node (none of the network's, a named or
    allocated one, or fewer than it asked for)."""


class TryAgainError(MultinicError):
    """A transient condition; the caller should retry later (CNI code 11)."""


# Human names of the entry-point groups, used in error messages.
GROUP_KINDS = {
    "multinic.main_plugins": "main plugin",
    "multinic.policies": "attach policy",
    "multinic.ipam": "IPAM plugin",
}
