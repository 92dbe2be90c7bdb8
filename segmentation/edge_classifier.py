"""The learned merge decision: a gradient-boosted classifier on RAG edge features.

As GALA does, every feature comes from sums that add up when regions merge (contact
histograms, region sizes, each region's whole-boundary histogram), so a merged region's edges
are rescored without reading voxels. LightGBM scores a handful of edges in tens of
microseconds, which keeps the agglomeration loop as fast as the quantile one.

Training replays an agglomeration in which a ground-truth oracle forbids every wrong merge:
the classifier then sees edges of grown regions, as it will when it agglomerates.
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import scipy.sparse

from segmentation.agglomerate import Agglomeration, QuantileScore, agglomerate
from segmentation.errors import InputError
from segmentation.metrics import Contingency
from segmentation.rag import BINS, Rag

SHIPPED_EDGE_MODEL = Path(__file__).parent / "models" / "weights" / "edges_demo_v2.txt"
QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)
COARSE = 8  # histogram bins kept as features
CENTRES = (np.arange(BINS) + 0.5) / BINS
FEATURES = ([f"contact affinity q{int(q * 100)}" for q in QUANTILES] + ["contact affinity mean"]
            + [f"contact affinity fraction {i}/{COARSE}" for i in range(COARSE)]
            + ["log contact faces", "log smaller size", "log larger size",
               "contact / smaller size^(2/3)", "contact / smaller boundary",
               "contact / larger boundary", "smaller boundary median - contact median",
               "smaller boundary mean - contact mean", "larger boundary median - contact median",
               "larger boundary mean - contact mean"]
            + [f"{which} extent {axis}" for which in ("smaller", "larger") for axis in "zyx"]
            + ["centroid distance / smaller size^(1/3)",
               "centroid distance / larger size^(1/3)"])


def edge_features(contact: np.ndarray, size_a: np.ndarray, size_b: np.ndarray,
                  boundary_a: np.ndarray, boundary_b: np.ndarray, extent_a: np.ndarray,
                  extent_b: np.ndarray, distance: np.ndarray) -> np.ndarray:
    """(k, len(FEATURES)) from contact histograms (k, BINS), region sizes (k,), each region's
    whole-boundary histogram (k, BINS) and bounding-box extent (k, 3), and the distance of
    their centroids (k,); symmetric in a and b.

    The agglomeration calls this once per merge with a handful of rows, so the three
    histograms of a row (contact, smaller and larger region's boundary) go through each
    NumPy operation together: a few dozen calls whatever k is.
    """
    k = len(contact)
    a_smaller = (size_a <= size_b)
    first = a_smaller[:, None]
    stacked = np.concatenate([contact, np.where(first, boundary_a, boundary_b),
                              np.where(first, boundary_b, boundary_a)], dtype=np.float64)
    sums = stacked.sum(axis=1)
    total = np.maximum(sums, 1)
    cumulative = stacked.cumsum(axis=1)
    median = (cumulative < 0.5 * total[:, None]).sum(axis=1) / BINS
    mean = (stacked * CENTRES).sum(axis=1) / total
    small = np.where(a_smaller, size_a, size_b)
    large = np.where(a_smaller, size_b, size_a)
    faces = sums[:k]
    out = np.empty((k, len(FEATURES)))
    out[:, :5] = ((cumulative[:k] / total[:k, None])[:, :, None] < QUANTILES).sum(axis=1) / BINS
    out[:, 5] = mean[:k]
    out[:, 6:14] = stacked[:k].reshape(k, COARSE, BINS // COARSE).sum(axis=2) / total[:k, None]
    out[:, 14] = np.log1p(faces)
    out[:, 15] = np.log1p(small)
    out[:, 16] = np.log1p(large)
    out[:, 17] = faces / np.maximum(small, 1) ** (2 / 3)
    out[:, 18] = faces / total[k:2 * k]
    out[:, 19] = faces / total[2 * k:]
    out[:, 20] = median[k:2 * k] - median[:k]
    out[:, 21] = mean[k:2 * k] - mean[:k]
    out[:, 22] = median[2 * k:] - median[:k]
    out[:, 23] = mean[2 * k:] - mean[:k]
    out[:, 24:27] = np.where(first, extent_a, extent_b)
    out[:, 27:30] = np.where(first, extent_b, extent_a)
    out[:, 30] = distance / np.cbrt(np.maximum(small, 1))
    out[:, 31] = distance / np.cbrt(np.maximum(large, 1))
    return out


def row_predictor(booster) -> Callable[[np.ndarray], np.ndarray]:
    """``booster.predict(rows, num_threads=1)`` for the few rows of one merge: LightGBM's own C
    entry point (``LGBM_BoosterPredictForMat``) called directly, the same numbers without the
    Python around ``Booster.predict`` (copied parameters, input checks), which costs as much as
    the prediction itself at ~7 rows and is paid once per merge."""
    try:
        from lightgbm.basic import _LIB, _safe_call

        handle = booster._handle
    except (ImportError, AttributeError):  # another LightGBM: its public way
        return lambda rows: booster.predict(rows, num_threads=1)
    double_p = ctypes.POINTER(ctypes.c_double)
    parameters = ctypes.c_char_p(b"num_threads=1")
    float64, row_major, normal, first, every = (ctypes.c_int(v) for v in (1, 1, 0, 0, -1))

    def predict(rows: np.ndarray) -> np.ndarray:
        rows = np.ascontiguousarray(rows, np.float64)
        out = np.empty(len(rows))
        written = ctypes.c_int64(0)
        _safe_call(_LIB.LGBM_BoosterPredictForMat(
            handle, rows.ctypes.data_as(ctypes.c_void_p), float64, ctypes.c_int32(len(rows)),
            ctypes.c_int32(rows.shape[1]), row_major, normal, first, every, parameters,
            ctypes.byref(written), out.ctypes.data_as(double_p)))
        return out

    return predict


class LearnedScore:
    """Score = 1 - the classifier's merge probability, the regions' stats kept up to date."""

    rescores = "moved"  # (its scores depend on the regions; "all": 15x slower, no better)

    def __init__(self, booster, record: bool = False):
        self.booster = booster
        self.predict = row_predictor(booster) if booster is not None else None
        self.record = record
        self.rows: list[np.ndarray] = []  # features scored, when recording (training)
        self.pairs: list[np.ndarray] = []

    def start(self, rag: Rag, hist: np.ndarray) -> None:
        a, b = rag.edge_index()
        self.size = rag.size.astype(np.float64).copy()
        edges = np.arange(len(a))  # node x edge incidence, times the edge histograms
        incidence = scipy.sparse.csr_matrix(
            (np.ones(2 * len(a)), (np.r_[a, b], np.r_[edges, edges])),
            shape=(rag.num_nodes, len(a)))
        self.boundary = np.asarray(incidence @ hist.astype(np.float64))
        self.lo = rag.bbox[:, :3].astype(np.float64).copy()
        self.hi = rag.bbox[:, 3:].astype(np.float64).copy()
        self.coord_sum = rag.centroid.astype(np.float64) * self.size[:, None]

    def scores(self, hist: np.ndarray, edges: np.ndarray, a: np.ndarray,
               b: np.ndarray) -> np.ndarray:
        if len(edges) == 0:
            return np.zeros(0)
        distance = np.linalg.norm(self.coord_sum[a] / self.size[a, None]
                                  - self.coord_sum[b] / self.size[b, None], axis=1)
        features = edge_features(hist[edges], self.size[a], self.size[b], self.boundary[a],
                                 self.boundary[b], self.hi[a] - self.lo[a],
                                 self.hi[b] - self.lo[b], distance)
        if self.record:
            self.rows.append(features)
            self.pairs.append(np.stack([a, b], axis=1))
        if self.booster is None:  # recording only: the quantile order of the oracle replay
            return 1.0 - features[:, FEATURES.index("contact affinity q50")]
        return 1.0 - self.predict(features)

    def merged(self, keep: int, gone: int, edge: int, hist: np.ndarray) -> None:
        self.size[keep] += self.size[gone]
        self.coord_sum[keep] += self.coord_sum[gone]
        self.lo[keep] = np.minimum(self.lo[keep], self.lo[gone])
        self.hi[keep] = np.maximum(self.hi[keep], self.hi[gone])
        self.boundary[keep] += self.boundary[gone]
        if edge >= 0:  # the faces between them are no longer boundary
            self.boundary[keep] -= 2 * hist[edge]


def majority_labels(rag: Rag, table: Contingency) -> np.ndarray:
    """Each RAG node's ground-truth id of largest overlap (0: none), from a (ground truth,
    supervoxel) table."""
    supervoxels, truths = table.owners()
    labels = np.zeros(rag.num_nodes, np.uint64)
    rows = rag.node_index(supervoxels)
    found = rows >= 0
    labels[rows[found]] = truths[found]
    return labels


def training_set(rag: Rag, labels: np.ndarray, use: np.ndarray, booster=None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Features and same-neuron targets of the edges an oracle agglomeration meets: every
    merge of two ground-truth neurons forbidden, regions grown in quantile order. ``use``
    marks the nodes (e.g. of the training sections) whose edges become rows."""
    a, b = rag.edge_index()
    wrong = (labels[a] != labels[b]) | (labels[a] == 0)
    recorder = LearnedScore(booster, record=True)
    agglomerate(rag, [1.0], split_pairs=zip(rag.ids[a[wrong]].tolist(),
                                            rag.ids[b[wrong]].tolist()), score=recorder)
    rows, pairs = np.concatenate(recorder.rows), np.concatenate(recorder.pairs)
    # a region's label stays its first node's: the oracle only ever merges equal labels
    keep = use[pairs[:, 0]] & use[pairs[:, 1]]
    same = (labels[pairs[:, 0]] == labels[pairs[:, 1]]) & (labels[pairs[:, 0]] > 0)
    return rows[keep], same[keep]


