"""Rank lists: what an encoder retrieves for a query, as the protocol judges it, for people to look at.

"Which queries fail, and what does the model confuse them with" is read off a rank list: the query,
then its nearest gallery images. Each cell's sheet lists the ``HARDEST`` queries by AP (lowest
first) and ``RANDOM`` more drawn with a fixed seed from the other queries that have a match (the
same queries on every run, and in every cell of the dataset but for its hardest), each with its
``TOP`` nearest gallery images.

Everything follows the metric: the protocol's first query/gallery pair (``protocols.shown_side``;
GRID: trial 0), the distance the metric ranks by (a fusion's too), its tie rule (at equal distance
a wrong identity comes first), and the AP the score pass computed for each query (``Scoring.aps``),
so the hardest queries are found without ranking the cell twice. Unlike the metric, the list also
shows the gallery images the protocol removes for the query, in place, with their status (junk;
same identity seen by the query's camera), and gives them no rank: a reader sees why a near image
did not count. Lists are of the plain features (re-ranking and expansion change the order, not the
images there are to see).

Rows follow ``results.RANKLIST_SCHEMA`` (one per tile) without the cell's facts (model, dataset,
fingerprint), which the caller adds with ``with_cell``.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa

from reidray.cells import IMAGE_ID, PATH
from reidray.errors import CellError, ReidrayError
from reidray.score.graph import joined_cell
from reidray.score.protocols import Scoring, Side, plain, shown_side, side_ap
from reidray.score.results import ranklist_table
from reidray.store import Store

TOP = 10
HARDEST = 8
RANDOM = 8
SEED = 0


def sheet(protocol: str, table: pa.Table, scoring: Scoring, cell: str, aps: dict[int, np.ndarray],
          *, seed: int = SEED) -> list[dict[str, Any]]:
    """The rows of a cell's sheet; ``aps``: the per-query APs its score pass recorded (``Scoring.aps``)."""
    side = shown_side(protocol, table, scoring, cell)
    ap = aps[side.trial]
    queries = np.flatnonzero(side.images.query)  # table rows, in the order the metric scored them
    if len(ap) != len(queries):
        raise CellError(f"cell {cell}: {len(ap)} query APs for {len(queries)} queries")
    scored = np.flatnonzero(~np.isnan(ap))
    hardest = scored[np.argsort(ap[scored], kind="stable")[:HARDEST]]
    # one seeded order of all the queries, whatever the model: every cell of a dataset shows the
    # same random queries, save those that are among its hardest or have no match
    order = np.random.default_rng(seed).permutation(len(queries))
    drawn = np.sort(order[np.isin(order, scored) & ~np.isin(order, hardest)][:RANDOM])
    picked = np.concatenate([hardest, drawn]).astype(np.int64)
    kinds = ["hardest"] * len(hardest) + ["random"] * len(drawn)
    return _tiles(protocol, side, scoring, _image_ids(table), queries[picked], kinds, ap[picked])


def for_query(protocol: str, table: pa.Table, scoring: Scoring, cell: str, query: str) -> list[dict[str, Any]]:
    """The rows of one query's rank list (kind ``asked``). ``query``: its image id, its path as in
    the manifest, or its file name; one that is none of the cell's queries is a ReidrayError."""
    side = shown_side(protocol, table, scoring, cell)
    queries = np.flatnonzero(side.images.query)
    ids = _image_ids(table)
    row = queries[_find(table, ids, queries, query, cell)]
    only = replace(side, images=replace(side.images, query=np.arange(len(side.images.query)) == row))
    has_match = (_status(side.images, row, np.flatnonzero(side.images.gallery), side.camera_filter) == "match").any()
    ap = side_ap(only, scoring)[0] if has_match else np.nan
    return _tiles(protocol, side, scoring, ids, np.array([row]), ["asked"], np.array([ap]))


def for_stored_query(store: Store, model: str, dataset: str, protocol: str, query: str) -> pa.Table:
    """``for_query`` on a stored cell, verified as the score stage reads it, as a rank-list table."""
    cell = store.cell_record(model, dataset)
    if cell is None:
        raise ReidrayError(f"cell {model}/{dataset} is not stored under {store.root}; "
                           f"run `python -m reidray.run all -m {model} -d {dataset}` first")
    rows = for_query(protocol, joined_cell(store, cell), plain(cell.metric), cell.name, query)
    return with_cell(rows, cell.model, cell.dataset, cell.fingerprint)


