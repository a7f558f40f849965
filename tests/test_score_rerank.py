"""Re-ranking and query expansion in ``evaluate``: torchreid's ``re_ranking`` and fast-reid's ``aqe``
give the same numbers, and neither needs an N x N matrix."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch

from reidray.score import evaluate, neighbours, rerank
from reidray.score.neighbours import PairDistances, nearest
from reidray.score.rerank import KReciprocal, RerankOptions

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Cython evaluation unavailable": pip's torchreid is pure Python
    from torchreid.reid.metrics.distance import compute_distance_matrix
    from torchreid.reid.metrics.rank import eval_market1501
    from torchreid.reid.utils.rerank import re_ranking

TOL = 1e-6


def clustered_problem(seed: int) -> dict:
    """Identities as clusters (so re-ranking has neighbours to work with), random sizes,
    cameras, junk and distractors; queries of identities absent from the gallery too."""
    rng = np.random.default_rng(seed)
    n_q, n_g, n_ids, dim = int(rng.integers(3, 40)), int(rng.integers(8, 250)), int(rng.integers(2, 25)), 16
    centres = rng.standard_normal((n_ids + 3, dim))
    q_pids, g_pids = rng.integers(0, n_ids + 3, n_q), rng.integers(0, n_ids, n_g)
    noise = rng.uniform(0.5, 1.2)
    return {
        "qf": (centres[q_pids] + noise * rng.standard_normal((n_q, dim))).astype(np.float32),
        "gf": (centres[g_pids] + noise * rng.standard_normal((n_g, dim))).astype(np.float32),
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": rng.integers(0, 4, n_q),
        "g_camids": rng.integers(0, 4, n_g),
        "g_junk": rng.random(n_g) < rng.choice([0.0, 0.1]),
        "g_distractor": rng.random(n_g) < rng.choice([0.0, 0.2]),
        "options": {
            "k1": int(rng.integers(2, 26)), "k2": int(rng.integers(1, 8)), "lambda_value": rng.uniform(0.1, 0.9)
        },
    }


def torchreid_rerank(qf: np.ndarray, gf: np.ndarray, metric: str, options: dict) -> np.ndarray:
    """What torchreid's engine does with ``rerank=True``: its three distance matrices, then re_ranking."""
    q, g = torch.from_numpy(qf), torch.from_numpy(gf)
    return re_ranking(
        compute_distance_matrix(q, g, metric).numpy(),
        compute_distance_matrix(q, q, metric).numpy(),
        compute_distance_matrix(g, g, metric).numpy(),
        **options,
    )


def torchreid_scores(p: dict, dist: np.ndarray) -> tuple[np.ndarray, float, int]:
    """eval_market1501 on the junk-free gallery (torchreid's datasets hold no junk), with
    distractors as an identity no query has; also the max_rank every query can reach."""
    keep = ~p["g_junk"]
    g_pids, g_camids = np.where(p["g_distractor"], -999, p["g_pids"])[keep], p["g_camids"][keep]
    removed = max(((g_pids == q) & (g_camids == c)).sum() for q, c in zip(p["q_pids"], p["q_camids"], strict=True))
    max_rank = int(min(50, keep.sum() - removed))
    cmc, mAP = eval_market1501(dist, p["q_pids"], g_pids, p["q_camids"], g_camids, max_rank)
    return cmc, mAP, max_rank


def match_ties(p: dict, dist: np.ndarray) -> int:
    """How many queries have a gallery item of their identity at exactly the distance of an item
    of another identity: there the order (and the metrics) depend on how ties are broken."""
    g_pids = np.where(p["g_distractor"], -999, p["g_pids"])[~p["g_junk"]]
    return sum(
        bool(np.isin(row[g_pids == q], row[g_pids != q]).any()) for row, q in zip(dist, p["q_pids"], strict=True)
    )


