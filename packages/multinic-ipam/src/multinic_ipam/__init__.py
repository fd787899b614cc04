"""multinic IPAM plugins and the durable per-node address journal."""

from __future__ import annotations
