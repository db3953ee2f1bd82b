"""Speed of exact and approximate k-nearest-neighbour search on PANDA-sized features.

What it measures
----------------
For each gallery size ``N`` it draws a seeded random float32 gallery
``(N, d)`` and ``Q`` queries ``(Q, d)`` and times, best of ``--repeats``:

- ``KNNScorer(algorithm="brute").kneighbors(queries)``: the query search only;
  the scorer is fitted on the gallery first, outside the timing (its ``fit``
  also runs a leave-one-out search of the gallery against itself, which costs
  ``N / Q`` times a query search and is not what is compared here);
- scikit-learn ``NearestNeighbors(algorithm="brute").kneighbors(queries)``,
  fitted outside the timing;
- faiss ``IndexFlatL2.search(queries, k)`` with the index built outside the
  timing (skipped when faiss is not installed);
- pynndescent: index build (``NNDescent(...)`` and ``prepare()``) plus query,
  timed together once (after a small warm-up build that compiles numba's
  functions), with recall@k against the exact neighbours.

Every row is compared with a compute bound measured in the same run: the
``2 * N * Q * d`` flops of the query-gallery matrix product divided by the
best float32 matrix-multiply rate of numpy on this machine (a
``(min(Q, 2048), d) @ (d, min(N, 8192))`` product, best of several). A ratio
of 1.00 means "as fast as the matrix product alone".

The header prints the BLAS libraries and the kernel each one runs
(threadpoolctl's ``threadpool_info``) and the ``OPENBLAS_*`` variables: the
kernel OpenBLAS picks changes the bound and every row with it.

How to run
----------
From the repository root::

    python benchmarks/knn_speed.py              # N in {5000, 50000}, Q=10000, d=2048
    python benchmarks/knn_speed.py --quick      # tiny smoke run, a few seconds
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/knn_speed.py

The table goes to stdout as markdown and to ``benchmarks/out/knn_speed.md``
(``--output`` changes the path). The full run takes several minutes on two cores.
"""

import argparse
import datetime
import os
import platform
import shlex
import sys
import time
from pathlib import Path

import numpy as np

try:
    import sklearn_panda  # noqa: F401
except ImportError:  # run from a checkout without ``pip install -e .``
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sklearn.neighbors import NearestNeighbors
from threadpoolctl import threadpool_info

from sklearn_panda import KNNScorer

try:
    import faiss
except ImportError:
    faiss = None

try:
    import pynndescent
