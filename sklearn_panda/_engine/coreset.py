"""PatchCore's memory-bank subsampling: a greedy k-center coreset on a random projection.

Roth et al., "Towards Total Recall in Industrial Anomaly Detection" (CVPR 2022),
keep a small subset of the normal patch features whose nearest-neighbour
distances approximate those to the whole set: start from one random feature,
then repeatedly add the feature farthest from everything chosen so far (the
greedy 2-approximation of the k-center problem). Distances are taken on a
random Gaussian projection of the features (a Johnson-Lindenstrauss map) to a
few dimensions, which keeps each step, one pass over all features, cheap.

For many features (millions of patches of large images) the exact selection
costs ``n_samples x n_select`` distances, which grows with the square of the
data; :class:`StreamingCoreset` selects in two stages whose cost grows
linearly, and never holds all the features at once.

Pure torch, so that the selection runs where the features are (a GPU when
the detector has one); no estimator code.
"""

import contextlib
import math

import torch


def random_projection(n_features, projection_dim, generator):
    """The ``(n_features, projection_dim)`` Gaussian projection, or ``None`` where it would not reduce."""
    if projection_dim is None or projection_dim >= n_features:
        return None
    return torch.randn(n_features, projection_dim, generator=generator) / math.sqrt(projection_dim)


def greedy_coreset(features, n_select, *, projection_dim=128, generator=None):
    """Indices of ``n_select`` rows of ``features`` chosen by greedy k-center selection.

    Parameters
    ----------
    features : Tensor of shape (n_samples, n_features), float32
    n_select : int
        How many rows to keep, 1 to ``n_samples``.
    projection_dim : int or None, default=128
        Dimension of the random Gaussian projection the distances are taken
        on (PatchCore's 128); ``None`` or at least ``n_features`` keeps the
        features as they are.
    generator : torch.Generator or None
        A CPU generator: the projection and the first row come from it alone.

    Returns
    -------
    indices : Tensor of shape (n_select,), int64, on ``features``' device
        In the order they were chosen; distinct.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.coreset import greedy_coreset
    >>> points = torch.tensor([[0.0, 0.0], [0.1, 0.0], [5.0, 5.0], [10.0, 0.0]])
    >>> sorted(greedy_coreset(points, 3, generator=torch.Generator().manual_seed(0)).tolist())
    [0, 2, 3]
    """
    n_samples, n_features = features.shape
    if not 1 <= n_select <= n_samples:
        raise ValueError(f"n_select must be between 1 and {n_samples}; got {n_select}.")
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    reduced = features.float()
    projection = random_projection(n_features, projection_dim, generator)
    if projection is not None:
        reduced = reduced @ projection.to(features.device)
    first = int(torch.randint(n_samples, (1,), generator=generator))
    return _lazy_greedy(reduced, n_select, first).to(features.device)


def _half_squared_distances(rows, half_norms, centers, center_half_norms):
    """``||x - c||^2 / 2`` between each row and each centre: ``(n_rows, n_centers)``."""
    distances = torch.mm(rows, centers.T).neg_()
    return distances.add_(half_norms[:, None]).add_(center_half_norms[None, :])


