"""Per-dataset protocols: which images are queries, gallery, positives; rows; refusals."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from reidray import datasets
from reidray.errors import CellError, UnknownNameError
from reidray.score import evaluate
from reidray.score.protocols import PROTOCOLS, score_cell

DIM = 8
ROW_KEYS = {
    "protocol",
    "postprocess",
    "trial",
    "aggregate",
    "mAP",
    "rank1",
    "rank5",
    "rank10",
    "rank20",
    "mINP",
    "cmc",
    "n_query",
    "n_query_scored",
    "n_gallery",
}


def make_table(n: int = 240, n_ids: int = 20, n_cams: int = 4, seed: int = 0, **columns) -> pa.Table:
    """A joined embeddings+manifest table: features cluster by identity, so metrics are non-trivial."""
    rng = np.random.default_rng(seed)
    pid = rng.integers(1, n_ids + 1, n)
    centres = rng.standard_normal((n_ids + 1, DIM))
    features = (centres[pid] + 1.5 * rng.standard_normal((n, DIM))).astype(np.float32)
    data = {
        "image_id": [f"img_{i:04d}.jpg" for i in range(n)],
        "pid": pid,
        "camid": rng.integers(0, n_cams, n).astype(np.int32),
        "split": np.where(rng.random(n) < 0.25, "query", "gallery"),
        "is_junk": np.zeros(n, bool),
        "is_distractor": np.zeros(n, bool),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(features.ravel()), DIM),
    }
    data.update(columns)
    return pa.table(data)


def column(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy(zero_copy_only=False)


def features(table: pa.Table) -> np.ndarray:
    return np.stack(table.column("embedding").to_pylist()).astype(np.float32)


def direct(table: pa.Table, q: np.ndarray, g: np.ndarray, **kwargs) -> dict:
    f, pid, cam = features(table), column(table, "pid"), column(table, "camid")
    return evaluate(f[q], f[g], pid[q], pid[g], cam[q], cam[g], metric="cosine", max_rank=50, **kwargs)


def protocol(dataset: str) -> str:
    """The dataset's protocol, as its registry entry names it (UnknownNameError for other names)."""
    return datasets.get(dataset).protocol


def test_every_dataset_has_a_protocol() -> None:
    assert all(protocol(name) in PROTOCOLS for name in datasets.names())
    assert set(datasets.names()) == {
        "reidray-synth",
        "market1501",
        "dukemtmcreid",
        "msmt17",
        "cuhk03",
        "grid",
        "celebreid",
        "pku",
        "last",
        "iust",
    }


@pytest.mark.parametrize("dataset", ["reidray-synth", "market1501", "dukemtmcreid", "msmt17", "cuhk03", "pku", "iust"])
def test_market_style_datasets_score_query_against_gallery_with_the_market_rule(dataset: str) -> None:
    table = make_table()
    [row] = score_cell(protocol(dataset), table, "cosine")
    split = column(table, "split")
    expected = direct(table, split == "query", split == "gallery")
    assert set(row) == ROW_KEYS
    assert (row["protocol"], row["trial"], row["aggregate"]) == ("market", 0, False)
    assert row["mAP"] == pytest.approx(expected["mAP"]) and row["mINP"] == pytest.approx(expected["mINP"])
    assert [row[f"rank{r}"] for r in (1, 5, 10, 20)] == pytest.approx(expected["cmc"][[0, 4, 9, 19]])
    assert len(row["cmc"]) == 50
    assert (row["n_query"], row["n_gallery"]) == ((split == "query").sum(), (split == "gallery").sum())


def test_junk_is_ignored_and_distractors_are_gallery_negatives_only() -> None:
    base = make_table(seed=1)
    rng = np.random.default_rng(1)
    junk, distractor = rng.random(base.num_rows) < 0.1, rng.random(base.num_rows) < 0.1
    table = make_table(seed=1, is_junk=junk, is_distractor=distractor)
    [row] = score_cell(protocol("market1501"), table, "cosine")
    split = column(table, "split")
    q = (split == "query") & ~junk & ~distractor
    g = (split == "gallery") & ~junk
    expected = direct(table, q, g, g_distractor=distractor[g])
    assert row["mAP"] == pytest.approx(expected["mAP"])
    assert (row["n_query"], row["n_gallery"]) == (q.sum(), g.sum())
    # distractors share real pids here: counted as matches, they would raise the score
    assert row["mAP"] < direct(table, q, g)["mAP"]


