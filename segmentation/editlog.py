"""The durable edit log: every operation is in SQLite (WAL) before it is acknowledged.

A row holds the operation id, user, time, type, its inputs (JSON) and the membership delta: for
every supervoxel that changed segment, (supervoxel, old segment, new segment). Replaying the
deltas in id order rebuilds the membership exactly; undo and redo are operations of their own
that name the operation they reverse or repeat.

A log belongs to one segmentation: it stores a fingerprint of the supervoxels, graph and
agglomeration its deltas apply to, and opening it for another is refused. It is checked when
opened (``PRAGMA quick_check``), and a sidecar file ``<log>.acknowledged`` holds the id of the
last operation acknowledged: a log that comes back with fewer (a torn WAL, a truncated or
replaced file) is refused, never silently started short. Durability: ``synchronous`` NORMAL
(the default) keeps every acknowledged edit across a crash of the server; FULL also across a
power loss, at the price of an fsync per edit.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

from segmentation.errors import InputError

log = logging.getLogger(__name__)
SYNCHRONOUS = ("NORMAL", "FULL")
SCHEMA = ("""
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,
    user TEXT NOT NULL,
    time REAL NOT NULL,
    kind TEXT NOT NULL,
    inputs TEXT NOT NULL,
    target INTEGER,
    delta BLOB NOT NULL
)""", """
CREATE TABLE IF NOT EXISTS divisions (
    operation INTEGER PRIMARY KEY REFERENCES operations(id),
    payload BLOB NOT NULL
)""", """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
)""")


ACKNOWLEDGED = ".acknowledged"  # suffix of the note of the last acknowledged operation


def log_files(path: Path) -> list[Path]:
    """The files that make up the log at ``path`` (those that exist)."""
    path = Path(path)
    return [path.with_name(path.name + suffix) for suffix in ("", "-wal", "-shm", ACKNOWLEDGED)
            if path.with_name(path.name + suffix).exists()]


def remove_log(path: Path) -> None:
    """Delete a log with its sidecars (a fresh start: only for logs nobody needs)."""
    for file in log_files(path):
        file.unlink(missing_ok=True)


class LogError(InputError):
    """The edit log cannot be used as it is (damaged, short, or made for other supervoxels);
    the message names the file and what to do."""


@dataclass
class Entry:
    id: int
    user: str
    time: float
    kind: str  # merge, split, prompt-cut, undo, redo
    inputs: dict[str, Any]
    target: Optional[int]  # the operation an undo or redo refers to
    delta: np.ndarray  # (k, 3) uint64: supervoxel, old segment, new segment (0: none)
    division: Optional[bytes] = None  # a supervoxel divided at voxel level (VoxelSplit bytes)

    def as_json(self) -> dict:
        return {"id": self.id, "user": self.user, "time": self.time, "kind": self.kind,
                "inputs": self.inputs, "target": self.target,
                "delta": self.delta.astype(np.int64).tolist(),
                "division": base64.b64encode(self.division).decode() if self.division else None}


class EditLog:
    def __init__(self, path: Path, fingerprint: Optional[str] = None,
                 synchronous: str = "NORMAL"):
        """Open (or start) the log at ``path``. ``fingerprint`` names the segmentation its
        deltas apply to: a log started for another one is refused."""
        if synchronous not in SYNCHRONOUS:
            raise InputError(f"log synchronous must be one of {SYNCHRONOUS}, got {synchronous!r}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.acknowledged_path = self.path.with_name(self.path.name + ACKNOWLEDGED)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise LogError(f"edit log {self.path} is damaged (sqlite quick_check: "
                               f"{check}); restore it from a backup or move it aside")
            for statement in SCHEMA:
                self._db.execute(statement)
            last = self._db.execute("SELECT MAX(id) FROM operations").fetchone()[0] or 0
            stored = self._meta("fingerprint")
        except sqlite3.DatabaseError as exc:
            raise LogError(f"edit log {self.path} cannot be read ({exc}); restore it from a "
                           f"backup or move it aside") from None
        acknowledged = self._acknowledged()
        if last < acknowledged:
            self._db.close()
            raise LogError(f"edit log {self.path} ends at operation {last} but operation "
                           f"{acknowledged} was acknowledged: {acknowledged - last} edit(s) are "
                           f"missing (a torn or replaced file, or a power loss with "
                           f"synchronous NORMAL); restore it from a backup, or delete "
                           f"{self.acknowledged_path.name} to go on without them")
        if fingerprint is not None:
            if stored is None:
                self._set_meta("fingerprint", fingerprint)
            elif stored != fingerprint:
                self._db.close()
                raise LogError(f"edit log {self.path} was made on another segmentation than "
                               f"the project's now (fingerprint {stored[:12]}, now "
                               f"{fingerprint[:12]}): move it aside (`promptcut segment "
                               f"--archive-log` does) to start a fresh one")
        self.fingerprint = fingerprint or stored
        # written in place (one small pwrite per edit, no rename): a rename per edit cost
        # about a millisecond, a fifth of a merge
        self._ack = os.open(self.acknowledged_path, os.O_RDWR | os.O_CREAT, 0o644)

    def _meta(self, key: str) -> Optional[str]:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def _acknowledged(self) -> int:
        try:
            return int(self.acknowledged_path.read_text().strip() or 0)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError):
            raise LogError(f"{self.acknowledged_path} is not an operation number; move it "
                           f"aside if the edit log is known to be whole") from None

    def _acknowledge(self, operation: int) -> None:
        """Note the last acknowledged operation (after its commit, before the answer). The
        operation is committed either way: a failure here (a full disk) only weakens the
        start-up check, so it is logged, not raised (raising would leave the log ahead of the
        session that wrote it)."""
        try:
            os.pwrite(self._ack, f"{operation:020d}\n".encode(), 0)
        except OSError as exc:
            log.warning("could not note operation %d in %s: %s", operation,
                        self.acknowledged_path, exc)

    def append(self, user: str, kind: str, inputs: dict, delta: np.ndarray,
               target: Optional[int] = None, division: Optional[bytes] = None) -> Entry:
        """Write one operation (and its voxel-level division, in the same transaction)."""
        delta = np.ascontiguousarray(delta, np.uint64).reshape(-1, 3)
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                cursor = self._db.execute(
                    "INSERT INTO operations (user, time, kind, inputs, target, delta) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (user, now, kind, json.dumps(inputs), target, delta.tobytes()))
                operation = int(cursor.lastrowid)
                if division is not None:
                    self._db.execute("INSERT INTO divisions (operation, payload) VALUES (?, ?)",
                                     (operation, division))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._acknowledge(operation)
            return Entry(operation, user, now, kind, inputs, target, delta, division)

    def entries(self, after: int = 0, limit: Optional[int] = None) -> Iterator[Entry]:
        """Operations after id ``after``, oldest first, at most ``limit`` of them."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, user, time, kind, inputs, target, delta, payload FROM operations "
                "LEFT JOIN divisions ON divisions.operation = operations.id WHERE id > ? "
                "ORDER BY id LIMIT ?", (int(after), -1 if limit is None else int(limit))
            ).fetchall()
        for id_, user, when, kind, inputs, target, delta, division in rows:
            yield Entry(id_, user, when, kind, json.loads(inputs), target,
                        np.frombuffer(delta, np.uint64).reshape(-1, 3), division)

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM operations").fetchone()[0])

    def export_jsonl(self, path: Path) -> int:
        count = 0
        with open(path, "w") as out:
            for entry in self.entries():
                out.write(json.dumps(entry.as_json()) + "\n")
                count += 1
        return count

    def close(self) -> None:
        with self._lock:
            self._db.close()
            if getattr(self, "_ack", None) is not None:
                os.close(self._ack)
                self._ack = None
