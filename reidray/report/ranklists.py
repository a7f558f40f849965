"""Rank-list sheets: the rank lists score stored (``score.results.RANKLIST_SCHEMA``) drawn as PNGs.

One row per query: the query's image (dark frame), then its nearest gallery images, nearest first,
each framed by what the protocol makes of it: green, the query's identity (a match); red, another
identity (distractors included); grey, an image the protocol removes for this query (junk, or the
query's identity seen by its own camera), drawn faded. torchreid's ``visrank`` leaves those out;
here they stay in place, so a reader sees what was near and why it did not count. Under each
tile: the query's AP and why it is on the sheet, or the image's rank under the metric.

Images are read from the paths in the dataset's manifest. One that is missing or does not decode
becomes a placeholder tile naming its (shortened) path: a sheet is always drawn.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Mapping
from pathlib import PurePosixPath

import polars as pl
import pyarrow as pa
from PIL import Image, ImageDraw, ImageFont

from reidray.cells import IMAGE_ID, PATH
from reidray.images import read_image
from reidray.report.frame import headline
from reidray.store import Store, dir_name

TILE_W, TILE_H = 64, 128  # every image is resized to a ReID crop's usual 1:2
FRAME = 4  # frame width around each tile
SLOT_W, SLOT_H = TILE_W + 2 * FRAME, TILE_H + 2 * FRAME
GAP = 4  # between slots
QUERY_GAP = 16  # between the query and its list
CAPTION = 14  # text line under each slot
MARGIN = 8
TITLE = 30  # two text lines above the rows
ROW_H = SLOT_H + CAPTION + GAP
BACKGROUND = (255, 255, 255)
COLOURS = {
    "query": (40, 40, 40),
    "match": (0, 160, 0),
    "wrong": (215, 0, 0),
    "junk": (160, 160, 160),
    "same-camera": (160, 160, 160),
}
REMOVED = ("junk", "same-camera")
PLACEHOLDER = (228, 228, 228)
_FONT = ImageFont.load_default()
_KIND = {"hardest": "hard", "random": "rand"}  # why a query is on the sheet, in a caption's width
SHEETS = "ranklists"  # the report's folder of sheets
QUERIES = "queries"  # the ranks command's single-query sheets


def sheet_size(n_rows: int, top: int) -> tuple[int, int]:
    """The PNG's (width, height) for ``n_rows`` queries of ``top`` images each."""
    return (2 * MARGIN + SLOT_W + QUERY_GAP + top * SLOT_W + (top - 1) * GAP,
            2 * MARGIN + TITLE + n_rows * ROW_H)


def slot_origin(row: int, position: int) -> tuple[int, int]:
    """Top-left pixel of a slot's frame: ``position`` 0 is the query, 1.. its list."""
    x = MARGIN if position == 0 else MARGIN + SLOT_W + QUERY_GAP + (position - 1) * (SLOT_W + GAP)
    return x, MARGIN + TITLE + row * ROW_H


def draw_sheet(lists: pl.DataFrame, paths: Mapping[str, str], title: str) -> bytes:
    """A PNG of the rank lists in ``lists`` (rank-list rows of one cell), images from ``paths``
    (image_id -> the manifest's path; an id not there is drawn as a placeholder)."""
    lists = lists.sort("sheet_row", "position")
    rows = lists.partition_by("sheet_row", maintain_order=True)
    top = int(lists["position"].max() or 1)
    image = Image.new("RGB", sheet_size(len(rows), top), BACKGROUND)
    draw = ImageDraw.Draw(image)
    draw.text((MARGIN, MARGIN), title, fill=(0, 0, 0), font=_FONT)
    draw.text((MARGIN, MARGIN + 14), "green: match   red: wrong identity   grey, faded: removed by the protocol "
              "(junk; same id, same camera)   #k: rank", fill=(90, 90, 90), font=_FONT)
    for r, row in enumerate(rows):
        first = row.row(0, named=True)
        ap = "no match" if first["ap"] is None or math.isnan(first["ap"]) else f"AP {100 * first['ap']:.1f}%"
        _slot(image, draw, r, 0, first["query_id"], paths, "query", f"{_KIND.get(first['kind'], '')} {ap}".strip())
        for tile in row.iter_rows(named=True):
            status = tile["status"]
            caption = "junk" if status == "junk" else "same cam" if status == "same-camera" else f"#{tile['rank']}"
            _slot(image, draw, r, tile["position"], tile["gallery_id"], paths, status, caption)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _slot(sheet: Image.Image, draw: ImageDraw.ImageDraw, row: int, position: int, image_id: str,
          paths: Mapping[str, str], status: str, caption: str) -> None:
    x, y = slot_origin(row, position)
    draw.rectangle([x, y, x + SLOT_W - 1, y + SLOT_H - 1], fill=COLOURS[status])
    tile = _tile(paths.get(image_id), image_id)
    if status in REMOVED:
        tile = Image.blend(tile, Image.new("RGB", tile.size, BACKGROUND), 0.55)
    sheet.paste(tile, (x + FRAME, y + FRAME))
    draw.text((x, y + SLOT_H + 1), caption, fill=(0, 0, 0), font=_FONT)


