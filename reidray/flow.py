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
from reidray.config import SYNTHETIC, JobConfig
from reidray.errors import ReidrayError
from reidray.store import Store, manifest_hash

Say = Callable[[str], None]


@dataclass
class Grid:
    """The cells a run will evaluate, and what it skipped with the reason."""

    models: list[str]
    datasets: dict[str, Path]  # name -> data root to load it from
    skipped: list[str] = field(default_factory=list)
    uploaded: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (local dir, URI of its copy)


def connect(address: str | None) -> None:
    """Start Ray locally, or join the cluster named by ``address`` / ``RAY_ADDRESS``."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    ray.init(address=address, include_dashboard=False if address is None else None, log_to_driver=True)


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
    for name in job.datasets:
        datasets.get(name)  # unknown names fail before any work
    found = datasets.discover(job.data_root) if job.data_root else {}
    wanted = job.datasets or (sorted(found) if found else [SYNTHETIC])
    chosen: dict[str, Path] = {}
    uploaded: dict[str, tuple[str, str]] = {}
    for name in wanted:
        if name == SYNTHETIC and SYNTHETIC not in found:
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
            table = table.set_column(table.schema.get_field_index("path"), "path",
                                     pc.replace_substring(table.column("path"), local, uri, max_replacements=1))
        store.write_table(store.manifest_path(name), table)
        say(f"dataset {name}: {table.num_rows:,} images")
        manifests[name] = table
    return manifests


def decode_groups(model_names: list[str]) -> list[list[str]]:
    """Models that share an input size and interpolation share one decoded copy of a dataset."""
    from reidray.models.preprocess import resize_key

    groups: dict[tuple, list[str]] = {}
    for name in model_names:
        groups.setdefault(resize_key(models.get(name)), []).append(name)
    return list(groups.values())


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
    from reidray.embed.pipeline import decoded_images, embed_cell, is_complete, shared_decode_blocker, user_error
    from reidray.embed.progress import finished_line

    graph = _score_graph(store, job, say)
    failures: list[str] = []
    for dataset, manifest in manifests.items():
        digest = manifest_hash(manifest)  # once per dataset, not per model
        for group in decode_groups(grid.models):
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
                        failures.append(f"cell {model}/{dataset}: {user_error(exc) or exc}")
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
                if score:
                    graph.submit(cell)
                    graph.collect()
    graph.collect(wait=True)
    if score:
        _fuse(graph, job, grid, say)
    for line in graph.failures:
        say(f"FAILED {line}")
    for model, dataset in graph.done:
        say(f"score {model}/{dataset}: stored")
    return failures + graph.failures


def score_stored(store: Store, job: JobConfig, grid: Grid, say: Say) -> list[str]:
    """Score every complete stored cell of the grid (the `score` command)."""
    from reidray.embed.pipeline import CellEmbedding

    graph = _score_graph(store, job, say)
    failures = []
    for model in grid.models:
        for dataset in grid.datasets:
            marker = store.cell_marker(model, dataset)
            if marker is None:
                failures.append(f"cell {model}/{dataset}: no complete embeddings stored; run `embed` first")
                continue
            graph.submit(CellEmbedding.from_marker(marker, skipped=True))
    graph.collect(wait=True)
    _fuse(graph, job, grid, say)
    for line in failures + graph.failures:
        say(f"FAILED {line}")
    return failures + graph.failures


def _fuse(graph, job: JobConfig, grid: Grid, say: Say) -> None:
    """Score the job's fusions on the grid's datasets, once their members' cells are stored."""
    for line in graph.fuse(job.fusions, grid.datasets):
        say(line)
    graph.collect(wait=True)


def write_report(store: Store, say: Say) -> str:
    """Every stored result as tables, figures and the comparison with the paper, under ``report/``."""
    from reidray.report import build

    return build.write_report(store, say)
