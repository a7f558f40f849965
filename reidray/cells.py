"""The contracts between stages: the manifest's columns and the cell record.

Each stage reads what the previous one stored, never another stage's code. The datasets stage
writes manifests with ``MANIFEST_SCHEMA``; the embed stage writes a cell's Parquet parts (the
``LABELS`` columns beside each ``embedding``) and then its ``cell.json``, the serialised
``CellRecord``; the score stage, serve and the report read that record. The record carries the
model facts the later stages need (paradigm, parameter count, metric, normalisation), so none of
them looks a model up in the registry: what was stored is what is scored and served.

Nothing here imports torch, Ray or another reidray stage.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import pyarrow as pa

from reidray.errors import CellError

MANIFEST_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string(), nullable=False),  # path relative to the dataset folder, unique
        pa.field("path", pa.string(), nullable=False),  # where the image is read from
        pa.field("pid", pa.int64(), nullable=False),
        pa.field("camid", pa.int32(), nullable=False),  # -1: the dataset has no camera ids
        pa.field("split", pa.string(), nullable=False),  # query | gallery | train
        pa.field("is_junk", pa.bool_(), nullable=False),  # the protocol ignores the image
        pa.field("is_distractor", pa.bool_(), nullable=False),  # never a match; a gallery negative
    ]
)
IMAGE_ID, PATH = MANIFEST_SCHEMA.names[:2]
# The manifest columns stored beside every embedding: what scoring and serving need of an image.
LABELS: tuple[str, ...] = ("image_id", "pid", "camid", "split")
EMBEDDING = "embedding"
_OPTIONAL = ("source",)  # record fields an older cell.json may lack


@dataclass(frozen=True)
class Part:
    """One Parquet part of a cell as embed wrote it: what a reader checks before trusting it."""

    name: str  # file name inside the cell folder
    rows: int
    bytes: int
    sha256: str  # of the file's bytes


@dataclass(frozen=True)
class CellRecord:
    """One (model, dataset) cell as the embed stage stored it: ``cell.json``, field for field.

    ``skipped`` is not stored: it says whether this run found the cell complete already.
    """

    model: str
    dataset: str
    fingerprint: str
    n_images: int
    dim: int
    embed_seconds: float
    device: str  # what the encoders really ran on: cpu, cuda, or cpu+cuda (not what was asked of Ray)
    precision: str
    random_init: bool
    weights_id: str
    # the model facts later stages read here, not in the model registry
    paradigm: str
    params_m: float
    metric: str  # cosine | euclidean: how score and serve compare these embeddings
    normalize: bool  # the encoder L2-normalised its output
    steady_images_per_second: float | None = None
    encoder_busy_fraction: float | None = None  # see embed.progress.ProgressTracker.busy_fraction
    created_at: str = ""
    nodes: list[str] = field(default_factory=list)  # the Ray node ids the encoder actors ran on
    parts: tuple[Part, ...] = ()  # every Parquet part of the cell, no other; their rows sum to n_images
    total_bytes: int = 0  # the parts' sizes summed
    # an encoder by reference (models/references): library, version, resolved config; {} for registered
    # models, whose older records lack the field (the fingerprint still holds it when it matters)
    source: dict[str, Any] = field(default_factory=dict)
    skipped: bool = False

    @property
    def name(self) -> str:
        return f"{self.model}/{self.dataset}"

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_marker(self) -> dict[str, Any]:
        """The ``cell.json`` payload."""
        marker = asdict(self)
        del marker["skipped"]
        return marker

    @classmethod
    def from_marker(cls, marker: dict[str, Any], *, skipped: bool) -> CellRecord:
        """A stored cell as its ``cell.json`` describes it; a marker without every stored field
        (written by an older reidray, or edited) is a CellError naming what is missing. ``source``
        alone may be absent (records written before encoders by reference: registered models)."""
        stored = [f.name for f in fields(cls) if f.name != "skipped"]
        missing = [name for name in stored if name not in marker and name not in _OPTIONAL]
        where = f"{marker.get('model', '?')}/{marker.get('dataset', '?')}"
        if missing:
            raise CellError(f"cell {where}: its cell.json lacks {', '.join(missing)}; rerun embed for it")
        try:
            parts = tuple(Part(**part) for part in marker["parts"])
        except TypeError as exc:
            raise CellError(f"cell {where}: its cell.json lists malformed parts ({exc}); rerun embed for it") from None
        return cls(**{name: marker[name] for name in stored if name != "parts" and name in marker}, parts=parts,
                   skipped=skipped)


def nonfinite(table: pa.Table) -> tuple[int, list[str]]:
    """How many rows of a cell's ``embedding`` column hold NaN or infinity, and the first few
    such rows' image ids: a ranking over them would be a wrong number, never an error."""
    column = table.column(EMBEDDING).combine_chunks()
    if len(column) == 0:
        return 0, []
    values = column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), -1)
    bad = np.flatnonzero(~np.isfinite(values).all(axis=1))
    return len(bad), table.column(IMAGE_ID).take(pa.array(bad[:5])).to_pylist()
