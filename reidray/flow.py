"""The whole run as functions the CLI and notebooks share: grid → manifests → embed → score → report.

Each stage reads what the previous one stored, so each can run alone and be resumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs

from reidray import datasets, models
from reidray.cells import PATH, CellRecord
from reidray.config import SYNTHETIC, JobConfig
from reidray.errors import ReidrayError
from reidray.store import CELL_MARKER, Store

if TYPE_CHECKING:
    from reidray.score.graph import ScoreGraph

Say = Callable[[str], None]


@dataclass
class Grid:
    """The cells a run will evaluate, and what it skipped with the reason."""

    models: list[str]
    datasets: dict[str, Path]  # name -> data root to load it from
    skipped: list[str] = field(default_factory=list)
    uploaded: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (local dir, URI of its copy)


def synthetic_root(store: Store) -> Path:
    """Where the built-in synthetic dataset is generated: beside the results for a local root."""
    if "://" in store.root:
        return Path(os.environ.get("REIDRAY_CACHE", "~/.cache/reidray")).expanduser() / "data"
    return Path(store.base) / "data"


WEIGHTS_POINTER = "missing weights: `python -m reidray.run weights` says where each model's go and fetches them"


def resolve_grid(job: JobConfig, store: Store, say: Say) -> Grid:
    """Pick datasets and models: what was asked for, or everything that can run here."""
    chosen_datasets, uploaded = _resolve_datasets(job, store, say)
    requested = [entry.name for entry in job.models]
    names = requested or [m for m in models.MODELS if models.get(m).paradigm != "control"]
    if not requested:
        controls = [m for m in models.MODELS if models.get(m).paradigm == "control"]
        say(f"left out: {', '.join(controls)} (the chance-level control{'s' if len(controls) > 1 else ''}: "
            "a floor to compare with, not a result; name it with -m to run it)")
    runnable, skipped = [], []
    for name in names:
        if job.random_init or not models.get(name).needs_weights:
            runnable.append(name)
            continue
        available, where = models.weights_status(name, job.weights_for(name))
        if available:
            runnable.append(name)
        else:
            skipped.append(_skip_line(name, where, explicit=job.weights_for(name) is not None))
    for line in skipped:
        say(line)
    if skipped:
        say(WEIGHTS_POINTER)
    if not runnable:
        raise ReidrayError("no model can run: every requested model lacks weights (see the lines above)")
    return Grid(models=runnable, datasets=chosen_datasets, skipped=skipped, uploaded=uploaded)


def _skip_line(name: str, where: str, explicit: bool) -> str:
    """One short line per model left out for want of weights (the job's own file is named in full)."""
    return f"skip {name}: {where}" if explicit else f"skip {name}: no weights on this machine"


def _resolve_datasets(job: JobConfig, store: Store, say: Say) -> tuple[dict[str, Path], dict[str, tuple[str, str]]]:
    if job.data_root is not None and not Path(job.data_root).is_dir():
        raise ReidrayError(f"data root {job.data_root} does not exist or is not a folder")
    requested = datasets.custom.declare_all(job.datasets)  # your own datasets checked up front, named
    for name in requested:
        datasets.get(name)  # unknown names fail before any work
    found = datasets.discover(job.data_root) if job.data_root else {}
    wanted = requested or (sorted(found) if found else [SYNTHETIC])
    chosen: dict[str, Path] = {}
    uploaded: dict[str, tuple[str, str]] = {}
    for name in wanted:
        if datasets.custom.folder(name) is not None:
            chosen[name] = datasets.custom.folder(name)
        elif name == SYNTHETIC and SYNTHETIC not in found:
            root = Path(job.data_root) if job.data_root else synthetic_root(store)
            say(f"synthetic dataset {SYNTHETIC}: generating (or reusing) under {root}")
            local = datasets.synth.generate(root, **job.synthetic.model_dump())
            chosen[name] = root
            if "://" in store.root:  # workers on other nodes cannot see this machine's disk
                uploaded[name] = (str(local), _upload(store, local, say))
        elif name in found:
            chosen[name] = Path(job.data_root)
        elif job.data_root is None:
            raise ReidrayError(f"dataset {name} needs a data root: pass --data-root with the folder holding it")
        else:
            raise ReidrayError(f"dataset {name} was not found under {job.data_root}; run `python -m reidray.run datasets --data-root {job.data_root}` to see what is there")
    return chosen, uploaded


def _upload(store: Store, local: Path, say: Say) -> str:
    """Copy a generated dataset into the output root once, so every node reads the same files."""
    from pyarrow.fs import LocalFileSystem, copy_files

    marker = (local / datasets.synth.MARKER).read_bytes()
    dest = store.path("data", local.name)
    if not store.exists(f"{dest}/{datasets.synth.MARKER}") or store.read_bytes(f"{dest}/{datasets.synth.MARKER}") != marker:
        say(f"synthetic dataset: copying to {store.uri('data', local.name)} for the cluster's workers")
        store.clear_dir(dest)
        copy_files(str(local), dest, source_filesystem=LocalFileSystem(), destination_filesystem=store.fs)
        store.write_bytes(f"{dest}/{datasets.synth.MARKER}", marker)  # last: the copy is complete
    return store.uri("data", local.name)


def prepare_manifests(grid: Grid, job: JobConfig, store: Store, say: Say) -> dict[str, pa.Table]:
    """Parse every dataset once and store its manifest (the embed and score stages read it)."""
    manifests = {}
    for name, root in grid.datasets.items():
        table = datasets.load(name, root, **job.dataset_options.get(name, {}))
        if name in grid.uploaded:  # read the images from the shared copy
            local, uri = grid.uploaded[name]
            table = table.set_column(table.schema.get_field_index(PATH), PATH,
                                     pc.replace_substring(table.column(PATH), local, uri, max_replacements=1))
        store.write_table(store.manifest_path(name), table)
        say(f"dataset {name}: {table.num_rows:,} images")
        manifests[name] = table
    return manifests


def check_placement(job: JobConfig, say: Say) -> None:
    """Before any embedding, a node that can hold one score task (``score.num_cpus``/``num_gpus``):
    refused at once on a Ray this run started, waited for (the autoscaler's time) on a cluster."""
    import ray

    from reidray.connect import wait_for_resources

    wanted = job.score.resources()
    nodes = [node["Resources"] for node in ray.nodes() if node.get("Alive")]
    too_big = [f"score.num_{name.lower()}s" for name, amount in wanted.items()
               if amount > max((node.get(name, 0) for node in nodes), default=0)]
    settings = " and ".join(too_big or ["score.num_cpus", "score.num_gpus"])  # else: no node has both at once
    wait_for_resources(wanted, what="each score task", say=say,
                       fix=f"lower {settings} in the job file to what a node has")


def embed_and_score(grid: Grid, manifests: dict[str, pa.Table], job: JobConfig, store: Store, say: Say,
                    score: bool = True, redo: bool = False) -> list[str]:
    """Embed every cell (all of them cleared and recomputed with ``redo``) and, as each completes,
    start its score task; returns the failures."""
    from reidray.embed.dataset import embed_dataset
    from reidray.score.graph import ScoreGraph

    graph = ScoreGraph(store, job.score, say=say)
    failures: list[str] = []
    for dataset, manifest in manifests.items():
        protocol = datasets.get(dataset).protocol

        def on_cell(cell: CellRecord) -> None:
            if not score:
                return
            if cell.skipped and results_current(store, cell, {"none", *job.score.postprocessing()}):  # not after --redo
                say(f"score {cell.name}: results current already, skipped")
                return
            graph.submit(cell, protocol)
            graph.collect()

        failures += embed_dataset(store, dataset, manifest, grid.models, job, say, on_cell, redo)
    if score:
        _fuse(graph, job, {d: datasets.get(d).protocol for d in manifests}, say)
    return failures + _collect(graph, say)


def results_current(store: Store, cell: CellRecord, postprocess: set[str]) -> bool:
    """Whether the cell's stored results (and its rank lists) were scored from embeddings with this
    fingerprint and hold the post-processing kinds this run asks for (the caller also asks that this run found the cell
    complete rather than redoing it). Changed re-ranking or expansion options are not seen here:
    `score` rescores."""
    path = store.result_path(cell.model, cell.dataset)
    if not store.exists(path) or not store.exists(store.ranklist_path(cell.model, cell.dataset)):
        return False
    try:
        stored = store.read_table(path, columns=["fingerprint", "postprocess"])
    except (OSError, pa.ArrowException, KeyError):
        return False
    return (stored.column("fingerprint").unique().to_pylist() == [cell.fingerprint]
            and set(stored.column("postprocess").to_pylist()) == postprocess)


def _collect(graph: ScoreGraph, say: Say) -> list[str]:
    """Wait for every score task; one line per cell scored and per failure."""
    graph.collect(wait=True)
    for model, dataset in graph.done:
        say(f"score {model}/{dataset}: stored")
    for line in graph.failures:
        say(f"FAILED {line}")
    return graph.failures


def stored_cells(store: Store, job: JobConfig) -> tuple[list[CellRecord], list[str]]:
    """The stored cells to score: every cell with a record, narrowed to the models and datasets the
    job names; and a failure line for each named pair (model and dataset both named) not stored.
    Cells are known by the names their records hold (a folder name is only a safe form of them)."""
    selector = pafs.FileSelector(store.path("embeddings"), recursive=True, allow_not_found=True)
    folders = sorted(tuple(info.path.rsplit("/", 3)[1:3]) for info in store.fs.get_file_info(selector)
                     if info.base_name == CELL_MARKER)
    if not folders:
        raise ReidrayError(f"nothing embedded yet; run `embed` or `all` (output root {store.root})")
    want_models = [entry.name for entry in job.models]
    want_datasets = datasets.custom.declare_all(job.datasets)
    cells, failures, found = [], [], set()
    for model_dir, dataset_dir in folders:
        try:
            marker = store.read_json(f"{store.path('embeddings', model_dir, dataset_dir)}/{CELL_MARKER}") or {}
            cell = CellRecord.from_marker(marker, skipped=True)
        except ReidrayError as exc:  # unreadable or incomplete: its old results describe nothing stored
            failures.append(str(exc))
            store.delete(store.path("results", f"{model_dir}__{dataset_dir}.parquet"))
            continue
        found.add((cell.model, cell.dataset))
        if (not want_models or cell.model in want_models) and (not want_datasets or cell.dataset in want_datasets):
            cells.append(cell)
    for model in want_models:
        for dataset in want_datasets:
            if (model, dataset) not in found:
                failures.append(f"cell {model}/{dataset}: no complete embeddings stored; run `embed` first")
    if not cells and not failures:
        raise ReidrayError(f"no stored cell of the models and datasets named under {store.root}; "
                           f"stored: {', '.join(f'{m}/{d}' for m, d in sorted(found))}")
    return cells, failures


def score_stored(store: Store, job: JobConfig, cells: list[CellRecord], say: Say, redo: bool = False) -> list[str]:
    """Score the given stored cells (the `score` command), whether or not results exist already;
    ``redo`` drops each cell's results first. The score tasks verify each cell before ranking it."""
    from reidray.score.graph import ScoreGraph

    graph = ScoreGraph(store, job.score, say=say)
    for cell in cells:
        if redo:
            store.drop_results(cell.model, cell.dataset)
        graph.submit(cell, datasets.get(cell.dataset).protocol)
    _fuse(graph, job, {cell.dataset: datasets.get(cell.dataset).protocol for cell in cells}, say)
    return _collect(graph, say)


def _fuse(graph: ScoreGraph, job: JobConfig, protocols: dict[str, str], say: Say) -> None:
    """Score the job's fusions on these datasets (dataset -> protocol), from their members' stored cells."""
    for line in graph.fuse(job.fusions, protocols):
        say(line)


def write_report(store: Store, say: Say, missing_ok: bool = False) -> str:
    """Every current result as tables, figures and the comparison with the paper, under ``report/``."""
    from reidray.report import build

    return build.write_report(store, say, missing_ok)


def rank_query(store: Store, model: str, dataset: str, query: str) -> str:
    """One query's rank list in a stored cell (score computes it, the report draws it); the PNG's URI."""
    from reidray.report.ranklists import write_query_sheet
    from reidray.score.ranklists import for_stored_query

    lists = for_stored_query(store, model, dataset, datasets.get(dataset).protocol, query)
    return store.uri_of(write_query_sheet(store, lists))
