"""The embed stage: one Ray Data pipeline per (model, dataset) cell, written as Parquet.

Decoding runs in Ray tasks and the encoder in an actor pool; with GPUs the two stay separate
operators (their resources differ), on a CPU-only machine Ray fuses them into the actor.

manifest rows -> decode + resize (CPU tasks) -> encoder actor pool (GPU where present)
-> Parquet under the cell folder -> verified -> ``cell.json`` written last. A cell whose marker
carries the current fingerprint is skipped; any other cell is cleared and redone, so a rerun after
a crash ends with exactly one row per image.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import pyarrow.compute as pc
import ray

from reidray.config import AUTO_PRECISION, EmbedSettings
from reidray.embed.actor import EncoderActor
from reidray.embed.decode import decode_resize
from reidray.embed.progress import ProgressTracker, tracker_name, watch
from reidray.errors import CellError, ReidrayError
from reidray.models import get, uses_camera_ids
from reidray.models.preprocess import resize_key
from reidray.store import Store, fingerprint, manifest_hash


@dataclass(frozen=True)
class CellEmbedding:
    """What the embed stage tells the score stage and the results rows about a cell."""

    model: str
    dataset: str
    fingerprint: str
    n_images: int
    dim: int
    embed_seconds: float
    device: str
    random_init: bool
    skipped: bool
    encoder_busy: float | None = None  # see ProgressTracker.busy_fraction

    @classmethod
    def from_marker(cls, marker: dict, *, skipped: bool) -> CellEmbedding:
        """A stored cell, as its ``cell.json`` describes it."""
        return cls(marker["model"], marker["dataset"], marker["fingerprint"], marker["n_images"], marker["dim"],
                   marker["embed_seconds"], marker["device"], marker["random_init"], skipped,
                   marker.get("encoder_busy_fraction"))

    @property
    def images_per_second(self) -> float:
        return self.n_images / self.embed_seconds if self.embed_seconds > 0 else 0.0


def cell_fingerprint(model: str, weights: str | None, random_init: bool, manifest_digest: str,
                     precision: str = "fp32", dataset: str | None = None) -> str:
    """Everything that changes a cell's embeddings: model facts, weights, precision, the images,
    and for a camera-aware model whether the dataset's camera ids are used."""
    spec = get(model)
    facts = {
        "model": model,
        "weights_id": spec.weights_id,
        "weights": weights,
        "random_init": random_init,
        "precision": precision,
        "preprocess": [*resize_key(spec), spec.mean, spec.std],
        "manifest": manifest_digest,
    }
    if spec.revision:
        facts["revision"] = spec.revision
    if spec.uses_camera:
        facts["camera_embedding"] = "per-camera" if uses_camera_ids(spec, dataset) else "none"
    return fingerprint(facts)


@dataclass(frozen=True)
class Resources:
    """What the encoder actors ask Ray for, and the arithmetic they run in."""

    num_gpus: float
    pool: tuple[int, int]
    device: str
    precision: str


def resources(settings: EmbedSettings) -> Resources:
    """One GPU per actor when the cluster has GPUs (or the job says so).

    ``precision: auto`` is fp32 everywhere: bf16/fp16 are opt-in (job or model entry) until their
    ranking tolerance is measured on a GPU with the trained weights (docs/benchmarks.md).
    """
    gpus_in_cluster = ray.cluster_resources().get("GPU", 0)
    num_gpus = settings.num_gpus if settings.num_gpus is not None else (1.0 if gpus_in_cluster else 0.0)
    precision = AUTO_PRECISION if settings.precision == "auto" else settings.precision
    if num_gpus == 0:
        # On CPU an actor already uses every core through torch; more actors only contend.
        return Resources(0.0, (1, 1), "cpu", precision)
    return Resources(num_gpus, settings.concurrency, "cuda", precision)


def is_complete(store: Store, model: str, dataset: str, manifest_digest: str, *, weights: str | None,
                random_init: bool, settings: EmbedSettings) -> bool:
    """Whether the stored cell already holds exactly what this run would write."""
    fp = cell_fingerprint(model, weights, random_init, manifest_digest, resources(settings).precision, dataset)
    return store.cell_complete(model, dataset, fp)


