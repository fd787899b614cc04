"""Hook specifications: the one surface a multinic plugin codes against.

A plugin is any object (module, class instance) whose methods are marked with
``multinic_core.hookimpl`` and named like the specs below.  It is published
through an entry point in one of three groups, and the entry point's name is
the value users write in a ``MultiNicNetwork``:

* ``multinic.main_plugins`` -- ``spec.plugin.type``: implements
  ``multinic_network_attachment`` and ``multinic_delegate_config``, optionally
  ``multinic_dependent_objects`` and ``multinic_nics_attached`` /
  ``multinic_nics_detached`` (side effects outside the pod, e.g. a cloud API)
  and ``multinic_inprocess_delegate`` (a delegate run inside the agent).
* ``multinic.policies`` -- ``spec.attachPolicy.strategy``: implements
  ``multinic_select_nics``.
* ``multinic.ipam`` -- the ``type`` of ``spec.ipam``: implements
  ``multinic_ipam_add`` and ``multinic_ipam_del``.

multinic always calls hooks with keyword arguments, and calls exactly one
plugin per call (the one the network names), so every hook returns a value
rather than contributing to a list.  A plugin may accept fewer arguments than
the spec lists (pluggy passes only the ones it names).  See ``docs/plugins.md``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pluggy

from multinic_core.hooktypes import (
    ClusterReader,
    DependentObject,
    InProcessDelegate,
    IpamRequest,
    NetworkAttachment,
    NicAttachment,
    SelectedNic,
    SelectionRequest,
)
from multinic_core.models import HostInterface, MultiNicNetwork

PROJECT = "multinic"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# ---------------------------------------------------------------------------
# Main plugins (group ``multinic.main_plugins``): operator side
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def multinic_network_attachment(
    network: MultiNicNetwork, cluster: ClusterReader
) -> NetworkAttachment:
    """Describe the network's NetworkAttachmentDefinitions.

    Called by the operator whenever a ``MultiNicNetwork`` is created or changed,
    and when objects the driver depends on change.

    :param network: the validated network.
    :param cluster: read access to other objects (e.g. a ``NicClusterPolicy``).
    :returns: the NAD config's ``plugin`` block (with ``type`` set to the
        delegate CNI type and every user key of ``spec.plugin.args`` kept) and
        the annotations every NAD of this network carries.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def multinic_dependent_objects(
    network: MultiNicNetwork,
    hosts: Sequence[HostInterface],
    cluster: ClusterReader,
) -> list[DependentObject]:
    """List the Kubernetes objects the network needs besides its NADs.

    Called by the operator after ``multinic_network_attachment``, and again
    when hosts join or leave.  The operator creates or updates each object,
    marks it as owned by the network, and deletes objects it created before
    that are no longer returned (and all of them when the network goes).

    :param network: the validated network.
    :param hosts: the ``HostInterface`` objects of every known node.
    :param cluster: read access to other objects.
    :returns: the complete desired set (an empty list when there is none).
    """
    raise NotImplementedError


