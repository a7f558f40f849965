"""reidray.score.evaluate against torchreid's eval_market1501 and a brute-force reference."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from reidray.errors import CellError, UnknownNameError
from reidray.score import evaluate, evaluate_distances
from reidray.score.metrics import _positive_ranks_rows, _positive_ranks_sorted

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # "Cython evaluation unavailable": pip's torchreid is pure Python
    from torchreid.reid.metrics.distance import compute_distance_matrix
    from torchreid.reid.metrics.rank import eval_market1501

TOL = 1e-6


def random_problem(seed: int, dim: int = 16, dtype=np.float64) -> dict:
    """Random sizes, identities, cameras, junk and distractors; some queries have no match."""
    rng = np.random.default_rng(seed)
    n_q, n_g = int(rng.integers(5, 60)), int(rng.integers(80, 300))
    n_ids, n_cams = int(rng.integers(2, 30)), int(rng.integers(2, 7))
    q_pids = rng.integers(0, n_ids + 3, n_q)  # ids >= n_ids never appear in the gallery
    g_pids = rng.integers(0, n_ids, n_g)
    return {
        "qf": rng.standard_normal((n_q, dim)).astype(dtype),
        "gf": rng.standard_normal((n_g, dim)).astype(dtype),
        "q_pids": q_pids,
        "g_pids": g_pids,
        "q_camids": rng.integers(0, n_cams, n_q),
        "g_camids": rng.integers(0, n_cams, n_g),
        "g_junk": rng.random(n_g) < rng.choice([0.0, 0.1]),
        "g_distractor": rng.random(n_g) < rng.choice([0.0, 0.2]),
    }


def torchreid_reference(p: dict, dist: np.ndarray, max_rank: int) -> tuple[np.ndarray, float]:
    """torchreid knows no junk or distractors: drop junk, give distractors a pid no query has."""
    keep = ~p["g_junk"]
    g_pids = np.where(p["g_distractor"], -999, p["g_pids"])[keep]
    return eval_market1501(dist[:, keep], p["q_pids"], g_pids, p["q_camids"], p["g_camids"][keep], max_rank)


def brute_force(p: dict, dist: np.ndarray, max_rank: int) -> dict:
    """Per query: full order by distance, negatives first on equal distance; AP, CMC, INP."""
    aps, inps, firsts = [], [], []
    for i in range(len(dist)):
        same = p["g_pids"] == p["q_pids"][i]
        keep = ~p["g_junk"] & ~(same & ~p["g_distractor"] & (p["g_camids"] == p["q_camids"][i]))
        positive = (same & ~p["g_distractor"])[keep]
        if not positive.any():
            continue
        order = np.lexsort((positive, dist[i][keep]))  # by distance, then negatives before positives
        ranks = np.flatnonzero(positive[order]) + 1
        aps.append(np.mean(np.arange(1, len(ranks) + 1) / ranks))
        inps.append(len(ranks) / ranks[-1])
        firsts.append(ranks[0])
    firsts = np.array(firsts)
    cmc = np.array([(firsts <= r).mean() for r in range(1, max_rank + 1)])
    return {"mAP": np.mean(aps), "mINP": np.mean(inps), "cmc": cmc, "n_query_scored": len(aps)}


def safe_max_rank(p: dict) -> int:
    """torchreid needs every query's kept gallery to reach max_rank (else its arrays are ragged)."""
    n_kept = (~p["g_junk"]).sum() - max(
        ((p["g_pids"] == q) & (p["g_camids"] == c) & ~p["g_junk"] & ~p["g_distractor"]).sum()
        for q, c in zip(p["q_pids"], p["q_camids"], strict=True)
    )
    return int(min(50, n_kept))


def args(p: dict) -> tuple:
    return p["qf"], p["gf"], p["q_pids"], p["g_pids"], p["q_camids"], p["g_camids"]


def assert_same(ours: dict, cmc: np.ndarray, mAP: float) -> None:
    assert abs(ours["mAP"] - mAP) < TOL
    np.testing.assert_allclose(ours["cmc"][: len(cmc)], cmc, rtol=0, atol=TOL)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", range(15))