def _quiet_ray_data() -> None:
    """reidray reports each cell's progress itself: Ray Data's own bars and INFO lines only add noise."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


def decoded_images(manifest: pa.Table, model: str, settings: EmbedSettings) -> ray.data.Dataset:
    """The CPU stage: every manifest image decoded and resized for ``model`` (and any model with
    the same input size and interpolation)."""
    _quiet_ray_data()
    rows = manifest.select(["image_id", "path", "pid", "camid", "split"])
    # One block per decode batch: Ray Data runs one task per input block, so a manifest handed
    # over whole would be decoded by a single task, on one core, whatever the cluster.
    step = settings.decode_batch_size
    blocks = [rows.slice(start, step) for start in range(0, rows.num_rows, step)] or [rows]
    return ray.data.from_arrow(blocks).map_batches(
        decode_resize, fn_kwargs={"model": model}, batch_size=step
    )


SHARED_DECODE_SHARE = 0.5  # of the cluster's object store; a bigger decoded copy would spill to disk


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


_REMOTE_ERROR = re.compile(r"^reidray\.errors\.\w+: (.+)$", re.MULTILINE)


def user_error(exc: BaseException) -> ReidrayError | None:
    """The reidray error a Ray failure wraps, if any.

    Ray chains a task's exception as ``cause``; Ray Data's ``UserCodeException`` keeps only the
    remote traceback's text, so the error's own line is read back from it.
    """
    seen = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ReidrayError):
            return current
        found = _REMOTE_ERROR.findall(str(current))
        if found:
            return ReidrayError(found[-1])
        current = getattr(current, "cause", None) or current.__cause__ or current.__context__
    return None


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
) -> CellEmbedding:
    """Embed one dataset with one model, or skip it when its complete cell is already stored.

    ``decoded`` is the output of :func:`decoded_images` when several models share it;
    ``manifest_digest`` is ``reidray.store.manifest_hash(manifest)`` when the caller has it already.
    """
    settings = settings or EmbedSettings()
    spec = get(model)
    res = resources(settings)
    fp = cell_fingerprint(model, weights, random_init, manifest_digest or manifest_hash(manifest), res.precision,
                          dataset)
    marker = store.cell_marker(model, dataset)
    if marker is not None and marker.get("fingerprint") == fp:
        return CellEmbedding.from_marker(marker, skipped=True)

    cell_dir = store.cell_dir(model, dataset)
    store.clear_dir(cell_dir)  # drops any half-written attempt, marker included
    label = f"embed {model}/{dataset}"
    tracker = ProgressTracker.options(name=tracker_name(model, dataset)).remote()
    ds = (decoded if decoded is not None else decoded_images(manifest, model, settings)).map_batches(
        EncoderActor,
        fn_constructor_kwargs={"model": model, "weights": weights, "random_init": random_init,
                               "precision": res.precision, "tracker": tracker, "dataset": dataset},
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
    if failure:  # Ray wraps the worker's exception; surface ours with the cell named
        cause = user_error(failure[0])
        raise CellError(f"cell {model}/{dataset}: {cause or failure[0]}") from failure[0]
    seconds = time.perf_counter() - start

    written = store.read_cell(model, dataset)
    _verify(written, manifest, model, dataset)
    dim = written.schema.field("embedding").type.list_size
    store.write_json(
        f"{cell_dir}/cell.json",
        {
            "fingerprint": fp,
            "model": model,
            "dataset": dataset,
            "random_init": random_init,
            "weights_id": spec.weights_id,
            "n_images": written.num_rows,
            "dim": dim,
            "embed_seconds": seconds,
            "steady_images_per_second": steady,
            "encoder_busy_fraction": busy,
            "device": res.device,
            "precision": res.precision,
            "created_at": datetime.now(timezone.utc).isoformat(),
        },
    )
    return CellEmbedding(model, dataset, fp, written.num_rows, dim, seconds, res.device, random_init,
                         skipped=False, encoder_busy=busy)


def _verify(written: pa.Table, manifest: pa.Table, model: str, dataset: str) -> None:
    """Exactly one row per manifest image, finite embeddings: otherwise the cell is not complete."""
    ids = written.column("image_id")
    if written.num_rows != manifest.num_rows or pc.count_distinct(ids).as_py() != manifest.num_rows:
        raise CellError(
            f"cell {model}/{dataset}: wrote {written.num_rows} rows for {manifest.num_rows} images; "
            "the cell is left incomplete and will be redone"
        )
    if not pc.all(pc.is_in(ids, value_set=manifest.column("image_id"))).as_py():
        raise CellError(f"cell {model}/{dataset}: embeddings hold image ids that are not in the manifest")
