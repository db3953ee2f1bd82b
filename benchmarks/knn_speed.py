"""Speed of exact and approximate k-nearest-neighbour search on PANDA-sized features.

What it measures
----------------
For each gallery size ``N`` it draws a seeded random float32 gallery
``(N, d)`` and ``Q`` queries ``(Q, d)`` and times the query search with the
index already built, best of ``--repeats`` rounds:

- ``KNNScorer(algorithm="brute").kneighbors(queries)`` on a scorer fitted on
  the gallery (its ``fit``, a leave-one-out search of the gallery against
  itself, ``N / Q`` times the work of the query search, is timed once and
  reported apart);
- scikit-learn ``NearestNeighbors(algorithm="brute").kneighbors(queries)``;
- faiss ``IndexFlatL2.search(queries, k)`` (skipped when faiss is not installed);
- pynndescent, with the settings of ``KNNScorer(algorithm="nndescent")``:
  index build (``NNDescent(...)`` and ``prepare()``) plus query, timed together
  once after a small warm-up build that compiles numba's functions, with
  recall@k against the exact neighbours.

Every row is compared with a compute bound measured in the same run: the
``2 * N * Q * d`` flops of the query-gallery matrix product divided by the
float32 matrix-multiply rate of numpy on this machine (a
``(min(Q, 2048), d) @ (d, min(N, 8192))`` product, best of 4). The rate is
measured before the first timing and after each one; "× bound" uses the best
rate of the run, "× local bound" the better of the rates measured just before
and just after that timing (median over rounds), which discounts a load that
other programs put on a shared machine for part of the run. A ratio of 1.00
means "as fast as the matrix product alone".

The header gives the BLAS libraries and the kernel each one runs
(threadpoolctl's ``threadpool_info``), the ``OPENBLAS_*`` variables (the kernel
OpenBLAS picks changes the bound and every row with it) and the load average;
the per-round timings follow the table.

How to run
----------
From the repository root::

    python benchmarks/knn_speed.py              # N in {5000, 50000}, Q=10000, d=2048
    python benchmarks/knn_speed.py --quick      # tiny smoke run (numba compiles: ~30 s)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/knn_speed.py

The table goes to stdout as markdown and, with the header and the run log, to
``benchmarks/out/knn_speed.md`` (``--output`` changes the path). The full run
takes about 5 to 10 minutes on two cores, most of it at N=50,000.
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
import sklearn

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


BRUTE = 'KNNScorer(algorithm="brute")'
SKLEARN = "scikit-learn NearestNeighbors(brute)"
OPENBLAS_VARIABLES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


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
        help="smoke run: the defaults become N in {500, 2000}, Q=300, d=64, 1 repeat",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=Path(__file__).resolve().parent / "out" / "knn_speed.md",
        help="markdown file to write (default: benchmarks/out/knn_speed.md)",
    )
    if parser.parse_known_args(argv)[0].quick:
        parser.set_defaults(sizes=[500, 2000], queries=300, dim=64, repeats=1)
    return parser.parse_args(argv)


def timed(func):
    """Wall-clock seconds of one call of ``func``, and its result."""
    start = time.perf_counter()
    result = func()
    return time.perf_counter() - start, result


def matmul_rate(queries, gallery, repeats=4):
    """Best float32 matrix-multiply rate (flop/s) of numpy on a block shaped like the search."""
    a = np.ascontiguousarray(queries[:2048])
    b = np.ascontiguousarray(gallery[:8192])
    out = np.empty((a.shape[0], b.shape[0]), dtype=np.float32)
    np.matmul(a, b.T, out=out)  # warm-up: page faults, BLAS threads waking
    seconds = min(timed(lambda: np.matmul(a, b.T, out=out))[0] for _ in range(repeats))
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
    system = f"{platform.system()} {platform.release()}"
    return f"{model}, {os.cpu_count()} logical CPUs{memory}, {system}"


def run_size(n_gallery, args, log):
    rng = np.random.default_rng([args.seed, n_gallery])
    gallery = rng.standard_normal((n_gallery, args.dim), dtype=np.float32)
    queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    k = args.neighbors
    flops = 2.0 * n_gallery * args.queries * args.dim

    # Fit or build every exact index first, then time the searches
    # round-robin, measuring the matmul rate before the first and after each
    # one: the speed of a shared machine drifts, so each timing is also
    # compared with the better rate measured right before or after it.
    fit_seconds, scorer = timed(lambda: KNNScorer(n_neighbors=k, algorithm="brute").fit(gallery))
    log(f"N={n_gallery}: KNNScorer fit (leave-one-out self-search) {fit_seconds:.1f} s")
    searches = {BRUTE: ("kneighbors(queries), fitted", scorer.kneighbors)}
    if "sklearn" not in args.skip:
        nn = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(gallery)
        searches[SKLEARN] = ("kneighbors(queries), fitted", nn.kneighbors)
    if faiss is not None and "faiss" not in args.skip:
        index = faiss.IndexFlatL2(args.dim)
        index.add(gallery)
        searches["faiss IndexFlatL2"] = (
            "search(queries), index built",
            lambda queries: index.search(queries, k),
        )

    rates = [matmul_rate(queries, gallery)]
    best = dict.fromkeys(searches, np.inf)
    local = {name: [] for name in searches}
    found = {}
    for round_ in range(args.repeats):
        report = []
        for name, (_, search) in searches.items():
            seconds, result = timed(lambda: search(queries))
            rates.append(matmul_rate(queries, gallery))
            best[name] = min(best[name], seconds)
            local[name].append(seconds * max(rates[-2:]) / flops)
            found[name] = result[1]
            report.append(f"{name.split('(')[0]} {seconds:.3f} s")
        log(f"  round {round_ + 1}: " + ", ".join(report))
    log("  matmul GFLOP/s: " + " ".join(f"{rate / 1e9:.0f}" for rate in rates))

    best_rate = max(rates)
    bound = flops / best_rate
    exact = found[BRUTE]
    rows = [
        (
            "compute bound",
            f"2·N·Q·d at {best_rate / 1e9:.0f} GFLOP/s, best numpy matmul "
            f"(min {min(rates) / 1e9:.0f})",
            bound,
            1.0,
            "",
        )
    ]
    for name, (what, _) in searches.items():
        rec = "exact" if name == BRUTE else recall(found[name], exact)
        rows.append((name, what, best[name], float(np.median(local[name])), rec))
    fit_bound = 2.0 * n_gallery * n_gallery * args.dim / best_rate
    rows.append(
        (
            "KNNScorer fit (not compared)",
            f"fit(gallery): leave-one-out N×N search, one run, "
            f"{fit_seconds / fit_bound:.2f} × its own bound",
            fit_seconds,
            None,
            "exact",
        )
    )
    del scorer, searches

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
        built, index = timed(lambda: build(gallery))
        queried, (indices, _) = timed(lambda: index.query(queries, k=k, epsilon=0.3))
        what = f"build {built:.3g} s + query {queried:.3g} s (one run)"
        rows.append(("pynndescent", what, built + queried, None, recall(indices, exact)))
        log(f"  pynndescent: {what}")
    return rows


def markdown_table(results, args):
    lines = [
        f"| N | method | timed | time (s) | × bound | × local bound | recall@{args.neighbors} |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for n_gallery, rows in results:
        bound = rows[0][2]
        for name, what, seconds, local, rec in rows:
            rec = f"{rec:.4f}" if isinstance(rec, float) else rec
            local = "" if local is None else f"{local:.2f}"
            ratio = "" if name.startswith("KNNScorer fit") else f"{seconds / bound:.2f}"
            lines.append(
                f"| {n_gallery:,} | {name} | {what} | {seconds:.3g} | {ratio} | {local} | {rec} |"
            )
    return "\n".join(lines)


def summary(results):
    """One line per size: the brute-force row against scikit-learn and the bound."""
    lines = []
    for n_gallery, rows in results:
        by_name = {name: (seconds, local) for name, _, seconds, local, _ in rows}
        bound = by_name["compute bound"][0]
        seconds, local = by_name[BRUTE]
        line = (
            f"- N={n_gallery:,}: {BRUTE} at {seconds / bound:.2f} × bound "
            f"({local:.2f} × local bound)"
        )
        if SKLEARN in by_name:
            line += f"; scikit-learn takes {by_name[SKLEARN][0] / seconds:.2f}× as long"
        lines.append(line)
    return "\n".join(lines)


def main(argv=None):
    args = parse_args(argv)
    run_log = []

    def log(message):
        run_log.append(message)
        print(message, file=sys.stderr, flush=True)

    command = "python " + " ".join(shlex.quote(a) for a in [sys.argv[0], *sys.argv[1:]])
    env = {name: os.environ.get(name, "(unset)") for name in OPENBLAS_VARIABLES}
    load = lambda: ", ".join(f"{x:.2f}" for x in os.getloadavg())  # noqa: E731
    header = [
        f"- date: {datetime.date.today().isoformat()}",
        f"- machine: {machine_description()}",
        f"- command: `{command}`",
        "- environment: " + ", ".join(f"{name}={value}" for name, value in env.items()),
        f"- settings: N in {{{', '.join(f'{n:,}' for n in args.sizes)}}}, "
        f"Q={args.queries:,} queries, d={args.dim}, float32, k={args.neighbors}, "
        f"seed {args.seed}, best of {args.repeats}",
        f"- versions: numpy {np.__version__}, scikit-learn {sklearn.__version__}, "
        f"faiss {getattr(faiss, '__version__', 'not installed')}, "
        f"pynndescent {getattr(pynndescent, '__version__', 'not installed')}",
        "- BLAS (threadpoolctl):",
        *(f"  - {line}" for line in blas_description()),
        f"- load average (1, 5, 15 min) at start: {load()}",
    ]
    print("\n".join(header), flush=True)

    results = [(n, run_size(n, args, log)) for n in args.sizes]
    log(f"load average (1, 5, 15 min) at end: {load()}")
    table = markdown_table(results, args) + "\n\n" + summary(results)
    print()
    print(table)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    run_log = "\n".join(run_log)
    args.output.write_text("\n".join(header) + f"\n\n{table}\n\nRun log:\n\n```\n{run_log}\n```\n")
    print(f"written to {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
