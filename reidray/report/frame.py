"""The results as the report reads them: one headline row per cell, in the paper's order.

Every table and figure starts from ``headline``: the aggregate row of a multi-trial protocol (GRID's
mean over its 10 trials), the only row otherwise, labelled so that a random-initialised row can
never be mistaken for a result. The paper's tables and figures read the plain rows (postprocess
``none``) only; re-ranked and query-expanded rows have their own table. Metrics stay fractions
here; tables and figures format percent.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs

from reidray.cells import IMAGE_ID
from reidray.config import SYNTHETIC
from reidray.errors import ReidrayError
from reidray.report.paper import PAPER_DATASETS, paper_models
from reidray.store import Store, verify_cell

RANDOM_INIT_MARK = " (random-init)"

SHORT_NAMES = {
    "msmt17": "MSMT17", "market1501": "Market", "dukemtmcreid": "Duke", "cuhk03": "CUHK03", "grid": "GRID",
    "pku": "PKU", "last": "LaST", "iust": "IUST", "celebreid": "Celeb",
}  # fmt: skip

# The paper's dataset groups (Figure 1's caption): MSMT17 is the supervised models' training set.
TRAINING_DOMAIN = "msmt17"
SURVEILLANCE = ("msmt17", "market1501", "dukemtmcreid", "cuhk03")
IN_THE_WILD = ("last", "celebreid")

# "custom": encoders by reference (models/references) unless their reference names a paradigm
PARADIGMS = ("supervised", "language-aligned", "self-supervised", "hand-crafted", "control", "custom")
METRICS = ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")
REQUIRED = ("model", "paradigm", "params", "dataset", "trial", "aggregate", "random_init", "fingerprint", *METRICS)


def load_results(store: Store) -> tuple[pl.DataFrame, list[str]]:
    """The current results under the store's results folder, read through the store (remote roots
    too), and one line per results file left out. A file is current when it reads, has every
    column, and the cell it was scored from is stored, verified (``store.verify_cell``) and carries
    the fingerprint its rows record: a number is never shown for a cell that is no longer there."""
    selector = pafs.FileSelector(store.results_dir(), allow_not_found=True)
    entries = sorted((i for i in store.fs.get_file_info(selector) if i.base_name.endswith(".parquet")),
                     key=lambda i: i.path)
    if not entries:
        raise ReidrayError(f"no results under {store.uri('results')}: run `python -m reidray.run score` first")
    frames, stale = [], []
    manifests: dict[str, pa.ChunkedArray | None] = {}
    for entry in entries:
        model, _, dataset = entry.base_name.removesuffix(".parquet").partition("__")
        rescore = f"rerun `python -m reidray.run score -m {model} -d {dataset} --redo`"
        where = store.uri_of(entry.path)
        if not entry.is_file:
            stale.append(f"results path {where} is not a file; move it away and {rescore}")
            continue
        try:
            frame = pl.from_arrow(store.read_table(entry.path))
        except (OSError, pa.ArrowException) as exc:
            stale.append(f"results file {where} cannot be read ({type(exc).__name__}: {exc}); {rescore}")
            continue
        missing = [c for c in REQUIRED if c not in frame.columns]
        if missing:
            stale.append(f"results file {where} lacks column(s) {', '.join(missing)}; {rescore}")
            continue
        # the cells the rows were scored from (a file name is only a folder-safe form of them): a
        # cell's own, or a fusion's members at the fingerprints they had then
        cells = frame.filter(pl.col("paradigm") != "fusion").select("model", "dataset", "fingerprint")
        fused = frame.filter(pl.col("paradigm") == "fusion")
        if len(fused) and "members" not in fused.columns:
            stale.append(f"results file {where} names no member cells (written before fusions recorded them); "
                         f"{rescore}")
            continue
        if len(fused):
            cells = pl.concat([cells, fused.select("dataset", "members").explode("members").unnest("members")
                               .select("model", "dataset", "fingerprint")])
        for cell_model, cell_dataset, fingerprint in cells.unique().iter_rows():
            problem = _provenance(store, cell_model, cell_dataset, fingerprint, manifests)
            if problem:
                stale.append(f"results file {where} is stale: {problem}")
                break
        else:
            frames.append(frame)
    if not frames:
        raise ReidrayError(f"no current results under {store.uri('results')} ({len(stale)} file(s) left out; "
                           f"the first: {stale[0]})")
    return pl.concat(frames, how="diagonal_relaxed"), stale


def _provenance(store: Store, model: str, dataset: str, fingerprint: str,
                manifests: dict[str, pa.ChunkedArray | None]) -> str | None:
    """Why rows scored from cell (model, dataset) at ``fingerprint`` are not current, or None."""
    try:
        record = store.cell_record(model, dataset)
        if record is None:
            return (f"cell {model}/{dataset} is no longer stored (cleared or never completed); "
                    f"rerun `python -m reidray.run all -m {model} -d {dataset}`")
        if record.fingerprint != fingerprint:
            return (f"cell {model}/{dataset} was embedded again since these rows were scored; "
                    f"rerun `python -m reidray.run score -m {model} -d {dataset}`")
        if dataset not in manifests:
            path = store.manifest_path(dataset)
            manifests[dataset] = store.read_table(path, [IMAGE_ID]).column(IMAGE_ID) if store.exists(path) else None
        verify_cell(store, record, manifests[dataset], columns=[])
    except (ReidrayError, OSError, pa.ArrowException) as exc:
        return str(exc)
    return None


def headline(results: pl.DataFrame, postprocess: str = "none") -> pl.DataFrame:
    """One row per (label, dataset) of the ``postprocess`` rows (results written before the
    column existed are plain): the aggregate row where a cell has one, else its single row."""
    if "postprocess" not in results.columns:
        results = results.with_columns(pl.lit(None, pl.String).alias("postprocess"))
    results = results.filter(pl.col("postprocess").fill_null("none") == postprocess)
    labelled = results.with_columns(
        pl.when(pl.col("random_init"))
        .then(pl.col("model") + RANDOM_INIT_MARK)
        .otherwise(pl.col("model"))
        .alias("label")
    )
    has_mean = pl.col("aggregate").any().over("label", "dataset")
    rows = labelled.filter(pl.col("aggregate") | ~has_mean)
    doubled = rows.group_by("label", "dataset").len().filter(pl.col("len") > 1)
    if doubled.height:
        first = doubled.row(0, named=True)
        raise ReidrayError(
            f"cell {first['label']}/{first['dataset']} has {first['len']} result rows and no aggregate row; "
            "remove the stray results file or rerun `score` for that cell"
        )
    return rows.with_columns(
        pl.col("label").replace_strict(_label_order(rows), return_dtype=pl.Int32).alias("_model_order")
    ).sort("_model_order", "dataset").drop("_model_order")


def _label_order(rows: pl.DataFrame) -> dict[str, int]:
    """The paper's order (its Table 2), then the other models by name; random-init right after its
    trained twin."""
    order = {name: i for i, name in enumerate(paper_models())}
    pairs = rows.select("label", "model", "random_init").unique()
    ranked = sorted(
        pairs.iter_rows(named=True),
        key=lambda r: (order.get(r["model"], len(order)), r["model"], r["random_init"]),
    )
    return {r["label"]: i for i, r in enumerate(ranked)}


def dataset_order(head: pl.DataFrame) -> list[str]:
    """The datasets present: Table 2's order first, then the rest by name."""
    present = set(head["dataset"].to_list())
    return [d for d in PAPER_DATASETS if d in present] + sorted(present - set(PAPER_DATASETS))