def test_equals_torchreid_on_random_float64_problems(seed: int, metric: str) -> None:
    p = random_problem(seed)
    dist = compute_distance_matrix(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), metric).numpy()
    max_rank = safe_max_rank(p)
    reference = brute_force(p, dist, max_rank)
    if reference["n_query_scored"] == 0:
        pytest.skip("no valid query in this draw")  # covered by the error tests
    ours = evaluate(*args(p), metric=metric, max_rank=max_rank, g_junk=p["g_junk"], g_distractor=p["g_distractor"])
    assert_same(ours, *torchreid_reference(p, dist, max_rank))
    assert abs(ours["mINP"] - reference["mINP"]) < TOL
    assert ours["n_query"] == len(p["qf"])
    assert ours["n_query_scored"] == reference["n_query_scored"]
    assert ours["n_gallery"] == (~p["g_junk"]).sum()


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("seed", range(10))
def test_equals_torchreid_in_float32_with_exact_distances(seed: int, metric: str) -> None:
    """Gallery = unit vectors, each query a permutation of small integers: every float32 distance
    is exact (squared norms stay below 2**24) and distinct in a row: no rounding doubt."""
    p = random_problem(100 + seed)
    n_g = len(p["gf"])
    rng = np.random.default_rng(seed)
    p["qf"] = np.stack([rng.permutation(n_g) for _ in p["qf"]]).astype(np.float32)
    p["gf"] = np.eye(n_g, dtype=np.float32)
    dist = -p["qf"].astype(np.float64)  # both metrics rank by the query's coordinate, descending
    max_rank = safe_max_rank(p)
    if brute_force(p, dist, max_rank)["n_query_scored"] == 0:
        pytest.skip("no valid query in this draw")
    ours = evaluate(*args(p), metric=metric, max_rank=max_rank, g_junk=p["g_junk"], g_distractor=p["g_distractor"])
    assert_same(ours, *torchreid_reference(p, dist, max_rank))


@pytest.mark.parametrize("seed", range(15))
def test_a_given_distance_matrix_scores_as_in_torchreid(seed: int) -> None:
    """The same float32 matrix into both evaluators: nothing but the ranking logic differs."""
    p = random_problem(300 + seed, dtype=np.float32)
    dist = compute_distance_matrix(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), "euclidean").numpy()
    assert all(len(np.unique(row)) == len(row) for row in dist), "a tie: pick another seed"
    max_rank = safe_max_rank(p)
    if brute_force(p, dist, max_rank)["n_query_scored"] == 0:
        pytest.skip("no valid query in this draw")
    ours = evaluate_distances(dist, *args(p)[2:], max_rank=max_rank, g_junk=p["g_junk"], g_distractor=p["g_distractor"])
    assert_same(ours, *torchreid_reference(p, dist, max_rank))
    assert abs(ours["mINP"] - brute_force(p, dist, max_rank)["mINP"]) < TOL


def test_features_and_their_distance_matrix_score_the_same() -> None:
    p = random_problem(8)
    kwargs = {"g_junk": p["g_junk"], "g_distractor": p["g_distractor"], "chunk_size": 5}
    for metric in ("cosine", "euclidean"):
        dist = compute_distance_matrix(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), metric)
        from_features = evaluate(*args(p), metric=metric, **kwargs)
        from_matrix = evaluate_distances(dist, *args(p)[2:], **kwargs)
        assert from_matrix["mAP"] == pytest.approx(from_features["mAP"], abs=1e-12)
        np.testing.assert_allclose(from_matrix["cmc"], from_features["cmc"], atol=1e-12)


def test_a_bad_distance_matrix_fails_the_cell() -> None:
    p = random_problem(2)
    dist = np.random.default_rng(0).random((len(p["qf"]), len(p["gf"])))
    with pytest.raises(CellError, match="cell x: query pids must be"):
        evaluate_distances(dist[1:], *args(p)[2:], cell="x")
    dist[3, 4] = np.nan
    with pytest.raises(CellError, match="cell x: the distance matrix contains NaN"):
        evaluate_distances(dist, *args(p)[2:], cell="x")


