"""API errors, rendered as Kubernetes ``Status`` objects.

Every failure the local API server reports to a client is an :class:`ApiError`;
its :meth:`ApiError.status` is the ``metav1.Status`` body a real API server
would send, with the same ``reason`` and ``code``.
"""

from __future__ import annotations

from typing import Any


class SimError(Exception):
    """Base class for errors of the multinic-sim package (not HTTP answers)."""


class ApiError(SimError):
    """An API failure answered to the client as a ``Status`` object."""

    def __init__(
        self,
        code: int,
        reason: str,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict[str, Any]:
        """The ``metav1.Status`` body for this error."""
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if not self.reason:
            # How kube-apiserver renders an error that is not an API status (an etcd
            # error, say): no reason (StatusReasonUnknown is "") and no details.
            del body["reason"]
            if self.details is None:
                return body
        body["details"] = self.details if self.details is not None else {}
        return body


def _details(name: str, group: str, kind: str) -> dict[str, Any]:
    details: dict[str, Any] = {"name": name, "kind": kind}
    if group:
        details["group"] = group
    return details


def _qualified(resource: str, group: str) -> str:
    return f"{resource}.{group}" if group else resource


def not_found(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        404,
        "NotFound",
        f'{_qualified(resource, group)} "{name}" not found',
        details=_details(name, group, resource),
    )


def already_exists(resource: str, group: str, name: str) -> ApiError:
    return ApiError(
        409,
        "AlreadyExists",
        f'{_qualified(resource, group)} "{name}" already exists',
        details=_details(name, group, resource),
    )


def conflict(resource: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        409,
        "Conflict",
        f'Operation cannot be fulfilled on {_qualified(resource, group)} "{name}": {why}',
        details=_details(name, group, resource),
    )


STALE_OBJECT = (
    "the object has been modified; please apply your changes to the latest version and try again"
)


def invalid(kind: str, group: str, name: str, causes: list[dict[str, str]]) -> ApiError:
    """A 422 ``Invalid`` error; each cause has ``reason``, ``message`` and ``field``."""
    summary = ", ".join(f"{c['field']}: {c['message']}" for c in causes)
    qualified = f"{kind}.{group}" if group else kind
    shown = f" {summary}" if len(causes) == 1 else f" [{summary}]"
    return ApiError(
        422,
        "Invalid",
        f'{qualified} "{name}" is invalid:{shown}',
        details={**_details(name, group, kind), "causes": causes},
    )


def cause(field: str, reason: str, message: str) -> dict[str, str]:
    return {"reason": reason, "message": message, "field": field}


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def method_not_allowed(message: str | None = None) -> ApiError:
    return ApiError(
        405,
        "MethodNotAllowed",
        message or "the server does not allow this method on the requested resource",
    )


def expired(message: str) -> ApiError:
    return ApiError(410, "Expired", message)


def gone(message: str) -> ApiError:
    return ApiError(410, "Gone", message)


def unsupported_media_type(content_type: str, accepted: list[str]) -> ApiError:
    return ApiError(
        415,
        "UnsupportedMediaType",
        f"the body of the request was in an unknown format - accepted media types include: "
        f"{', '.join(accepted)}" + (f" (got {content_type!r})" if content_type else ""),
    )


def forbidden(resource: str, group: str, name: str, why: str) -> ApiError:
    return ApiError(
        403,
        "Forbidden",
        f'{_qualified(resource, group)} "{name}" is forbidden: {why}',
        details=_details(name, group, resource),
    )


def unauthorized() -> ApiError:
    return ApiError(401, "Unauthorized", "Unauthorized")


def internal(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}")


def not_acceptable(message: str) -> ApiError:
    return ApiError(406, "NotAcceptable", message)


def request_entity_too_large(limit: int) -> ApiError:
    """kube-apiserver's answer to a request body over *limit* bytes."""
    return ApiError(413, "RequestEntityTooLarge", f"Request entity too large: limit is {limit}")


def storage_failure(message: str) -> ApiError:
    """An error from etcd that kube-apiserver passes on unconverted: 500, no reason."""
    return ApiError(500, "", message)


def from_code(code: int, message: str, retry_after: int | None = None) -> ApiError:
    """A generic error for *code*, used by fault injection."""
    reasons = {
        400: "BadRequest",
        401: "Unauthorized",
        403: "Forbidden",
        404: "NotFound",
        405: "MethodNotAllowed",
        409: "Conflict",
        410: "Gone",
        422: "Invalid",
        429: "TooManyRequests",
        500: "InternalError",
        503: "ServiceUnavailable",
        504: "Timeout",
    }
    headers: dict[str, str] = {}
    details: dict[str, Any] | None = None
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
        details = {"retryAfterSeconds": retry_after}
    return ApiError(code, reasons.get(code, "Unknown"), message, details=details, headers=headers)
