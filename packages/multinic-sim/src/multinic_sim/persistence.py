"""The optional state file: the whole store as JSON, replaced atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from multinic_sim.errors import SimError

STATE_FORMAT = "multinic-sim/state/v1"


class StateFileError(SimError):
    """The state file cannot be read or written."""


class StateFile:
    """Load and save the simulated cluster's objects at *path*."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def load(self) -> dict[str, Any] | None:
        """The saved state, or None when there is no file yet."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StateFileError(f"cannot read state file {self.path}: {e.strerror}") from e
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise StateFileError(f"state file {self.path} is not valid JSON: {e}") from e
        if not isinstance(data, dict) or data.get("format") != STATE_FORMAT:
            raise StateFileError(
                f"state file {self.path} is not a multinic-sim state file "
                f"(expected format {STATE_FORMAT!r})"
            )
        return data

    def check_writable(self) -> None:
        directory = self.path.parent
        if not directory.is_dir():
            raise StateFileError(
                f"cannot write state file {self.path}: directory {directory} does not exist"
            )
        if not os.access(directory, os.W_OK):
            raise StateFileError(
                f"cannot write state file {self.path}: directory {directory} is not writable"
            )

    def save(self, state: dict[str, Any]) -> None:
        """Write *state* so that a crash leaves either the old or the new file."""
        data = {"format": STATE_FORMAT, **state}
        directory = self.path.parent
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=directory)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as f:
                    json.dump(data, f, separators=(",", ":"))
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as e:
            raise StateFileError(f"cannot write state file {self.path}: {e.strerror}") from e