def with_cell(rows: list[dict[str, Any]], model: str, dataset: str, fingerprint: str) -> pa.Table:
    """The rank-list table of a cell: ``rows`` with the cell's facts."""
    common = {"model": model, "dataset": dataset, "fingerprint": fingerprint}
    return ranklist_table([{**common, **row} for row in rows])


def _tiles(protocol: str, side: Side, scoring: Scoring, ids: np.ndarray, rows: np.ndarray, kinds: list[str],
           ap: np.ndarray) -> list[dict[str, Any]]:
    """One row per (query, position) for the queries at table ``rows``."""
    images = side.images
    gallery = np.flatnonzero(images.gallery)  # the junk images too: shown, greyed
    counted = ~images.junk[gallery]
    distances = scoring.distances(images, rows, gallery, counted) if len(rows) else np.zeros((0, len(gallery)))
    out = []
    for sheet_row, (q, kind, q_ap, d) in enumerate(zip(rows, kinds, ap, distances, strict=True)):
        status = _status(images, q, gallery, side.camera_filter)
        # nearest first; at a tie a wrong identity first (the metric's rule), then table order
        order = np.lexsort((gallery, status == "match", d))
        counts = np.isin(status[order], ("match", "wrong"))
        rank = np.cumsum(counts)
        for position, (j, r, c) in enumerate(zip(order[:TOP], rank[:TOP], counts[:TOP], strict=True), start=1):
            g = gallery[j]
            out.append({
                "protocol": protocol, "trial": side.trial, "sheet_row": sheet_row, "kind": kind,
                "query_id": ids[q], "query_pid": int(images.pid[q]), "query_camid": int(images.camid[q]),
                "ap": float(q_ap), "position": position, "gallery_id": ids[g],
                "gallery_pid": int(images.pid[g]), "gallery_camid": int(images.camid[g]),
                "distance": float(d[j]), "status": str(status[j]), "rank": int(r) if c else None,
            })
    return out


def _status(images: Any, q: int, gallery: np.ndarray, camera_filter: bool) -> np.ndarray:
    """Each gallery image's status for query ``q`` under the protocol's rules (``metrics._Labels``):
    junk is ignored, a distractor is never a match, the query's identity in its own camera is
    removed when the protocol filters cameras."""
    same_pid = (images.pid[gallery] == images.pid[q]) & ~images.distractor[gallery]
    same_camera = same_pid & (images.camid[gallery] == images.camid[q]) if camera_filter else np.zeros_like(same_pid)
    return np.where(images.junk[gallery], "junk",
                    np.where(same_camera, "same-camera", np.where(same_pid, "match", "wrong")))


def _image_ids(table: pa.Table) -> np.ndarray:
    if IMAGE_ID not in table.column_names:
        raise CellError(f"the embeddings table lacks column {IMAGE_ID}")
    return np.asarray(table.column(IMAGE_ID).to_pylist(), dtype=object)


def _find(table: pa.Table, ids: np.ndarray, queries: np.ndarray, query: str, cell: str) -> int:
    """The index among ``queries`` of the one ``query`` names (image id, manifest path or file name)."""
    ids = ids[queries]
    paths = (np.asarray(table.column(PATH).to_pylist(), dtype=object)[queries]
             if PATH in table.column_names else ids)
    exact = np.flatnonzero((ids == query) | (paths == query))
    if len(exact) == 1:
        return int(exact[0])
    name = PurePosixPath(query.replace("\\", "/")).name
    named = np.flatnonzero([PurePosixPath(str(i)).name == name for i in ids])
    if len(named) == 1:
        return int(named[0])
    if len(named) > 1:
        raise ReidrayError(f"{len(named)} queries of cell {cell} are named {name} (e.g. {ids[named[0]]}, "
                           f"{ids[named[1]]}); pass the image id or the path as in the manifest")
    raise ReidrayError(f"{query} is not among the {len(queries)} queries of cell {cell}; pass a query image's "
                       "path as in the manifest, its image id, or its file name")