def _lazy_greedy(points, n_select, first, block_size=256, n_candidates=2048, chunk_rows=65536, progress=None):
    """Exact greedy k-center selection from ``first`` (a row index, or a list of rows chosen
    already), with the distance updates batched.

    Plain greedy selection updates every point's distance to the chosen set
    after each pick: one matrix-vector product over all points per pick, which
    a CPU runs at memory speed. Here the update waits for a block of picks and
    is then one matrix product (compute speed). Within a block, the next pick
    is still exact: a point's true distance is the smaller of its distance
    before the block (``nearest``, exact) and its distances to the block's
    picks, and true <= nearest, so it is enough to look at the points with the
    largest ``nearest`` in turn: once the best true distance found is at least
    the ``nearest`` of every point not looked at, it is the maximum. When the
    candidates looked at cannot decide that, the block ends early.
    ``progress(n_chosen, n_select)`` is called after each block.
    """
    n_samples = points.shape[0]
    half_norms = 0.5 * (points * points).sum(dim=1)
    nearest = torch.full((n_samples,), float("inf"), device=points.device)
    chosen = [first] if isinstance(first, int) else list(first)
    block = list(chosen)
    n_candidates = min(n_candidates, n_samples - 1)
    while True:
        # Fold the block's picks into ``nearest``, a chunk of rows and of picks at a time (the rows
        # chosen before, given in ``first``, can be many: a chunk_rows x block_size matrix at most).
        for begin in range(0, len(block), block_size):
            centers = points[block[begin : begin + block_size]]
            center_half_norms = half_norms[block[begin : begin + block_size]]
            for start in range(0, n_samples, chunk_rows):
                stop = min(start + chunk_rows, n_samples)
                block_distances = _half_squared_distances(
                    points[start:stop], half_norms[start:stop], centers, center_half_norms
                )
                torch.minimum(nearest[start:stop], block_distances.min(dim=1).values, out=nearest[start:stop])
        # A chosen point is never a candidate again, whatever the rounding of its distance to itself.
        nearest[block] = -float("inf")
        if progress is not None:
            progress(len(chosen), n_select)
        if len(chosen) == n_select:
            return torch.tensor(chosen, dtype=torch.int64)
        block = []
        # The candidates: the points farthest from the chosen set, and the next
        # one's distance, which bounds every point not among them.
        top_values, top_indices = torch.topk(nearest, n_candidates + 1)
        candidates, bound = top_indices[:-1], float(top_values[-1])
        candidate_points, candidate_half_norms = points[candidates], half_norms[candidates]
        true_distances = top_values[:-1].clone()
        with _one_thread(points.device):
            _pick_block(candidates, candidate_points, candidate_half_norms, true_distances, bound, points, half_norms,
                        chosen, block, n_select, block_size)


