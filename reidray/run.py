"""The command line: ``python -m reidray.run all | embed | score | report | ranks | serve | datasets | models | weights``.

Every command takes the same grid options (a job file, a data root, an output root, model and
dataset names, the Ray address); options given on the command line override the job file.
"""

from __future__ import annotations

import errno
import functools
import os
import signal
import sys
import threading
from pathlib import Path
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from reidray.config import (
    DEFAULT_FUSIONS, AqeSettings, JobConfig, ModelEntry, RerankSettings, ScoreSettings, check_names, default_output, load_job,
)
from reidray.errors import ReidrayError, one_line

if TYPE_CHECKING:
    from reidray.store import Store

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Evaluate person re-identification encoders across ReID datasets, on Ray.",
)

JobOpt = Annotated[Optional[str], typer.Option("--job", "-j", help="Job file (jobs/*.yaml).")]
DataOpt = Annotated[
    Optional[str], typer.Option("--data-root", help="Folder holding the datasets; none: the built-in synthetic data.")
]
OutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help="Output root: a folder or s3:// gs:// file:// URI.")]
ModelsOpt = Annotated[Optional[list[str]], typer.Option("--models", "-m", help="Model names (comma-separated or repeated).")]
DatasetsOpt = Annotated[
    Optional[list[str]], typer.Option("--datasets", "-d", help="Dataset names (comma-separated or repeated).")
]
AddressOpt = Annotated[
    Optional[str], typer.Option("--address", help="Ray cluster address; default: RAY_ADDRESS, else start Ray locally.")
]
RedoOpt = Annotated[bool, typer.Option(
    "--redo", help="Clear the named cells (-m/-d; all of the grid without them) and recompute them.")]
RandomOpt = Annotated[
    bool, typer.Option("--random-init", help="Use random weights (tests, throughput). Outputs are labelled so.")
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="Show Ray's own log lines too.")]

INTERRUPTED = "interrupted: complete cells are kept; rerun the same command to resume"


def say(line: str) -> None:
    typer.echo(line)


def user_errors(command: Callable) -> Callable:
    """Print a reidray error (or a full disk) as one line and exit 2, instead of a traceback; Ctrl-C
    as one line and exit 130."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        interrupts, previous = _watch_sigint()
        try:
            result = command(*args, **kwargs)
        except KeyboardInterrupt:
            _interrupted()
        except Exception as exc:
            if interrupts:  # Ctrl-C during Ray's start-up surfaces as Ray's own time-out or error
                _interrupted()
            if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
                exc = ReidrayError(one_line(exc))
            if not isinstance(exc, ReidrayError):
                raise
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        if interrupts:  # a Ctrl-C that Ray's start-up swallowed, or serve's own stop
            _interrupted()
        return result

    return wrapper


def _watch_sigint() -> tuple[list[int], object]:
    """Record each Ctrl-C (then raise KeyboardInterrupt as Python does), so that an interruption
    Ray turns into another error is still reported as one; returns the record and the handler
    to put back (None off the main thread, where signals cannot be handled)."""
    seen: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        return seen, None

    def on_sigint(signum: int, frame: object) -> None:
        seen.append(signum)
        raise KeyboardInterrupt

    return seen, signal.signal(signal.SIGINT, on_sigint)


def _interrupted() -> None:
    """Ctrl-C: one line and exit 130. With Ray running, the process ends at once (``os._exit``):
    Ray Data's threads touch Ray's worker while ``ray.shutdown`` runs, which makes Ray end the
    process itself (status 1, a traceback); a local Ray instance is bound to this process and stops
    with it, a cluster drops this driver's tasks and actors. Cells are complete only once their
    ``cell.json`` is written, so nothing half-done is ever taken for done."""
    typer.echo(INTERRUPTED, err=True)
    if "ray" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    raise typer.Exit(130)


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def build_job(job: str | None, data_root: str | None, out: str | None, models: list[str] | None,
              datasets: list[str] | None, random_init: bool) -> JobConfig:
    """The job file (or the defaults) with the command line's options laid over it."""
    # The embedded default shows every row kind: plain, re-ranked, query-expanded, fused (a fusion
    # only while -m names all its members, or none).
    named = set(_split(models))
    fusions = [f for f in DEFAULT_FUSIONS if not named or set(f.models) <= named]
    default = {"output": default_output(), "score": ScoreSettings(rerank=RerankSettings(), aqe=AqeSettings()),
               "fusions": fusions}
    config = load_job(job) if job else JobConfig(**default)
    updates: dict = {}
    if data_root is not None:
        updates["data_root"] = data_root
    if out is not None:
        updates["output"] = out
    if models:
        weights = {e.name: e.weights for e in config.models}
        updates["models"] = [ModelEntry(name=n, weights=weights.get(n)) for n in _split(models)]
    if datasets:
        updates["datasets"] = _split(datasets)
    if random_init:
        updates["random_init"] = True
    config = config.model_copy(update=updates)
    if not config.output.strip():
        raise ReidrayError("the output root is empty; pass --out with a folder or a URI (default: out)")
    check_names(config)
    return config


