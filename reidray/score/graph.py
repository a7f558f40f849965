"""The score stage's Ray task graph: one task per (model, dataset) cell, started as soon as that
cell's embeddings are complete; each returns the cell's results rows, which the driver stores.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from reidray.config import FusionEntry, ScoreSettings
from reidray.embed.pipeline import CellEmbedding
from reidray.errors import CellError, ReidrayError
from reidray.models import get
from reidray.score.results import to_table
from reidray.store import Store, fingerprint


def joined_cell(store: Store, model: str, dataset: str) -> pa.Table:
    """The cell's embeddings with its manifest's columns (dataset-specific ones included)."""
    embeddings = store.read_cell(model, dataset)
    manifest = store.read_table(store.manifest_path(dataset))
    order = pc.index_in(embeddings.column("image_id"), value_set=manifest.column("image_id"))
    if order.null_count:
        raise CellError(f"cell {model}/{dataset}: embeddings and manifest disagree on the image ids; rerun embed")
    extra = manifest.take(order).drop_columns(["image_id", "pid", "camid", "split"])
    table = embeddings
    for name in extra.column_names:
        table = table.append_column(name, extra.column(name))
    return table


@ray.remote
def score_task(root: str, cell: CellEmbedding, postprocessing: dict[str, dict] | None = None) -> list[dict]:
    """Score one stored cell: the plain rows, then one set per ``postprocessing`` entry (name ->
    evaluate's options; each row's score_seconds is its own pass); every failure comes back as
    a CellError naming the cell.

    Ranking runs on the GPU when the task was given one (``evaluate`` picks CUDA when visible),
    else with one torch thread per CPU the task was given: a reused Ray worker keeps whatever
    thread count its last task set, so it is set here every time.
    """
    import torch

    from reidray.score.protocols import score_cell

    _use_assigned_cpus(torch)
    spec = get(cell.model)
    try:
        table = joined_cell(Store.open(root), cell.model, cell.dataset)
        rows = []
        for postprocess, options in {"none": None, **(postprocessing or {})}.items():
            start = time.perf_counter()
            name = f"{cell.model}/{cell.dataset}"
            done = score_cell(cell.dataset, table, spec.metric, cell=name, postprocess=postprocess, options=options)
            rows += [{**row, "score_seconds": time.perf_counter() - start} for row in done]
    except ReidrayError as exc:
        message = str(exc) if str(exc).startswith("cell ") else f"cell {cell.model}/{cell.dataset}: {exc}"
        raise CellError(message) from None
    common = {
        "model": cell.model,
        "paradigm": spec.paradigm,
        "params": float(spec.params_m),
        "dataset": cell.dataset,
        "dim": cell.dim,
        "metric": spec.metric,
        "embed_seconds": cell.embed_seconds,
        "images_per_second": cell.images_per_second,
        "device": cell.device,
        "random_init": cell.random_init,
        "fingerprint": cell.fingerprint,
    }
    return _with(common, rows)


@ray.remote
def fusion_task(root: str, name: str, cells: list[CellEmbedding], weights: list[float]) -> list[dict]:
    """``fusion_rows`` as a Ray task, on the CPUs it was given."""
    import torch

    _use_assigned_cpus(torch)
    return fusion_rows(root, name, cells, weights)


def fusion_rows(root: str, name: str, cells: list[CellEmbedding], weights: list[float]) -> list[dict]:
    """Score a fusion of stored cells of one dataset as one more model (``fusion.evaluate_fused``):
    the members' embeddings are joined on image_id to the first member's table."""
    from reidray.score.protocols import score_fusion

    dataset, specs = cells[0].dataset, [get(c.model) for c in cells]
    try:
        store = Store.open(root)
        table = joined_cell(store, cells[0].model, dataset).rename_columns({"embedding": f"embedding:{cells[0].model}"})
        for cell in cells[1:]:
            other = store.read_cell(cell.model, dataset)
            order = pc.index_in(table.column("image_id"), value_set=other.column("image_id"))
            if order.null_count:
                raise CellError(f"cells {cells[0].model}/{dataset} and {cell.model}/{dataset} hold different images")
            table = table.append_column(f"embedding:{cell.model}", other.column("embedding").take(order))
        members = [(f"embedding:{c.model}", s.metric, w) for c, s, w in zip(cells, specs, weights, strict=True)]
        start = time.perf_counter()
        rows = score_fusion(dataset, table, members, cell=f"{name}/{dataset}")
    except ReidrayError as exc:
        message = str(exc) if str(exc).startswith("cell") else f"cell {name}/{dataset}: {exc}"
        raise CellError(message) from None
    embed_seconds = sum(c.embed_seconds for c in cells)
    common = {
        "model": name,
        "paradigm": "fusion",
        "params": float(sum(s.params_m for s in specs)),
        "dataset": dataset,
        "dim": sum(c.dim for c in cells),
        "metric": "fusion",
        "embed_seconds": embed_seconds,
        "images_per_second": cells[0].n_images / embed_seconds if embed_seconds > 0 else 0.0,
        "score_seconds": time.perf_counter() - start,
        "device": ",".join(sorted({c.device for c in cells})),
        "random_init": any(c.random_init for c in cells),
        "fingerprint": fingerprint({"fusion": [(c.fingerprint, w) for c, w in zip(cells, weights, strict=True)]}),
    }
    return _with(common, rows)


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

    def submit(self, cell: CellEmbedding) -> None:
        ref = score_task.options(num_cpus=self.settings.num_cpus, num_gpus=self.settings.num_gpus).remote(
            self.store.root, cell, self.settings.postprocessing()
        )
        self.pending[ref] = (cell.model, cell.dataset)

    def fuse(self, fusions: list[FusionEntry], datasets: list[str]) -> list[str]:
        """Submit a task per (fusion, dataset) whose member cells are all stored; say why not for the others."""
        skipped = []
        for fusion in fusions:
            for dataset in datasets:
                markers = {model: self.store.cell_marker(model, dataset) for model in fusion.models}
                missing = [f"{model}/{dataset}" for model, marker in markers.items() if marker is None]
                if missing:
                    skipped.append(f"fusion {fusion.name}/{dataset}: skipped, member cell(s) {', '.join(missing)} "
                                   "not embedded; embed them first")
                    continue
                cells = [CellEmbedding.from_marker(markers[model], skipped=True) for model in fusion.models]
                ref = fusion_task.options(num_cpus=self.settings.num_cpus, num_gpus=self.settings.num_gpus).remote(
                    self.store.root, fusion.name, cells, fusion.member_weights()
                )
                self.pending[ref] = (fusion.name, dataset)
        return skipped

    def collect(self, wait: bool = False) -> None:
        """Store the rows of every finished task; with ``wait``, of all of them."""
        while self.pending:
            ready, _ = ray.wait(list(self.pending), num_returns=1, timeout=None if wait else 0)
            if not ready:
                return
            model, dataset = self.pending.pop(ready[0])
            try:
                rows = ray.get(ready[0])
            except Exception as exc:  # a RayTaskError wrapping our CellError
                cause = getattr(exc, "cause", None) or exc
                self.failures.append(str(cause) if isinstance(cause, ReidrayError) else f"cell {model}/{dataset}: {cause}")
                continue
            self.store.write_table(self.store.result_path(model, dataset), to_table(rows))
            self.done.append((model, dataset))
