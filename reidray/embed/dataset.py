"""Embedding one dataset for every model of the grid, decoding it once per input size.

Models whose CPU stage gives identical pixels (same input size, resize policy and interpolation:
``preprocess.resize_key``) share one decoded copy of the dataset, held in Ray's object store while
each of them reads it, as long as that copy fits half of the store; otherwise each model decodes
for itself and the run says why. A cell already complete (and verified) is skipped and never
decoded for; a cell whose marker cannot be read fails, unless ``redo`` clears it.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import ray

from reidray.cells import CellRecord
from reidray.config import JobConfig
from reidray.connect import ray_logs_hint
from reidray.embed.pipeline import decoded_images, embed_cell, fingerprint_for, stored_cell
from reidray.embed.progress import finished_line
from reidray.errors import ReidrayError, one_line, user_error
from reidray.lease import CellBusyError
from reidray.models import get
from reidray.models.preprocess import resize_key
from reidray.store import Store, manifest_hash

SHARED_DECODE_SHARE = 0.5  # of the cluster's object store; a bigger decoded copy would spill to disk


def decode_groups(model_names: list[str]) -> list[list[str]]:
    """Models that share an input size and interpolation share one decoded copy of a dataset."""
    groups: dict[tuple, list[str]] = {}
    for name in model_names:
        groups.setdefault(resize_key(get(name)), []).append(name)
    return list(groups.values())


def shared_decode_blocker(manifest: pa.Table, model: str) -> str | None:
    """Why a dataset should be decoded once per model instead of once for its decode group: the
    shared copy is held in the object store while every model of the group reads it."""
    h, w = get(model).input_size
    needed = manifest.num_rows * h * w * 3
    store_bytes = ray.cluster_resources().get("object_store_memory", 0)
    if needed <= SHARED_DECODE_SHARE * store_bytes:
        return None
    return (f"its decoded pixels ({needed / 1e9:.1f} GB) would fill more than half of the object store "
            f"({store_bytes / 1e9:.1f} GB)")


def embed_dataset(store: Store, dataset: str, manifest: pa.Table, models: list[str], job: JobConfig,
                  say: Callable[[str], None], on_cell: Callable[[CellRecord], None], redo: bool = False) -> list[str]:
    """Embed ``dataset`` with every model (complete cells skipped, every cell cleared and redone
    with ``redo``), calling ``on_cell`` with each cell as it is ready; returns one line per failed cell."""
    failures: list[str] = []

    def fail(line: str) -> None:
        failures.append(line)
        say(f"FAILED {line}")

    digest = manifest_hash(manifest)  # once per dataset, not per model
    busy: list[str] = []

    def embed(model: str, decoded: ray.data.Dataset | None, wait: bool) -> None:
        try:
            cell = embed_cell(store, model, dataset, manifest, weights=job.weights_for(model),
                              random_init=job.random_init, settings=job.embed_for(model), say=say,
                              decoded=decoded, manifest_digest=digest, redo=redo, wait=wait)
        except CellBusyError as exc:
            say(f"{exc}; coming back to it after the other cells")
            busy.append(model)
            return
        except ReidrayError as exc:
            fail(str(exc))
            return
        ready(cell)

    def ready(cell: CellRecord) -> None:
        say(finished_line(cell) if not cell.skipped else
            f"embed {cell.name}: complete already ({cell.n_images:,} images, verified), skipped")
        on_cell(cell)

    for group in decode_groups(models):
        todo = []
        for model in group:
            if redo:
                todo.append(model)
                continue
            fp = fingerprint_for(model, digest, dataset=dataset, weights=job.weights_for(model), random_init=job.random_init,
                                 settings=job.embed_for(model))
            try:
                stored, _ = stored_cell(store, model, dataset, fp, manifest)
            except ReidrayError as exc:  # a marker there but unreadable: never taken for "not done"
                fail(str(exc))
                continue
            if stored is None:
                todo.append(model)
            else:
                ready(stored)
        decoded = None
        share = job.embed.share_decode and len(todo) > 1
        too_big = share and shared_decode_blocker(manifest, todo[0])
        if too_big:
            say(f"decode {dataset} once per model: {too_big}")
        elif share:
            say(f"decode {dataset} once for {', '.join(todo)}")
            try:
                decoded = decoded_images(manifest, todo[0], job.embed).materialize()
            except Exception as exc:  # a bad image fails every cell that needed it
                for model in todo:
                    store.drop_results(model, dataset)  # no longer what a complete cell would give
                    fail(f"cell {model}/{dataset}: {user_error(exc) or one_line(exc) + ray_logs_hint()}")
                continue
        for model in todo:
            embed(model, decoded, wait=False)
    for model in busy:  # held by another run: by now done, or ours to finish
        embed(model, None, wait=True)
    return failures