def _tile(path: str | None, image_id: str) -> Image.Image:
    """The image resized to a tile, or a placeholder naming it when it cannot be read."""
    if path is not None:
        try:
            return read_image(path).resize((TILE_W, TILE_H), Image.Resampling.BILINEAR)
        except Exception:  # missing, unreadable, not an image, too large: any of them is a placeholder
            pass
    return placeholder(path or image_id)


def placeholder(path: str) -> Image.Image:
    """A grey tile with the path's last characters, wrapped, so the missing file can be found."""
    tile = Image.new("RGB", (TILE_W, TILE_H), PLACEHOLDER)
    draw = ImageDraw.Draw(tile)
    draw.text((3, 3), "missing", fill=(150, 0, 0), font=_FONT)
    shown = path if len(path) <= 60 else "..." + path[-57:]
    width = 10  # characters per line at the default font
    for i in range(0, len(shown), width):
        draw.text((3, 18 + 11 * (i // width)), shown[i:i + width], fill=(60, 60, 60), font=_FONT)
    return tile


def write_sheets(store: Store, results: pl.DataFrame, say: Callable[[str], None]) -> list[tuple[str, str]]:
    """Draw the sheet of every current plain headline cell of ``results`` whose stored rank lists
    carry the same fingerprint, under ``<report>/ranklists/`` (earlier sheets removed first);
    returns (cell label, path relative to the report folder) for each."""
    directory = f"{store.report_dir()}/{SHEETS}"
    store.clear_dir(directory)
    drawn, paths = [], {}
    for cell in headline(results).sort("dataset", "label").iter_rows(named=True):
        model, dataset = cell["model"], cell["dataset"]
        source = store.ranklist_path(model, dataset)
        if not store.exists(source):
            continue
        try:
            lists = pl.from_arrow(store.read_table(source)).filter(pl.col("fingerprint") == cell["fingerprint"])
        except (OSError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
            say(f"rank lists of {model}/{dataset} left out: {store.uri_of(source)} cannot be read ({exc})")
            continue
        if lists.is_empty():
            continue
        if dataset not in paths:
            paths[dataset] = manifest_paths(store, dataset)
        name = f"{SHEETS}/{dir_name(model)}__{dir_name(dataset)}.png"
        title = (f"{cell['label']} / {dataset}: the {_count(lists, 'hardest')} hardest queries by AP, then "
                 f"{_count(lists, 'random')} at random (seeded); protocol {lists['protocol'][0]}, "
                 f"trial {lists['trial'][0]}")
        store.write_bytes(f"{store.report_dir()}/{name}", draw_sheet(lists, paths[dataset], title))
        drawn.append((f"{cell['label']} / {dataset}", name))
    return drawn


def write_query_sheet(store: Store, lists: pa.Table) -> str:
    """Draw one query's rank list (the ``ranks`` command) under ``<report>/queries/``; its path."""
    frame = pl.from_arrow(lists)
    first = frame.row(0, named=True)
    query = first["query_id"]
    stem = PurePosixPath(query).with_suffix("").as_posix().replace("/", "_")
    name = f"{dir_name(first['model'])}__{dir_name(first['dataset'])}__{dir_name(stem)}.png"
    path = f"{store.report_dir()}/{QUERIES}/{name}"
    title = (f"{first['model']} / {first['dataset']}: query {query}; protocol {first['protocol']}, "
             f"trial {first['trial']}")
    store.write_bytes(path, draw_sheet(frame, manifest_paths(store, first["dataset"]), title))
    return path


def manifest_paths(store: Store, dataset: str) -> dict[str, str]:
    """image_id -> path from the dataset's stored manifest; none when it is missing or unreadable
    (every tile is then a placeholder)."""
    path = store.manifest_path(dataset)
    try:
        table = store.read_table(path, [IMAGE_ID, PATH])
    except (OSError, pa.ArrowException):
        return {}
    return dict(zip(table.column(IMAGE_ID).to_pylist(), table.column(PATH).to_pylist(), strict=True))


def _count(lists: pl.DataFrame, kind: str) -> int:
    return lists.filter(pl.col("kind") == kind)["sheet_row"].n_unique()