def test_chunking_does_not_change_the_result() -> None:
    p = random_problem(3)
    results = [evaluate(*args(p), metric="cosine", g_junk=p["g_junk"], chunk_size=size) for size in (1, 4, None)]
    for r in results[1:]:
        assert r["mAP"] == pytest.approx(results[0]["mAP"], abs=1e-12)
        np.testing.assert_allclose(r["cmc"], results[0]["cmc"], atol=1e-12)


def test_ties_count_against_the_model_whatever_the_gallery_order() -> None:
    qf = np.array([[1.0, 0.0]], dtype=np.float32)
    gf = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]], dtype=np.float32)
    g_pids = np.array([1, 7, 1, 8, 1])  # a positive and a negative at each of two distances
    for order in ([0, 1, 2, 3, 4], [4, 3, 2, 1, 0]):
        m = evaluate(qf, gf[order], np.array([1]), g_pids[order], np.array([0]), np.ones(5, int)[order])
        # negatives first on ties: positives at ranks 2, 4, 5
        assert m["mAP"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)
        assert m["cmc"][0] == 0 and m["cmc"][1] == 1
        assert m["mINP"] == pytest.approx(3 / 5)


@pytest.mark.parametrize("seed", range(5))
def test_ties_on_integer_distances_match_the_brute_force_rule(seed: int) -> None:
    p = random_problem(200 + seed)
    rng = np.random.default_rng(seed)
    p["qf"] = rng.integers(-2, 3, p["qf"].shape).astype(np.float32)  # many equal distances
    p["gf"] = rng.integers(-2, 3, p["gf"].shape).astype(np.float32)
    dist = compute_distance_matrix(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), "euclidean").numpy()
    reference = brute_force(p, dist, 50)
    if reference["n_query_scored"] == 0:
        pytest.skip("no valid query in this draw")
    ours = evaluate(*args(p), metric="euclidean", g_junk=p["g_junk"], g_distractor=p["g_distractor"])
    for key in ("mAP", "mINP"):
        assert ours[key] == pytest.approx(reference[key], abs=1e-12)
    np.testing.assert_allclose(ours["cmc"], reference["cmc"], atol=1e-12)


@pytest.mark.parametrize("ties", [False, True])
def test_gpu_kernel_gives_the_cpu_kernels_ranks(ties: bool) -> None:
    """The batched sort-based ranks (the GPU path), run here on the CPU, equal the row kernel's."""
    rng = np.random.default_rng(5)
    dist = rng.integers(0, 20, (30, 200)).astype(np.float32) if ties else rng.random((30, 200), dtype=np.float32)
    same = np.full((30, 12), -1)
    is_pos = np.zeros((30, 12), bool)
    for i in range(30):
        n = rng.integers(0, 13)
        same[i, :n] = rng.choice(200, n, replace=False)
        is_pos[i, :n] = rng.random(n) < 0.7
    rows = _positive_ranks_rows(dist, same, is_pos)
    batched = _positive_ranks_sorted(torch.from_numpy(dist), same, is_pos)
    width = rows.shape[1]
    np.testing.assert_array_equal(batched[:, :width], rows)
    assert (batched[:, width:] == np.iinfo(np.int64).max).all()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_equals_cpu() -> None:
    p = random_problem(7, dtype=np.float32)
    cpu = evaluate(*args(p), g_junk=p["g_junk"], g_distractor=p["g_distractor"], device="cpu")
    gpu = evaluate(*args(p), g_junk=p["g_junk"], g_distractor=p["g_distractor"], device="cuda")
    assert gpu["mAP"] == pytest.approx(cpu["mAP"], abs=TOL)
    np.testing.assert_allclose(gpu["cmc"], cpu["cmc"], atol=TOL)


def test_without_camera_filter_same_camera_matches_are_positives() -> None:
    p = random_problem(11)
    p["g_camids"][:] = p["q_camids"][0]
    p["q_camids"][:] = p["q_camids"][0]  # one camera: the Market rule would remove every match
    dist = compute_distance_matrix(torch.from_numpy(p["qf"]), torch.from_numpy(p["gf"]), "cosine").numpy()
    ours = evaluate(*args(p), metric="cosine", max_rank=20, camera_filter=False)
    unique = {"q_camids": np.zeros(len(p["qf"]), int), "g_camids": np.ones(len(p["gf"]), int)}
    p_ref = {**p, **unique, "g_junk": np.zeros(len(p["gf"]), bool), "g_distractor": np.zeros(len(p["gf"]), bool)}
    assert_same(ours, *torchreid_reference(p_ref, dist, 20))
    with pytest.raises(CellError, match="valid match"):
        evaluate(*args(p), metric="cosine")


