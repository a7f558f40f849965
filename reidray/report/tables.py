"""Results as tables people read: Polars over ``out/results/*.parquet``, Markdown out."""

from __future__ import annotations

import polars as pl

RANDOM_INIT_MARK = " (random-init)"


def load_results(results_dir: str) -> pl.DataFrame:
    """Every stored results row; one file per cell, so a rerun of a cell replaces its rows."""
    return pl.read_parquet(f"{results_dir}/*.parquet")


def headline(results: pl.DataFrame) -> pl.DataFrame:
    """One row per cell: the aggregate row of multi-trial protocols, the only row otherwise."""
    multi = results.group_by("model", "dataset").agg(pl.len().alias("_rows"))
    return (
        results.join(multi, on=["model", "dataset"])
        .filter((pl.col("_rows") == 1) | pl.col("aggregate"))
        .drop("_rows")
        .with_columns(
            pl.when(pl.col("random_init"))
            .then(pl.col("model") + RANDOM_INIT_MARK)
            .otherwise(pl.col("model"))
            .alias("label")
        )
    )


def markdown_table(results: pl.DataFrame, metrics: tuple[str, ...] = ("mAP", "rank1")) -> str:
    """Models as rows, datasets as columns, each cell ``mAP / rank-1`` in percent."""
    rows = headline(results)
    datasets = sorted(rows["dataset"].unique().to_list())
    cells = rows.with_columns(
        pl.concat_str([(pl.col(m) * 100).round(1).cast(pl.Utf8) for m in metrics], separator=" / ").alias("cell")
    )
    wide = cells.pivot(on="dataset", index=["label", "paradigm"], values="cell").sort("paradigm", "label")
    header = ["model", "paradigm", *datasets]
    lines = [
        f"{' / '.join(m if m != 'rank1' else 'rank-1' for m in metrics)} (%) per model and dataset",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for record in wide.iter_rows(named=True):
        values = [record["label"], record["paradigm"], *[record.get(d) or "–" for d in datasets]]
        lines.append("| " + " | ".join(values) + " |")
    if rows["random_init"].any():
        lines += ["", "Models marked (random-init) ran with random weights: their numbers are not results."]
    return "\n".join(lines) + "\n"
