"""Attachment records: what one ADD did, so that DEL, CHECK and GC never re-select.

One small JSON file per attachment in ``<state dir>/attachments/``, written
atomically (temporary file, fsync, rename, fsync of the directory) before the
CNI reply.  Records written at the same time from several threads share the
directory's fsync (group commit).  All records are loaded when the agent
starts.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections import Counter
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

RECORDS_DIR = "attachments"


@dataclass
class DelegateRecord:
    """One NIC of an attachment: the delegate that attached it and what it returned."""

    ifname: str
    """The pod-side name, ``<CNI_IFNAME>-<i>``."""
    nic: str
    """The host NIC (``master``)."""
    binary: str
    """Path of the delegate executable that ran ADD."""
    config: dict[str, Any]
    """The delegate's network config exactly as it was exec'd."""
    device_id: str = ""
    result: dict[str, Any] = field(default_factory=dict)
    """The delegate's own ADD result (its ``prevResult`` for CHECK)."""
    plugin_state: dict[str, Any] = field(default_factory=dict)
    """What the main plugin's ``multinic_nics_attached`` returned for this NIC."""


@dataclass
class AttachmentRecord:
    """One pod's attachment to one network (one CNI ADD)."""

    container_id: str
    ifname: str
    netns: str
    network: str
    cni_version: str
    ipam_type: str
    ipam: dict[str, Any]
    delegates: list[DelegateRecord]
    addresses: list[str]
    """Every address given to the pod, ``ADDRESS/PREFIX``, in NIC order."""
    pod: str = ""
    namespace: str = ""
    pod_uid: str = ""
    """``K8S_POD_UID``: leak collection tells a recreated pod of the same name apart."""
    multipath: list[dict[str, Any]] = field(default_factory=list)
    """Routes the agent programmed itself: ``{"dst", "nexthops": [{"gw", "dev"}]}``."""
    result: dict[str, Any] = field(default_factory=dict)
    """The merged result returned to the runtime."""
    main_plugin: str = ""
    """The main plugin (``plugin.type``) that built the delegates; DEL undoes its side effects."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.container_id, self.ifname)

    def to_json(self) -> str:
        # As json.dumps(asdict(self)) writes it, without asdict's deep copy of
        # every config and result (~0.25 ms of each ADD's critical path).
        data = _fields_of(self)
        data["delegates"] = [_fields_of(d) for d in self.delegates]
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> AttachmentRecord:
        data = json.loads(text)
        data["delegates"] = [DelegateRecord(**d) for d in data["delegates"]]
        return cls(**data)


def _fields_of(record: AttachmentRecord | DelegateRecord) -> dict[str, Any]:
    """The record's fields by name, in declaration order (values not copied)."""
    return {f.name: getattr(record, f.name) for f in fields(record)}


class RecordStore:
    """The node's attachment records, in memory and on disk.

    :meth:`write` may run in any thread, and several at once; the in-memory
    side (:meth:`keep`, :meth:`get`, :meth:`usage`, ...) belongs to one thread
    (the agent's event loop).
    """

    def __init__(self, state_dir: Path) -> None:
        self.directory = state_dir / RECORDS_DIR
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._records: dict[tuple[str, str], AttachmentRecord] = {}
        self._usage: Counter[str] = Counter()
        """Delegates per host NIC over every record, kept as records come and go."""
        self._renamed = 0
        """Records renamed into place so far (a sequence number)."""
        self._dir_synced = 0
        """Every rename up to this one is durable (the directory fsync'ed after it)."""
        self._rename_lock = threading.Lock()
        self._sync_lock = threading.Lock()
        for path in sorted(self.directory.glob("*.json")):
            try:
                record = AttachmentRecord.from_json(path.read_text(encoding="utf-8"))
            except (OSError, ValueError, KeyError, TypeError) as e:
                log.error("attachment record %s is unreadable and ignored: %s", path, e)
                continue
            self.keep(record)
        for leftover in self.directory.glob("*.tmp"):
            leftover.unlink(missing_ok=True)
        log.info("%d attachment records loaded from %s", len(self._records), self.directory)

    def get(self, container_id: str, ifname: str) -> AttachmentRecord | None:
        return self._records.get((container_id, ifname))

    def of_network(self, network: str) -> list[AttachmentRecord]:
        return [r for r in self._records.values() if r.network == network]

    def all(self) -> list[AttachmentRecord]:
        return list(self._records.values())

    def usage(self) -> Counter[str]:
        """Attachments per host NIC (costOpt / perfOpt): a copy, O(NICs) not O(records)."""
        return +self._usage

    def put(self, record: AttachmentRecord) -> None:
        """Write the record durably, then keep it."""
        self.write(record)
        self.keep(record)

    def write(self, record: AttachmentRecord) -> None:
        """Write the record durably (file, rename, directory all on disk); thread-safe."""
        path = self._path(*record.key)
        # One temporary per writer: two writes of one key never share it.
        temporary = path.with_name(f"{path.name}.{threading.get_ident()}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, record.to_json().encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        with self._rename_lock:
            temporary.replace(path)
            self._renamed += 1
            renamed = self._renamed
        self._sync_directory(renamed)

    def keep(self, record: AttachmentRecord) -> None:
        """Hold a record (already on disk) in memory."""
        self._forget(record.key)
        self._records[record.key] = record
        self._usage.update(d.nic for d in record.delegates)

    def delete(self, container_id: str, ifname: str) -> None:
        self._path(container_id, ifname).unlink(missing_ok=True)
        self._forget((container_id, ifname))

    def _forget(self, key: tuple[str, str]) -> None:
        old = self._records.pop(key, None)
        if old is not None:
            self._usage.subtract(d.nic for d in old.delegates)

    def _path(self, container_id: str, ifname: str) -> Path:
        # Both are validated by the CNI server (no "/" nor ".." can reach here).
        return self.directory / f"{container_id}_{ifname}.json"

    def _sync_directory(self, renamed: int) -> None:
        """Return once rename ``renamed`` (and every one before it) is durable.

        Group commit: one fsync of the directory, begun after the renames of
        every writer waiting for it, serves them all.
        """
        with self._sync_lock:
            if self._dir_synced >= renamed:
                return
            with self._rename_lock:
                target = self._renamed
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._dir_synced = target
