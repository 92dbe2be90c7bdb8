"""Minimum s-t cuts on small supervoxel subgraphs (PyMaxflow), with each side kept connected.

Nodes are 0..n-1 of a local subgraph. Unary terms tie nodes to the source (the segment being
shaped) or the sink; hard constraints are infinite ties. Pairwise capacities are what cutting an
edge costs, high where the affinity says "same object".
"""

from __future__ import annotations

from dataclasses import dataclass

import maxflow
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, shortest_path

HARD = 1e9


@dataclass
class CutProblem:
    n: int
    a: np.ndarray  # edge ends, local node indices
    b: np.ndarray
    capacity: np.ndarray  # cost of cutting each edge (>= 0)
    to_source: np.ndarray  # unary: cost of putting each node on the sink side
    to_sink: np.ndarray  # unary: cost of putting each node on the source side


def affinity_capacity(affinity: np.ndarray, area: np.ndarray, sharpness: float = 8.0
                      ) -> np.ndarray:
    """Cutting a contact costs its area, weighted steeply by how sure the affinity is that the
    two sides are one object (affinity 0.5 costs 1 per face, 0.9 costs e^3.2)."""
    return np.sqrt(area.astype(np.float64)) * np.exp(sharpness * (affinity.astype(np.float64)
                                                                  - 0.5))


def solve(problem: CutProblem) -> np.ndarray:
    """True for nodes on the source side of a minimum cut."""
    graph = maxflow.Graph[float](problem.n, len(problem.a))
    nodes = graph.add_nodes(problem.n)
    if len(problem.a):
        graph.add_edges(nodes[problem.a], nodes[problem.b], problem.capacity, problem.capacity)
    graph.add_grid_tedges(nodes, problem.to_source, problem.to_sink)
    graph.maxflow()
    return ~graph.get_grid_segments(nodes)  # get_grid_segments: True means the sink side


def connect_terminals(problem: CutProblem, terminals: np.ndarray) -> list[int]:
    """CAVE-style path augmentation: make the edges along shortest paths (by cut cost) between
    same-side terminals uncuttable, so that side cannot be split between its own points.
    Returns the local edges it made uncuttable."""
    hardened: list[int] = []
    if len(terminals) < 2 or len(problem.a) == 0:
        return hardened
    weight = 1.0 / (1.0 + problem.capacity)
    matrix = coo_matrix((np.concatenate([weight, weight]),
                         (np.concatenate([problem.a, problem.b]),
                          np.concatenate([problem.b, problem.a]))), shape=(problem.n, problem.n))
    _, predecessors = shortest_path(matrix.tocsr(), directed=False, indices=[terminals[0]],
                                    return_predecessors=True)
    lookup = {(int(x), int(y)): e for e, (x, y) in enumerate(zip(problem.a, problem.b))}
    for target in terminals[1:]:
        node = int(target)
        while predecessors[0, node] >= 0:
            previous = int(predecessors[0, node])
            edge = lookup.get((previous, node), lookup.get((node, previous)))
            if edge is not None:
                problem.capacity[edge] = HARD
                hardened.append(edge)
            node = previous
    return hardened


def keep_connected(side: np.ndarray, problem: CutProblem, sources: np.ndarray,
                   sinks: np.ndarray) -> np.ndarray:
    """Pieces of a side that do not touch its own terminals go to the other side."""
    side = side.copy()
    for wanted, terminals in ((True, sources), (False, sinks)):
        inside = np.flatnonzero(side == wanted)
        if len(inside) == 0 or len(terminals) == 0:
            continue
        keep = np.zeros(problem.n, bool)
        keep[inside] = True
        both = keep[problem.a] & keep[problem.b]
        graph = coo_matrix((np.ones(int(both.sum())), (problem.a[both], problem.b[both])),
                           shape=(problem.n, problem.n))
        _, component = connected_components(graph, directed=False)
        anchored = set(component[terminals].tolist())
        stray = inside[~np.isin(component[inside], list(anchored))]
        side[stray] = not wanted
    return side
