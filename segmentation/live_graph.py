"""The region adjacency graph as a proofreading session edits it.

Loaded from a :class:`~segmentation.rag.Rag`, it keeps the adjacency as CSR arrays built once;
dividing a supervoxel adds nodes and edges at the end (new supervoxel ids are larger than every
id before them, so the ids stay sorted) and retires edges by a flag, so no edit rebuilds the
adjacency, whatever the size of the graph. Undoing the division flips the flags back.

Nodes are rows (0..n-1); edges are rows too. Edge capacities are what cutting each edge costs
in a graph cut (see :func:`segmentation.graphcut.affinity_capacity`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from segmentation.graphcut import affinity_capacity
from segmentation.membership import rows_of
from segmentation.rag import Rag


class Column:
    """A growable array: appends reallocate only when the capacity doubles."""

    def __init__(self, values: np.ndarray):
        self._data = np.array(values, copy=True)
        self.size = len(values)

    @property
    def view(self) -> np.ndarray:
        return self._data[:self.size]

    def append(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, self._data.dtype).reshape((-1,) + self._data.shape[1:])
        needed = self.size + len(rows)
        if needed > len(self._data):
            grown = np.empty((max(needed, 2 * len(self._data), 16),) + self._data.shape[1:],
                             self._data.dtype)
            grown[:self.size] = self._data[:self.size]
            self._data = grown
        self._data[self.size:needed] = rows
        first, self.size = self.size, needed
        return np.arange(first, needed)


class LiveGraph:
    def __init__(self, rag: Rag):
        self._ids = Column(rag.ids.astype(np.uint64))
        self._size = Column(rag.size.astype(np.int64))
        self._bbox = Column(rag.bbox.astype(np.int64))
        self._centroid = Column(rag.centroid.astype(np.float32))
        a, b = rag.edge_index()
        self._a = Column(a.astype(np.int64))
        self._b = Column(b.astype(np.int64))
        self._area = Column(rag.area.astype(np.int64))
        self._affinity = Column(rag.quantiles[:, 1].astype(np.float64))  # the median
        self._capacity = Column(affinity_capacity(self._affinity.view, self._area.view))
        self._alive = Column(np.ones(len(a), bool))
        n = rag.num_nodes
        ends = np.concatenate([a, b])
        order = np.argsort(ends, kind="stable")
        self._csr_other = np.concatenate([b, a])[order].astype(np.int64)
        self._csr_edge = np.concatenate([np.arange(len(a))] * 2)[order].astype(np.int64)
        self._indptr = np.concatenate([[0], np.cumsum(np.bincount(ends, minlength=n))])
        self._base_nodes = n
        self._extra: dict[int, list[int]] = {}  # node -> edges added after loading
        self._slot = np.full(n, -1, np.int64)  # scratch: node -> position in a subgraph
        self._journal: list[tuple[np.ndarray, np.ndarray]] = []  # alive flags before changes

    # -- nodes ----------------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self._ids.size

    @property
    def ids(self) -> np.ndarray:
        return self._ids.view

    @property
    def size(self) -> np.ndarray:
        return self._size.view

    @property
    def bbox(self) -> np.ndarray:
        """(N, 6): z0, y0, x0, z1, y1, x1, end exclusive."""
        return self._bbox.view

    @property
    def centroid(self) -> np.ndarray:
        return self._centroid.view

    def node_index(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Row of each supervoxel id; -1 where the id is not a node."""
        return rows_of(self.ids, ids)

    def add_nodes(self, ids: np.ndarray, size: np.ndarray, bbox: np.ndarray,
                  centroid: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.uint64)
        if len(ids) and self.num_nodes and ids.min() <= self.ids[-1]:
            raise ValueError("new supervoxel ids must be larger than every id in the graph")
        self._size.append(size)
        self._bbox.append(bbox)
        self._centroid.append(centroid)
        return self._ids.append(ids)

    # -- edges ----------------------------------------------------------------------------------
    @property
    def num_edges(self) -> int:
        return self._a.size

    @property
    def edge_a(self) -> np.ndarray:
        return self._a.view

    @property
    def edge_b(self) -> np.ndarray:
        return self._b.view

    @property
    def area(self) -> np.ndarray:
        return self._area.view

    @property
    def affinity(self) -> np.ndarray:
        return self._affinity.view

    @property
    def capacity(self) -> np.ndarray:
        return self._capacity.view

    @property
    def alive(self) -> np.ndarray:
        return self._alive.view

    def add_edges(self, a: np.ndarray, b: np.ndarray, area: np.ndarray,
                  affinity: np.ndarray) -> np.ndarray:
        """New edges between node rows (alive)."""
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        self._b.append(b)
        self._area.append(area)
        self._affinity.append(affinity)
        self._capacity.append(affinity_capacity(np.asarray(affinity, np.float64),
                                                np.asarray(area)))
        self._alive.append(np.ones(len(a), bool))
        rows = self._a.append(a)
        for edge, u, v in zip(rows.tolist(), a.tolist(), b.tolist()):
            self._extra.setdefault(u, []).append(edge)
            self._extra.setdefault(v, []).append(edge)
        return rows

    def set_alive(self, edges: np.ndarray, alive: bool) -> None:
        edges = np.asarray(edges, np.int64)
        self._journal.append((edges, self.alive[edges].copy()))
        self._alive.view[edges] = alive

    # -- trying a change ------------------------------------------------------------------------
    def mark(self) -> tuple[int, int, int]:
        """A point to roll back to: an edit is worked out on the graph, then kept or undone."""
        return self.num_nodes, self.num_edges, len(self._journal)

    def rollback(self, mark: tuple[int, int, int]) -> None:
        nodes, edges, journal = mark
        for changed, before in reversed(self._journal[journal:]):
            self._alive.view[changed] = before
        del self._journal[journal:]
        for edge in reversed(range(edges, self.num_edges)):
            for end in (int(self.edge_a[edge]), int(self.edge_b[edge])):
                added = self._extra.get(end)
                if added and added[-1] == edge:
                    added.pop()
                    if not added:
                        del self._extra[end]
        for column in (self._a, self._b, self._area, self._affinity, self._capacity,
                       self._alive):
            column.size = edges
        for column in (self._ids, self._size, self._bbox, self._centroid):
            column.size = nodes

    def commit(self) -> None:
        """Keep what was changed since the last mark."""
        self._journal.clear()

    def set_affinity(self, edges: np.ndarray, affinity: np.ndarray) -> None:
        edges = np.asarray(edges, np.int64)
        self._affinity.view[edges] = affinity
        self._capacity.view[edges] = affinity_capacity(np.asarray(affinity, np.float64),
                                                       self.area[edges])

    # -- adjacency ------------------------------------------------------------------------------
    def incident(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Live edges at ``nodes``: (position in ``nodes``, edge row, node at the other end)."""
        nodes = np.asarray(nodes, np.int64)
        base = nodes < self._base_nodes
        base_nodes = np.where(base, nodes, 0)
        starts, ends = self._indptr[base_nodes], self._indptr[base_nodes + 1]
        counts = np.where(base, ends - starts, 0)
        offsets = np.repeat(starts - np.concatenate([[0], np.cumsum(counts)[:-1]]), counts)
        flat = offsets + np.arange(int(counts.sum()))
        position = np.repeat(np.arange(len(nodes)), counts)
        edge, other = self._csr_edge[flat], self._csr_other[flat]
        if self._extra:
            extra_pos, extra_edge = [], []
            for i, node in enumerate(nodes.tolist()):
                added = self._extra.get(node)
                if added:
                    extra_pos.append(np.full(len(added), i, np.int64))
                    extra_edge.append(np.asarray(added, np.int64))
            if extra_edge:
                more = np.concatenate(extra_edge)
                a, b = self.edge_a[more], self.edge_b[more]
                mine = nodes[np.concatenate(extra_pos)]
                position = np.concatenate([position, np.concatenate(extra_pos)])
                edge = np.concatenate([edge, more])
                other = np.concatenate([other, np.where(a == mine, b, a)])
        live = self.alive[edge]
        return position[live], edge[live], other[live]

    def neighbours(self, nodes: np.ndarray) -> np.ndarray:
        """Distinct nodes joined to any of ``nodes`` by a live edge."""
        return np.unique(self.incident(nodes)[2])

    def subgraph(self, nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Live edges with both ends in ``nodes``, once each: (local a, local b, edge row)."""
        nodes = np.asarray(nodes, np.int64)
        if len(self._slot) < self.num_nodes:
            self._slot = np.full(2 * self.num_nodes, -1, np.int64)
        self._slot[nodes] = np.arange(len(nodes))
        try:
            position, edge, other = self.incident(nodes)
            there = self._slot[other]
        finally:
            self._slot[nodes] = -1
        keep = there > position
        return position[keep], there[keep], edge[keep]

    def edge_between(self, u: int, v: int) -> int:
        """The live edge joining node rows u and v, or -1."""
        _, edge, other = self.incident(np.array([u]))
        hit = np.flatnonzero(other == v)
        return int(edge[hit[0]]) if len(hit) else -1