def has_valid_query(p: dict) -> bool:
    keep = ~p["g_junk"] & ~p["g_distractor"]
    pairs = zip(p["q_pids"], p["q_camids"], strict=True)
    return any(((p["g_pids"] == q) & (p["g_camids"] != c) & keep).any() for q, c in pairs)


def labels(p: dict) -> tuple:
    return p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", range(12))
def test_rerank_equals_torchreid_on_random_problems(seed: int, metric: str) -> None:
    p = clustered_problem(seed)
    if not has_valid_query(p):
        pytest.skip("no valid query in this draw")
    keep = ~p["g_junk"]
    reference = torchreid_rerank(p["qf"], p["gf"][keep], metric, p["options"])
    assert match_ties(p, reference) == 0, "torchreid's float32 ties a match with a non-match: pick another seed"
    cmc, mAP, max_rank = torchreid_scores(p, reference)
    ours = evaluate(
        p["qf"], p["gf"], *labels(p), metric=metric, max_rank=max_rank,
        g_junk=p["g_junk"], g_distractor=p["g_distractor"], rerank=p["options"],
    )
    assert abs(ours["mAP"] - mAP) < TOL
    np.testing.assert_allclose(ours["cmc"], cmc, rtol=0, atol=TOL)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", range(4))
def test_rerank_distances_equal_torchreid_across_tiles_and_parts(seed: int, metric: str, monkeypatch) -> None:
    """The re-ranked distances themselves, with tiny tiles (the neighbour pass's merges) and
    tiny gather parts (the Jaccard term split per query), against torchreid's float32."""
    monkeypatch.setattr(neighbours, "TILE", 5 + seed)
    monkeypatch.setattr(rerank, "TRIPLETS", 40)
    p = clustered_problem(50 + seed)
    reference = torchreid_rerank(p["qf"], p["gf"], metric, p["options"])
    reranked = KReciprocal(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), metric, RerankOptions(**p["options"]))
    ours = torch.cat([reranked.distances(s, min(s + 3, len(p["qf"]))) for s in range(0, len(p["qf"]), 3)]).numpy()
    np.testing.assert_allclose(ours, reference, rtol=0, atol=2e-6)


def test_rerank_on_a_set_smaller_than_k1() -> None:
    rng = np.random.default_rng(0)
    qf, gf = rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((6, 4)).astype(np.float32)
    reference = torchreid_rerank(qf, gf, "euclidean", {"k1": 20, "k2": 6, "lambda_value": 0.3})
    reranked = KReciprocal(torch.from_numpy(qf), torch.from_numpy(gf), "euclidean", RerankOptions())
    np.testing.assert_allclose(reranked.distances(0, 3).numpy(), reference, rtol=0, atol=2e-6)


def test_rerank_with_lambda_one_ranks_as_the_plain_distance() -> None:
    """lambda_value = 1 keeps only the normalised original distance: the plain metrics."""
    p = clustered_problem(3)
    for metric in ("cosine", "euclidean"):
        kwargs = {"metric": metric, "g_junk": p["g_junk"], "g_distractor": p["g_distractor"]}
        plain = evaluate(p["qf"], p["gf"], *labels(p), **kwargs)
        only_original = evaluate(p["qf"], p["gf"], *labels(p), **kwargs, rerank={"lambda_value": 1.0})
        assert only_original["mAP"] == pytest.approx(plain["mAP"], abs=1e-12)
        np.testing.assert_allclose(only_original["cmc"], plain["cmc"], atol=1e-12)
        assert evaluate(p["qf"], p["gf"], *labels(p), **kwargs, rerank={})["mAP"] != plain["mAP"]


