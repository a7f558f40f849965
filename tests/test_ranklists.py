"""Rank lists: computed by score from the metric's own ranking and APs, stored as Parquet, drawn by
the report as PNG sheets linked from its pages, and one query at a time by the `ranks` command."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from PIL import Image

from reidray.cells import MANIFEST_SCHEMA, CellRecord
from reidray.config import JobConfig
from reidray.embed.actor import embedding_array
from reidray.errors import ReidrayError
from reidray.models import build, get
from reidray.report.build import HTML, MARKDOWN, write_report
from reidray.report.ranklists import COLOURS, FRAME, PLACEHOLDER, draw_sheet, sheet_size, slot_origin
from reidray.run import build_job
from reidray.score import evaluate
from reidray.score.protocols import Scoring, plain, score_cell
from reidray.score.ranklists import HARDEST, RANDOM, TOP, for_query, sheet
from reidray.store import Store, seal_parts

DIM = 8
DATASET = "reidray-synth"  # Market rule
MODEL = "handcrafted"


def cell_table(seed: int = 0, n_ids: int = 15) -> pa.Table:
    """A joined cell: per identity 2 queries and 4 gallery images over 3 cameras (some share the
    query's camera), plus junk and distractor gallery images; features cluster by identity."""
    rng = np.random.default_rng(seed)
    rows = []
    for pid in range(1, n_ids + 1):
        rows += [(pid, cam, "query", False, False) for cam in (0, 1)]
        rows += [(pid, cam, "gallery", False, False) for cam in (0, 1, 2, 2)]
    rows += [(-1, int(c), "gallery", True, False) for c in rng.integers(0, 3, 6)]  # junk
    rows += [(0, int(c), "gallery", False, True) for c in rng.integers(0, 3, 6)]  # distractors
    pid, cam, split, junk, distractor = (np.array(c) for c in zip(*rows, strict=True))
    centres = rng.standard_normal((n_ids + 2, DIM))
    features = (centres[pid + 1] + 1.3 * rng.standard_normal((len(pid), DIM))).astype(np.float32)
    ids = [f"{split[i]}/{max(pid[i], 0):04d}_c{cam[i] + 1}s1_{i:06d}_00.jpg" for i in range(len(pid))]
    return pa.table({
        "image_id": ids, "path": [f"/nowhere/{i}" for i in ids], "pid": pid.astype(np.int64),
        "camid": cam.astype(np.int32), "split": split, "is_junk": junk, "is_distractor": distractor,
        "embedding": embedding_array(features),
    })


def columns(table: pa.Table) -> dict[str, np.ndarray]:
    names = ("pid", "camid", "split", "is_junk", "is_distractor")
    out = {c: table.column(c).to_numpy(zero_copy_only=False) for c in names}
    out["image_id"] = np.array(table.column("image_id").to_pylist(), dtype=object)
    out["f"] = np.stack(table.column("embedding").to_pylist()).astype(np.float32)
    return out


def test_rank_lists_follow_the_metric_ranking_aps_and_exclusions() -> None:
    table = cell_table()
    c = columns(table)
    aps: dict = {}
    [row] = score_cell("market", table, "cosine", aps=aps)
    ap = aps[0]
    assert np.nanmean(ap) == pytest.approx(row["mAP"], abs=1e-12)
    lists = pl.from_arrow(pa.Table.from_pylist(sheet("market", table, plain("cosine"), "t", aps)))
    assert lists["sheet_row"].n_unique() == HARDEST + RANDOM and (lists.group_by("sheet_row").len()["len"] == TOP).all()

    queries = np.flatnonzero((c["split"] == "query") & ~c["is_junk"] & ~c["is_distractor"])
    gallery = np.flatnonzero(c["split"] == "gallery")
    f = c["f"] / np.linalg.norm(c["f"], axis=1, keepdims=True)
    hardest = lists.filter(pl.col("kind") == "hardest").group_by("sheet_row", maintain_order=True).first()
    # the hardest are the lowest of the APs the metric computed, lowest first
    assert hardest["ap"].to_list() == pytest.approx(np.sort(ap)[:HARDEST].tolist(), abs=0)
    for query_row in lists.partition_by("sheet_row", maintain_order=True):
        q = queries[list(c["image_id"][queries]).index(query_row["query_id"][0])]
        # the query's AP is the metric's, here for the query alone
        counted = gallery[~c["is_junk"][gallery]]
        alone = evaluate(f[[q]], f[counted], c["pid"][[q]], c["pid"][counted], c["camid"][[q]], c["camid"][counted],
                         g_distractor=c["is_distractor"][counted])
        assert query_row["ap"][0] == pytest.approx(alone["mAP"], abs=1e-9)
        # statuses: junk exactly where the manifest says, same camera exactly where the Market rule removes
        g = np.array([list(c["image_id"]).index(i) for i in query_row["gallery_id"]])
        same = (c["pid"][g] == c["pid"][q]) & ~c["is_distractor"][g]
        expected = np.where(c["is_junk"][g], "junk", np.where(same & (c["camid"][g] == c["camid"][q]), "same-camera",
                                                               np.where(same, "match", "wrong")))
        assert query_row["status"].to_list() == expected.tolist()
        # the top-1 is the nearest gallery image after the protocol's exclusions
        removed = c["is_junk"][gallery] | ((c["pid"][gallery] == c["pid"][q]) & (c["camid"][gallery] == c["camid"][q])
                                           & ~c["is_distractor"][gallery])
        d = -(f[gallery] @ f[q])
        nearest = gallery[np.argmin(np.where(removed, np.inf, d))]
        first = query_row.filter(pl.col("rank") == 1)
        assert first["gallery_id"].to_list() == [c["image_id"][nearest]]
        # ranks count only what the metric counts, in distance order
        assert query_row["distance"].is_sorted()
        kept = query_row.filter(pl.col("rank").is_not_null())["rank"].to_list()
        assert kept == list(range(1, len(kept) + 1))
        assert query_row.filter(pl.col("status").is_in(["junk", "same-camera"]))["rank"].null_count() == \
            query_row["status"].is_in(["junk", "same-camera"]).sum()
    assert set(lists["status"]) >= {"match", "wrong", "same-camera"}

    # the random rows are the same on every run, and the same for another model of the dataset
    again = pl.from_arrow(pa.Table.from_pylist(sheet("market", table, plain("cosine"), "t", aps)))
    assert again.equals(lists)
    noise = np.random.default_rng(9).standard_normal((table.num_rows, DIM)).astype(np.float32)
    other = table.set_column(table.schema.get_field_index("embedding"), "embedding", embedding_array(noise))
    other_aps: dict = {}
    score_cell("market", other, "cosine", aps=other_aps)
    theirs = pl.from_arrow(pa.Table.from_pylist(sheet("market", other, plain("cosine"), "t", other_aps)))
    mine_random = set(lists.filter(pl.col("kind") == "random")["query_id"])
    their_random = set(theirs.filter(pl.col("kind") == "random")["query_id"])
    their_hardest = set(theirs.filter(pl.col("kind") == "hardest")["query_id"])
    my_hardest = set(lists.filter(pl.col("kind") == "hardest")["query_id"])
    # both are the first of one seeded order of the queries, each without its own hardest
    shared = RANDOM - len(mine_random & their_hardest) - len(their_random & my_hardest)
    assert len(mine_random & their_random) >= shared > 0


def test_a_fusion_of_one_weighted_member_lists_as_that_member() -> None:
    table = cell_table(1)
    table = table.append_column("second", table.column("embedding"))
    fused: dict = {}
    mine: dict = {}
    score_cell("market", table, "cosine", aps=mine)
    members = (("embedding", "cosine", 1.0), ("second", "euclidean", 0.0))
    from reidray.score.protocols import score_fusion

    score_fusion("market", table, list(members), aps=fused)
    np.testing.assert_allclose(fused[0], mine[0], atol=1e-9)
    a = pl.from_arrow(pa.Table.from_pylist(sheet("market", table, Scoring(members, {}), "t", fused)))
    b = pl.from_arrow(pa.Table.from_pylist(sheet("market", table, plain("cosine"), "t", mine)))
    shown = ("query_id", "gallery_id", "status", "rank")
    assert a.select(shown).equals(b.select(shown))


def test_one_query_by_file_name_path_or_id_and_an_unknown_one_refused() -> None:
    table = cell_table()
    c = columns(table)
    aps: dict = {}
    score_cell("market", table, "cosine", aps=aps)
    query_id = c["image_id"][c["split"] == "query"][3]
    by_id = for_query("market", table, plain("cosine"), "t", query_id)
    by_name = for_query("market", table, plain("cosine"), "t", Path(query_id).name)
    by_path = for_query("market", table, plain("cosine"), "t", f"/nowhere/{query_id}")
    assert by_id == by_name == by_path and len(by_id) == TOP and by_id[0]["kind"] == "asked"
    assert by_id[0]["ap"] == pytest.approx(aps[0][3], abs=1e-12)
    gallery_name = Path(c["image_id"][c["split"] == "gallery"][0]).name
    for wrong in ("nope.jpg", gallery_name):
        with pytest.raises(ReidrayError, match="is not among the 30 queries of cell t"):
            for_query("market", table, plain("cosine"), "t", wrong)


def _png(path: Path, colour: tuple[int, int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (48, 100), colour).save(path)


def test_a_sheet_has_its_size_frames_by_status_and_placeholders_for_missing_images(tmp_path) -> None:
    statuses = ["match", "wrong", "junk", "same-camera"]
    rows = [{"sheet_row": r, "kind": "hardest", "query_id": f"q{r}", "ap": 0.25 * r, "position": p,
             "gallery_id": f"g{r}_{p}", "status": statuses[(p - 1) % 4], "rank": p}
            for r in range(2) for p in range(1, 6)]
    paths = {f"q{r}": str(tmp_path / f"q{r}.png") for r in range(2)}
    paths.update({f"g{r}_{p}": str(tmp_path / f"g{r}_{p}.png") for r in range(2) for p in range(1, 6)})
    for image_id, path in paths.items():
        if image_id != "g1_2":  # listed in the manifest but gone from disk
            _png(Path(path), (0, 0, 255))
    del paths["g1_3"]  # not in the manifest at all
    png = draw_sheet(pl.DataFrame(rows), paths, "test sheet")
    image = Image.open(io.BytesIO(png)).convert("RGB")
    assert image.size == sheet_size(2, 5)
    for r in range(2):
        x, y = slot_origin(r, 0)
        assert image.getpixel((x + 1, y + 1)) == COLOURS["query"]
        for p in range(1, 6):
            x, y = slot_origin(r, p)
            status = statuses[(p - 1) % 4]
            assert image.getpixel((x + 1, y + 1)) == COLOURS[status]
            inside = image.getpixel((x + FRAME + 30, y + FRAME + 120))
            if f"g{r}_{p}" == "g1_2":  # a wrong identity whose image is gone
                assert inside == PLACEHOLDER
            elif f"g{r}_{p}" == "g1_3":  # junk, not in the manifest: a faded placeholder
                assert inside[0] == inside[1] == inside[2] > PLACEHOLDER[0]
            elif status in ("match", "wrong"):
                assert inside == (0, 0, 255)
            else:  # removed by the protocol: faded towards white
                assert inside[0] > 100 and inside[2] == 255


def _stored_cell(store: Store, root: Path) -> pa.Table:
    """A hand-made stored cell (manifest, sealed parts, cell.json as embed writes them) whose
    images are small PNGs on disk, one of them missing."""
    table = cell_table()
    paths = [str(root / "images" / i) for i in table.column("image_id").to_pylist()]
    pids = table.column("pid").to_numpy()
    for path, pid in zip(paths[1:], pids[1:], strict=True):
        _png(Path(path), (int(pid * 15) % 256, 90, 160))
    manifest = table.set_column(1, "path", pa.array(paths)).drop_columns(["embedding"]).cast(MANIFEST_SCHEMA)
    store.write_table(store.manifest_path(DATASET), manifest)
    store.write_table(f"{store.cell_dir(MODEL, DATASET)}/part-0.parquet",
                      table.select(["image_id", "pid", "camid", "split", "embedding"]))
    parts, _ = seal_parts(store, MODEL, DATASET)
    spec = get(MODEL)
    record = CellRecord(model=MODEL, dataset=DATASET, fingerprint="ranks-test", n_images=table.num_rows, dim=DIM,
                        embed_seconds=1.0, device="cpu", precision="fp32", random_init=False,
                        weights_id=spec.weights_id, paradigm=spec.paradigm, params_m=spec.params_m,
                        metric=spec.metric, normalize=spec.normalize, parts=parts,
                        total_bytes=sum(p.bytes for p in parts))
    store.write_json(f"{store.cell_dir(MODEL, DATASET)}/cell.json", record.to_marker())
    return manifest


@pytest.fixture(scope="module")
def scored(ray_session, tmp_path_factory) -> tuple[Store, pa.Table, list[str]]:
    """The hand-made cell scored through the score stage's Ray tasks, then reported."""
    from reidray import flow

    root = tmp_path_factory.mktemp("ranks")
    store = Store.open(str(root / "out"))
    manifest = _stored_cell(store, root)
    said: list[str] = []
    cells, failures = flow.stored_cells(store, JobConfig(output=store.root))
    assert not failures and not flow.score_stored(store, JobConfig(output=store.root), cells, said.append)
    write_report(store, said.append)
    return store, manifest, said


def test_scoring_stores_rank_lists_the_report_draws_and_links(scored) -> None:
    store, manifest, said = scored
    lists = pl.read_parquet(store.ranklist_path(MODEL, DATASET))
    results = pl.read_parquet(store.result_path(MODEL, DATASET))
    assert set(lists["fingerprint"]) == set(results["fingerprint"]) == {"ranks-test"}
    assert lists["sheet_row"].n_unique() == HARDEST + RANDOM and lists.height == (HARDEST + RANDOM) * TOP
    report = Path(store.report_dir())
    for page in (HTML, MARKDOWN):
        text = (report / page).read_text()
        assert f"ranklists/{MODEL}__{DATASET}.png" in text
    sheet_png = report / "ranklists" / f"{MODEL}__{DATASET}.png"
    assert Image.open(sheet_png).size == sheet_size(HARDEST + RANDOM, TOP)  # the missing image: a placeholder
    assert any("rank lists: 1 sheet" in line for line in said)


def _ranks(out: str, query: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reidray.run", "ranks", "-m", MODEL, "-d", DATASET, "--query", query,
                           "--out", out], capture_output=True, text=True, timeout=120)


def test_ranks_command_draws_one_query_or_refuses_an_unknown_one(scored) -> None:
    store, manifest, _ = scored
    query = Path(manifest.filter(pa.compute.equal(manifest.column("split"), "query")).column("path")[5].as_py())
    done = _ranks(store.root, query.name)
    assert done.returncode == 0, done.stderr
    png = Path(done.stdout.strip().splitlines()[-1])
    assert png.is_file() and Image.open(png).size == sheet_size(1, TOP)
    refused = _ranks(store.root, "no_such_image.jpg")
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.count("\n") == 1 and "is not among the 30 queries" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_embedded_default_fuses_the_colour_and_texture_encoders() -> None:
    job = build_job(None, None, "/tmp/x", None, None, False)
    assert [(f.models, f.weights) for f in job.fusions] == [(["handcrafted-colour", "handcrafted-texture"], [0.7, 0.3])]
    assert build_job(None, None, "/tmp/x", ["handcrafted"], None, False).fusions == []
    assert len(build_job(None, None, "/tmp/x", ["handcrafted-colour,handcrafted-texture"], None, False).fusions) == 1
    pixels = np.random.default_rng(0).random((2, 3, 128, 64)).astype(np.float32)
    import torch

    dims = [build(name).features(torch.from_numpy(pixels), None).shape[1]
            for name in ("handcrafted-colour", "handcrafted-texture", "handcrafted")]
    assert dims == [get("handcrafted-colour").dim, get("handcrafted-texture").dim, get("handcrafted").dim]
    assert dims[0] + dims[1] == dims[2]
