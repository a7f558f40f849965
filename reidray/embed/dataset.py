"""Embedding one dataset for every model of the grid, decoding it once per input size.

Models whose CPU stage gives identical pixels (same input size, resize policy and interpolation:
``preprocess.resize_key``) share one decoded copy of the dataset, held in Ray's object store while
each of them reads it, as long as that copy fits half of the store; otherwise each model decodes
for itself and the run says why. A cell already complete is skipped and never decoded for.
"""

from __future__ import annotations

from collections.abc import Callable

import pyarrow as pa
import ray

from reidray.cells import CellRecord
from reidray.config import JobConfig
from reidray.connect import ray_logs_hint
from reidray.embed.pipeline import decoded_images, embed_cell, is_complete
from reidray.embed.progress import finished_line
from reidray.errors import ReidrayError, one_line, user_error
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
                  say: Callable[[str], None], on_cell: Callable[[CellRecord], None]) -> list[str]:
    """Embed ``dataset`` with every model (complete cells skipped), calling ``on_cell`` with each
    cell as it is ready; returns one line per failed cell."""
    failures: list[str] = []
    digest = manifest_hash(manifest)  # once per dataset, not per model
    for group in decode_groups(models):
        todo = [m for m in group if not is_complete(store, m, dataset, digest, weights=job.weights_for(m),
                                                    random_init=job.random_init, settings=job.embed_for(m))]
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
                    failures.append(f"cell {model}/{dataset}: {user_error(exc) or one_line(exc) + ray_logs_hint()}")
                    say(f"FAILED {failures[-1]}")
                continue
        for model in group:
            try:
                cell = embed_cell(store, model, dataset, manifest, weights=job.weights_for(model),
                                  random_init=job.random_init, settings=job.embed_for(model), say=say,
                                  decoded=decoded, manifest_digest=digest)
            except ReidrayError as exc:
                failures.append(str(exc))
                say(f"FAILED {exc}")
                continue
            if cell.skipped:
                say(f"embed {model}/{dataset}: complete already ({cell.n_images:,} images), skipped")
            else:
                say(finished_line(cell))
            on_cell(cell)
    return failures
