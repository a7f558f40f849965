"""The embed stage: one Ray Data pipeline per (model, dataset) cell, written as Parquet.

Decoding runs in Ray tasks and the encoder in an actor pool; with GPUs the two stay separate
operators (their resources differ), on a CPU-only machine Ray fuses them into the actor.

manifest rows -> decode + resize (CPU tasks) -> encoder actor pool (GPU where present)
-> Parquet under the cell folder -> verified -> ``cell.json`` written last. A cell whose marker
carries the current fingerprint is skipped; any other cell is cleared and redone, so a rerun after
a crash ends with exactly one row per image.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import ray

from reidray.cells import EMBEDDING, IMAGE_ID, LABELS, PATH, CellRecord
from reidray.config import EmbedSettings, resolve_precision
from reidray.connect import ray_logs_hint
from reidray.embed.actor import EncoderActor
from reidray.embed.decode import decode_resize
from reidray.embed.progress import ProgressTracker, tracker_name, watch
from reidray.errors import CellError, one_line, user_error
from reidray.models import get
from reidray.models.preprocess import resize_key
from reidray.store import Store, fingerprint, manifest_hash


def cell_fingerprint(model: str, weights: str | None, random_init: bool, manifest_digest: str,
                     precision: str = "fp32") -> str:
    """Everything that changes a cell's embeddings: model facts, weights, precision, the images."""
    spec = get(model)
    return fingerprint(
        {
            "model": model,
            "weights_id": spec.weights_id,
            "weights": weights,
            "random_init": random_init,
            "precision": precision,
            "preprocess": [*resize_key(spec), spec.mean, spec.std],
            "manifest": manifest_digest,
        }
    )


@dataclass(frozen=True)
class Resources:
    """What the encoder actors ask Ray for, and the arithmetic they run in."""

    num_gpus: float
    pool: tuple[int, int]
    device: str
    precision: str


def resources(settings: EmbedSettings) -> Resources:
    """One GPU per actor when the cluster has GPUs (or the job says so); bf16 there by default."""
    gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
    num_gpus = settings.num_gpus if settings.num_gpus is not None else (1.0 if gpus_in_cluster else 0.0)
    if num_gpus == 0:
        # On CPU an actor already uses every core through torch; more actors only contend.
        return Resources(0.0, (1, 1), "cpu", resolve_precision(settings.precision, "cpu"))
    return Resources(num_gpus, settings.concurrency, "cuda", resolve_precision(settings.precision, "cuda"))


def is_complete(store: Store, model: str, dataset: str, manifest_digest: str, *, weights: str | None,
                random_init: bool, settings: EmbedSettings) -> bool:
    """Whether the stored cell already holds exactly what this run would write."""
    fp = cell_fingerprint(model, weights, random_init, manifest_digest, resources(settings).precision)
    return stored_cell(store, model, dataset, fp) is not None


def stored_cell(store: Store, model: str, dataset: str, fp: str) -> CellRecord | None:
    """The stored cell when its record is whole and carries fingerprint ``fp``; else None (redo it)."""
    marker = store.cell_marker(model, dataset)
    if marker is None or marker.get("fingerprint") != fp:
        return None
    try:
        return CellRecord.from_marker(marker, skipped=True)
    except CellError:  # a record from an older reidray, or edited: the cell is redone
        return None


def _quiet_ray_data() -> None:
    """reidray reports each cell's progress itself: Ray Data's own bars and console lines only add
    noise (they stay in its log file; --verbose shows them)."""
    from reidray.connect import quiet_ray_data

    ray.data.DataContext.get_current().enable_progress_bars = False
    quiet_ray_data()


def decoded_images(manifest: pa.Table, model: str, settings: EmbedSettings) -> ray.data.Dataset:
    """The CPU stage: every manifest image decoded and resized for ``model`` (and any model with
    the same input size and interpolation)."""
    _quiet_ray_data()
    rows = manifest.select([PATH, *LABELS])
    # One block per decode batch: Ray Data runs one task per input block, so a manifest handed
    # over whole would be decoded by a single task, on one core, whatever the cluster.
    step = settings.decode_batch_size
    blocks = [rows.slice(start, step) for start in range(0, rows.num_rows, step)] or [rows]
    return ray.data.from_arrow(blocks).map_batches(
        decode_resize, fn_kwargs={"model": model}, batch_size=step
    )