def _open_store(root: str) -> Store:
    """The output root; warns (stderr) when a submitted Ray job would lose it."""
    from reidray.store import Store, job_copy_warning

    store = Store.open(root)
    warning = job_copy_warning(store)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    return store


def _open_written(root: str) -> Store:
    """The output root of a command that reads what `all` or `embed` wrote (score, report): a
    local root that is not there is refused in one line and not created (a mistyped --out)."""
    from reidray.store import Store

    Store.open(root, read_only=True)
    return _open_store(root)


def _setup(job, data_root, out, models, datasets, random_init, address, verbose):
    from reidray import flow
    from reidray.connect import check_address, connect

    config = build_job(job, data_root, out, models, datasets, random_init)
    store = _open_store(config.output)
    address = check_address(address)
    grid = flow.resolve_grid(config, store, say)
    connect(address, verbose=verbose)
    return flow, config, store, grid


@app.command("all")
@user_errors
def all_(job: JobOpt = None, data_root: DataOpt = None, out: OutOpt = None, models: ModelsOpt = None,
         datasets: DatasetsOpt = None, address: AddressOpt = None, random_init: RandomOpt = False,
         verbose: VerboseOpt = False, redo: RedoOpt = False) -> None:
    """The whole flow: parse datasets, embed every cell, score it, write the report."""
    flow, config, store, grid = _setup(job, data_root, out, models, datasets, random_init, address, verbose)
    flow.check_placement(config, say)  # before any embedding: a score task no node can hold
    manifests = flow.prepare_manifests(grid, config, store, say)
    failures = flow.embed_and_score(grid, manifests, config, store, say, redo=redo)
    if config.report:
        flow.write_report(store, say, missing_ok=True)
    _finish(failures)


@app.command()
@user_errors
def embed(job: JobOpt = None, data_root: DataOpt = None, out: OutOpt = None, models: ModelsOpt = None,
          datasets: DatasetsOpt = None, address: AddressOpt = None, random_init: RandomOpt = False,
          verbose: VerboseOpt = False, redo: RedoOpt = False) -> None:
    """Embed every cell of the grid (complete, verified cells are skipped unless --redo)."""
    flow, config, store, grid = _setup(job, data_root, out, models, datasets, random_init, address, verbose)
    manifests = flow.prepare_manifests(grid, config, store, say)
    _finish(flow.embed_and_score(grid, manifests, config, store, say, score=False, redo=redo))


@app.command()
@user_errors
def score(job: JobOpt = None, data_root: DataOpt = None, out: OutOpt = None, models: ModelsOpt = None,
          datasets: DatasetsOpt = None, address: AddressOpt = None, random_init: RandomOpt = False,
          verbose: VerboseOpt = False, redo: RedoOpt = False) -> None:
    """Score the stored cells (those of the models and datasets named, if any): one Ray task per cell
    (--redo: drop their results first)."""
    from reidray import flow
    from reidray.connect import check_address, connect

    config = build_job(job, data_root, out, models, datasets, random_init)
    store = _open_written(config.output)
    cells, failures = flow.stored_cells(store, config)
    for line in failures:
        say(f"FAILED {line}")
    if not cells:  # nothing to score: no Ray to start
        _finish(failures)
    address = check_address(address)
    connect(address, verbose=verbose)
    flow.check_placement(config, say)
    _finish(failures + flow.score_stored(store, config, cells, say, redo=redo))


