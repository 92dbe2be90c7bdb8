"""One writer per project: an OS file lock that `serve`, `segment`, `agglomerate`, `export` and
`import --config` hold while they run.

Two servers on one project shared one edit log and diverged; `agglomerate` under a running
server moved the log away beneath it. The lock is ``fcntl.flock`` on ``<project>/.lock``: the
kernel drops it when the holder exits, however it exits (kill -9 included), so a stale lock
never needs clearing by hand. The file names the holder (PID, command) for the refusal.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from segmentation.errors import InputError

LOCK_NAME = ".lock"


@contextmanager
def project_lock(root: str | os.PathLike, command: str) -> Iterator[None]:
    """Hold the project's lock for ``command`` (e.g. "serve"), or refuse naming the holder."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    handle = open(root / LOCK_NAME, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise InputError(f"project {root} is in use by {holder}; stop it first (one "
                             f"writer per project)") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"`promptcut {command}` (PID {os.getpid()})")
        handle.flush()
        yield
    finally:
        handle.close()  # closing drops the lock