def labels(head: pl.DataFrame) -> list[str]:
    """Model labels in report order."""
    return list(dict.fromkeys(head["label"].to_list()))


def short(dataset: str) -> str:
    return SHORT_NAMES.get(dataset, dataset)


def group_mean(head: pl.DataFrame, datasets: tuple[str, ...], metric: str = "mAP") -> pl.DataFrame:
    """Per label, the mean of ``metric`` over ``datasets``, only where the label has all of them
    (a mean over part of a group would compare different things)."""
    return (
        head.filter(pl.col("dataset").is_in(datasets))
        .group_by("label", "model", "paradigm", "random_init", maintain_order=True)
        .agg(pl.col(metric).mean().alias(metric), pl.col("dataset").n_unique().alias("_n"))
        .filter(pl.col("_n") == len(set(datasets)))
        .drop("_n")
    )


def common_datasets(head: pl.DataFrame) -> list[str]:
    """Datasets every label has, for means that compare models on the same ground; the synthetic
    set is left out when benchmark datasets are there (it is a smoke test, not a benchmark)."""
    n_labels = head["label"].n_unique()
    counts = head.group_by("dataset").agg(pl.col("label").n_unique().alias("n"))
    common = set(counts.filter(pl.col("n") == n_labels)["dataset"].to_list())
    if common - {SYNTHETIC}:
        common.discard(SYNTHETIC)
    return [d for d in dataset_order(head) if d in common]
