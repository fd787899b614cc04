"""multinic-sim: local simulation for multinic.

The local Kubernetes API server (:class:`multinic_sim.server.ApiServer`, run in
a thread with :class:`multinic_sim.background.ApiServerThread`) and the pytest
fixtures in :mod:`multinic_sim.testing`.
"""

from __future__ import annotations

__version__ = "0.1.0"
