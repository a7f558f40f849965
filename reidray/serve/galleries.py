"""Galleries: the stored embedding cells, searchable through a faiss index built once and kept.

A gallery is a complete cell ``(model, dataset)`` under the output root (its ``cell.json`` is
there); a search runs over the cell's ``split == "gallery"`` rows. Cosine models get an
inner-product index over L2-normalised vectors, euclidean ones an L2 index (the model's
``spec.metric``), so a served ranking is the one the evaluation scored. Every hit has a
``score`` where higher is closer: the cosine similarity, or minus the Euclidean distance.

Indexes are kept per process, least recently used dropped beyond a bound, and rebuilt when the
cell's fingerprint on disk changes (a re-embedded gallery is never served stale for long).
A gallery is searchable only once ``store.verify_cell`` has found it as its record describes it
(parts, sizes, SHA-256, rows, one row per manifest image); the check runs once per fingerprint
per replica, and a gallery that fails it is listed with the fault and refused (409).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from reidray.cells import IMAGE_ID, CellRecord
from reidray.errors import CellError, ReidrayError
from reidray.models import get
from reidray.store import CELL_MARKER, Store, verify_cell

UNREADABLE = "unreadable"  # the key list_galleries puts in place of a marker that cannot be read
RECHECK_SECONDS = 10.0  # how often a kept index looks at its cell.json for a re-embed
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a dataset folder name; never a path


class UnknownGalleryError(ReidrayError):
    """No complete cell for this (model, dataset); the message lists the model's galleries."""


class GalleryMismatchError(ReidrayError):
    """The stored cell cannot be searched with the served model: embedded by another version of
    the model, or its files fail verification."""


def list_galleries(store: Store) -> list[tuple[dict, dict]]:
    """Every cell with a marker under the output root: (model, dataset and what its marker says
    for listing; the marker itself, which ``Galleries.problem`` checks)."""
    found = []
    models = store.fs.get_file_info(pafs.FileSelector(store.path("embeddings"), allow_not_found=True))
    for model_dir in sorted(models, key=lambda i: i.path):
        if model_dir.type != pafs.FileType.Directory:
            continue
        datasets = store.fs.get_file_info(pafs.FileSelector(model_dir.path, allow_not_found=True))
        for dataset_dir in sorted(datasets, key=lambda i: i.path):
            if dataset_dir.type != pafs.FileType.Directory:
                continue
            try:
                marker = store.read_json(f"{dataset_dir.path}/{CELL_MARKER}")
            except ReidrayError as exc:  # listed, with why it cannot be searched (Galleries.problem)
                marker = {UNREADABLE: str(exc)}
            if marker is None:
                continue
            found.append(({  # the names as recorded: a reference's folder is a safe form of it (store.dir_name)
                "model": marker.get("model", model_dir.base_name),
                "dataset": marker.get("dataset", dataset_dir.base_name),
                "n_images": marker.get("n_images"),
                "dim": marker.get("dim"),
                "random_init": bool(marker.get("random_init", False)),
                "weights_id": marker.get("weights_id"),
                "created_at": marker.get("created_at"),
            }, marker))
    return found


@dataclass
class GalleryIndex:
    """One gallery's faiss index and the labels of its rows."""

    model: str
    dataset: str
    fingerprint: str
    metric: str
    index: object  # faiss.Index
    image_ids: np.ndarray
    pids: np.ndarray
    camids: np.ndarray
    checked_at: float

    @property
    def size(self) -> int:
        return len(self.image_ids)

    def search(self, query: np.ndarray, k: int) -> list[dict]:
        """Top-k gallery rows for one query vector, best first."""
        return self.search_many(np.asarray(query).reshape(1, -1), [k])[0]

    def search_many(self, queries: np.ndarray, ks: list[int]) -> list[list[dict]]:
        """Top-``ks[i]`` gallery rows for each query vector [N, dim]: one index pass for the batch."""
        import faiss

        q = np.ascontiguousarray(queries, dtype=np.float32)
        if q.shape[1] != self.index.d:
            raise GalleryMismatchError(f"gallery {self.model}/{self.dataset} holds {self.index.d}-d embeddings, "
                                       f"the query is {q.shape[1]}-d; re-embed the gallery with this model")
        if self.metric == "cosine":
            faiss.normalize_L2(q)
        distances, rows = self.index.search(q, min(max(ks), self.size))
        return [self._hits(d[:k], r[:k]) for d, r, k in zip(distances, rows, ks)]

    def _hits(self, distances: np.ndarray, rows: np.ndarray) -> list[dict]:
        hits = []
        for rank, (d, row) in enumerate(zip(distances, rows), start=1):
            if row < 0:
                break
            score = float(d) if self.metric == "cosine" else -float(np.sqrt(max(float(d), 0.0)))
            hits.append({"rank": rank, "image_id": str(self.image_ids[row]), "pid": int(self.pids[row]),
                         "camid": int(self.camids[row]), "score": score})
        return hits


