"""The multinic node agent and its ``multi-nic`` CNI shim."""

from __future__ import annotations
