"""Exact k-nearest-neighbour search in float32, a block of queries at a time.

Distances come from matrix products (fast) and the chosen neighbours' are
recomputed from differences (no cancellation); a point can be excluded from
its own neighbours (leave-one-out training scores).
"""

import numpy as np


def _k_smallest(values, k):
    """Indices and values of the ``k`` smallest entries of each row, ascending.

    For small ``k`` repeated ``argmin`` (a vectorised pass) beats
    ``argpartition`` several times over on wide rows. The chosen entries of
    ``values`` are overwritten with ``+inf``.
    """
    n_rows = values.shape[0]
    idx = np.empty((n_rows, k), dtype=np.intp)
    chosen = np.empty((n_rows, k), dtype=values.dtype)
    if k > 8:
        # argpartition returns an index per entry (twice a float32 row): a
        # sixteenth of the rows at a time keeps that at half a row per row.
        step = max(1, n_rows // 16)
        for start in range(0, n_rows, step):
            part = values[start : start + step]
            rows = np.arange(part.shape[0])[:, None]
            part_idx = np.argpartition(part, k - 1, axis=1)[:, :k]
            part_values = part[rows, part_idx]
            order = np.argsort(part_values, axis=1)
            idx[start : start + step] = np.take_along_axis(part_idx, order, 1)
            chosen[start : start + step] = np.take_along_axis(part_values, order, 1)
            part[rows, part_idx] = np.inf
        return idx, chosen
    rows = np.arange(n_rows)
    for j in range(k):
        idx[:, j] = np.argmin(values, axis=1)
        chosen[:, j] = values[rows, idx[:, j]]
        values[rows, idx[:, j]] = np.inf
    return idx, chosen


def brute_force_kneighbors(queries, gallery, k, *, exclude_self=False, working_memory_mb=256):
    """Exact k nearest neighbours by chunked float32 matrix products.

    ``||q - g||^2 = ||q||^2 + ||g||^2 - 2 q.g``; the first term does not change
    which ``g`` is nearest, so only ``s = ||g||^2 / 2 - q.g`` is ranked, from one
    matrix product per chunk of queries. In float32 that expanded form can
    misorder near-ties by cancellation, so it only proposes candidates: the
    ``k`` best and, for the queries whose next value is within the worst-case
    rounding error of ``s``, every gallery row that close. The distances of
    the candidates are recomputed from the differences, which is accurate, and
    the ``k`` nearest of them are kept (ties go to the lower index). Chunks are
    sized so that the similarity block and the buffers and temporaries of one
    chunk stay within about ``working_memory_mb``.

    Parameters
    ----------
    queries, gallery : ndarray of float32, shapes (n_queries, d) and (n_gallery, d)
    k : int
    exclude_self : bool
        ``queries`` is ``gallery``; row ``i`` may not return index ``i``.
    working_memory_mb : float
        Upper bound on the working buffers of one chunk.

    Returns
    -------
    squared_distances : ndarray of shape (n_queries, k), ascending
    indices : ndarray of shape (n_queries, k)
    """
    n_queries = queries.shape[0]
    n_gallery, n_features = gallery.shape
    half_norms = 0.5 * np.einsum("ij,ij->i", gallery, gallery)
    # Rounding error of s is at most gamma * (||g||^2 / 2 + ||q|| ||g||) for
    # float32 dot products of length d (Higham's gamma_n = n u / (1 - n u)),
    # the 4 extra terms covering the subtraction; float32 squared norms are at
    # most a factor (1 - gamma) below the truth.
    unit = float(np.finfo(np.float32).eps) / 2
    gamma = (n_features + 4) * unit / (1 - (n_features + 4) * unit)
    max_half_norm = float(half_norms.max(initial=0.0)) / (1 - gamma)
    max_norm = np.sqrt(2 * max_half_norm)
    # Memory per query row of a chunk: a row of the similarity block (4 N
    # bytes), plus an eighth of a row for each of the gather buffer and the
    # gathered queries (4 d bytes each) and for the copy and mask of unsure
    # rows (5 N bytes), which also covers the selection's temporaries.
    row_bytes = 4 * n_gallery + (8 * n_features + 5 * n_gallery) / 8
    chunk = max(1, min(n_queries, int(working_memory_mb * 2**20 // max(row_bytes, 1))))
    batch = max(1, chunk // 8)
    indices = np.empty((n_queries, k), dtype=np.intp)
    squared = np.empty((n_queries, k), dtype=np.float32)
    block = np.empty((chunk, n_gallery), dtype=np.float32)
    buffer = np.empty((batch, n_features), dtype=np.float32)

    def squared_distances(chunk_queries, cols, rows=None):
        """``||q[i] - gallery[cols[i]]||^2`` (``q[rows[i]]`` with ``rows``), batch by batch."""
        result = np.empty(len(cols), dtype=np.float32)
        for begin in range(0, len(cols), batch):
            end = min(begin + batch, len(cols))
            diff = buffer[: end - begin]
            np.take(gallery, cols[begin:end], axis=0, out=diff)
            diff -= chunk_queries[begin:end] if rows is None else chunk_queries[rows[begin:end]]
            result[begin:end] = np.einsum("ij,ij->i", diff, diff)
        return result

    for start in range(0, n_queries, chunk):
        stop = min(start + chunk, n_queries)
        n_rows = stop - start
        chunk_queries = queries[start:stop]
        out = block[:n_rows]
        np.matmul(chunk_queries, gallery.T, out=out)
        np.subtract(half_norms, out, out=out)
        if exclude_self:
            out[np.arange(n_rows), np.arange(start, stop)] = np.inf
        best, best_values = _k_smallest(out, k)  # ``best`` entries of ``out`` are now inf
        query_norms = np.sqrt(np.einsum("ij,ij->i", chunk_queries, chunk_queries) / (1 - gamma))
        tolerance = gamma * (max_half_norm + query_norms * max_norm)
        limit = (best_values[:, -1] + 2 * tolerance).astype(np.float32)
        # Round up, and keep excluded (infinite) entries out even at an infinite limit.
        limit = np.minimum(np.nextafter(limit, np.float32(np.inf)), np.finfo(np.float32).max)
        # Candidate (query row, gallery row) pairs: the k best of every row,
        # then whatever else is within the limit on the rows where anything is.
        rows, cols = [np.tile(np.arange(n_rows), k)], [best.T.ravel()]
        pair_squared = [squared_distances(chunk_queries, best[:, j]) for j in range(k)]
        unsure = np.flatnonzero(out.min(axis=1) <= limit)
        for begin in range(0, unsure.size, batch):
            part = unsure[begin : begin + batch]
            part_rows, part_cols = np.nonzero(out[part] <= limit[part, None])
            rows.append(part[part_rows])
            cols.append(part_cols)
            pair_squared.append(squared_distances(chunk_queries, part_cols, rows=rows[-1]))
        rows, cols, pair_squared = map(np.concatenate, (rows, cols, pair_squared))
        order = np.lexsort((cols, pair_squared, rows))
        counts = np.bincount(rows, minlength=n_rows)
        pick = order[(np.cumsum(counts) - counts)[:, None] + np.arange(k)]
        indices[start:stop] = cols[pick]
        squared[start:stop] = pair_squared[pick]
    return squared, indices



# Queries re-ranked at a time: their gathered candidate rows (about this many
# bytes) stay in the CPU's cache instead of one block of every query's rows.
_RERANK_BLOCK_BYTES = 4 * 2**20


def _squared_to_candidates(queries, gallery, indices):
    """Exact squared distances of each query to its candidate rows ``gallery[indices[i]]``.

    Computed from differences (no cancellation), a block of queries at a
    time: for 10,000 queries with 16 candidates of 1280 features each, one
    block of all of them would be 0.8 GB and some 15 times slower.
    """
    n_queries, width = indices.shape
    per_query = max(1, width * gallery.shape[1] * gallery.itemsize)
    step = max(1, _RERANK_BLOCK_BYTES // per_query)
    squared = np.empty(indices.shape, dtype=np.result_type(queries, gallery))
    for start in range(0, n_queries, step):
        stop = min(start + step, n_queries)
        block = gallery[indices[start:stop].ravel()].reshape(stop - start, width, -1)
        block -= queries[start:stop, None, :]
        squared[start:stop] = np.einsum("qkd,qkd->qk", block, block)
    return squared


def _drop_self(indices, k):
    """Remove each row's own index (row ``i`` holds ``i`` at most once).

    When duplicates push a point out of its own candidate list, the farthest
    candidate is dropped instead.
    """
    n_rows = indices.shape[0]
    is_self = indices == np.arange(n_rows)[:, None]
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), indices.shape[1] - 1)
    keep = np.ones_like(indices, dtype=bool)
    keep[np.arange(n_rows), drop] = False
    return indices[keep].reshape(n_rows, -1)[:, :k]
