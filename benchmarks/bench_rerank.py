"""Time reidray's k-reciprocal re-ranking against torchreid's ``re_ranking`` in one run.

    python benchmarks/bench_rerank.py                   # Market size vs torchreid, then MSMT17 size
    python benchmarks/bench_rerank.py --sizes market    # Market size only
    python benchmarks/bench_rerank.py --sizes msmt      # reidray at MSMT17 size only

Problems are bench_score's synthetic ones (identity centres plus noise, cameras at random,
Market's pid-0 distractors), at the real query x gallery sizes: Market-1501 with 512-d features,
MSMT17 with 768-d. Every measurement runs in its own fresh process, so each peak RSS is one
method's alone (Python and the torch import included). Both use the cosine metric and the
paper's parameters (k1 20, k2 6, lambda 0.3).

* reidray: ``evaluate(..., rerank={})`` end to end (features -> neighbours -> re-ranked
  distances -> metrics), run before and after torchreid (the machine's load moves between them).
* torchreid: what its engine does with ``rerank=True``: ``compute_distance_matrix`` for the
  query-gallery, query-query and gallery-gallery pairs, then ``re_ranking``; its metrics come
  from reidray's ``evaluate_distances`` on its matrix (equal to ``eval_market1501``, and ~100x
  faster: see bench_score.py), not timed, and are compared with reidray's re-ranked metrics.
* torchreid cannot run at MSMT17 size on a 24 GB machine: it holds several dense (Q+G)^2
  arrays. Its peak memory is measured at half and full Market size, fitted as a + b (Q+G)^2 and
  extrapolated to MSMT17's 93,820 images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_score import SIZES, make_problem, peak_rss_gb  # noqa: E402

DIMS = {"market": 512, "msmt": 768}
NAMES = {"market": "Market-1501", "msmt": "MSMT17"}
NOISE = 2.5


def problem(size: str, fraction: float):
    """The size's problem, cut to its first ``fraction`` of queries and of gallery images."""
    p = make_problem(size, "clusters", NOISE, dim=DIMS[size])
    nq, ng = int(len(p.qf) * fraction), int(len(p.gf) * fraction)
    return p.qf[:nq], p.gf[:ng], p.q_pids[:nq], p.g_pids[:ng], p.q_camids[:nq], p.g_camids[:ng]


def worker_reidray(size: str, fraction: float) -> dict:
    from reidray.score import evaluate

    qf, gf, *labels = problem(size, fraction)
    plain = evaluate(qf, gf, *labels, metric="cosine")
    t0, c0 = time.perf_counter(), time.process_time()
    m = evaluate(qf, gf, *labels, metric="cosine", rerank={"k1": 20, "k2": 6, "lambda_value": 0.3})
    return {
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "peak_rss_gb": peak_rss_gb(),
        "plain_mAP": plain["mAP"],
        "mAP": m["mAP"],
        "cmc": m["cmc"].tolist(),
    }


def worker_torchreid(size: str, fraction: float) -> dict:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cython evaluation is unavailable": expected with pip's torchreid
        from torchreid.reid.metrics.distance import compute_distance_matrix
        from torchreid.reid.utils.rerank import re_ranking
    from reidray.score import evaluate_distances

    qf, gf, *labels = problem(size, fraction)
    t0, c0 = time.perf_counter(), time.process_time()
    dist = re_ranking(
        compute_distance_matrix(qf, gf, "cosine").numpy(),
        compute_distance_matrix(qf, qf, "cosine").numpy(),
        compute_distance_matrix(gf, gf, "cosine").numpy(),
        k1=20,
        k2=6,
        lambda_value=0.3,
    )
    seconds, cpu_seconds, rss = time.perf_counter() - t0, time.process_time() - c0, peak_rss_gb()
    m = evaluate_distances(dist, *labels)
    return {
        "seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_gb": rss, "mAP": m["mAP"], "cmc": m["cmc"].tolist()
    }


