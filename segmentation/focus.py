"""Focused proofreading: yes/no questions about touching segments, most valuable first.

Each contact between two current segments is a question, "are these one neuron?". Its value
is the chance the answer is yes (the edge classifier's merge probability, on the segments as
they are now) times what a yes would repair: the bits of split that joining the two removes,
(a + b) log(a + b) - a log a - b log b for segments of a and b voxels. A yes merges them, a no
keeps them apart for good; either way the queue is ranked again, because a merge changes the
merged segment's contacts and sizes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import numpy as np

from segmentation.agglomerate import dense_histograms
from segmentation.edge_classifier import LearnedScore
from segmentation.rag import Rag

Pair = tuple[int, int]


@dataclass(frozen=True)
class Question:
    segments: Pair  # the two segments, smaller id first
    probability: float  # that they are one neuron
    value: float  # probability x bits a yes would repair (in voxel-weighted bits)


def merge_gain(size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """Voxel-weighted bits of split that joining two pieces of one neuron removes."""
    a, b = np.asarray(size_a, np.float64), np.asarray(size_b, np.float64)
    return (a + b) * np.log2(a + b) - a * np.log2(a) - b * np.log2(b)


def ranked_questions(rag: Rag, segment_of_node: np.ndarray, booster,
                     decided: Iterable[Pair] = (), within: Optional[Callable] = None,
                     limit: int = 50) -> list[Question]:
    """The ``limit`` most valuable undecided questions. ``segment_of_node`` is the current
    segment of every RAG node; ``within(segment_graph, a, b)`` may restrict the contacts asked
    about (e.g. to a region), as a boolean per contact."""
    graph = rag.relabelled(np.asarray(segment_of_node, np.uint64))
    if graph.num_edges == 0:
        return []
    hist = dense_histograms(graph)
    scorer = LearnedScore(booster)
    scorer.start(graph, hist)
    a, b = graph.edge_index()
    probability = 1.0 - scorer.scores(hist, np.arange(graph.num_edges), a, b)
    value = probability * merge_gain(graph.size[a], graph.size[b])
    if within is not None:
        value = np.where(within(graph, a, b), value, -1.0)
    done = {tuple(sorted(p)) for p in decided}
    questions = []
    for e in np.argsort(-value, kind="stable"):
        if value[e] < 0 or len(questions) == limit:
            break
        pair = (int(graph.ids[a[e]]), int(graph.ids[b[e]]))
        if pair not in done:
            questions.append(Question(pair, float(probability[e]), float(value[e])))
    return questions