@app.command()
@user_errors
def report(out: OutOpt = None) -> None:
    """Tables of every stored result (Markdown), printed and written under <out>/report/."""
    from reidray import flow

    flow.write_report(_open_written(default_output() if out is None else out), say)


@app.command()
@user_errors
def ranks(
    model: Annotated[str, typer.Option("--model", "-m", help="The stored cell's model.")],
    dataset: Annotated[str, typer.Option("--dataset", "-d", help="The stored cell's dataset.")],
    query: Annotated[str, typer.Option(
        "--query", help="A query image: its path as in the manifest, its image id, or its file name.")],
    out: OutOpt = None,
) -> None:
    """One query's rank list in a stored cell, drawn as a PNG (its path is printed)."""
    from reidray import flow

    say(flow.rank_query(_open_store(default_output() if out is None else out), model, dataset, query))


@app.command("datasets")
@user_errors
def datasets_(data_root: DataOpt = None) -> None:
    """The registered datasets, and what was found under the data root beside the official counts."""
    from reidray import datasets as registry

    if data_root is None:
        for name in registry.names():
            say(name)
        say("pass --data-root to see which of these are there and check their counts")
        return
    if not Path(data_root).expanduser().is_dir():
        raise ReidrayError(f"data root {data_root} does not exist or is not a folder; pass the folder holding the datasets")
    for line in registry.summary_lines(data_root):
        say(line)


@app.command("models")
@user_errors
def models_() -> None:
    """Every registered model with its paradigm, size and weights status."""
    from reidray.models import MODELS, weights_status

    for name, spec in MODELS.items():
        available, where = weights_status(name)
        status = "ready" if available else "missing"
        say(f"{name:24s} {spec.paradigm:17s} {spec.params_m:8.1f}M  {status:8s} {where}")


@app.command("weights")
@user_errors
def weights_(
    models: ModelsOpt = None,
    download: Annotated[bool, typer.Option(
        "--download", help="Fetch the missing weights (hub, Google Drive), checked, written atomically.")] = False,
) -> None:
    """Each model's weights: where they come from, whether they are here; --download fetches the missing."""
    from reidray.models import fetch, get, names

    chosen = [get(name).name for name in _split(models)] or names()
    say(fetch.where_line())
    if not download:
        for line in fetch.status_lines(chosen):
            say(line)
        return
    failures = fetch.download_missing(chosen, say)
    for line in failures:
        typer.echo(line, err=True)
    if failures:
        raise typer.Exit(1)


@app.command()
@user_errors
def serve(
    out: OutOpt = None,
    host: Annotated[str, typer.Option(help="Interface to listen on; beyond loopback a token is required.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    token: Annotated[Optional[str], typer.Option(
        envvar="REIDRAY_SERVE_TOKEN", show_envvar=True, help="Bearer token every request but /healthz must carry.")] = None,
    job: JobOpt = None,
    address: AddressOpt = None,
    random_init: RandomOpt = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body accepted (413 beyond).")] = 10.0,
    max_models: Annotated[int, typer.Option(help="Encoders kept loaded per replica (least recently used evicted).")] = 3,
    num_gpus: Annotated[Optional[float], typer.Option(
        help="GPUs per encoder replica; default: 1 if the cluster has GPUs.")] = None,
    models: Annotated[Optional[list[str]], typer.Option(
        "--models", "-m", help="Encoders by reference to serve beside the registry's (timm:..., python:...).")] = None,
    ingress: Annotated[str, typer.Option(
        help="HTTP front of a Ray started here: haproxy (Ray's throughput mode) or proxy (Serve's Python proxy).")
    ] = "haproxy",
) -> None:
    """Serve the encoders and the stored galleries over HTTP (Ray Serve) until Ctrl-C."""
    from reidray.models.references import is_reference
    from reidray.serve.cli import serve_command

    config = build_job(job, None, out, models, None, random_init)
    serve_command(config.output, host, port, token, address=address, random_init=config.random_init,
                  weights={e.name: e.weights for e in config.models if e.weights}, max_upload_mb=max_upload_mb,
                  max_models=max_models, num_gpus=num_gpus, say=say,
                  references=[e.name for e in config.models if is_reference(e.name)], ingress=ingress)


def _finish(failures: list[str]) -> None:
    if failures:
        typer.echo(f"{len(failures)} cell(s) failed; see the FAILED lines above", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    sys.exit(app())