@pytest.mark.parametrize("tile", [3, 7, 50])
def test_nearest_neighbours_equal_a_full_argsort(tile: int, monkeypatch) -> None:
    monkeypatch.setattr(neighbours, "TILE", tile)
    for seed in range(4):
        rng = np.random.default_rng(seed)
        n, k = int(rng.integers(2, 120)), int(rng.integers(1, 25))
        x = torch.from_numpy(rng.standard_normal((n, 5)).astype(np.float32))
        for metric in ("cosine", "euclidean"):
            pairs = PairDistances(x, metric)
            found = nearest(pairs, k)
            full = compute_distance_matrix(x, x, metric).square()
            np.testing.assert_array_equal(found.index, full.argsort(dim=1)[:, : min(k, n)].numpy())
            np.testing.assert_allclose(found.far2, full.amax(dim=1).double().numpy(), rtol=1e-5)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"k": 3}, "unknown re-ranking option"),
        ({"k1": 0}, "k1 must be an integer >= 1"),
        ({"k2": 2.5}, "k2 must be an integer >= 1"),
        ({"lambda_value": 1.5}, r"lambda_value must be in \[0, 1\]"),
    ],
)
def test_bad_rerank_options_are_refused(options: dict, message: str) -> None:
    p = clustered_problem(0)
    with pytest.raises(ValueError, match=message):
        evaluate(p["qf"], p["gf"], *labels(p), rerank=options)