def build_index(store: Store, model: str, dataset: str, marker: dict) -> GalleryIndex:
    """Read the cell's gallery rows and index them (runs in a worker thread)."""
    import faiss

    table = _verified(store, CellRecord.from_marker(marker, skipped=True), None)
    table = table.filter(pc.equal(table.column("split"), "gallery"))
    if table.num_rows == 0:
        raise CellError(f"cell {model}/{dataset} has no gallery rows (split == 'gallery') to search")
    column = table.column("embedding").combine_chunks()
    vectors = np.ascontiguousarray(
        column.flatten().to_numpy(zero_copy_only=False).reshape(table.num_rows, column.type.list_size),
        dtype=np.float32,
    )
    bad = int((~np.isfinite(vectors).all(axis=1)).sum())
    if bad:  # as the score stage refuses them: a ranking over NaN is no ranking
        raise GalleryMismatchError(f"gallery {model}/{dataset} is not searchable: {bad:,} of its embeddings "
                                   "contain NaN or infinite values; re-embed it")
    metric = marker["metric"]  # as the embed stage recorded it: the ranking the evaluation scored
    if metric == "cosine":
        faiss.normalize_L2(vectors)
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        index = faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    return GalleryIndex(
        model, dataset, marker.get("fingerprint", ""), metric, index,
        table.column("image_id").to_numpy(zero_copy_only=False),
        table.column("pid").to_numpy(zero_copy_only=False),
        table.column("camid").to_numpy(zero_copy_only=False),
        time.monotonic(),
    )


def _verified(store: Store, record: CellRecord, columns: list[str] | None) -> pa.Table:
    """The cell's table once ``verify_cell`` passes (against the stored manifest when there is one)."""
    manifest = store.manifest_path(record.dataset)
    ids = store.read_table(manifest, columns=[IMAGE_ID]).column(IMAGE_ID) if store.exists(manifest) else None
    return verify_cell(store, record, ids, columns)


class Galleries:
    """The galleries of one output root, their indexes kept (LRU, at most ``max_kept``)."""

    def __init__(self, store: Store, *, max_kept: int, random_init: bool) -> None:
        self.store = store
        self.max_kept = max_kept
        self.random_init = random_init
        self._kept: OrderedDict[tuple[str, str], GalleryIndex] = OrderedDict()
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        # -> (fingerprint, fault): verify_cell's verdict, or NaN rows found when indexing; None: fine
        self._verified: dict[tuple[str, str], tuple[str, str | None]] = {}

    def marker(self, model: str, dataset: str) -> dict:
        """The cell's marker, or UnknownGalleryError naming the model's galleries."""
        try:
            marker = self.store.cell_marker(model, dataset) if _NAME.fullmatch(dataset) else None
        except CellError as exc:
            raise GalleryMismatchError(str(exc)) from None
        if marker is None:
            own = [row["dataset"] for row, _ in list_galleries(self.store) if row["model"] == model]
            listed = ", ".join(own) if own else (
                f"none stored; run `python -m reidray.run embed -m {model} -d <dataset> --out {self.store.root}`"
            )
            raise UnknownGalleryError(f"no gallery {dataset!r} for model {model!r}; galleries of {model}: {listed}")
        problem = self.problem(model, dataset, marker)
        if problem is not None:
            raise GalleryMismatchError(problem)
        return marker

    def problem(self, model: str, dataset: str, marker: dict) -> str | None:
        """Why the stored cell cannot be searched with the served model, or None when it can."""
        if UNREADABLE in marker:
            return marker[UNREADABLE]
        try:
            record = CellRecord.from_marker(marker, skipped=True)
        except CellError as exc:
            return str(exc)
        fault = self._fault(record)
        if fault is not None:
            return fault
        spec = get(model)
        if record.dim != spec.dim:
            return (f"gallery {model}/{dataset} holds {record.dim}-d embeddings but {model} now gives "
                    f"{spec.dim}-d ones: it was embedded by another version of the model; re-embed it")
        if not spec.needs_weights:
            return None
        stored, stored_id = record.random_init, record.weights_id
        if stored == self.random_init and stored_id == spec.weights_id:
            return None
        # Vectors from random weights and from trained weights share no space: never mix them.
        embedded = "random weights" if stored else f"weights {stored_id}"
        served = "random weights" if self.random_init else f"weights {spec.weights_id}"
        return (f"gallery {model}/{dataset} was embedded with {embedded} but this service runs {model} "
                f"with {served}; re-embed the gallery or serve the matching model")

    def _fault(self, record: CellRecord) -> str | None:
        """``verify_cell``'s verdict on the cell, kept per fingerprint (hashing is not per request)."""
        key = (record.model, record.dataset)
        kept = self._verified.get(key)
        if kept is None or kept[0] != record.fingerprint:
            try:
                _verified(self.store, record, columns=[])
                kept = (record.fingerprint, None)
            except CellError as exc:
                kept = (record.fingerprint, str(exc))
            self._verified[key] = kept
        return kept[1]

    async def index(self, model: str, dataset: str) -> GalleryIndex:
        """The kept index of (model, dataset), built on first use and after a re-embed."""
        key = (model, dataset)
        kept = self._kept.get(key)
        if kept is not None and time.monotonic() - kept.checked_at < RECHECK_SECONDS:
            self._kept.move_to_end(key)
            return kept
        marker = await asyncio.to_thread(self.marker, model, dataset)  # unknown names stop here
        async with self._locks.setdefault(key, asyncio.Lock()):  # concurrent first searches build once
            kept = self._kept.get(key)
            if kept is not None and kept.fingerprint == marker.get("fingerprint", ""):
                kept.checked_at = time.monotonic()
            else:
                try:
                    kept = await asyncio.to_thread(build_index, self.store, model, dataset, marker)
                except GalleryMismatchError as exc:  # listed as not searchable, with the reason, from now on
                    self._verified[key] = (marker.get("fingerprint", ""), str(exc))
                    raise
            self._kept[key] = kept
            self._kept.move_to_end(key)
            while len(self._kept) > self.max_kept:
                self._kept.popitem(last=False)
            return kept
