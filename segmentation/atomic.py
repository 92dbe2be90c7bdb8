"""Atomic output folders: write aside, rename into place at the end.

An interrupted import or export leaves at most a ``<name>.partial-<pid>`` (or, between the two
renames, ``<name>.old-<pid>``) folder, never a half volume under the real name; such leftovers
of processes that no longer run are removed by the next run. An existing folder is replaced
only when asked to and only when it is one promptcut wrote (``replaceable``): a mistyped
``--output`` must never delete someone's data.
"""

from __future__ import annotations

import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Optional

from segmentation.errors import InputError


def partial_name(final: Path) -> Path:
    return final.with_name(f"{final.name}.partial-{os.getpid()}")


def remove_stale_partials(final: Path) -> None:
    """Drop partial and retired folders whose writing process no longer runs."""
    if not final.parent.exists():
        return
    for pattern in (f"{final.name}.partial-*", f"{final.name}.old-*"):
        for candidate in final.parent.glob(pattern):
            pid = candidate.name.rsplit("-", 1)[-1]
            if not pid.isdigit() or (int(pid) != os.getpid() and _alive(int(pid))):
                continue
            if ".old-" in candidate.name and not final.exists():
                os.rename(candidate, final)  # killed between the two renames: the last good
                continue                     # copy goes back under its name
            shutil.rmtree(candidate, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(folder: Path, attempts: int = 50) -> None:
    """rmtree that outlasts writes still in flight (an interrupted tensorstore future)."""
    for _ in range(attempts):
        shutil.rmtree(folder, ignore_errors=True)
        if not folder.exists():
            return
        time.sleep(0.05)


@contextmanager
def atomic_directory(final: str | os.PathLike, overwrite: bool = False,
                     replaceable: Optional[Callable[[Path], bool]] = None,
                     what: str = "output") -> Iterator[Path]:
    """Yield a scratch folder that becomes ``final`` only if the block completes.

    An existing ``final`` is replaced only with ``overwrite`` and, where ``replaceable`` is
    given, only if it says the folder is an earlier ``what`` of promptcut's."""
    final = Path(final)
    if final.exists() or final.is_symlink():
        if not final.is_dir() or final.is_symlink():
            raise InputError(f"{final} exists and is not a folder: choose another output")
        if not overwrite:
            raise InputError(f"{final} already exists (pass --overwrite to replace it)")
        if replaceable is not None and not replaceable(final):
            raise InputError(f"{final} exists and is not a promptcut {what}: refusing to "
                             f"replace it; choose another output")
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(final)
    scratch = partial_name(final)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    try:
        yield scratch
    except BaseException:  # KeyboardInterrupt included: nothing half-written stays behind
        _remove(scratch)
        raise
    if final.exists():
        retired = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.rename(final, retired)
        os.rename(scratch, final)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.rename(scratch, final)
