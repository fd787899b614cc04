"""The exec stream protocol of Kubernetes (``v4``/``v5.channel.k8s.io`` over WebSocket).

Every message is a binary frame whose first byte is the channel: 0 stdin,
1 stdout, 2 stderr, 3 the error channel (a ``metav1.Status`` JSON sent once,
when the command ended), 4 terminal resize. ``v5`` adds channel 255 (the
client closing a channel); the simulation offers no stdin, so it needs nothing
else from ``v5``. The API server relays these frames between the client and
the kubelet of the pod's node unchanged.
"""

from __future__ import annotations

import json

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, ERROR, RESIZE = 0, 1, 2, 3, 4


def frame(channel: int, data: bytes) -> bytes:
    return bytes([channel]) + data


def exit_status(command: list[str], returncode: int) -> bytes:
    """The error channel's final message for a command that exited with ``returncode``."""
    if returncode == 0:
        return json.dumps({"metadata": {}, "status": "Success"}).encode()
    return failure(
        f"command terminated with non-zero exit code: error executing command "
        f"{command}, exit code {returncode}",
        reason="NonZeroExitCode",
        causes=[{"reason": "ExitCode", "message": str(returncode)}],
    )


def failure(
    message: str, *, reason: str = "InternalError", causes: list[dict[str, str]] | None = None
) -> bytes:
    status: dict[str, object] = {
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
    }
    if causes:
        status["details"] = {"causes": causes}
    return json.dumps(status).encode()