def fit(rag: Rag, labels: np.ndarray, use: np.ndarray, epochs: int = 2, trees: int = 100):
    """Train, then replay in the trained classifier's own order and train again on all rows
    so far (GALA's epochs): it learns the regions its own merges make."""
    features, targets = training_set(rag, labels, use)
    booster = train(features, targets, trees)
    for _ in range(1, epochs):
        more, more_targets = training_set(rag, labels, use, booster)
        features = np.concatenate([features, more])
        targets = np.concatenate([targets, more_targets])
        booster = train(features, targets, trees)
    return booster


def train(features: np.ndarray, targets: np.ndarray, trees: int = 100, leaves: int = 31,
          seed: int = 0, init=None):
    """A LightGBM booster predicting P(same neuron); with ``init``, that booster with
    ``trees`` more trees fitted to these rows (what it knew stays)."""
    import lightgbm

    if len(np.unique(targets)) < 2:
        raise InputError("the edge classifier needs both merges and non-merges to learn from")
    params = {"objective": "binary", "num_leaves": leaves, "learning_rate": 5.0 / trees,
              "seed": seed, "deterministic": True, "num_threads": 2, "verbose": -1}
    return lightgbm.train(params, lightgbm.Dataset(features, targets.astype(np.float64)),
                          num_boost_round=trees, init_model=init)