def test_the_metric_decides_the_ranking() -> None:
    qf = np.array([[1.0, 0.0]])
    gf = np.array([[10.0, 1.0], [0.9, 0.5]])  # same direction but far; near but another direction
    labels = np.array([1]), np.array([1, 2]), np.array([0]), np.array([1, 1])
    assert evaluate(qf, gf, *labels, metric="cosine")["cmc"][0] == 1.0
    assert evaluate(qf, gf, *labels, metric="euclidean")["cmc"][0] == 0.0


def test_accepts_torch_half_features_and_a_curve_longer_than_the_gallery() -> None:
    p = random_problem(4, dtype=np.float32)
    as_numpy = evaluate(*args(p), max_rank=400)
    t = {k: torch.from_numpy(v) for k, v in p.items()}
    as_torch = evaluate(t["qf"], t["gf"], t["q_pids"], t["g_pids"], t["q_camids"], t["g_camids"], max_rank=400)
    assert as_torch["mAP"] == as_numpy["mAP"]
    assert len(as_numpy["cmc"]) == 400 and as_numpy["cmc"][-1] == 1.0
    half = evaluate(p["qf"].astype(np.float16), p["gf"].astype(np.float16), *args(p)[2:])
    assert half["mAP"] == pytest.approx(as_numpy["mAP"], abs=0.05)
    p["qf"].flags.writeable = p["gf"].flags.writeable = False  # as Arrow hands them over
    assert evaluate(*args(p), max_rank=400)["mAP"] == as_numpy["mAP"]


def test_skipped_queries_are_counted() -> None:
    qf = np.eye(3)
    gf = np.eye(3)
    m = evaluate(qf, gf, np.array([1, 2, 9]), np.array([1, 2, 2]), np.array([0, 0, 0]), np.array([1, 0, 1]))
    # query 1 (pid 2): its cam-0 match is removed, the cam-1 one counts; query 9: no match at all
    assert (m["n_query"], m["n_query_scored"], m["n_gallery"]) == (3, 2, 3)


@pytest.mark.parametrize(
    "change, cause",
    [
        (
            lambda p: {"qf": np.where(np.arange(p["qf"].size).reshape(p["qf"].shape) == 3, np.nan, p["qf"])},
            "NaN or infinite",
        ),
        (lambda p: {"gf": np.full_like(p["gf"], np.inf)}, "NaN or infinite"),
        (lambda p: {"gf": p["gf"][:, :8]}, "dimension 16 but gallery features have 8"),
        (lambda p: {"qf": p["qf"][:0], "q_pids": p["q_pids"][:0], "q_camids": p["q_camids"][:0]}, "query set is empty"),
        (lambda p: {"g_junk": np.ones(len(p["gf"]), bool)}, "gallery set is empty"),
        (lambda p: {"q_pids": p["q_pids"] + 1000}, "none of the"),
        (lambda p: {"g_camids": np.full(len(p["gf"]), -1)}, "no camera ids"),
        (lambda p: {"q_pids": p["q_pids"][:-1]}, "query pids must be"),
        (lambda p: {"gf": p["gf"] * 1e30}, "too large"),
    ],
)
def test_bad_input_fails_the_cell_naming_it_and_the_cause(change, cause: str) -> None:
    p = random_problem(1, dtype=np.float32)
    extra = {"g_junk": None}
    for key, value in change(p).items():
        (extra if key == "g_junk" else p)[key] = value
    with pytest.raises(CellError, match=cause) as error:
        evaluate(*args(p), metric="euclidean", cell="osnet/market1501", **extra)
    assert str(error.value).startswith("cell osnet/market1501: ")


def test_unknown_metric_lists_the_valid_ones() -> None:
    p = random_problem(1)
    with pytest.raises(UnknownNameError, match="cosine, euclidean"):
        evaluate(*args(p), metric="manhattan")