except ImportError:
    pynndescent = None


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[5_000, 50_000],
        help="gallery sizes N (default: 5000 50000)",
    )
    parser.add_argument("--queries", type=int, default=10_000, help="number of queries Q")
    parser.add_argument("--dim", type=int, default=2048, help="feature dimension d")
    parser.add_argument("-k", "--neighbors", type=int, default=2, help="neighbours per query")
    parser.add_argument("--repeats", type=int, default=3, help="timings per row; the best is kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random data")
    parser.add_argument(
        "--skip",
        nargs="+",
        default=[],
        choices=["sklearn", "faiss", "nndescent"],
        help="rows to leave out",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: N in {500, 2000}, Q=300, d=64, 1 repeat (overrides those options)",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "out" / "knn_speed.md",
        help="markdown file to write (default: benchmarks/out/knn_speed.md)",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.queries, args.dim, args.repeats = [500, 2000], 300, 64, 1
    return args


def best_time(func, repeats):
    """Best wall-clock time of ``repeats`` calls of ``func``, and its last result."""
    best, result = np.inf, None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        result = func()
        best = min(best, time.perf_counter() - start)
    return best, result


def matmul_rate(queries, gallery, repeats):
    """Best float32 matrix-multiply rate (flop/s) of numpy on a block shaped like the search."""
    a = np.ascontiguousarray(queries[:2048])
    b = np.ascontiguousarray(gallery[:8192])
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    seconds, _ = best_time(lambda: np.matmul(a, b.T, out=out), max(5, repeats))
    return 2.0 * a.shape[0] * b.shape[0] * a.shape[1] / seconds


def recall(found, exact):
    """Mean fraction of each row's exact neighbours that ``found`` contains."""
    hits = (found[:, :, None] == exact[:, None, :]).any(axis=1).sum(axis=1)
    return float(np.mean(hits / exact.shape[1]))


def blas_description():
    lines = []
    for info in threadpool_info():
        lines.append(
            f"{info['internal_api']} {info.get('version') or '(version unknown)'} "
            f"({os.path.basename(info['filepath'])}): "
            f"kernel {info.get('architecture', '-')}, {info['num_threads']} threads"
        )
    return lines


def machine_description():
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    memory = ""
    try:
        pages, page_size = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        memory = f", {pages * page_size / 2**30:.0f} GiB RAM"
    except (ValueError, OSError, AttributeError):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs{memory}, {platform.system()} {platform.release()}"


def run_size(n_gallery, args, log):
    rng = np.random.default_rng([args.seed, n_gallery])
    gallery = rng.standard_normal((n_gallery, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    k = args.neighbors
    flops = 2.0 * n_gallery * args.queries * args.dim

    rate = matmul_rate(queries, gallery, args.repeats)
    bound = flops / rate
    log(f"N={n_gallery}: matmul rate {rate / 1e9:.1f} GFLOP/s, bound {bound:.3f} s")
    rows = [("compute bound", f"2·N·Q·d / {rate / 1e9:.0f} GFLOP/s (numpy matmul)", bound, "")]

    start = time.perf_counter()
    scorer = KNNScorer(n_neighbors=k, algorithm="brute").fit(gallery)
    log(f"  KNNScorer fit (leave-one-out, untimed row): {time.perf_counter() - start:.1f} s")
    seconds, (_, exact) = best_time(lambda: scorer.kneighbors(queries), args.repeats)
    rows.append(('KNNScorer(algorithm="brute")', "kneighbors(queries), fitted", seconds, ""))
    log(f"  KNNScorer brute: {seconds:.3f} s")
    del scorer

    if "sklearn" not in args.skip:
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(gallery)
        seconds, (_, found) = best_time(lambda: nn.kneighbors(queries), args.repeats)
        rows.append(("scikit-learn NearestNeighbors(brute)", "kneighbors(queries), fitted", seconds, ""))
        log(f"  scikit-learn brute: {seconds:.3f} s (recall {recall(found, exact):.4f})")
        del nn

    if faiss is not None and "faiss" not in args.skip:
        index = faiss.IndexFlatL2(args.dim)
        index.add(gallery)
        seconds, (_, found) = best_time(lambda: index.search(queries, k), args.repeats)
        rows.append(("faiss IndexFlatL2", "search(queries), index built", seconds, ""))
        log(f"  faiss: {seconds:.3f} s (recall {recall(found, exact):.4f})")
        del index

    if pynndescent is not None and "nndescent" not in args.skip:
        # Same settings as KNNScorer(algorithm="nndescent").
        def build(data):
            index = pynndescent.NNDescent(
                data,
                metric="euclidean",
                n_neighbors=max(30, k + 1),
                random_state=args.seed,
                n_jobs=-1,
                compressed=False,
            )
            index.prepare()
            return index

        # Compile numba's functions first: a one-off cost, not the build's.
        build(gallery[:500]).query(queries[:10], k=k, epsilon=0.3)
        start = time.perf_counter()
        index = build(gallery)
        built = time.perf_counter() - start
        start = time.perf_counter()
        found, _ = index.query(queries, k=k, epsilon=0.3)
        queried = time.perf_counter() - start
        rows.append(
            (
                "pynndescent",
                f"build {built:.3g} s + query {queried:.3g} s (one run)",
                built + queried,
                f"{recall(found, exact):.4f}",
            )
        )
        log(f"  pynndescent: build {built:.1f} s, query {queried:.1f} s")
        del index
    return rows


def markdown_table(results, args):
    lines = [
        f"| N | method | timed | time (s) | × bound | recall@{args.neighbors} |",
        "|---:|---|---|---:|---:|---:|",
    ]
    for n_gallery, rows in results:
        bound = rows[0][2]
        for name, timed, seconds, rec in rows:
            rec = rec or ("exact" if name != "compute bound" else "")
            lines.append(
                f"| {n_gallery:,} | {name} | {timed} | {seconds:.3g} | {seconds / bound:.2f} | {rec} |"
            )
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    env = {name: os.environ.get(name, "(unset)") for name in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")}
    header = [
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine_description()}",
        f"- command: `{command}`",
        "- environment: " + ", ".join(f"{name}={value}" for name, value in env.items()),
        f"- settings: N in {{{', '.join(f'{n:,}' for n in args.sizes)}}}, Q={args.queries:,} queries, "
        f"d={args.dim}, float32, k={args.neighbors}, seed {args.seed}, best of {args.repeats}",
        f"- versions: numpy {np.__version__}, scikit-learn {__import__('sklearn').__version__}, "
        f"faiss {getattr(faiss, '__version__', 'not installed')}, "
        f"pynndescent {getattr(pynndescent, '__version__', 'not installed')}",
        "- BLAS (threadpoolctl):",
        *(f"  - {line}" for line in blas_description()),
    ]
    print("\n".join(header), flush=True)

    results = [(n, run_size(n, args, log)) for n in args.sizes]
    table = markdown_table(results, args)
    print()
    print(table)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text("\n".join(header) + "\n\n" + table + "\n")
    log(f"written to {args.output}")


if __name__ == "__main__":
    main()
