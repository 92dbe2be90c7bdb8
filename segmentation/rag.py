"""Region adjacency graph of supervoxels, with per-edge affinity statistics and node statistics.

An edge joins two supervoxels that touch across a voxel face. Its statistics come from the
nearest-neighbour affinities on those faces: contact area (faces), mean, and quantiles. They are
computed from 64-bin histograms of the uint8 affinities (bin k holds 4k .. 4k + 3) plus exact
sums, all of which add across blocks, so a blockwise RAG equals a whole-volume one bit for bit.
The mean is exact; quantile q of an edge is the centre of the first bin by which at least a
fraction q of its faces are counted, so within 2/255 of the exact quantile.

Stored as one ``.npz`` of flat columns (no pickles), which loads in milliseconds.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Iterable, Sequence

import fastremap
import numpy as np

from segmentation.membership import rows_of

QUANTILES = (0.1, 0.5, 0.9)
BINS = 64
BIN_WIDTH = 256 // BINS


@dataclass
class Contacts:
    """Sparse histogram rows (a, b, affinity bin, faces, sum of their uint8 affinities) with
    a < b, from one block or more."""

    a: np.ndarray
    b: np.ndarray
    bin: np.ndarray
    count: np.ndarray
    total: np.ndarray

    @classmethod
    def empty(cls) -> "Contacts":
        return cls(np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.uint8),
                   np.zeros(0, np.int64), np.zeros(0, np.int64))

    @classmethod
    def concatenate(cls, parts: Iterable["Contacts"]) -> "Contacts":
        parts = list(parts) or [cls.empty()]
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def reduced(self) -> "Contacts":
        """Rows with equal (a, b, bin) summed, sorted by a, b, bin."""
        if len(self.a) == 0:
            return self
        a, b, bins = self.a, self.b, self.bin
        if ((a[1:] > a[:-1]) | ((a[1:] == a[:-1]) & ((b[1:] > b[:-1]) | (
                (b[1:] == b[:-1]) & (bins[1:] > bins[:-1]))))).all():
            return self  # already reduced, as one block's contacts come
        if int(b.max()) < 1 << 29:  # (a < b) one packed key: twice lexsort's speed
            key = (a << np.uint64(35)) | (b << np.uint64(6)) | bins.astype(np.uint64)
            order = np.argsort(key, kind="stable")
        else:
            order = np.lexsort((self.bin, self.b, self.a))
        a, b, bins = self.a[order], self.b[order], self.bin[order]
        start = np.ones(len(a), bool)
        start[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1]) | (bins[1:] != bins[:-1])
        index = np.flatnonzero(start)
        return Contacts(a[index], b[index], bins[index],
                        np.add.reduceat(self.count[order], index),
                        np.add.reduceat(self.total[order], index))

    def per_edge(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Pairs (k, 2), faces and mean affinity in [0, 1] of each pair, over all bins."""
        done = self.reduced()
        if len(done.a) == 0:
            return np.zeros((0, 2), np.uint64), np.zeros(0, np.int64), np.zeros(0, np.float32)
        start = np.ones(len(done.a), bool)
        start[1:] = (done.a[1:] != done.a[:-1]) | (done.b[1:] != done.b[:-1])
        index = np.flatnonzero(start)
        faces = np.add.reduceat(done.count, index)
        mean = np.add.reduceat(done.total, index) / np.maximum(faces, 1) / 255.0  # as build_rag
        return np.stack([done.a[index], done.b[index]], axis=1), faces, mean.astype(np.float32)


@dataclass
class NodeStats:
    """Per-supervoxel size, bounding box (z0, y0, x0, z1, y1, x1; end exclusive) and the sum of
    voxel coordinates (centroid = sum / size), from one block or more."""

    ids: np.ndarray
    size: np.ndarray
    lo: np.ndarray  # (N, 3)
    hi: np.ndarray  # (N, 3)
    coord_sum: np.ndarray  # (N, 3) float64

    @classmethod
    def concatenate(cls, parts: Iterable["NodeStats"]) -> "NodeStats":
        parts = list(parts)
        if not parts:
            return cls(np.zeros(0, np.uint64), np.zeros(0, np.int64), np.zeros((0, 3), np.int64),
                       np.zeros((0, 3), np.int64), np.zeros((0, 3)))
        return cls(*(np.concatenate([getattr(p, f.name) for p in parts]) for f in fields(cls)))

    def reduced(self) -> "NodeStats":
        ids, inverse = np.unique(self.ids, return_inverse=True)
        n = len(ids)
        size = np.bincount(inverse, weights=self.size, minlength=n).astype(np.int64)
        lo = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
        hi = np.zeros((n, 3), np.int64)
        coord = np.zeros((n, 3))
        for axis in range(3):
            np.minimum.at(lo[:, axis], inverse, self.lo[:, axis])
            np.maximum.at(hi[:, axis], inverse, self.hi[:, axis])
            coord[:, axis] = np.bincount(inverse, weights=self.coord_sum[:, axis], minlength=n)
        return NodeStats(ids, size, lo, hi, coord)


def compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` as small integers (0 stays 0) in the order of the ids, and the id of each
    (``ids[k]`` for ``k``): comparing and packing them is several times faster than comparing
    uint64 ids. Ids up to a few times the block's size (supervoxels and fragments numbered
    from 1) are only narrowed; others are renumbered, and ``ids`` lists those present."""
    flat = labels.reshape(-1)
    top = int(flat.max(initial=0))
    if top < min(4 * flat.size + 65536, 2 ** 27 - 1):  # (contact keys pack 2 x 27 bits)
        narrow = np.uint16 if top < 2 ** 16 else np.uint32
        return labels.astype(narrow), np.arange(top + 1, dtype=np.uint64)
    compact, mapping = fastremap.renumber(labels, in_place=False, preserve_zero=True)
    found = np.array(sorted(mapping.items()), np.uint64).reshape(-1, 2)
    if len(found) == 0 or found[0, 0] != 0:  # no background in the block
        found = np.concatenate([np.zeros((1, 2), np.uint64), found])
    rank = np.zeros(int(found[:, 1].max()) + 1, np.uint32)
    rank[found[:, 1].astype(np.int64)] = np.arange(len(found), dtype=np.uint32)
    return rank[compact], found[:, 0]


def block_contacts(labels: np.ndarray, affinities: np.ndarray,
                   lower: Sequence[int]) -> Contacts:
    """Contacts between ``labels[v]`` and ``labels[v - e_c]`` for every voxel v of the block.

    ``labels`` covers the block plus ``lower[c]`` (>= 0) voxels before it along each axis, so
    faces on a block's lower side are counted by that block and by no other. ``affinities``
    (uint8, C >= 3) covers the block only.

    Every face becomes one int64 key (pair of compact labels, uint8 affinity) and one sort
    counts them all: no per-edge Python objects. Faces are found on the flat array, where the
    voxel before v along axis c is v - stride[c]; faces that wrap around a row or reach out of
    the block are masked off before they are gathered.
    """
    compact, ids = compact_labels(labels)
    n = len(ids)
    if n >= 2 ** 27:
        raise ValueError(f"a block of {n} supervoxels is too large for packed contact keys")
    shape = compact.shape
    flat = compact.reshape(-1)
    if any(lower):  # affinities padded to the labels' shape: a face's voxel indexes both
        padded = np.zeros((3,) + shape, np.uint8)
        padded[(slice(None),) + tuple(slice(l, None) for l in lower)] = affinities[:3]
        affinities = padded
    values_of = np.ascontiguousarray(affinities[:3]).reshape(3, -1)
    strides = (shape[1] * shape[2], shape[2], 1)
    keys = []
    for c in range(3):
        step = strides[c]
        if shape[c] < 2:
            continue
        differs = np.zeros(flat.size, bool)  # at the voxel before the face, v - e_c
        np.not_equal(flat[step:], flat[:-step], out=differs[:-step])
        grid = differs.reshape(shape)
        for d in range(3):  # v = before + e_c must lie in the block, after its margin
            first = max(lower[d] - (d == c), 0)
            grid[(slice(None),) * d + (slice(0, first),)] = False
        grid[(slice(None),) * c + (slice(shape[c] - 1, None),)] = False
        before = np.flatnonzero(differs)
        a, b = flat[before + step], flat[before]
        touching = (a != 0) & (b != 0)
        if not touching.any():
            continue
        before = before[touching]
        a, b = a[touching].astype(np.int64), b[touching].astype(np.int64)
        values = values_of[c][before + step].astype(np.int64)
        keys.append(((np.minimum(a, b) * n + np.maximum(a, b)) << 8) | values)
    if not keys:
        return Contacts.empty()
    unique, faces = np.unique(np.concatenate(keys), return_counts=True)
    values = unique & 255
    row = (unique >> 8) * BINS + values // BIN_WIDTH  # (pair, bin): runs of equal rows
    start = np.ones(len(row), bool)
    start[1:] = row[1:] != row[:-1]
    index = np.flatnonzero(start)
    row = row[index]
    pair = row // BINS
    return Contacts(ids[pair // n], ids[pair % n], (row % BINS).astype(np.uint8),
                    np.add.reduceat(faces, index).astype(np.int64),
                    np.add.reduceat(faces * values, index).astype(np.int64))


def block_node_stats(labels: np.ndarray, origin: Sequence[int]) -> NodeStats:
    """Node statistics of one block; ``origin`` is its first voxel in the volume (z, y, x).

    From the runs of equal labels along x (a few per object and row, far fewer than voxels):
    sizes and coordinate sums are run lengths added up, bounding boxes the runs' extremes.
    """
    compact, ids = compact_labels(labels)
    n = len(ids)
    depth, height, width = labels.shape
    if compact.size == 0:
        return NodeStats.concatenate([])
    rows = compact.reshape(-1, width)
    change = np.ones(rows.shape, bool)
    change[:, 1:] = rows[:, 1:] != rows[:, :-1]
    starts = np.flatnonzero(change)
    label = rows.reshape(-1)[starts].astype(np.int64)
    length = np.diff(np.append(starts, rows.size))
    row, x = np.divmod(starts, width)
    z, y = np.divmod(row, height)
    keep = label != 0
    label, length, x, y, z = label[keep], length[keep], x[keep], y[keep], z[keep]
    size = np.bincount(label, weights=length, minlength=n).astype(np.int64)
    coord = np.zeros((n, 3))
    lo = np.full((n, 3), np.iinfo(np.int64).max, np.int64)
    hi = np.full((n, 3), np.iinfo(np.int64).min, np.int64)
    for axis, (first, last) in enumerate([(z, z), (y, y), (x, x + length - 1)]):
        along = first * length if axis < 2 else length * x + length * (length - 1) // 2
        coord[:, axis] = np.bincount(label, weights=along, minlength=n) + origin[axis] * size
        np.minimum.at(lo[:, axis], label, first)
        np.maximum.at(hi[:, axis], label, last)
    keep = np.flatnonzero(size > 0)
    keep = keep[keep > 0]
    return NodeStats(ids[keep], size[keep], lo[keep] + np.asarray(origin, np.int64),
                     hi[keep] + 1 + np.asarray(origin, np.int64), coord[keep])


@dataclass
class Rag:
    ids: np.ndarray  # (N,) uint64, ascending
    size: np.ndarray  # (N,) voxels
    bbox: np.ndarray  # (N, 6) int64: z0, y0, x0, z1, y1, x1
    centroid: np.ndarray  # (N, 3) float32, z, y, x voxels
    edges: np.ndarray  # (E, 2) uint64, a < b, sorted
    area: np.ndarray  # (E,) faces
    mean: np.ndarray  # (E,) float32 mean affinity
    quantiles: np.ndarray  # (E, 3) float32 affinity quantiles 10 / 50 / 90 %
    hist_edge: np.ndarray  # sparse histograms: edge row, bin (0..63), faces, affinity sum
    hist_bin: np.ndarray
    hist_count: np.ndarray
    hist_total: np.ndarray

    @property
    def num_nodes(self) -> int:
        return len(self.ids)

    @property
    def num_edges(self) -> int:
        return len(self.edges)

    def node_index(self, ids: np.ndarray | Sequence[int]) -> np.ndarray:
        """Row of each id in the node arrays; -1 where the id is not a node."""
        return rows_of(self.ids, ids)

    def edge_index(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges as rows into the node arrays (a, b)."""
        return self.node_index(self.edges[:, 0]), self.node_index(self.edges[:, 1])

    def save(self, path: Path) -> None:
        tmp = Path(path).with_name(Path(path).name + ".tmp.npz")
        np.savez(tmp, **{f.name: getattr(self, f.name) for f in fields(self)})
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path, histograms: bool = True) -> "Rag":
        """``histograms=False`` leaves the per-edge histograms out: a proofreading session does
        not need them, and they are most of the file."""
        with np.load(path, allow_pickle=False) as data:
            return cls(**{f.name: data[f.name] if histograms or not f.name.startswith("hist")
                          else np.zeros(0, data[f.name].dtype) for f in fields(cls)})

    def contacts(self) -> Contacts:
        return Contacts(self.edges[self.hist_edge, 0], self.edges[self.hist_edge, 1],
                        self.hist_bin, self.hist_count, self.hist_total)

    def node_stats(self) -> NodeStats:
        coord = self.centroid.astype(np.float64) * self.size[:, None]
        return NodeStats(self.ids, self.size, self.bbox[:, :3], self.bbox[:, 3:], coord)

    def divided(self, supervoxel: int, patch: "Rag") -> "Rag":
        """This graph with ``supervoxel`` replaced by the pieces of a division (``patch``: the
        pieces as nodes, all their contacts as edges). Exact: histograms just add."""
        contacts = self.contacts()
        old = np.uint64(supervoxel)
        keep = (contacts.a != old) & (contacts.b != old)
        kept = Contacts(contacts.a[keep], contacts.b[keep], contacts.bin[keep],
                        contacts.count[keep], contacts.total[keep])
        stats = self.node_stats()
        others = stats.ids != old
        stats = NodeStats(stats.ids[others], stats.size[others], stats.lo[others],
                          stats.hi[others], stats.coord_sum[others])
        return build_rag(NodeStats.concatenate([stats, patch.node_stats()]),
                         Contacts.concatenate([kept, patch.contacts()]))

    def relabelled(self, mapping: dict[int, int] | np.ndarray) -> "Rag":
        """The RAG of the volume with supervoxels merged by ``mapping`` (old id -> new id, as a
        dict or as an array aligned with ``ids``). Exact: histograms and sums just add."""
        new_ids = np.asarray(mapping, np.uint64) if not isinstance(mapping, dict) else \
            np.array([mapping.get(int(i), int(i)) for i in self.ids], np.uint64)
        return build_rag(*merged_parts(self.node_stats(), self.contacts(), new_ids))


def merged_parts(stats: NodeStats, contacts: Contacts, new_ids: np.ndarray
                 ) -> tuple[NodeStats, Contacts]:
    """Node statistics and contacts (``stats.ids`` sorted, as ``reduced`` leaves them) with
    node ``stats.ids[k]`` renamed ``new_ids[k]``: the parts of the merged graph, for
    ``build_rag``. Contacts within a merged node are dropped."""
    lookup_a = new_ids[rows_of(stats.ids, contacts.a)]
    lookup_b = new_ids[rows_of(stats.ids, contacts.b)]
    keep = lookup_a != lookup_b
    merged = Contacts(np.minimum(lookup_a, lookup_b)[keep], np.maximum(lookup_a,
                      lookup_b)[keep], contacts.bin[keep], contacts.count[keep],
                      contacts.total[keep])
    return NodeStats(new_ids, stats.size, stats.lo, stats.hi, stats.coord_sum), merged


def build_rag(stats: NodeStats, contacts: Contacts) -> Rag:
    """Reduce block contributions into the graph."""
    stats = stats.reduced()
    contacts = contacts.reduced()
    if len(contacts.a):
        new_edge = np.ones(len(contacts.a), bool)
        new_edge[1:] = (contacts.a[1:] != contacts.a[:-1]) | (contacts.b[1:] != contacts.b[:-1])
        starts = np.flatnonzero(new_edge)
        edge_of_row = np.cumsum(new_edge) - 1
        edges = np.stack([contacts.a[starts], contacts.b[starts]], axis=1)
    else:
        starts = np.zeros(0, np.int64)
        edge_of_row = np.zeros(0, np.int64)
        edges = np.zeros((0, 2), np.uint64)
    count = contacts.count
    area = np.add.reduceat(count, starts) if len(starts) else np.zeros(0, np.int64)
    weighted = np.add.reduceat(contacts.total, starts) if len(starts) else np.zeros(0, np.int64)
    mean = (weighted / np.maximum(area, 1) / 255.0).astype(np.float32)
    quantiles = histogram_quantiles(edge_of_row, contacts.bin, count, area, QUANTILES)
    size = np.maximum(stats.size, 1)
    return Rag(
        ids=stats.ids.astype(np.uint64), size=stats.size.astype(np.int64),
        bbox=np.concatenate([stats.lo, stats.hi], axis=1).astype(np.int64),
        centroid=(stats.coord_sum / size[:, None]).astype(np.float32),
        edges=edges.astype(np.uint64), area=area.astype(np.int64), mean=mean,
        quantiles=quantiles, hist_edge=edge_of_row.astype(np.int64),
        hist_bin=contacts.bin.astype(np.uint8), hist_count=count.astype(np.int64),
        hist_total=contacts.total.astype(np.int64))


def histogram_quantiles(row_edge: np.ndarray, bins: np.ndarray, counts: np.ndarray,
                        area: np.ndarray, qs: Sequence[float]) -> np.ndarray:
    """Quantiles (as affinities in [0, 1]) of sparse histograms sorted by (edge, bin)."""
    result = np.zeros((len(area), len(qs)), np.float32)
    if len(row_edge) == 0:
        return result
    cumulative = np.cumsum(counts)
    before = np.concatenate([[0], cumulative])[np.searchsorted(row_edge, np.arange(len(area)))]
    within = cumulative - before[row_edge]
    for j, q in enumerate(qs):
        reached = np.flatnonzero(within >= q * area[row_edge] - 1e-9)
        first_edge, first_row = np.unique(row_edge[reached], return_index=True)
        result[first_edge, j] = (bins[reached[first_row]] * BIN_WIDTH
                                 + (BIN_WIDTH - 1) / 2) / 255.0
    return result

