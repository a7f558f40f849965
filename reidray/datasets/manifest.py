"""The manifest: one row per image of a dataset, the contract between datasets/ and the rest.

Parsers build rows with `Rows` and finish with `build`, which validates before anything
downstream can see the table: a half-parsed dataset raises `DatasetLayoutError` instead.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reidray.cells import MANIFEST_SCHEMA
from reidray.errors import DatasetLayoutError

SCHEMA = MANIFEST_SCHEMA  # the contract every stage reads (reidray/cells.py)
SPLITS = ("query", "gallery", "train")
NO_CAMERA = -1  # camid of datasets without camera ids: the Market rule removes nothing


class Rows:
    """Column buffers for a manifest, filled one image at a time by a parser."""

    def __init__(self, dataset_dir: Path, extra: pa.Schema | None = None) -> None:
        self.dataset_dir = Path(dataset_dir).absolute()
        self.extra = extra if extra is not None else pa.schema([])
        self.columns: dict[str, list] = {n: [] for n in SCHEMA.names + self.extra.names}

    def add(
        self,
        path: Path,
        pid: int,
        camid: int,
        split: str,
        *,
        is_junk: bool = False,
        is_distractor: bool = False,
        **extra: object,
    ) -> None:
        """Append one image; `path` must lie under the dataset folder."""
        path = Path(path).absolute()
        values = {
            "image_id": path.relative_to(self.dataset_dir).as_posix(),
            "path": str(path),
            "pid": pid,
            "camid": camid,
            "split": split,
            "is_junk": is_junk,
            "is_distractor": is_distractor,
            **extra,
        }
        for name, column in self.columns.items():
            column.append(values[name])

    def __len__(self) -> int:
        return len(self.columns["image_id"])


def build(rows: Rows, dataset: str) -> pa.Table:
    """The validated manifest table of `rows` (SCHEMA columns first, then the extra ones)."""
    schema = pa.schema(list(SCHEMA) + list(rows.extra))
    table = pa.Table.from_pydict(rows.columns, schema=schema)
    return validate(table, dataset)


def validate(table: pa.Table, dataset: str) -> pa.Table:
    """Return `table` if it is a usable manifest, else raise DatasetLayoutError naming the problem."""
    head = pa.schema(list(table.schema)[: len(SCHEMA)])
    if not head.equals(SCHEMA):
        raise DatasetLayoutError(
            f"{dataset}: manifest columns {table.schema.names[:len(SCHEMA)]} do not match "
            f"{SCHEMA.names}; this is a bug in the dataset parser, please report it"
        )
    for name in SCHEMA.names:
        if table.column(name).null_count:
            raise DatasetLayoutError(f"{dataset}: manifest column {name!r} has missing values")
    ids = table.column("image_id").to_pylist()
    if len(set(ids)) != len(ids):
        dup = next(i for i, n in Counter(ids).items() if n > 1)
        raise DatasetLayoutError(f"{dataset}: image {dup!r} is listed more than once")
    bad = set(pc.unique(table.column("split")).to_pylist()) - set(SPLITS)
    if bad:
        raise DatasetLayoutError(f"{dataset}: invalid split values {sorted(bad)}; allowed {SPLITS}")
    counts = Counter(table.column("split").to_pylist())
    for split in ("query", "gallery"):
        if not counts[split]:
            raise DatasetLayoutError(
                f"{dataset}: no {split} images found; check that the dataset folder is complete"
            )
    return table