@contextlib.contextmanager
def _one_thread(device):
    """Torch's CPU operations on one thread meanwhile: the picks' small vector operations
    cost more to hand to a thread pool than to run (measured, 2 cores: 655 picks among
    16,384 rows in 0.2 s on one thread, 6.8 s on two while another process ran)."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _pick_block(candidates, candidate_points, candidate_half_norms, true_distances, bound, points, half_norms,
                chosen, block, n_select, block_size):
    """Picks among the candidates, appended to ``chosen`` and ``block``, while they are exact."""
    while len(chosen) < n_select and len(block) < block_size:
        best = int(torch.argmax(true_distances))
        # ``bound`` is -inf when every point outside the candidates is chosen already.
        if float(true_distances[best]) < bound:
            break  # a point outside the candidates may be farther: update everything first
        pick = int(candidates[best])
        chosen.append(pick)
        block.append(pick)
        # A matrix-vector product: a (n, d) x (d, 1) matrix product costs a thread
        # pool's start per call (milliseconds on a busy CPU, against microseconds).
        to_pick = torch.mv(candidate_points, points[pick]).neg_()
        to_pick.add_(candidate_half_norms).add_(half_norms[pick])
        torch.minimum(true_distances, to_pick, out=true_distances)
        true_distances[best] = -float("inf")


class StreamingCoreset:
    """A greedy k-center coreset of rows that arrive in batches, chosen in two stages.

    Stage one, as rows arrive: they are gathered into chunks of about
    ``chunk_rows`` rows, and each chunk keeps its own greedy coreset of
    ``pool_factor * ratio`` of its rows (the pool). Stage two, in
    :meth:`select`: the greedy coreset of ``ratio`` of all the rows seen,
    chosen from the pool. The cost of stage one grows linearly with the number
    of rows (each chunk costs the same), stage two's with the pool's size, and
    only the pool is kept. Every row lies within ``r1 + r2`` of the result,
    where ``r1`` is the largest covering radius of a chunk's pool and ``r2``
    the final selection's on the pool (the triangle inequality); exact greedy
    selection guarantees ``2 r*`` for the best possible ``r*``.
    ``pool_factor * ratio >= 1`` keeps every row for stage two: the exact
    greedy selection of :func:`greedy_coreset`.

    Parameters
    ----------
    ratio : float in (0, 1]
        Fraction of all the rows seen that :meth:`select` keeps.
    min_select : int, default=1
        :meth:`select` keeps at least this many rows (at most all).
    projection_dim : int or None, default=128
        Distances are taken on a random Gaussian projection to this many
        dimensions, the same for every chunk (``None``: on the rows).
    pool_factor : float, default=4.0
        How many times ``ratio`` each chunk keeps for stage two.
    chunk_rows : int, default=16384
        Rows per stage-one chunk.
    generator : torch.Generator or None
        A CPU generator for the projection and each selection's first row.

    Examples
    --------
    >>> import torch
    >>> from sklearn_panda._engine.coreset import StreamingCoreset
    >>> coreset = StreamingCoreset(0.1, chunk_rows=100, generator=torch.Generator().manual_seed(0))
    >>> for start in range(0, 1000, 250):
    ...     coreset.add(torch.randn(250, 8), torch.arange(start, start + 250))
    >>> rows, labels = coreset.select()
    >>> rows.shape, labels.shape, coreset.n_seen_
    (torch.Size([100, 8]), torch.Size([100]), 1000)
    """

    def __init__(self, ratio, *, min_select=1, projection_dim=128, pool_factor=4.0, chunk_rows=16384, generator=None):
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1]; got {ratio}.")
        self.ratio = ratio
        self.min_select = min_select
        self.projection_dim = projection_dim
        self.pool_ratio = min(1.0, pool_factor * ratio)
        self.chunk_rows = chunk_rows
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self.n_seen_ = 0
        self._projection = None
        self._pending = []
        self._pool = []

    def add(self, rows, labels):
        """Take ``rows`` (n, d) float32 and one label each (n,) (which image a row came from, say)."""
        if self.n_seen_ == 0:
            self._projection = random_projection(rows.shape[1], self.projection_dim, self.generator)
        self.n_seen_ += len(rows)
        self._pending.append((rows.float(), labels))
        if sum(len(pending) for pending, _ in self._pending) >= self.chunk_rows:
            self._reduce_pending()

    def select(self, progress=None, *, chosen=None):
        """The chosen rows ``(n_select, d)`` and their labels, in the order they came.

        ``progress(n_chosen, n_select)``, if given, is called as the selection goes.
        ``chosen``, a triple ``(rows, labels, n_seen)`` from an earlier
        selection (of ``n_seen`` rows), continues that selection: its rows
        are kept, first, and the greedy selection goes on from them among
        the rows added since, until ``ratio`` of all ``n_seen + n_seen_``
        rows are chosen (PatchCore's rule, as if the greedy selection had
        seen every row at once, up to the two stages). With a pool that
        keeps every row (``pool_factor * ratio >= 1``), ``select`` after
        adding A then B with ``chosen`` from A's selection gives the rows
        that one selection of A and B gives when both keep every row.
        """
        if self.n_seen_ == 0:
            raise ValueError("No rows were added.")
        self._reduce_pending()
        rows, reduced, labels = (torch.cat(part) for part in zip(*self._pool))
        n_seen, n_kept = self.n_seen_, 0
        if chosen is not None:
            kept_rows, kept_labels, kept_seen = chosen
            kept_rows = kept_rows.to(rows.device, torch.float32)
            kept_reduced = kept_rows if self._projection is None else kept_rows @ self._projection.to(rows.device)
            rows, reduced = torch.cat([kept_rows, rows]), torch.cat([kept_reduced, reduced])
            labels = torch.cat([kept_labels.to(labels.device, labels.dtype), labels])
            n_seen, n_kept = n_seen + kept_seen, len(kept_rows)
        n_select = min(len(rows), max(self.min_select, n_kept, math.ceil(self.ratio * n_seen)))
        if n_select < len(rows):
            first = list(range(n_kept)) if n_kept else int(torch.randint(len(rows), (1,), generator=self.generator))
            picked = _lazy_greedy(reduced, n_select, first, progress=progress).to(rows.device).sort().values
            rows, labels = rows[picked], labels[picked.to(labels.device)]
        return rows, labels

    def _reduce_pending(self):
        """Stage one: the pending chunk's own coreset joins the pool."""
        if not self._pending:
            return
        rows = torch.cat([pending for pending, _ in self._pending])
        labels = torch.cat([label for _, label in self._pending])
        self._pending = []
        reduced = rows if self._projection is None else rows @ self._projection.to(rows.device)
        # Each chunk keeps min_select rows too, so that select() can.
        n_keep = max(math.ceil(self.pool_ratio * len(rows)), min(self.min_select, len(rows)))
        if n_keep < len(rows):
            first = int(torch.randint(len(rows), (1,), generator=self.generator))
            chosen = _lazy_greedy(reduced, n_keep, first).to(rows.device).sort().values
            rows, reduced, labels = rows[chosen], reduced[chosen], labels[chosen.to(labels.device)]
        self._pool.append((rows, reduced, labels))
