"""The whole run as functions the CLI and notebooks share: grid → manifests → embed → score → report.

Each stage reads what the previous one stored, so each can run alone and be resumed.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reidray import datasets, models
from reidray.cells import PATH, CellRecord
from reidray.config import SYNTHETIC, JobConfig
from reidray.errors import ReidrayError
from reidray.store import Store

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


def resolve_grid(job: JobConfig, store: Store, say: Say) -> Grid:
    """Pick datasets and models: what was asked for, or everything that can run here."""
    chosen_datasets, uploaded = _resolve_datasets(job, store, say)
    requested = [entry.name for entry in job.models]
    for name in requested:
        models.get(name)  # unknown names fail before any work
    names = requested or [m for m in models.MODELS if models.get(m).paradigm != "control"]
    runnable, skipped = [], []
    for name in names:
        if job.random_init or not models.get(name).needs_weights:
            runnable.append(name)
            continue
        available, where = models.weights_status(name, job.weights_for(name))
        if available:
            runnable.append(name)
        else:
            skipped.append(f"skip {name}: {where}")
    for line in skipped:
        say(line)
    if not runnable:
        raise ReidrayError("no model can run: every requested model lacks weights (see the lines above)")
    return Grid(models=runnable, datasets=chosen_datasets, skipped=skipped, uploaded=uploaded)


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
            local = datasets.synth.generate(root, **job.synthetic)
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


def _score_graph(store: Store, job: JobConfig, say: Say):
    """The score stage's task graph, after saying whether its tasks fit any node."""
    from reidray.score.graph import ScoreGraph, placement_warning

    warning = placement_warning(job.score)
    if warning:
        say(f"warning: {warning}")
    return ScoreGraph(store, job.score)


def embed_and_score(grid: Grid, manifests: dict[str, pa.Table], job: JobConfig, store: Store, say: Say,
                    score: bool = True) -> list[str]:
    """Embed every cell and, as each completes, start its score task; returns the failures."""
    from reidray.embed.dataset import embed_dataset

    graph = _score_graph(store, job, say)
    failures: list[str] = []
    for dataset, manifest in manifests.items():
        protocol = datasets.get(dataset).protocol

        def on_cell(cell: CellRecord) -> None:
            if score:
                graph.submit(cell, protocol)
                graph.collect()

        failures += embed_dataset(store, dataset, manifest, grid.models, job, say, on_cell)
    graph.collect(wait=True)
    for line in graph.failures:
        say(f"FAILED {line}")
    for model, dataset in graph.done:
        say(f"score {model}/{dataset}: stored")
    return failures + graph.failures


def score_stored(store: Store, job: JobConfig, grid: Grid, say: Say) -> list[str]:
    """Score every complete stored cell of the grid (the `score` command)."""
    graph = _score_graph(store, job, say)
    failures = []
    for model in grid.models:
        for dataset in grid.datasets:
            marker = store.cell_marker(model, dataset)
            if marker is None:
                failures.append(f"cell {model}/{dataset}: no complete embeddings stored; run `embed` first")
                continue
            try:
                cell = CellRecord.from_marker(marker, skipped=True)
            except ReidrayError as exc:
                failures.append(str(exc))
                continue
            graph.submit(cell, datasets.get(dataset).protocol)
    graph.collect(wait=True)
    for line in failures + graph.failures:
        say(f"FAILED {line}")
    return failures + graph.failures


def write_report(store: Store, say: Say) -> str:
    """Every stored result as tables, figures and the comparison with the paper, under ``report/``."""
    from reidray.report import build

    return build.write_report(store, say)
