"""Kubeconfig files pointing clients at the local API server."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

CONTEXT = "multinic-sim"


@dataclass(frozen=True)
class Credentials:
    """Where a kubeconfig points and how it authenticates (token, CA)."""

    server_url: str
    token: str | None = None
    certificate_authority_data: str | None = None
    """Base64 of the PEM CA bundle that signed the server's certificate (https)."""


def kubeconfig_document(
    server_url: str,
    token: str | None = None,
    namespace: str = "default",
    *,
    certificate_authority_data: str | None = None,
) -> dict[str, object]:
    user: dict[str, str] = {"token": token} if token else {}
    cluster: dict[str, str] = {"server": server_url}
    if certificate_authority_data:
        cluster["certificate-authority-data"] = certificate_authority_data
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": CONTEXT, "cluster": cluster}],
        "users": [{"name": CONTEXT, "user": user}],
        "contexts": [
            {
                "name": CONTEXT,
                "context": {"cluster": CONTEXT, "user": CONTEXT, "namespace": namespace},
            }
        ],
        "current-context": CONTEXT,
        "preferences": {},
    }


def write_kubeconfig(
    path: str | os.PathLike[str],
    server_url: str,
    token: str | None = None,
    *,
    certificate_authority_data: str | None = None,
) -> Path:
    """Write a kubeconfig for *server_url* to *path* (mode 0600) and return the path.

    The file appears complete or not at all (written beside, then renamed): a
    process waiting for it to exist never reads half of it.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    document = kubeconfig_document(
        server_url, token, certificate_authority_data=certificate_authority_data
    )
    text = yaml.safe_dump(document, sort_keys=False)
    temporary = target.with_name(f".{target.name}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    temporary.replace(target)
    return target


def read_credentials(path: str | os.PathLike[str]) -> Credentials:
    """The server, token and CA of a kubeconfig's current context (as written above)."""
    document: Any = yaml.safe_load(Path(path).read_text())
    current = document.get("current-context")
    context = next(
        (c["context"] for c in document.get("contexts") or [] if c.get("name") == current),
        None,
    )
    clusters = {c["name"]: c["cluster"] for c in document.get("clusters") or []}
    users = {u["name"]: u.get("user") or {} for u in document.get("users") or []}
    if context is not None:
        cluster, user = clusters[context["cluster"]], users.get(context.get("user"), {})
    else:
        cluster = document["clusters"][0]["cluster"]
        user = next(iter(users.values()), {})
    return Credentials(
        server_url=str(cluster["server"]),
        token=user.get("token"),
        certificate_authority_data=cluster.get("certificate-authority-data"),
    )
