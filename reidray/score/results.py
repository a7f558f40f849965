"""The results table (one row per (model, dataset, protocol, trial, postprocess), fractions in
[0, 1]) and the rank-list table the report draws its sheets from."""

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


# Rank lists (score.ranklists): one row per tile of a cell's rank-list sheet, i.e. per (query,
# position): the query, then its TOP nearest gallery images by the distance the metric ranks by,
# plain features (postprocess "none"), the protocol's first pair (GRID: trial 0). Stored beside the
# results as results/ranklists/<model>__<dataset>.parquet; the report draws them.
RANKLIST_SCHEMA = pa.schema(
    [
        ("model", pa.string()),
        ("dataset", pa.string()),
        ("fingerprint", pa.string()),  # as the cell's results rows: the report shows only current ones
        ("protocol", pa.string()),
        ("trial", pa.int32()),
        ("sheet_row", pa.int32()),  # the query's row on the sheet, from 0
        ("kind", pa.string()),  # hardest | random (the sheet) | asked (the ranks command)
        ("query_id", pa.string()),  # image_id, as in the manifest
        ("query_pid", pa.int64()),
        ("query_camid", pa.int32()),
        ("ap", pa.float64()),  # the query's AP as the metric computed it; NaN: no match in the gallery
        ("position", pa.int32()),  # 1..TOP, nearest first, every gallery image counted (junk too)
        ("gallery_id", pa.string()),
        ("gallery_pid", pa.int64()),
        ("gallery_camid", pa.int32()),
        ("distance", pa.float64()),  # smaller = nearer; a fusion's: its weighted standardised sum
        ("status", pa.string()),  # match | wrong | junk | same-camera (the last two: removed by the protocol)
        ("rank", pa.int32()),  # the rank the metric gives the image; null for removed ones
    ]
)
RANKLIST_STATUS = ("match", "wrong", "junk", "same-camera")


def ranklist_table(rows: list[dict]) -> pa.Table:
    """Rank-list rows as ``RANKLIST_SCHEMA``; a missing column fails here."""
    return pa.Table.from_pylist([{name: row[name] for name in RANKLIST_SCHEMA.names} for row in rows],
                                schema=RANKLIST_SCHEMA)
