"""The results table: one row per (model, dataset, protocol, trial, postprocess), fractions in [0, 1]."""

from __future__ import annotations

import pyarrow as pa

SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("paradigm", pa.string()),
        ("params", pa.float64()),  # vision tower, millions
        ("dataset", pa.string()),
        ("protocol", pa.string()),
        ("trial", pa.int32()),  # -1 on the aggregate row of a multi-trial protocol
        ("aggregate", pa.bool_()),
        ("mAP", pa.float64()),
        ("rank1", pa.float64()),
        ("rank5", pa.float64()),
        ("rank10", pa.float64()),
        ("rank20", pa.float64()),
        ("mINP", pa.float64()),
        ("cmc", pa.list_(pa.float64())),  # the CMC curve, ranks 1..50
        ("n_query", pa.int64()),
        ("n_query_scored", pa.int64()),
        ("n_gallery", pa.int64()),
        ("dim", pa.int32()),
        ("metric", pa.string()),
        ("postprocess", pa.string()),  # none | rerank | aqe: what was done to the features' ranking
        ("embed_seconds", pa.float64()),
        ("images_per_second", pa.float64()),
        ("score_seconds", pa.float64()),
        ("device", pa.string()),
        ("random_init", pa.bool_()),
        ("fingerprint", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
    ]
)


def to_table(rows: list[dict]) -> pa.Table:
    """Rows as the results schema; a missing or extra column is a bug, so it fails here."""
    return pa.Table.from_pylist([{name: row[name] for name in SCHEMA.names} for row in rows], schema=SCHEMA)