def test_market_rule_refuses_a_dataset_without_camera_ids() -> None:
    table = make_table(camid=np.full(240, -1, np.int32))
    with pytest.raises(CellError, match="no camera ids") as error:
        score_cell(protocol("market1501"), table, "cosine", cell="clip/market1501")
    assert str(error.value).startswith("cell clip/market1501: ")


@pytest.mark.parametrize("dataset", ["celebreid", "last"])
def test_celeb_and_last_count_same_camera_matches(dataset: str) -> None:
    table = make_table(camid=np.full(240, -1 if dataset == "last" else 0, np.int32))
    [row] = score_cell(protocol(dataset), table, "cosine")
    split = column(table, "split")
    expected = direct(table, split == "query", split == "gallery", camera_filter=False)
    assert row["protocol"] == "no-camera-filter"
    assert row["mAP"] == pytest.approx(expected["mAP"])
    assert row["n_query_scored"] == expected["n_query_scored"] > 0


def grid_table(n: int = 300, empty_trial: int | None = None) -> tuple[pa.Table, np.ndarray]:
    """Each non-distractor image is in the test set of a random half of the 10 trials."""
    rng = np.random.default_rng(2)
    member = rng.random((n, 10)) < 0.5
    distractor = rng.random(n) < 0.3
    if empty_trial is not None:
        member[:, empty_trial] = False
    trials = pa.array(
        [list(np.flatnonzero(m)) if not d else [] for m, d in zip(member, distractor, strict=True)],
        type=pa.list_(pa.int8()),
    )
    table = make_table(
        n=n,
        n_ids=40,
        n_cams=8,
        seed=2,
        grid_trials=trials,
        is_distractor=distractor,
        pid=np.where(distractor, 0, np.random.default_rng(2).integers(1, 41, n)),
    )
    return table, member & ~distractor[:, None]


def test_grid_scores_each_of_its_ten_trials_and_their_mean() -> None:
    table, member = grid_table()
    rows = score_cell(protocol("grid"), table, "cosine")
    assert [(r["trial"], r["aggregate"]) for r in rows] == [(t, False) for t in range(10)] + [(-1, True)]
    split, distractor = column(table, "split"), column(table, "is_distractor")
    for t in (0, 7):
        q = (split == "query") & member[:, t]
        g = (split == "gallery") & (member[:, t] | distractor)
        expected = direct(table, q, g, g_distractor=distractor[g])
        assert rows[t]["mAP"] == pytest.approx(expected["mAP"])
        assert (rows[t]["n_query"], rows[t]["n_gallery"]) == (q.sum(), g.sum())
    assert len({r["mAP"] for r in rows[:10]}) > 1  # the trials really differ
    mean = rows[-1]
    assert mean["mAP"] == pytest.approx(np.mean([r["mAP"] for r in rows[:10]]))
    assert mean["cmc"] == pytest.approx(np.mean([r["cmc"] for r in rows[:10]], axis=0))
    assert all(r["protocol"] == "grid" for r in rows)


def test_grid_without_its_partition_or_with_an_empty_trial_fails_naming_it() -> None:
    with pytest.raises(CellError, match="grid_trials"):
        score_cell(protocol("grid"), make_table(), "cosine")
    table, _ = grid_table(empty_trial=3)
    with pytest.raises(CellError, match=r"GRID trial 3\): the query set is empty"):
        score_cell(protocol("grid"), table, "cosine")


def test_embedding_columns_of_other_shapes_and_chunked_tables() -> None:
    table = make_table()
    [reference] = score_cell(protocol("market1501"), table, "cosine")
    f = features(table)
    as_list = table.set_column(6, "embedding", pa.array(list(f), type=pa.list_(pa.float32())))
    half = table.set_column(
        6, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(f.ravel().astype(np.float16)), DIM)
    )
    chunked = pa.concat_tables([table.slice(0, 100), table.slice(100)])
    assert score_cell(protocol("market1501"), as_list, "cosine")[0]["mAP"] == pytest.approx(reference["mAP"])
    assert score_cell(protocol("market1501"), chunked, "cosine")[0]["mAP"] == pytest.approx(reference["mAP"])
    assert score_cell(protocol("market1501"), half, "cosine")[0]["mAP"] == pytest.approx(reference["mAP"], abs=0.02)


