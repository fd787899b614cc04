"""Repository-wide pytest configuration."""

from __future__ import annotations

import os
import shutil

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    is_root = os.geteuid() == 0
    has_kubectl = shutil.which("kubectl") is not None
    for item in items:
        if "root" in item.keywords and not is_root:
            item.add_marker(pytest.mark.skip(reason="needs root (network namespaces, netlink)"))
        if "kubectl" in item.keywords and not has_kubectl:
            item.add_marker(pytest.mark.skip(reason="kubectl is not installed"))
