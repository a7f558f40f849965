"""The embed stage: one Ray Data pipeline per (model, dataset) cell, written as Parquet.

Decoding runs in Ray tasks and the encoder in an actor pool; with GPUs the two stay separate
operators (their resources differ), on a CPU-only machine Ray fuses them into the actor.

manifest rows -> decode + resize (CPU tasks) -> encoder actor pool (GPU where present)
-> Parquet under the cell folder -> read back once (hashed, checked) -> ``cell.json`` written
last, listing every part with its rows and SHA-256. A cell whose marker carries the current
fingerprint and which ``store.verify_cell`` finds whole is skipped; any other cell is cleared
(its results file with it) and redone, saying why, so a rerun after a crash or a damaged file
ends with exactly one row per image. A marker that is there but cannot be read stops the cell
(the cause may be passing); ``redo`` clears it regardless.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone

import pyarrow as pa
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from reidray.cells import EMBEDDING, IMAGE_ID, LABELS, PATH, CellRecord, nonfinite
from reidray.config import EmbedSettings, resolve_precision
from reidray.connect import ResourceWatch, ray_false_alarms_hidden, ray_logs_hint, wait_for_resources
from reidray.embed.actor import EncoderActor
from reidray.embed.decode import decode_resize
from reidray.embed.progress import ProgressTracker, tracker_name, watch
from reidray.errors import CellError, ReidrayError, one_line, user_error
from reidray.lease import cell_lease
from reidray.models import get, uses_camera_ids
from reidray.models.preprocess import resize_key
from reidray.store import (
    CellFaultError, Store, dir_name, fingerprint, id_problem, manifest_hash, seal_parts, verify_cell,
)


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
    if spec.source:  # an encoder by reference: its library, version and resolved config
        facts["source"] = spec.source
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
    if num_gpus == 0:
        # On CPU an actor already uses every core through torch; more actors only contend.
        return Resources(0.0, (1, 1), "cpu", resolve_precision(settings.precision))
    return Resources(num_gpus, settings.concurrency, "cuda", resolve_precision(settings.precision))


def fingerprint_for(model: str, manifest_digest: str, *, dataset: str, weights: str | None, random_init: bool,
                    settings: EmbedSettings) -> str:
    """The fingerprint this run gives the cell (precision as the cluster resolves it)."""
    return cell_fingerprint(model, weights, random_init, manifest_digest, resources(settings).precision, dataset)


def stored_cell(store: Store, model: str, dataset: str, fp: str, manifest: pa.Table) -> tuple[CellRecord | None, str]:
    """The stored cell when its record is whole, carries fingerprint ``fp`` and verifies against
    its files and ``manifest``; else None and why it must be redone ("" when nothing is stored).
    A marker that cannot be read is a CellError: only a missing one means "not done"."""
    marker = store.cell_marker(model, dataset)
    if marker is None:
        return None, ""
    if marker.get("fingerprint") != fp:
        return None, "stored from other inputs (model, weights, precision or images changed)"
    try:
        record = CellRecord.from_marker(marker, skipped=True)
        verify_cell(store, record, manifest.column(IMAGE_ID), columns=[])
    except CellFaultError as exc:
        return None, exc.fault
    except CellError as exc:  # a record from an older reidray, or edited
        return None, str(exc).split(": ", 1)[-1]
    return record, ""


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
    redo: bool = False,
    wait: bool = True,
) -> CellRecord:
    """Embed one dataset with one model, or skip it when its complete cell is already stored.

    ``decoded`` is the output of :func:`decoded_images` when several models share it;
    ``manifest_digest`` is ``reidray.store.manifest_hash(manifest)`` when the caller has it already;
    ``redo`` clears the stored cell, whatever it holds, and recomputes it. The cell's lease is held
    throughout: when another run holds it, ``wait`` for it, or raise ``lease.CellBusyError``.
    """
    with cell_lease(store, model, dataset, wait=wait, say=say):
        return _embed_held(store, model, dataset, manifest, weights=weights, random_init=random_init,
                           settings=settings or EmbedSettings(), say=say, decoded=decoded,
                           manifest_digest=manifest_digest, redo=redo)


def _embed_held(store: Store, model: str, dataset: str, manifest: pa.Table, *, weights: str | None,
                random_init: bool, settings: EmbedSettings, say: Callable[[str], None],
                decoded: ray.data.Dataset | None, manifest_digest: str | None, redo: bool) -> CellRecord:
    """``embed_cell`` once its lease is held."""
    spec = get(model)
    res = resources(settings)
    fp = cell_fingerprint(model, weights, random_init, manifest_digest or manifest_hash(manifest), res.precision,
                          dataset)
    label = f"embed {model}/{dataset}"
    stored, why = (None, "--redo asked for it") if redo else stored_cell(store, model, dataset, fp, manifest)
    if stored is not None:
        return stored
    if why:
        say(f"{label}: redoing the cell: {why}")

    actor_needs = {"wanted": {"GPU": res.num_gpus}, "what": f"cell {model}/{dataset}: each encoder actor", "say": say,
                   "fix": "set embed.num_gpus: 0 in the job file to embed on CPUs, or give the cluster a GPU "
                          "worker group"}
    try:
        wait_for_resources(**actor_needs)
    except ReidrayError as exc:
        raise CellError(str(exc)) from None
    cell_dir = store.cell_dir(model, dataset)
    store.clear_dir(cell_dir)  # drops any half-written attempt, marker included
    store.drop_results(model, dataset)  # they described the cell just cleared
    # On the driver's own node: a tracker Ray put on a worker node would die with that node and
    # take the cell with it, though the pool recovers from the loss.
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    tracker = ProgressTracker.options(name=tracker_name(model, dataset), scheduling_strategy=here).remote()
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
            ds.write_parquet(store.uri("embeddings", dir_name(model), dir_name(dataset)),
                             filesystem=None if "://" in store.root else store.fs)
        except BaseException as exc:  # handed to the driver thread below
            failure.append(exc)

    start = time.perf_counter()
    writer = threading.Thread(target=write, name=label, daemon=True)
    lost = ResourceWatch(**actor_needs)  # the nodes that could hold an encoder, all lost mid-cell
    try:
        with ray_false_alarms_hidden():  # Ray Data's actor pool starts inside the writer
            writer.start()
            watch(tracker, label, manifest.num_rows, lambda: not writer.is_alive() or lost.gave_up() is not None,
                  say, settings.progress_seconds)
            if writer.is_alive():
                _stop(tracker, writer)
                raise CellError(lost.gave_up())
            writer.join()
        steady, busy, (nodes, device) = ray.get(
            [tracker.steady_rate.remote(), tracker.busy_fraction.remote(), tracker.where.remote()])
    finally:
        ray.kill(tracker)
    if failure:  # Ray wraps the worker's exception; surface ours with the cell named, in one line
        cause = user_error(failure[0])
        raise CellError(f"cell {model}/{dataset}: {cause or one_line(failure[0]) + ray_logs_hint()}") from failure[0]
    seconds = time.perf_counter() - start

    parts, written = seal_parts(store, model, dataset)
    _verify(written, manifest, model, dataset)
    cell = CellRecord(
        model=model, dataset=dataset, fingerprint=fp, n_images=written.num_rows,
        dim=written.schema.field(EMBEDDING).type.list_size, embed_seconds=seconds, device=device or res.device,
        precision=res.precision, random_init=random_init, weights_id=spec.weights_id, paradigm=spec.paradigm,
        params_m=spec.params_m, metric=spec.metric, normalize=spec.normalize, steady_images_per_second=steady,
        encoder_busy_fraction=busy, created_at=datetime.now(timezone.utc).isoformat(), nodes=nodes,
        parts=parts, total_bytes=sum(part.bytes for part in parts), source=spec.source,
    )
    store.write_json(f"{cell_dir}/cell.json", cell.to_marker())
    return cell


def _stop(tracker, writer: threading.Thread, timeout_s: float = 60.0) -> None:
    """End a cell's pipeline that cannot finish: its encoder actors killed for good, so Ray Data
    stops instead of waiting for a node to restart them on, and nothing writes into the cell later."""
    for actor in ray.get(tracker.encoder_actors.remote()):
        ray.kill(actor, no_restart=True)
    writer.join(timeout_s)


def _verify(written: pa.Table, manifest: pa.Table, model: str, dataset: str) -> None:
    """Exactly one row per manifest image, finite embeddings: otherwise the cell is not complete."""
    problem = id_problem(written.column(IMAGE_ID), manifest.column(IMAGE_ID))
    count, first = nonfinite(written)
    if count:
        problem = f"the encoder gave NaN or infinite embeddings for {count} images (first: {', '.join(first)})"
    if problem:
        raise CellError(f"cell {model}/{dataset}: wrote {written.num_rows:,} rows for {manifest.num_rows:,} "
                        f"images: {problem}; the cell is left incomplete and will be redone")