# The memory check runs in a child with its address space capped at what it already maps plus
# CAP bytes: an N x N float32 matrix (N = Q + G) would need several times that.
CAP = 1_500_000_000
MEMORY_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np
    from reidray.score import evaluate

    n_q, n_g, cap = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    n = n_q + n_g
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((n_q, 8)).astype(np.float32)
    q_pids, g_pids = np.arange(n_q), rng.integers(0, n_q, n_g)
    qf = centres[q_pids] + 0.3 * rng.standard_normal((n_q, 8)).astype(np.float32)
    gf = centres[g_pids] + 0.3 * rng.standard_normal((n_g, 8)).astype(np.float32)
    cams = (np.zeros(n_q, int), np.ones(n_g, int))
    evaluate(qf[:50], gf[:500], q_pids[:50], g_pids[:500], cams[0][:50], cams[1][:500], rerank={})  # warm-up
    mapped = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + cap, mapped + cap))
    try:
        np.ones((n, n), dtype=np.float32)
        print("the cap does not hold an N x N matrix")
    except MemoryError:
        pass
    m = evaluate(qf, gf, q_pids, g_pids, cams[0], cams[1], rerank={"k1": 20, "k2": 6, "lambda_value": 0.3})
    print("mAP", m["mAP"])
    """
)


NEIGHBOURS_CHILD = textwrap.dedent(
    """
    import resource, sys
    import numpy as np, torch
    from reidray.score.neighbours import PairDistances, nearest

    n, cap = int(sys.argv[1]), int(sys.argv[2])
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, 4)).astype(np.float32))
    pairs = PairDistances(x, "euclidean")
    nearest(PairDistances(x[:5000], "euclidean"), 21)  # warm-up: thread pools, allocator
    mapped = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (mapped + cap, mapped + cap))
    found = nearest(pairs, 21)
    for i in (0, n // 2, n - 1):  # spot checks against a full row
        row = pairs.block(slice(i, i + 1), slice(None)).square()[0]
        assert (found.index[i] == row.argsort()[:21].numpy()).all(), i
    print("ok")
    """
)


@pytest.mark.slow
def test_msmt17_size_neighbour_search_stays_far_below_n_by_n() -> None:
    """The neighbour pass at MSMT17's 93,820 images (N x N float32: 35 GB) under a 1 GB cap."""
    done = subprocess.run(
        [sys.executable, "-c", NEIGHBOURS_CHILD, "93820", str(10**9)], capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


@pytest.mark.slow
def test_rerank_never_allocates_an_n_by_n_matrix() -> None:
    n_q, n_g = 3000, 27000  # N x N float32 = 3.6 GB, more than twice the cap
    assert (n_q + n_g) ** 2 * 4 > 2 * CAP
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_CHILD, str(n_q), str(n_g), str(CAP)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "does not hold" not in done.stdout
    assert float(done.stdout.split("mAP")[1]) > 0.5


def fastreid_aqe(qf: np.ndarray, gf: np.ndarray, k: int, alpha: float, times: int) -> tuple[np.ndarray, np.ndarray]:
    """fast-reid's published ``aqe`` definition, transcribed densely: every item becomes the mean
    of its k most cosine-similar items' features (itself included), weighted by similarity**alpha."""
    feats = np.concatenate([qf, gf]).astype(np.float64)
    for _ in range(times):
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
        sims = unit @ unit.T
        top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
        weights = np.take_along_axis(sims, top, axis=1) ** alpha
        feats = (feats[top] * weights[..., None]).mean(axis=1)
    return feats[: len(qf)], feats[len(qf) :]


@pytest.mark.parametrize("seed", range(8))
def test_aqe_equals_fastreids_definition(seed: int) -> None:
    p = clustered_problem(100 + seed)
    rng = np.random.default_rng(seed)
    options = {"k": int(rng.integers(1, 12)), "alpha": float(rng.choice([1.0, 3.0])), "times": int(rng.integers(1, 3))}
    keep = ~p["g_junk"]
    qe, ge = fastreid_aqe(p["qf"], p["gf"][keep], **options)
    expanded = {**p, "g_junk": np.zeros(keep.sum(), bool), "g_distractor": p["g_distractor"][keep]}
    expanded.update(g_pids=p["g_pids"][keep], g_camids=p["g_camids"][keep])
    for metric in ("cosine", "euclidean"):
        reference = evaluate(qe, ge, *labels(expanded), metric=metric, g_distractor=expanded["g_distractor"])
        ours = evaluate(
            p["qf"], p["gf"], *labels(p), metric=metric, g_junk=p["g_junk"], g_distractor=p["g_distractor"], aqe=options
        )
        assert abs(ours["mAP"] - reference["mAP"]) < TOL
        np.testing.assert_allclose(ours["cmc"], reference["cmc"], rtol=0, atol=TOL)


def test_aqe_features_equal_fastreids_definition(monkeypatch) -> None:
    """The expanded features themselves, with tiles small enough to merge across several."""
    from reidray.score.expansion import AqeOptions, expand

    monkeypatch.setattr(neighbours, "TILE", 9)
    p = clustered_problem(7)
    qe, ge = expand(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), AqeOptions(k=5, alpha=3.0, times=2))
    ref_q, ref_g = fastreid_aqe(p["qf"], p["gf"], 5, 3.0, 2)
    np.testing.assert_allclose(qe.numpy(), ref_q, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ge.numpy(), ref_g, rtol=1e-5, atol=1e-6)


def test_aqe_then_rerank_is_reranking_of_the_expanded_features() -> None:
    """Both options: expansion first, as fast-reid's evaluator does."""
    p = clustered_problem(9)
    qe, ge = fastreid_aqe(p["qf"], p["gf"], 5, 3.0, 1)
    both = evaluate(p["qf"], p["gf"], *labels(p), aqe={}, rerank={})
    reference = torchreid_rerank(qe.astype(np.float32), ge.astype(np.float32), "cosine", {})
    none = np.zeros(len(p["gf"]), bool)
    cmc, mAP, _ = torchreid_scores({**p, "g_junk": none, "g_distractor": none}, reference)
    assert abs(both["mAP"] - mAP) < TOL
    np.testing.assert_allclose(both["cmc"][: len(cmc)], cmc, rtol=0, atol=TOL)


@pytest.mark.parametrize(
    "options, message",
    [({"qe_k": 3}, "unknown query-expansion option"), ({"k": 0}, "k must be"), ({"times": 1.5}, "times must be")],
)
def test_bad_aqe_options_are_refused(options: dict, message: str) -> None:
    p = clustered_problem(0)
    with pytest.raises(ValueError, match=message):
        evaluate(p["qf"], p["gf"], *labels(p), aqe=options)