def save(booster, path: Path, metadata: dict) -> None:
    """LightGBM's text model, and the features and training facts beside it (JSON)."""
    path = Path(path)
    booster.save_model(str(path))
    path.with_suffix(".json").write_text(json.dumps({"features": FEATURES, **metadata},
                                                    indent=2))


def load(path: Path):
    import lightgbm

    path = Path(path)
    if not path.is_file():
        raise InputError(f"no edge classifier at {path}")
    meta = path.with_suffix(".json")
    if meta.is_file() and json.loads(meta.read_text()).get("features") != FEATURES:
        raise InputError(f"{path} was trained on other features than this version computes")
    return lightgbm.Booster(model_file=str(path))


def merge_score(edge_model: Optional[Path], quantile: float = 0.5):
    """The agglomeration's score: the classifier saved at ``edge_model``, or (None) one minus
    the affinity quantile."""
    return QuantileScore(quantile) if edge_model is None else LearnedScore(load(edge_model))


def agglomerate_learned(rag: Rag, booster, thresholds, merge_pairs=(), split_pairs=(),
                        ) -> Agglomeration:
    """Merge in order of the classifier's probability; thresholds are 1 - P(same)."""
    return agglomerate(rag, thresholds, merge_pairs=merge_pairs, split_pairs=split_pairs,
                       score=LearnedScore(booster))