def run_worker(kind: str, size: str, fraction: float = 1.0) -> dict:
    """One measurement in a fresh process, so that its peak memory is its own."""
    cmd = [sys.executable, __file__, "--worker", kind, "--size", size, "--fraction", str(fraction)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the {kind} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def row(name: str, method: str, r: dict, metrics: str = "") -> None:
    """One table row: wall (process CPU) seconds, peak RSS, metrics, the load averages after."""
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    cells = [name, method, f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} s)", f"{r['peak_rss_gb']:.2f} GB"]
    print("| " + " | ".join([*cells, metrics, load]) + " |", flush=True)


def market_against_torchreid() -> None:
    """reidray, torchreid at half and full size, reidray again; the speed-up and memory lines."""
    n_q, n_g = SIZES["market"][:2]
    market = f"{NAMES['market']} ({n_q:,} x {n_g:,}, {DIMS['market']})"
    half = f"half {NAMES['market']} ({n_q // 2:,} x {n_g // 2:,}, {DIMS['market']})"
    first = run_worker("reidray", "market")
    row(market, "reidray", first, metrics=f"{first['plain_mAP']:.4f} -> {first['mAP']:.4f}, {first['cmc'][0]:.4f}")
    small = run_worker("torchreid", "market", 0.5)
    row(half, "torchreid", small)
    ref = run_worker("torchreid", "market")
    diff = max(abs(ref["mAP"] - first["mAP"]), float(np.abs(np.subtract(ref["cmc"], first["cmc"])).max()))
    row(market, "torchreid", ref, metrics=f"{ref['mAP']:.4f}, {ref['cmc'][0]:.4f} (max diff vs reidray {diff:.1e})")
    second = run_worker("reidray", "market")
    row(market, "reidray, again", second)
    best = min(first["seconds"], second["seconds"])
    print(f"\nMarket size: reidray {ref['seconds'] / best:.0f}x faster than torchreid (best of its two runs), "
          f"peak RSS {first['peak_rss_gb']:.2f} GB vs {ref['peak_rss_gb']:.2f} GB.")
    n_small, n_full = (n_q // 2 + n_g // 2), n_q + n_g
    b = (ref["peak_rss_gb"] - small["peak_rss_gb"]) / (n_full**2 - n_small**2)
    a = ref["peak_rss_gb"] - b * n_full**2
    n_msmt = sum(SIZES["msmt"][:2])
    print(f"torchreid peak RSS fitted as {a:.2f} GB + {b * 1e9:.2f} GB per 10^9 (Q+G)^2: "
          f"{a + b * n_msmt**2:.0f} GB at MSMT17 size ({n_msmt:,} images), extrapolated.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", choices=list(DIMS), default=list(DIMS))
    ap.add_argument("--worker", choices=["reidray", "torchreid"], help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(DIMS), help=argparse.SUPPRESS)
    ap.add_argument("--fraction", type=float, default=1.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    if args.worker:
        worker = worker_reidray if args.worker == "reidray" else worker_torchreid
        print(json.dumps(worker(args.size, args.fraction)))
        return

    print(f"# torch {torch.__version__}, {torch.get_num_threads()} threads; seconds are wall (process CPU)")
    print("| problem (queries x gallery, dim) | method | time | peak RSS | mAP plain -> re-ranked, rank-1 "
          "| load average after |")
    print("|---|---|---|---|---|---|")

    if "market" in args.sizes:
        market_against_torchreid()
    if "msmt" in args.sizes:
        n_q, n_g = SIZES["msmt"][:2]
        msmt = run_worker("reidray", "msmt")
        row(f"{NAMES['msmt']} ({n_q:,} x {n_g:,}, {DIMS['msmt']})", "reidray", msmt,
            metrics=f"{msmt['plain_mAP']:.4f} -> {msmt['mAP']:.4f}, {msmt['cmc'][0]:.4f}")


if __name__ == "__main__":
    main()