def test_bad_tables_fail_the_cell() -> None:
    table = make_table()
    f = features(table)
    f[5, 2] = np.nan
    nan = table.set_column(6, "embedding", pa.FixedSizeListArray.from_arrays(pa.array(f.ravel()), DIM))
    with pytest.raises(CellError, match="cell vit/msmt17: .*NaN or infinite"):
        score_cell(protocol("msmt17"), nan, "cosine", cell="vit/msmt17")
    ragged = table.set_column(6, "embedding", pa.array([[1.0, 2.0]] + [[1.0]] * 239))
    with pytest.raises(CellError, match="different lengths"):
        score_cell(protocol("msmt17"), ragged, "cosine")
    with pytest.raises(CellError, match="lacks column.*is_junk"):
        score_cell(protocol("msmt17"), table.drop_columns(["is_junk"]), "cosine")


def test_unknown_dataset_lists_the_known_ones() -> None:
    with pytest.raises(UnknownNameError, match="market1501"):
        score_cell(protocol("viper"), make_table(), "cosine")


@pytest.mark.parametrize("dataset", ["grid", "last", "pku"])
def test_manifests_from_the_dataset_parsers_score_end_to_end(dataset: str, tmp_path) -> None:
    """The datasets package's manifests (synthetic release layouts) meet these protocols."""
    from reidray.datasets import load
    from reidray.datasets.synth import generate

    generate(tmp_path, n_ids=24, n_cams=4, layout=dataset)
    manifest = load(dataset, tmp_path)
    _, identity = np.unique(manifest.column("pid").to_numpy(), return_inverse=True)
    rng = np.random.default_rng(0)
    features = rng.standard_normal((identity.max() + 1, DIM))[identity] + 0.3 * rng.standard_normal(
        (len(identity), DIM)
    )
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(features.astype(np.float32).ravel()), DIM)
    rows = score_cell(protocol(dataset), manifest.append_column("embedding", embedding), "cosine")
    assert len(rows) == (11 if dataset == "grid" else 1)
    assert all(r["n_query_scored"] > 0 and r["mAP"] > 0.9 for r in rows)  # identity-coded features


@pytest.mark.parametrize("postprocess, options", [("rerank", {"k1": 10, "k2": 3, "lambda_value": 0.3}), ("aqe", None)])
def test_post_processing_reaches_evaluate_and_tags_the_rows(postprocess: str, options: dict | None) -> None:
    table = make_table()
    split = column(table, "split")
    [row] = score_cell(protocol("market1501"), table, "cosine", postprocess=postprocess, options=options)
    expected = direct(table, split == "query", split == "gallery", **{postprocess: options or {}})
    assert row["postprocess"] == postprocess and row["mAP"] == pytest.approx(expected["mAP"], abs=1e-12)
    assert row["mAP"] != score_cell(protocol("market1501"), table, "cosine")[0]["mAP"]
    assert score_cell(protocol("market1501"), table, "cosine")[0]["postprocess"] == "none"


def test_grid_trials_are_post_processed_each() -> None:
    table, member = grid_table()
    rows = score_cell(protocol("grid"), table, "cosine", postprocess="rerank")
    assert len(rows) == 11 and {r["postprocess"] for r in rows} == {"rerank"}
    split, distractor = column(table, "split"), column(table, "is_distractor")
    q, g = (split == "query") & member[:, 3], (split == "gallery") & (member[:, 3] | distractor)
    assert rows[3]["mAP"] == pytest.approx(direct(table, q, g, g_distractor=distractor[g], rerank={})["mAP"], abs=1e-12)


def test_unknown_post_processing_is_refused() -> None:
    with pytest.raises(UnknownNameError, match="valid post-processings: aqe, none, rerank"):
        score_cell(protocol("market1501"), make_table(), "cosine", postprocess="diffusion")
