"""Build the compiled ``multi-nic`` CNI shim (``shim.c``, shipped with this package).

The container runtime execs the shim on the host for every pod start and
stop.  A static C program needs no interpreter there (a Python shim needs the
interpreter its ``#!`` line names, on the host) and starts in about a
millisecond.  ``shim.c`` behaves as ``shim.py`` does, byte for byte.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

SHIM_SOURCE = Path(__file__).with_name("shim.c")
PREBUILT_SHIM = Path("/usr/local/lib/multinic/multi-nic")
"""Where the agent image keeps the shim built by ``multinic-agent build-shim``;
``install-cni`` copies it from here."""

CFLAGS = ("-std=c99", "-D_POSIX_C_SOURCE=200809L", "-O2", "-Wall", "-Wextra", "-Werror")
COMPILERS = ("cc", "gcc", "clang")
BUILD_TIMEOUT_S = 300


class ShimBuildError(Exception):
    """The shim cannot be built (no compiler, or it failed)."""


def find_compiler(cc: str | None = None) -> str | None:
    """The C compiler to use: ``cc`` if given, else ``$CC``, else the first of cc/gcc/clang."""
    if cc:
        return cc
    from_env = os.environ.get("CC", "").strip()
    if from_env:
        return from_env
    for name in COMPILERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def build_shim(
    output: Path,
    cc: str | None = None,
    *,
    static: bool = True,
    extra_flags: Sequence[str] = (),
) -> Path:
    """Compile ``shim.c`` into ``output`` (atomically, mode 0755) and return it.

    ``static``: linked statically (the default; the host may lack any shared
    library the build machine has).  ``extra_flags`` go to the compiler after
    the usual ones (sanitizers in tests).  Raises ``ShimBuildError`` naming
    the compiler and its output when the build fails.
    """
    compiler = find_compiler(cc)
    if compiler is None:
        raise ShimBuildError(
            f"cannot build the multi-nic shim: no C compiler found (tried $CC, "
            f"{', '.join(COMPILERS)}); install gcc and libc6-dev, or pass --cc"
        )
    if not SHIM_SOURCE.is_file():
        raise ShimBuildError(f"cannot build the multi-nic shim: {SHIM_SOURCE} is missing")
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    command = [
        compiler,
        *CFLAGS,
        *(["-static"] if static else []),
        *extra_flags,
        "-o",
        temporary,
        str(SHIM_SOURCE),
    ]
    try:
        try:
            done = subprocess.run(
                command,
                capture_output=True,
                text=True,
                timeout=BUILD_TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise ShimBuildError(
                f"cannot build the multi-nic shim: C compiler {compiler!r} not found"
            ) from None
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ShimBuildError(
                f"cannot build the multi-nic shim: C compiler {compiler!r} failed: {e}"
            ) from None
        if done.returncode != 0:
            output_text = (done.stderr + done.stdout).strip() or "(no output)"
            raise ShimBuildError(
                f"cannot build the multi-nic shim: {compiler} exited with status "
                f"{done.returncode}: {output_text}"
            )
        # A CNI plugin must be executable by the runtime; it holds no secret.
        os.chmod(temporary, 0o755)  # noqa: S103
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return output


def is_static_elf(path: Path) -> bool:
    """Whether ``path`` is an ELF executable without a program interpreter (static)."""
    data = path.read_bytes()
    if data[:4] != b"\x7fELF" or len(data) < 64:
        return False
    is64 = data[4] == 2
    little = data[5] == 1

    def number(offset: int, size: int) -> int:
        return int.from_bytes(data[offset : offset + size], "little" if little else "big")

    if is64:
        phoff, phentsize, phnum = number(32, 8), number(54, 2), number(56, 2)
    else:
        phoff, phentsize, phnum = number(28, 4), number(42, 2), number(44, 2)
    pt_interp = 3
    return all(number(phoff + index * phentsize, 4) != pt_interp for index in range(phnum))
