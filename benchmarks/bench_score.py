"""Time reidray's scorer against torchreid's evaluator on the same problems, at real dataset sizes.

    python benchmarks/bench_score.py                      # Market-1501, DukeMTMC, MSMT17 sizes
    python benchmarks/bench_score.py --sizes market --features random   # worst case: no structure

Each problem is synthetic (768-d float32 features, identity clusters plus noise, cameras drawn at
random, Market's pid-0 distractors included) and rebuilt from its seed in a fresh process per
measurement, so every peak RSS is that of one evaluator alone (Python + torch import included).

* reidray: ``evaluate`` end to end, features -> metrics, cosine (chunked distances included);
  beside it, the bare chunked matrix product of the normalised features, with numpy's BLAS (what
  reidray uses on the CPU) and with ``torch.mm``: the floor any exact scorer pays.
* torchreid: ``eval_market1501`` (pure Python, as pip's torchreid 0.2.5 ships it) given a
  precomputed distance matrix, which is *not* counted in its time; reidray's
  ``evaluate_distances`` is timed on the very same matrix, and the two results are compared. At
  MSMT17 size both are timed on the first 500 queries and scaled linearly (a full torchreid run
  takes ~20 min or more); ``--torchreid-queries`` changes that.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch

SIZES = {  # queries, gallery, identities, cameras, distractor images (pid 0), torchreid queries
    "market": (3368, 15913, 750, 6, 2793, None),
    "duke": (2228, 17661, 1110, 8, 0, None),
    "msmt": (11659, 82161, 3060, 15, 0, 500),
    "tiny": (300, 2000, 100, 6, 100, None),  # a quick check (gpu_proof --smoke)
}
NAMES = {"market": "Market-1501", "duke": "DukeMTMC-reID", "msmt": "MSMT17", "tiny": "tiny"}
DIM = 768


@dataclass
class Problem:
    qf: torch.Tensor
    gf: torch.Tensor
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_camids: np.ndarray
    g_camids: np.ndarray


def make_problem(size: str, features: str, noise: float, seed: int = 0, dim: int = DIM) -> Problem:
    """Identity clusters: image = identity centre + noise * N(0, I) (or pure noise if random)."""
    n_q, n_g, n_ids, n_cams, n_distractors, _ = SIZES[size]
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(1, n_ids + 1, n_q)
    g_pids = np.concatenate([np.arange(1, n_ids + 1), rng.integers(1, n_ids + 1, n_g - n_ids - n_distractors)])
    g_pids = np.concatenate([g_pids, np.zeros(n_distractors, dtype=np.int64)])  # Market's "0000"
    q_camids, g_camids = rng.integers(0, n_cams, n_q), rng.integers(0, n_cams, n_g)
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(n_ids + 1, dim, generator=gen)
    if features == "random":
        centres.zero_()
    qf = centres[q_pids].add_(torch.randn(n_q, dim, generator=gen), alpha=noise)
    gf = centres[g_pids].add_(torch.randn(n_g, dim, generator=gen), alpha=noise)
    gf[g_pids == 0] = torch.randn(n_distractors, dim, generator=gen)  # false detections: no identity
    return Problem(qf, gf, q_pids, g_pids, q_camids, g_camids)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def worker_reidray(p: Problem, args: argparse.Namespace) -> dict:
    from reidray.score import evaluate
    from reidray.score.metrics import CHUNK_ELEMENTS

    t0, c0 = time.perf_counter(), time.process_time()
    m = evaluate(p.qf, p.gf, p.q_pids, p.g_pids, p.q_camids, p.g_camids, metric="cosine", device=args.device)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    rss = peak_rss_gb()
    rows = max(1, CHUNK_ELEMENTS // len(p.gf))
    q, g = torch.nn.functional.normalize(p.qf, dim=1), torch.nn.functional.normalize(p.gf, dim=1)
    g_t = np.ascontiguousarray(g.numpy().T)
    floors = {}
    for name, product in (("numpy", lambda c: c.numpy() @ g_t), ("torch", lambda c: torch.mm(c, g.T))):
        t0 = time.perf_counter()
        for start in range(0, len(q), rows):
            product(q[start : start + rows])
        floors[name] = time.perf_counter() - t0
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "numpy_mm_seconds": floors["numpy"],
        "torch_mm_seconds": floors["torch"],
        "peak_rss_gb": rss,
        "mAP": m["mAP"],
        "rank1": float(m["cmc"][0]),
        "mINP": m["mINP"],
        "n_query_scored": m["n_query_scored"],
    }


def worker_torchreid(p: Problem, args: argparse.Namespace) -> dict:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Cython evaluation is unavailable": expected with pip's torchreid
        from torchreid.reid.metrics.rank import eval_market1501
    from reidray.score import evaluate_distances

    n = min(args.torchreid_queries or SIZES[args.size][5] or len(p.qf), len(p.qf))
    qn, gn = torch.nn.functional.normalize(p.qf[:n], dim=1), torch.nn.functional.normalize(p.gf, dim=1)
    distmat = (-(qn @ gn.T)).numpy()  # cosine, as reidray ranks it (1 - s would round in ties); not timed
    labels = (p.q_pids[:n], p.g_pids, p.q_camids[:n], p.g_camids)
    t0, c0 = time.perf_counter(), time.process_time()
    cmc, mAP = eval_market1501(distmat, *labels, 50)
    seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
    rss = peak_rss_gb()
    evaluate_distances(distmat[:50], p.q_pids[:50], p.g_pids, p.q_camids[:50], p.g_camids)  # warm-up, not scaled
    t0, c0 = time.perf_counter(), time.process_time()
    ours = evaluate_distances(distmat, *labels)
    ours_seconds, ours_cpu = time.perf_counter() - t0, time.process_time() - c0
    scale = len(p.qf) / n
    return {
        "seconds": seconds * scale,
        "cpu_seconds": cpu_seconds * scale,
        "measured_queries": n,
        "peak_rss_gb": rss,
        "ours_seconds": ours_seconds * scale,
        "ours_cpu_seconds": ours_cpu * scale,
        "diff_mAP": abs(float(mAP) - ours["mAP"]),
        "diff_cmc": float(np.abs(cmc - ours["cmc"]).max()),
    }


def run_worker(kind: str, size: str, args: argparse.Namespace) -> dict:
    """One measurement in a fresh process, so that its peak memory is its own."""
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        kind,
        "--size",
        size,
        "--features",
        args.features,
        "--noise",
        str(args.noise),
        "--device",
        args.device,
    ]
    if args.torchreid_queries:
        cmd += ["--torchreid-queries", str(args.torchreid_queries)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"the {kind} worker failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", nargs="+", choices=list(SIZES), default=["market", "duke", "msmt"])
    ap.add_argument("--features", choices=["clusters", "random"], default="clusters")
    ap.add_argument("--noise", type=float, default=2.5, help="noise scale around identity centres (unit variance)")
    ap.add_argument("--torchreid-queries", type=int, default=0, help="time torchreid on this many queries and scale")
    ap.add_argument("--skip-torchreid", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--worker", choices=["reidray", "torchreid"], help=argparse.SUPPRESS)
    ap.add_argument("--size", choices=list(SIZES), help=argparse.SUPPRESS)
    args = ap.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))

    if args.worker:
        problem = make_problem(args.size, args.features, args.noise)
        worker = worker_reidray if args.worker == "reidray" else worker_torchreid
        print(json.dumps(worker(problem, args)))
        return

    print(
        f"# torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
        f"features {args.features} (noise {args.noise}); seconds are wall (process CPU)"
    )
    print(
        "| problem (queries x gallery) | reidray, features -> metrics | chunked matmul alone (numpy, torch) "
        "| reidray, given distances | torchreid, given distances | speed-up, given distances "
        "| speed-up, reidray end to end vs torchreid given distances | reidray peak RSS (end to end) "
        "| torchreid peak RSS | mAP, rank-1, mINP | max diff vs torchreid (mAP, CMC) | load average after |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        n_q, n_g = SIZES[size][:2]
        ours = run_worker("reidray", size, args)
        ref = None if args.skip_torchreid else run_worker("torchreid", size, args)
        cells = [
            f"{NAMES[size]} ({n_q:,} x {n_g:,})",
            f"{ours['seconds']:.2f} s ({ours['cpu_seconds']:.2f} s)",
            f"{ours['numpy_mm_seconds']:.2f} s, {ours['torch_mm_seconds']:.2f} s",
            "-",
            "-",
            "-",
            "-",
            f"{ours['peak_rss_gb']:.2f} GB",
            "-",
            f"{ours['mAP']:.3f}, {ours['rank1']:.3f}, {ours['mINP']:.3f}",
            "-",
            " ".join(f"{x:.1f}" for x in os.getloadavg()),
        ]
        if ref:
            scaled = "" if ref["measured_queries"] == n_q else f"; scaled from {ref['measured_queries']} queries"
            cells[3] = f"{ref['ours_seconds']:.2f} s ({ref['ours_cpu_seconds']:.2f} s{scaled})"
            cells[4] = f"{ref['seconds']:.1f} s ({ref['cpu_seconds']:.1f} s{scaled})"
            cells[5] = f"{ref['seconds'] / ref['ours_seconds']:.0f}x"
            cells[6] = f"{ref['seconds'] / ours['seconds']:.0f}x"
            cells[8] = f"{ref['peak_rss_gb']:.2f} GB"
            cells[10] = f"{ref['diff_mAP']:.1e}, {ref['diff_cmc']:.1e}"
        print("| " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
