"""The score stage's Ray task graph: one task per (model, dataset) cell, started as soon as that
cell's embeddings are complete; each returns the cell's results rows, which the driver stores.

A task scores only a cell that ``store.verify_cell`` finds as its record describes it, and with
finite embeddings: NaN or infinity marks the cell invalid, so the next embed redoes it. A cell
that fails to score loses its old results file, so no stale number outlives it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reidray.cells import IMAGE_ID, LABELS, CellRecord, nonfinite
from reidray.config import ScoreSettings
from reidray.errors import CellError, ReidrayError, user_error
from reidray.score.results import to_table
from reidray.store import Store, redo_hint, verify_cell


def joined_cell(store: Store, cell: CellRecord) -> pa.Table:
    """The cell's embeddings, verified against its record and finite, with its manifest's columns
    (dataset-specific ones included)."""
    manifest = store.read_table(store.manifest_path(cell.dataset))
    embeddings = verify_cell(store, cell, manifest.column(IMAGE_ID))
    count, first = nonfinite(embeddings)
    if count:
        reason = f"{count} embeddings are NaN or infinite (first: {', '.join(first)})"
        store.mark_invalid(cell.model, cell.dataset, reason)
        raise CellError(f"cell {cell.name}: {reason}; marked invalid, {redo_hint(cell.model, cell.dataset)}")
    order = pc.index_in(embeddings.column(IMAGE_ID), value_set=manifest.column(IMAGE_ID))
    extra = manifest.take(order).drop_columns(list(LABELS))
    table = embeddings
    for name in extra.column_names:
        table = table.append_column(name, extra.column(name))
    return table


@ray.remote
def score_task(root: str, cell: CellRecord, protocol: str) -> list[dict]:
    """Score one stored cell under the dataset's ``protocol``; every failure comes back as a
    CellError naming the cell. The model facts come from the cell's record, as embed stored them.

    Ranking runs on the GPU when the task was given one (``evaluate`` picks CUDA when visible),
    else with one torch thread per CPU the task was given: a reused Ray worker keeps whatever
    thread count its last task set, so it is set here every time.
    """
    import torch

    from reidray.score.protocols import score_cell

    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))
    try:
        table = joined_cell(Store.open(root), cell)
        start = time.perf_counter()
        rows = score_cell(protocol, table, cell.metric, cell=cell.name)
    except ReidrayError as exc:
        message = str(exc) if str(exc).startswith("cell ") else f"cell {cell.name}: {exc}"
        raise CellError(message) from None
    seconds = time.perf_counter() - start
    created = datetime.now(timezone.utc)
    common = {
        "model": cell.model,
        "paradigm": cell.paradigm,
        "params": float(cell.params_m),
        "dataset": cell.dataset,
        "dim": cell.dim,
        "metric": cell.metric,
        "embed_seconds": cell.embed_seconds,
        "images_per_second": cell.images_per_second,
        "score_seconds": seconds,
        "device": cell.device,
        "random_init": cell.random_init,
        "fingerprint": cell.fingerprint,
        "created_at": created,
    }
    return [{**common, **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}} for row in rows]


def placement_warning(settings: ScoreSettings) -> str | None:
    """Why score tasks may wait: no live node has the CPUs or GPUs each one asks for."""
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    for resource, wanted in (("CPU", settings.num_cpus), ("GPU", settings.num_gpus)):
        largest = max((n.get(resource, 0) for n in nodes), default=0)
        if wanted > largest:
            return (f"each score task asks for {wanted:g} {resource}(s) but the largest node has {largest:g}: "
                    f"scoring waits until the autoscaler adds a node that has them; on a fixed cluster "
                    f"lower score.num_{resource.lower()}s in the job file")
    return None


@dataclass
class ScoreGraph:
    """Submits a score task per finished cell and stores each cell's rows as they arrive."""

    store: Store
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    pending: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    done: list[tuple[str, str]] = field(default_factory=list)

    def submit(self, cell: CellRecord, protocol: str) -> None:
        ref = score_task.options(num_cpus=self.settings.num_cpus, num_gpus=self.settings.num_gpus).remote(
            self.store.root, cell, protocol
        )
        self.pending[ref] = cell

    def collect(self, wait: bool = False) -> None:
        """Store the rows of every finished task; with ``wait``, of all of them."""
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=None if wait else 0)
            if not ready:
                return
            cell = self.pending.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except Exception as exc:  # a RayTaskError wrapping our CellError
                cause = user_error(exc)
                self.failures.append(str(cause) if cause is not None else f"cell {cell.name}: {getattr(exc, 'cause', None) or exc}")
                self.store.drop_results(cell.model, cell.dataset)
                continue
            path = self.store.result_path(cell.model, cell.dataset)
            try:
                self.store.write_table(path, to_table(rows))
            except OSError as exc:  # e.g. a folder where the file goes
                self.failures.append(f"cell {cell.name}: results file {self.store.uri_of(path)} cannot be written "
                                     f"({exc}); move whatever is there away and rerun score")
                continue
            self.done.append((cell.model, cell.dataset))
