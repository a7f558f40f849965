"""The score stage's Ray task graph: one task per (model, dataset) cell, started as soon as that
cell's embeddings are complete; each returns the cell's results rows, which the driver stores.

A task scores only a cell that ``store.verify_cell`` finds as its record describes it, and with
finite embeddings: NaN or infinity marks the cell invalid, so the next embed redoes it. A cell
that fails to score loses its old results file, so no stale number outlives it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reidray.cells import EMBEDDING, IMAGE_ID, LABELS, CellRecord, nonfinite
from reidray.config import FusionEntry, ScoreSettings
from reidray.connect import ResourceWatch
from reidray.errors import CellError, ReidrayError, user_error
from reidray.score.results import to_table
from reidray.store import Store, fingerprint, redo_hint, verify_cell


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
def score_task(root: str, cell: CellRecord, protocol: str,
               postprocessing: dict[str, dict] | None = None) -> tuple[list[dict], pa.Table]:
    """Score one stored cell under the dataset's ``protocol``: the plain rows, then one set per
    ``postprocessing`` entry (name -> evaluate's options; each row's score_seconds is its own pass),
    and its rank lists (``ranklists.sheet``, from the plain pass's per-query APs); every failure
    comes back as a CellError naming the cell. The model facts come from the cell's record, as
    embed stored them.

    Ranking runs on the GPU when the task was given one (``evaluate`` picks CUDA when visible),
    else with one torch thread per CPU the task was given: a reused Ray worker keeps whatever
    thread count its last task set, so it is set here every time.
    """
    import torch

    from reidray.score import ranklists
    from reidray.score.protocols import plain, score_cell

    _use_assigned_cpus(torch)
    try:
        table = joined_cell(Store.open(root), cell)
        rows, aps = [], {}
        for postprocess, options in {"none": None, **(postprocessing or {})}.items():
            start = time.perf_counter()
            done = score_cell(protocol, table, cell.metric, cell=cell.name, postprocess=postprocess, options=options,
                              aps=aps if postprocess == "none" else None)
            rows += [{**row, "score_seconds": time.perf_counter() - start} for row in done]
        sheet = ranklists.sheet(protocol, table, plain(cell.metric), cell.name, aps)
    except ReidrayError as exc:
        message = str(exc) if str(exc).startswith("cell ") else f"cell {cell.name}: {exc}"
        raise CellError(message) from None
    common = {
        "model": cell.model,
        "paradigm": cell.paradigm,
        "params": float(cell.params_m),
        "dataset": cell.dataset,
        "dim": cell.dim,
        "metric": cell.metric,
        "embed_seconds": cell.embed_seconds,
        "images_per_second": cell.images_per_second,
        "device": cell.device,
        "random_init": cell.random_init,
        "fingerprint": cell.fingerprint,
        "members": [],
    }
    return _with(common, rows), ranklists.with_cell(sheet, cell.model, cell.dataset, cell.fingerprint)


@ray.remote
def fusion_task(root: str, name: str, cells: list[CellRecord], weights: list[float],
                protocol: str) -> tuple[list[dict], pa.Table]:
    """``fusion_rows`` as a Ray task, on the CPUs it was given."""
    import torch

    _use_assigned_cpus(torch)
    return fusion_rows(root, name, cells, weights, protocol)


def fusion_rows(root: str, name: str, cells: list[CellRecord], weights: list[float],
                protocol: str) -> tuple[list[dict], pa.Table]:
    """Score a fusion of stored cells of one dataset as one more model (``fusion.evaluate_fused``),
    with its rank lists: the members' verified embeddings are joined on image_id to the first
    member's table; each member is compared by the metric its record holds."""
    from reidray.score import ranklists
    from reidray.score.protocols import Scoring, score_fusion

    dataset = cells[0].dataset
    fused = fingerprint({"fusion": [(c.fingerprint, w) for c, w in zip(cells, weights, strict=True)]})
    try:
        store = Store.open(root)
        first = f"embedding:{cells[0].model}"
        table = _renamed(joined_cell(store, cells[0]), first)
        for cell in cells[1:]:
            other = joined_cell(store, cell)
            order = pc.index_in(table.column(IMAGE_ID), value_set=other.column(IMAGE_ID))
            if order.null_count:
                raise CellError(f"cells {cells[0].name} and {cell.name} hold different images")
            table = table.append_column(f"embedding:{cell.model}", other.column(EMBEDDING).take(order))
        members = [(f"embedding:{c.model}", c.metric, w) for c, w in zip(cells, weights, strict=True)]
        start = time.perf_counter()
        aps: dict = {}
        rows = score_fusion(protocol, table, members, cell=f"{name}/{dataset}", aps=aps)
        score_seconds = time.perf_counter() - start
        sheet = ranklists.sheet(protocol, table, Scoring(tuple(members), {}), f"{name}/{dataset}", aps)
    except ReidrayError as exc:
        message = str(exc) if str(exc).startswith("cell") else f"cell {name}/{dataset}: {exc}"
        raise CellError(message) from None
    embed_seconds = sum(c.embed_seconds for c in cells)
    common = {
        "model": name,
        "paradigm": "fusion",
        "params": float(sum(c.params_m for c in cells)),
        "dataset": dataset,
        "dim": sum(c.dim for c in cells),
        "metric": "fusion",
        "embed_seconds": embed_seconds,
        "images_per_second": cells[0].n_images / embed_seconds if embed_seconds > 0 else 0.0,
        "score_seconds": score_seconds,
        "device": ",".join(sorted({c.device for c in cells})),
        "random_init": any(c.random_init for c in cells),
        "fingerprint": fused,
        "members": [{"model": c.model, "fingerprint": c.fingerprint} for c in cells],
    }
    return _with(common, rows), ranklists.with_cell(sheet, name, dataset, fused)


def _renamed(table: pa.Table, embedding: str) -> pa.Table:
    return table.rename_columns([embedding if c == EMBEDDING else c for c in table.column_names])


def _use_assigned_cpus(torch) -> None:
    """One torch thread per CPU the task was given (a reused worker keeps its last setting)."""
    cpus = ray.get_runtime_context().get_assigned_resources().get("CPU", 1)
    torch.set_num_threads(max(1, int(cpus)))


def _with(common: dict, rows: list[dict]) -> list[dict]:
    """Results rows: the protocol's rows with the cell's facts and the time they were made."""
    created = datetime.now(timezone.utc)
    return [
        {**common, "created_at": created, **{k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}}
        for row in rows
    ]


@dataclass
class ScoreGraph:
    """Submits a score task per finished cell and stores each cell's rows as they arrive.

    A task whose node is lost is retried by Ray on another node that can hold it; when no live node
    can (score.num_gpus asked for GPUs and the GPU nodes are gone), the wait for it is bounded by
    ``config.wait_seconds()`` (``connect.ResourceWatch``) and each pending cell fails in one line.
    """

    store: Store
    settings: ScoreSettings = field(default_factory=ScoreSettings)
    say: Callable[[str], None] = print
    pending: dict = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    done: list[tuple[str, str]] = field(default_factory=list)

    def submit(self, cell: CellRecord, protocol: str) -> None:
        ref = score_task.options(num_cpus=self.settings.num_cpus, num_gpus=self.settings.num_gpus).remote(
            self.store.root, cell, protocol, self.settings.postprocessing()
        )
        self.pending[ref] = (cell.model, cell.dataset)

    def fuse(self, fusions: list[FusionEntry], protocols: dict[str, str]) -> list[str]:
        """Submit a task per (fusion, dataset) whose member cells are all stored (``protocols``:
        dataset -> its protocol); say why not for the others."""
        skipped = []
        for fusion in fusions:
            for dataset, protocol in protocols.items():
                cells, missing = [], []
                for model in fusion.models:
                    try:
                        cell = self.store.cell_record(model, dataset)
                    except ReidrayError as exc:  # unreadable: say so, as for a missing member
                        missing.append(f"{model}/{dataset} ({exc})")
                        continue
                    if cell is None:
                        missing.append(f"{model}/{dataset}")
                    else:
                        cells.append(cell)
                if missing:
                    skipped.append(f"fusion {fusion.name}/{dataset}: skipped, member cell(s) {', '.join(missing)} "
                                   "not embedded; embed them first")
                    self.store.drop_results(fusion.name, dataset)
                    continue
                ref = fusion_task.options(num_cpus=self.settings.num_cpus, num_gpus=self.settings.num_gpus).remote(
                    self.store.root, fusion.name, cells, fusion.member_weights(), protocol
                )
                self.pending[ref] = (fusion.name, dataset)
        return skipped

    def collect(self, wait: bool = False) -> None:
        """Store the rows of every finished task; with ``wait``, of all of them (or fail those no
        live node can run any more)."""
        watch = ResourceWatch(self.settings.resources(), what="each score task", say=self.say,
                              fix="add a node with them (a GPU worker group) or lower score.num_gpus in the job file"
                              ) if wait else None
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=1.0 if wait else 0)
            if not ready:
                if watch is None:
                    return
                if failure := watch.gave_up():
                    self._abandon(failure)
                    return
                continue
            model, dataset = self.pending.pop(ready[0])
            try:
                rows, sheet = ray.get(ready[0])
            except Exception as exc:  # a RayTaskError wrapping our CellError
                cause = user_error(exc)
                self.failures.append(str(cause) if cause is not None
                                     else f"cell {model}/{dataset}: {getattr(exc, 'cause', None) or exc}")
                self.store.drop_results(model, dataset)
                continue
            path = self.store.result_path(model, dataset)
            try:
                self.store.write_table(path, to_table(rows))
                self.store.write_table(self.store.ranklist_path(model, dataset), sheet)
            except OSError as exc:  # e.g. a folder where the file goes
                self.failures.append(f"cell {model}/{dataset}: results file {self.store.uri_of(path)} cannot be "
                                     f"written ({exc}); move whatever is there away and rerun score")
                continue
            self.done.append((model, dataset))

    def _abandon(self, failure: str) -> None:
        """Cancel every pending task (Ray would keep them pending for ever) and fail its cell."""
        for ref, (model, dataset) in self.pending.items():
            ray.cancel(ref, force=True)
            self.failures.append(f"cell {model}/{dataset}: {failure}")
            self.store.drop_results(model, dataset)
        self.pending.clear()
