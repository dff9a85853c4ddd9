"""Minimum-cost linear assignment with a cost limit, in numpy (no scipy needed).

The tracker's matrices are small (tracks × detections, tens each), but crowds and grappling
persons make greedy IoU matching swap identities, so the assignment must be optimal.

:func:`linear_assignment` has the semantics of ``lap.lapjv(cost, extend_cost=True,
cost_limit=L)`` that ByteTrack uses: leaving a row or a column unmatched costs ``L / 2``, so
a pair is matched only when that lowers the total, and never when its cost exceeds ``L``.
The problem is first cut into independent blocks (connected components of the pairs
cheaper than ``L``); each block is solved exactly by the shortest-augmenting-path Hungarian
method (Kuhn–Munkres with potentials, O(n³)) on the block extended with the "unmatched"
dummies.
"""

from __future__ import annotations

import numpy as np

_BIG = 1e9  # stands for "forbidden"; finite so the potentials stay finite


def solve_square(cost: np.ndarray) -> np.ndarray:
    """Optimal assignment of a square cost matrix: ``col_of_row[i]`` for each row ``i``.

    Shortest augmenting paths with row/column potentials (the classic Hungarian method in
    its O(n³) form); the inner scan over columns is vectorised.
    """
    n = cost.shape[0]
    if n == 0:
        return np.zeros(0, np.int64)
    # 1-based columns with a virtual column 0, as in the textbook formulation.
    u = np.zeros(n + 1)
    v = np.zeros(n + 1)
    row_of_col = np.zeros(n + 1, np.int64)   # p[j]: row (1-based) assigned to column j, 0 = none
    way = np.zeros(n + 1, np.int64)
    for i in range(1, n + 1):
        row_of_col[0] = i
        j0 = 0
        minv = np.full(n + 1, np.inf)
        used = np.zeros(n + 1, bool)
        while True:
            used[j0] = True
            i0 = row_of_col[j0]
            free = ~used
            free[0] = False
            reduced = cost[i0 - 1] - u[i0] - v[1:]
            better = free[1:] & (reduced < minv[1:])
            minv[1:][better] = reduced[better]
            way[1:][better] = j0
            candidates = np.where(free[1:], minv[1:], np.inf)
            j1 = int(np.argmin(candidates)) + 1
            delta = candidates[j1 - 1]
            u[row_of_col[used]] += delta
            v[used] -= delta
            minv[free] -= delta
            j0 = j1
            if row_of_col[j0] == 0:
                break
        while j0:  # flip the augmenting path
            j1 = way[j0]
            row_of_col[j0] = row_of_col[j1]
            j0 = j1
    col_of_row = np.empty(n, np.int64)
    col_of_row[row_of_col[1:] - 1] = np.arange(n)
    return col_of_row


def _components(feasible: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Connected components of the bipartite graph of feasible pairs (rows, cols)."""
    n_rows, n_cols = feasible.shape
    parent = list(range(n_rows + n_cols))

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for r, c in zip(*np.nonzero(feasible)):
        ra, rb = find(int(r)), find(n_rows + int(c))
        if ra != rb:
            parent[ra] = rb
    groups: dict[int, tuple[list[int], list[int]]] = {}
    for r in range(n_rows):
        if feasible[r].any():
            groups.setdefault(find(r), ([], []))[0].append(r)
    for c in range(n_cols):
        if feasible[:, c].any():
            groups.setdefault(find(n_rows + c), ([], []))[1].append(c)
    return [(np.asarray(rs, np.int64), np.asarray(cs, np.int64)) for rs, cs in groups.values()]


def linear_assignment(cost: np.ndarray, cost_limit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Matches rows to columns minimising total cost; unmatched rows/cols cost ``cost_limit/2``.

    Returns ``(matches int64[K, 2] of (row, col), unmatched_rows, unmatched_cols)``, each
    sorted. Entries that are NaN or above ``cost_limit`` are never matched.
    """
    cost = np.asarray(cost, np.float64)
    n_rows, n_cols = cost.shape
    feasible = np.isfinite(cost) & (cost <= cost_limit)
    matches: list[tuple[int, int]] = []
    for rows, cols in _components(feasible):
        if rows.size == 1 and cols.size == 1:
            matches.append((int(rows[0]), int(cols[0])))  # the only pair, and it is feasible
            continue
        block = cost[np.ix_(rows, cols)]
        block = np.where(feasible[np.ix_(rows, cols)], block, _BIG)
        r, c = block.shape
        # [[C, row-dummies], [col-dummies, 0]]: a row matched to its dummy stays unmatched.
        ext = np.full((r + c, r + c), _BIG)
        ext[:r, :c] = block
        ext[:r, c:][np.arange(r), np.arange(r)] = cost_limit / 2
        ext[r:, :c][np.arange(c), np.arange(c)] = cost_limit / 2
        ext[r:, c:] = 0.0
        col_of_row = solve_square(ext)
        for i in range(r):
            j = int(col_of_row[i])
            if j < c and block[i, j] < _BIG:
                matches.append((int(rows[i]), int(cols[j])))
    matches.sort()
    m = np.asarray(matches, np.int64).reshape(-1, 2)
    unmatched_rows = np.setdiff1d(np.arange(n_rows), m[:, 0])
    unmatched_cols = np.setdiff1d(np.arange(n_cols), m[:, 1])
    return m, unmatched_rows, unmatched_cols