# ---------------------------------------------------------------------------
# Main plugins: agent side (pod start)
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def multinic_delegate_config(
    netconf: dict[str, Any], nic: SelectedNic, ipam: dict[str, Any]
) -> dict[str, Any]:
    """Build the CNI config of the delegate that attaches one NIC to a pod.

    Called by the agent during ADD, once per selected NIC, after IPAM.

    :param netconf: the NAD config (``spec.config`` parsed), with ``plugin``.
    :param nic: the NIC (and device) chosen by the attach policy.
    :param ipam: the delegate's ``ipam`` section produced by the IPAM plugin.
    :returns: a complete CNI network config: ``cniVersion``, ``name`` (the
        network name), ``type``, ``master`` or ``deviceID``, every other
        ``plugin`` key preserved, and ``ipam``.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def multinic_nics_attached(attachments: Sequence[NicAttachment]) -> list[dict[str, Any]]:
    """Do what the NICs of one ADD need outside the pod (e.g. a cloud API call).

    Optional.  Called by the agent during ADD after every delegate's ADD
    succeeded and before the attachment is recorded, once for all the NICs, in
    a worker thread (it may block; keep it bounded in time).  Raising fails the
    ADD: the agent then DELs the delegates and releases the addresses, so the
    implementation must first undo whatever this call did (nothing may be
    left behind).  ``multinic_core.errors.TryAgainError`` for transient
    conditions (CNI code 11); any other ``MultinicError`` is code 999.

    :param attachments: one per NIC in attach order, ``state`` empty.
    :returns: one JSON-serialisable dict per attachment, in order; recorded
        with the attachment and handed back as ``NicAttachment.state`` to
        ``multinic_nics_detached``.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def multinic_nics_detached(attachments: Sequence[NicAttachment]) -> bool:
    """Undo ``multinic_nics_attached`` for one recorded attachment.

    Called by the agent on DEL, GC and leak collection after the delegates'
    DEL and before the addresses are released, and on rollback of an ADD that
    failed after ``multinic_nics_attached`` returned; in a worker thread.
    Must succeed when there is nothing left to undo (DEL is idempotent).
    Raising fails the DEL: the attachment stays recorded and is retried.

    :param attachments: one per NIC, with the ``state`` recorded at ADD.
    :returns: ``True``.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def multinic_inprocess_delegate(plugin_type: str) -> InProcessDelegate | None:
    """Offer to run delegate CNI plugin ``plugin_type`` inside the agent instead of exec'ing it.

    Optional.  Called by the agent once per delegate type (the ``type`` of the
    delegate configs of any network), of every installed main plugin that
    implements it; the first object returned is used for every delegate of
    that type whose config it ``accepts``, the others are exec'd as always.
    The object must behave exactly as the binary (same links, addresses,
    routes, sysctls, result JSON and error codes): the agent's
    ``--exec-delegates`` turns it off and the binary must be a drop-in.

    :param plugin_type: a delegate ``type`` (``macvlan``).
    :returns: an :class:`~multinic_core.hooktypes.InProcessDelegate`, or
        ``None`` for a type the plugin does not run in process.
    """
    raise NotImplementedError


# ---------------------------------------------------------------------------
# Attach policies (group ``multinic.policies``)
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def multinic_select_nics(request: SelectionRequest) -> list[SelectedNic]:
    """Choose which of the node's NICs a pod gets, in attach order.

    Called by the agent at the start of ADD (never on DEL: DEL uses the
    attachment record).

    :param request: the network, the node's NICs, the pod, its ``cni-args``
        (``nics``, ``masters``, ``class``), device allocations and usage.
    :returns: the selected NICs, first to be ``net1-0``.  Raise
        ``multinic_core.errors.SelectionError`` when the request cannot be met.
    """
    raise NotImplementedError


# ---------------------------------------------------------------------------
# IPAM plugins (group ``multinic.ipam``)
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def multinic_ipam_add(request: IpamRequest) -> list[dict[str, Any]]:
    """Provide addresses for the selected NICs of one attachment.

    Called by the agent during ADD after selection, in a worker thread
    (several ADDs' calls may run at once); must be idempotent per
    ``(request.container_id, request.if_name)``, and durable before it returns.

    :param request: the network, its parsed ``ipam`` config, the selected NICs,
        and ``requested_ips`` (``runtimeConfig.ips``): a plugin gives exactly
        those addresses, or raises ``ConfigError`` when it cannot.
    :returns: one delegate ``ipam`` section per NIC, in NIC order: either
        ``{"type": "static", "addresses": [...], "routes": [...]}`` or a
        single-NIC IPAM config for the delegate to run.
    """
    raise NotImplementedError


@hookspec(firstresult=True)
def multinic_ipam_del(request: IpamRequest) -> bool:
    """Release what ``multinic_ipam_add`` gave the attachment.

    Called by the agent on DEL, on rollback of a failed ADD, and by garbage
    collection.  Must succeed when nothing is allocated (DEL is idempotent).

    :param request: the same attachment identity as the ADD.
    :returns: ``True`` (a value, so that pluggy stops at this plugin).
    """
    raise NotImplementedError


# Hooks each group's plugins must implement; checked at load time.
REQUIRED_HOOKS: dict[str, tuple[str, ...]] = {
    "multinic.main_plugins": ("multinic_network_attachment", "multinic_delegate_config"),
    "multinic.policies": ("multinic_select_nics",),
    "multinic.ipam": ("multinic_ipam_add", "multinic_ipam_del"),
}
