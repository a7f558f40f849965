"""The report: the paper's tables and figures, and reidray against the paper, from a real run.

One synthetic run (the `handcrafted` and `random` models on the built-in synthetic dataset, through
the CLI's embed and score stages) per module. Its rows are the only computed numbers here. The
full-grid tests relabel them across the paper's nine dataset names and a few model names, scaled
by fixed factors, only to exercise the layout of every table and figure: those relabelled numbers
are synthetic and say nothing about any real model or dataset. The unit tests at the end use hand-made rows, and the
paper's own published numbers where a test compares the paper with itself.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from PIL import Image
from typer.testing import CliRunner

from reidray.cells import CellRecord
from reidray.errors import ReidrayError
from reidray.models import get
from reidray.report import figures, paper
from reidray.report.build import build_report, write_report
from reidray.report.frame import PAPER_DATASETS, headline
from reidray.report.tables import ranks
from reidray.run import app
from reidray.score.results import to_table
from reidray.store import Store, seal_parts

METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")
FIGURES = ("fig1_cross_domain", "fig2_retention", "fig3_paradigms", "fig4_size")
HEADER_RGB = (0x1F, 0x3B, 0x63)  # the tables' header background in the HTML page
BEST_RGB = (0xFF, 0xD9, 0x66)  # a best cell's background
PACKAGES = ("chromium", "fonts-dejavu-core")  # Debian's; the fonts so that text renders on a bare image
APT_UNREACHABLE = r"Failed to fetch|Temporary failure resolving|Could not resolve|Unable to locate package"
# (source model of the synthetic run, label it is relabelled to, random_init, scale)
RELABEL = (
    ("handcrafted", "handcrafted", False, 1.0),
    ("random", "random", False, 1.0),
    ("handcrafted", "clip-reid-vit-b16", False, 1.25),
    ("handcrafted", "siglip2-b16-256", False, 0.5),
    # the highest numbers of all, on random weights: they must never be ranked or compared
    ("handcrafted", "dinov2-b14", True, 1.5),
)


@pytest.fixture(scope="module")
def synthetic_run(ray_session, tmp_path_factory) -> Path:
    """The real pipeline, stage by stage (``all`` would also write the report this module tests)."""
    out = tmp_path_factory.mktemp("out")
    for stage in ("embed", "score"):
        result = CliRunner().invoke(app, [stage, "--out", str(out), "-m", "handcrafted,random"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def full_grid(synthetic_run, tmp_path_factory) -> tuple[Store, pl.DataFrame]:
    """The synthetic run's rows relabelled over the paper's nine datasets, one file per cell as the
    score stage writes them; GRID gets 10 trials and a mean row, as its protocol does."""
    source = pl.read_parquet(synthetic_run / "results" / "*.parquet")
    store = Store.open(str(tmp_path_factory.mktemp("full")))
    cells = []
    for i, dataset in enumerate(PAPER_DATASETS):
        for src, model, random_init, scale in RELABEL:
            row = source.filter(pl.col("model") == src).row(0, named=True)
            spec = get(model)
            row.update(model=model, paradigm=spec.paradigm, params=spec.params_m, dataset=dataset,
                       random_init=random_init)
            for m in METRICS:
                row[m] = min(1.0, row[m] * scale * (1 - 0.07 * i))
            rows = [row] if dataset != "grid" else _grid_trials(row)
            store.write_table(store.result_path(model, dataset), to_table(rows))
            _stored_cell(store, model, dataset, row["fingerprint"])
            cells += rows
    return store, pl.from_arrow(to_table(cells))


def _stored_cell(store: Store, model: str, dataset: str, fingerprint: str) -> None:
    """A one-image cell for relabelled rows to come from: the report shows only rows whose cell is
    stored and verified with their fingerprint."""
    ids = ["0001_c1s1_000001_00.jpg"]
    store.write_table(store.manifest_path(dataset), pa.table({"image_id": ids}))
    part = pa.table({"image_id": ids, "pid": [1], "camid": [0], "split": ["query"],
                     "embedding": pa.array([[1.0, 0.0]], pa.list_(pa.float32(), 2))})
    store.write_table(f"{store.cell_dir(model, dataset)}/part-0.parquet", part)
    parts, _ = seal_parts(store, model, dataset)
    spec = get(model)
    record = CellRecord(model=model, dataset=dataset, fingerprint=fingerprint, n_images=1, dim=2,
                        embed_seconds=1.0, device="cpu", precision="fp32", random_init=False,
                        weights_id=spec.weights_id, paradigm=spec.paradigm, params_m=spec.params_m,
                        metric=spec.metric, normalize=spec.normalize, parts=parts, total_bytes=parts[0].bytes)
    store.write_json(f"{store.cell_dir(model, dataset)}/cell.json", record.to_marker())


def _grid_trials(row: dict) -> list[dict]:
    trials = [{**row, "protocol": "grid", "trial": t, "aggregate": False,
               **{m: row[m] * (0.8 + 0.04 * t) for m in METRICS}} for t in range(10)]
    mean = {**row, "protocol": "grid", "trial": -1, "aggregate": True,
            **{m: float(np.mean([t[m] for t in trials])) for m in METRICS}}
    return trials + [mean]


@pytest.fixture(scope="module")
def full_report(full_grid) -> tuple[Path, str, list[str]]:
    store, _ = full_grid
    said: list[str] = []
    main = write_report(store, said.append)
    return Path(store.report_dir()), main, said


def _section(markdown: str, title: str) -> str:
    start = markdown.index(f"## {title}")
    end = markdown.find("\n## ", start + 1)
    return markdown[start:end if end > 0 else None]


def _table_rows(section: str) -> dict[str, list[str]]:
    """Body rows by their first cell (the header row left out)."""
    rows = [line.strip("|").split(" | ") for line in section.splitlines() if line.startswith("| ")][1:]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows}


def test_synthetic_run_report_degrades_gracefully(synthetic_run):
    said: list[str] = []
    main = write_report(Store.open(str(synthetic_run)), said.append)
    report = synthetic_run / "report"
    markdown = (report / "results.md").read_text()
    results = pl.read_parquet(synthetic_run / "results" / "*.parquet")
    handcrafted = results.filter(pl.col("model") == "handcrafted").row(0, named=True)
    assert f"| handcrafted | hand-crafted | 0.0 | **{handcrafted['mAP'] * 100:.2f}** |" in main
    assert main in markdown and main in said[0] and "reidray-synth" in markdown
    # only Figure 4 can be drawn from one synthetic dataset; the others say why not
    assert (report / "fig4_size.png").is_file()
    for key in FIGURES[:3]:
        assert not (report / f"{key}.png").exists()
    assert markdown.count("Not drawn:") == 3 and sum("Not drawn:" in line for line in said) == 3
    assert "No result here is a cell of the paper's Table 2" in markdown
    assert (report / "results.html").read_text().startswith("<!DOCTYPE html>")


def test_tables_follow_the_paper_and_rank_trained_rows_only(full_grid, full_report):
    report, main, said = full_report
    _, cells = full_grid
    markdown = (report / "results.md").read_text()
    assert main == said[0] and main in markdown
    columns = "MSMT17 | Market | Duke | CUHK03 | GRID | PKU | LaST | IUST | Celeb"
    assert f"| model | paradigm | params (M) | {columns} |" in main
    for title, metric in (("mAP (%)", "mAP"), ("rank-1 (%)", "rank1")):
        rows = _table_rows(_section(markdown, title))
        assert list(rows) == ["clip-reid-vit-b16", "siglip2-b16-256", "dinov2-b14 (random-init)", "handcrafted",
                              "random"]
        head = headline(cells)
        for j, dataset in enumerate(PAPER_DATASETS):
            values = head.filter(pl.col("dataset") == dataset)
            value = {r["label"]: f"{r[metric] * 100:.2f}" for r in values.iter_rows(named=True)}
            assert rows["clip-reid-vit-b16"][2 + j] == f"**{value['clip-reid-vit-b16']}**"
            assert rows["handcrafted"][2 + j] == f"<u>{value['handcrafted']}</u>"
            assert rows["dinov2-b14 (random-init)"][2 + j] == value["dinov2-b14 (random-init)"]  # highest, unranked
    grid_mean = cells.filter((pl.col("dataset") == "grid") & pl.col("aggregate") & (pl.col("model") == "random"))
    assert _table_rows(_section(markdown, "mAP (%)"))["random"][6] == f"{grid_mean['mAP'][0] * 100:.2f}"
    paradigms = _table_rows(_section(markdown, "Per paradigm"))
    assert set(paradigms) == {"supervised", "language-aligned", "hand-crafted", "control"}
    assert paradigms["supervised"][3].endswith("(clip-reid-vit-b16)")
    assert "(random-init)" in markdown.split("## rank-1")[0]


def test_comparison_with_the_paper_names_causes_and_skips_random_init(full_grid, full_report):
    report, _, _ = full_report
    _, cells = full_grid
    section = _section((report / "results.md").read_text(), "reidray against the paper")
    rows = _table_rows(section)
    assert list(rows) == ["clip-reid-vit-b16 (CLIP-ReID)", "siglip2-b16-256 (SigLIP2-256)"]
    ours = headline(cells).filter((pl.col("model") == "clip-reid-vit-b16") & (pl.col("dataset") == "msmt17"))["mAP"][0]
    cell = rows["clip-reid-vit-b16 (CLIP-ReID)"][0]
    assert cell.startswith(f"{ours * 100:.2f} / 66.22 ({ours * 100 - 66.22:+.2f}) [")
    legend = dict(re.findall(r"^\[(\d+)\] ([^.]+)\.", section, flags=re.M))
    cuhk03 = rows["siglip2-b16-256 (SigLIP2-256)"][3]
    tags = re.search(r"\[([\d,]+)\]$", cuhk03).group(1).split(",")
    assert {legend[t] for t in tags} == {"Resized twice in the study", "CUHK03: labeled boxes in the study"}
    assert "Not compared (random weights, not results): dinov2-b14 (random-init)." in section


def test_every_figure_is_drawn_and_inlined_in_a_self_contained_page(full_report):
    report, _, said = full_report
    assert "with 4 of 4 figures" in said[1]
    for key in FIGURES:
        image = Image.open(report / f"{key}.png")
        assert image.format == "PNG" and image.width >= 800 and image.height >= 600
        pixels = np.asarray(image.convert("RGB")).reshape(-1, 3)
        assert len(np.unique(pixels, axis=0)) > 20, f"{key} is nearly blank"
    page = (report / "results.html").read_text()
    assert page.count('src="data:image/png;base64,') == 4
    assert not re.search(r'(src|href)="(?!data:)', page), "the page must not load anything from outside"
    assert 'class="best"' in page and '<tr class="random-init">' in page


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_html_page_shows_the_table_in_headless_chromium(full_report, tmp_path):
    report, _, _ = full_report
    shot = tmp_path / "page.png"
    command = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1400,900",
        (report / "results.html").as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000, done.stderr[-2000:]
    pixels = np.asarray(Image.open(shot).convert("RGB"))
    # the table's header row and its best cells are drawn, in their own colours, on the first screen
    header = (pixels == HEADER_RGB).all(axis=-1)
    assert header.sum() > 5_000, header.sum()
    assert (pixels == BEST_RGB).all(axis=-1).sum() > 1_000
    assert header.any(axis=1).nonzero()[0].min() < 300  # the first table starts near the top
    assert (pixels.min(axis=-1) < 80).sum() > 2_000  # dark text


def _chromium() -> str:
    """Chromium's path, installed from Debian's packages when missing (CI starts from a fresh image)."""
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    if os.geteuid() != 0:
        pytest.fail(f"Chromium is missing and this user cannot install it: apt-get install -y {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    steps = (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES])
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True, env=env, timeout=1200)
        output = done.stdout[-3000:] + done.stderr[-3000:]
        if done.returncode != 0 and re.search(APT_UNREACHABLE, output):
            pytest.skip(f"apt is unreachable, so Chromium cannot be installed: {output.strip().splitlines()[-1]}")
        assert done.returncode == 0, output
    path = shutil.which("chromium")
    assert path, "apt-get installed chromium but it is not on PATH"
    return path


# --- unit tests on hand-made rows --------------------------------------------------------------


def _rows(
    cells: dict[tuple[str, str], float], random_init: frozenset[str] = frozenset(), postprocess: str = "none"
) -> pl.DataFrame:
    """Result rows with ``mAP`` (and every other metric) set to the given fraction per (model, dataset)."""
    rows = []
    for (model, dataset), value in cells.items():
        spec = get(model)
        rows.append({
            "model": model, "paradigm": spec.paradigm, "params": spec.params_m, "dataset": dataset,
            "protocol": "market", "trial": 0, "aggregate": False, **{m: value for m in METRICS}, "cmc": [value] * 50,
            "n_query": 10, "n_query_scored": 10, "n_gallery": 100, "dim": spec.dim, "metric": spec.metric,
            "postprocess": postprocess,
            "embed_seconds": 1.0, "images_per_second": 1.0, "score_seconds": 1.0, "device": "cpu",
            "random_init": model in random_init, "fingerprint": "test", "members": [],
            "created_at": datetime.now(timezone.utc),
        })  # fmt: skip
    return pl.from_arrow(to_table(rows))


def test_paper_table_holds_the_published_numbers():
    table = paper.paper_table()
    assert table.height == 11
    for r in table.iter_rows(named=True):  # every model is registered; Table 2 spells CLIP-B-32 as CLIP-B32
        assert r["paper_model"].replace("-", "") == get(r["model"]).paper_name.replace("-", "")
    cell = {(r["paper_model"], d): r[d] for r in table.iter_rows(named=True) for d in PAPER_DATASETS}
    assert cell["CLIP-ReID", "msmt17"] == 66.22 and cell["OSNet-x1.0", "market1501"] == 83.57
    assert cell["SigLIP2-384", "celebreid"] == 15.32 and cell["DINOv2-L14", "last"] == 4.70
    assert cell["CLIP-B32", "grid"] == 2.70 and cell["PE-Core-L14", "msmt17"] == 0.91
    assert cell["PE-Spatial-S16", "iust"] is None and paper.paper_long().height == 98
    csv = Path(paper.__file__).parent / "paper_table2.csv"
    assert csv.read_text().startswith("# Table 2 of \"Person Re-ID in 2025")
    if shutil.which("git"):  # a git-ignored table would be missing from every fresh clone
        ignored = subprocess.run(["git", "check-ignore", "-q", str(csv)], cwd=csv.parent, capture_output=True)
        assert ignored.returncode != 0, f"{csv} is git-ignored"


def test_the_paper_compared_with_itself_agrees_and_causes_land_where_they_apply():
    published = {(r["model"], r["dataset"]): r["paper_mAP"] / 100 for r in paper.paper_long().iter_rows(named=True)}
    cells = paper.compare(headline(_rows(published)))
    assert cells.height == 98 and cells["agrees"].all() and cells["delta"].abs().max() < 1e-9
    tags = {(r["model"], r["dataset"]): set(r["causes"]) for r in cells.iter_rows(named=True)}
    assert "preprocessing-bug" in tags["clip-vit-b16", "market1501"]
    assert "preprocessing-bug" not in tags["siglip2-b16-256", "market1501"]
    assert "clipreid-checkpoint" in tags["clip-reid-vit-b16", "dukemtmcreid"]
    assert tags["osnet-x1.0", "market1501"] == {"osnet-distance"} and tags["osnet-x1.0", "dukemtmcreid"] == set()
    assert {"cuhk03-labeled"} <= tags["dinov2-b14", "cuhk03"] and "grid-split" in tags["osnet-x1.0", "grid"]
    markdown = build_report(_rows(published)).markdown()
    assert "| osnet-x1.0 | supervised | 2.2 | 3.37 | **83.57** |" in markdown  # the paper left this unmarked
    assert "98 of 98 cells agree" in markdown


def test_ranks_skip_random_init_and_share_printed_ties():
    marks = ranks({"a": 0.5, "b": 0.50001, "c": 0.4, "d": 0.9, "e": None}, eligible={"a", "b", "c", "e"})
    assert marks == {"a": "best", "b": "best", "c": "second"}
    assert ranks({"a": 0.1}, eligible={"a"}) == {"a": "best"}


def test_headline_takes_the_mean_row_and_refuses_ambiguous_cells():
    rows = _rows({("handcrafted", "grid"): 0.2, ("random", "grid"): 0.01})
    trial = rows.filter(pl.col("model") == "handcrafted").with_columns(pl.lit(0.9).alias("mAP"))
    mean = rows.filter(pl.col("model") == "handcrafted").with_columns(
        pl.lit(True).alias("aggregate"), pl.lit(-1, dtype=pl.Int32).alias("trial"))
    head = headline(pl.concat([trial, mean, rows.filter(pl.col("model") == "random")]))
    assert head.height == 2 and head.filter(pl.col("model") == "handcrafted")["mAP"][0] == 0.2
    with pytest.raises(ReidrayError, match="handcrafted/grid has 2 result rows"):
        headline(pl.concat([rows, trial]))


def test_post_processed_rows_stay_out_of_the_paper_tables_and_get_their_own():
    cells = {("clip-reid-vit-b16", "msmt17"): 0.6, ("handcrafted", "msmt17"): 0.1}
    plain = _rows(cells)
    reranked = _rows({("clip-reid-vit-b16", "msmt17"): 0.7}, postprocess="rerank")
    expanded = _rows({("clip-reid-vit-b16", "msmt17"): 0.65, ("handcrafted", "msmt17"): 0.12}, postprocess="aqe")
    report = build_report(pl.concat([plain, reranked, expanded]))
    assert headline(pl.concat([plain, reranked, expanded])).height == 2  # no "2 result rows" error
    assert report.main_table.markdown() == build_report(plain).main_table.markdown()
    [post] = [t for t in report.tables if t.key == "table-postprocess"]
    assert post.header == ["model", "dataset", "plain", "re-ranked", "AQE"]
    rows = {r[0].text: [(c.text, c.detail) for c in r[2:]] for r in post.rows}
    assert rows["clip-reid-vit-b16"] == [("60.00", ""), ("70.00", "(+10.00)"), ("65.00", "(+5.00)")]
    assert rows["handcrafted"] == [("10.00", ""), ("–", ""), ("12.00", "(+2.00)")]
    assert all(t.key != "table-postprocess" for t in build_report(plain).tables)
    older = plain.drop("postprocess")  # results written before the column existed are plain
    assert headline(older).height == 2


def test_no_results_is_a_one_line_error(tmp_path):
    with pytest.raises(ReidrayError) as error:
        write_report(Store.open(str(tmp_path)), print)
    assert "no results under" in str(error.value) and "\n" not in str(error.value)


def test_figures_draw_what_a_partial_grid_allows():
    head = headline(_rows({("clip-reid-vit-b16", "msmt17"): 0.6, ("clip-reid-vit-b16", "market1501"): 0.5,
                           ("handcrafted", "msmt17"): 0.005, ("handcrafted", "market1501"): 0.1}))
    drawn = {f.key: f for f in figures.all_figures(head)}
    assert drawn["fig1_cross_domain"].png is None and "no model has all of" in drawn["fig1_cross_domain"].note
    assert drawn["fig2_retention"].png and "handcrafted" in drawn["fig2_retention"].note  # under the 1% floor
    assert drawn["fig3_paradigms"].png and "Surveillance, In-the-wild" in drawn["fig3_paradigms"].note
    assert drawn["fig4_size"].png
    only_msmt = headline(_rows({("clip-reid-vit-b16", "msmt17"): 0.6}))
    assert "no dataset besides MSMT17" in figures.retention(only_msmt).note
    assert Image.open(io.BytesIO(drawn["fig2_retention"].png)).format == "PNG"
