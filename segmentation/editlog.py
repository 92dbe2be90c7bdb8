"""The durable edit log: every operation is in SQLite (WAL) before it is acknowledged.

A row holds the operation id, user, time, type, its inputs (JSON) and the membership delta: for
every supervoxel that changed segment, (supervoxel, old segment, new segment). Replaying the
deltas in id order rebuilds the membership exactly; undo and redo are operations of their own
that name the operation they reverse or repeat.
"""

from __future__ import annotations

import base64
import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np

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
)""")


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
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # durable across a crash of the server
        for statement in SCHEMA:
            self._db.execute(statement)
        self._lock = threading.Lock()

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