def embed_cell(
    store: Store,
    model: str,
    dataset: str,
    manifest: pa.Table,
    *,
    weights: str | None = None,
    random_init: bool = False,
    settings: EmbedSettings | None = None,
    say: Callable[[str], None] = print,
    decoded: ray.data.Dataset | None = None,
    manifest_digest: str | None = None,
) -> CellRecord:
    """Embed one dataset with one model, or skip it when its complete cell is already stored.

    ``decoded`` is the output of :func:`decoded_images` when several models share it;
    ``manifest_digest`` is ``reidray.store.manifest_hash(manifest)`` when the caller has it already.
    """
    settings = settings or EmbedSettings()
    spec = get(model)
    res = resources(settings)
    fp = cell_fingerprint(model, weights, random_init, manifest_digest or manifest_hash(manifest), res.precision)
    stored = stored_cell(store, model, dataset, fp)
    if stored is not None:
        return stored

    cell_dir = store.cell_dir(model, dataset)
    store.clear_dir(cell_dir)  # drops any half-written attempt, marker included
    label = f"embed {model}/{dataset}"
    tracker = ProgressTracker.options(name=tracker_name(model, dataset)).remote()
    ds = (decoded if decoded is not None else decoded_images(manifest, model, settings)).map_batches(
        EncoderActor,
        fn_constructor_kwargs={"model": model, "weights": weights, "random_init": random_init,
                               "precision": res.precision, "tracker": tracker},
        compute=ray.data.ActorPoolStrategy(min_size=res.pool[0], max_size=res.pool[1]),
        num_gpus=res.num_gpus,
        batch_size=settings.batch_size or spec.batch_size,
    )
    failure: list[BaseException] = []

    def write() -> None:
        try:
            ds.write_parquet(store.uri("embeddings", model, dataset),
                             filesystem=None if "://" in store.root else store.fs)
        except BaseException as exc:  # handed to the driver thread below
            failure.append(exc)

    start = time.perf_counter()
    writer = threading.Thread(target=write, name=label, daemon=True)
    writer.start()
    try:
        watch(tracker, label, manifest.num_rows, lambda: not writer.is_alive(), say, settings.progress_seconds)
        writer.join()
        steady, busy = ray.get([tracker.steady_rate.remote(), tracker.busy_fraction.remote()])
    finally:
        ray.kill(tracker)
    if failure:  # Ray wraps the worker's exception; surface ours with the cell named, in one line
        cause = user_error(failure[0])
        raise CellError(f"cell {model}/{dataset}: {cause or one_line(failure[0]) + ray_logs_hint()}") from failure[0]
    seconds = time.perf_counter() - start

    written = store.read_cell(model, dataset)
    _verify(written, manifest, model, dataset)
    cell = CellRecord(
        model=model, dataset=dataset, fingerprint=fp, n_images=written.num_rows,
        dim=written.schema.field(EMBEDDING).type.list_size, embed_seconds=seconds, device=res.device,
        precision=res.precision, random_init=random_init, weights_id=spec.weights_id, paradigm=spec.paradigm,
        params_m=spec.params_m, metric=spec.metric, normalize=spec.normalize, steady_images_per_second=steady,
        encoder_busy_fraction=busy, created_at=datetime.now(timezone.utc).isoformat(),
    )
    store.write_json(f"{cell_dir}/cell.json", cell.to_marker())
    return cell


def _verify(written: pa.Table, manifest: pa.Table, model: str, dataset: str) -> None:
    """Exactly one row per manifest image, finite embeddings: otherwise the cell is not complete."""
    ids = written.column(IMAGE_ID)
    if written.num_rows != manifest.num_rows or pc.count_distinct(ids).as_py() != manifest.num_rows:
        raise CellError(
            f"cell {model}/{dataset}: wrote {written.num_rows} rows for {manifest.num_rows} images; "
            "the cell is left incomplete and will be redone"
        )
    if not pc.all(pc.is_in(ids, value_set=manifest.column(IMAGE_ID))).as_py():
        raise CellError(f"cell {model}/{dataset}: embeddings hold image ids that are not in the manifest")
