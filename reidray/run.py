"""The command line: ``python -m reidray.run all | embed | score | report | serve | datasets | models``.

Every command takes the same grid options (a job file, a data root, an output root, model and
dataset names, the Ray address); options given on the command line override the job file.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from reidray.config import AqeSettings, JobConfig, ModelEntry, RerankSettings, ScoreSettings, default_output, load_job
from reidray.errors import ReidrayError

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
RandomOpt = Annotated[
    bool, typer.Option("--random-init", help="Use random weights (tests, throughput). Outputs are labelled so.")
]


def say(line: str) -> None:
    typer.echo(line)


def user_errors(command: Callable) -> Callable:
    """Print a reidray error as one line and exit 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except ReidrayError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return wrapper


def _split(values: list[str] | None) -> list[str]:
    return [v.strip() for value in values or [] for v in value.split(",") if v.strip()]


def build_job(job: str | None, data_root: str | None, out: str | None, models: list[str] | None,
              datasets: list[str] | None, random_init: bool) -> JobConfig:
    """The job file (or the defaults) with the command line's options laid over it."""
    # The embedded default shows every row kind: plain, re-ranked, query-expanded.
    default = {"output": default_output(), "score": ScoreSettings(rerank=RerankSettings(), aqe=AqeSettings())}
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
    return config.model_copy(update=updates)


def _open_store(root: str) -> Store:
    """The output root; warns (stderr) when a submitted Ray job would lose it."""
    from reidray.store import Store, job_copy_warning

    store = Store.open(root)
    warning = job_copy_warning(store)
    if warning:
        typer.echo(f"warning: {warning}", err=True)
    return store


def _setup(job, data_root, out, models, datasets, random_init, address):
    from reidray import flow

    config = build_job(job, data_root, out, models, datasets, random_init)
    store = _open_store(config.output)
    grid = flow.resolve_grid(config, store, say)
    flow.connect(address)
    return flow, config, store, grid


@app.command("all")
@user_errors
def all_(job: JobOpt = None, data_root: DataOpt = None, out: OutOpt = None, models: ModelsOpt = None,
         datasets: DatasetsOpt = None, address: AddressOpt = None, random_init: RandomOpt = False) -> None:
    """The whole flow: parse datasets, embed every cell, score it, write the report."""
    flow, config, store, grid = _setup(job, data_root, out, models, datasets, random_init, address)
    manifests = flow.prepare_manifests(grid, config, store, say)
    failures = flow.embed_and_score(grid, manifests, config, store, say)
    if config.report and store.list_files(store.results_dir(), ".parquet"):
        flow.write_report(store, say)
    _finish(failures)


@app.command()
@user_errors
def embed(job: JobOpt = None, data_root: DataOpt = None, out: OutOpt = None, models: ModelsOpt = None,
          datasets: DatasetsOpt = None, address: AddressOpt = None, random_init: RandomOpt = False) -> None:
    """Embed every cell of the grid (complete cells are skipped)."""
    flow, config, store, grid = _setup(job, data_root, out, models, datasets, random_init, address)
    manifests = flow.prepare_manifests(grid, config, store, say)
    _finish(flow.embed_and_score(grid, manifests, config, store, say, score=False))


@app.command()
@user_errors
def score(job: JobOpt = None, data_root: DataOpt = None, out: OutOpt = None, models: ModelsOpt = None,
          datasets: DatasetsOpt = None, address: AddressOpt = None, random_init: RandomOpt = False) -> None:
    """Score every stored cell of the grid: one Ray task per cell."""
    flow, config, store, grid = _setup(job, data_root, out, models, datasets, random_init, address)
    _finish(flow.score_stored(store, config, grid, say))


@app.command()
@user_errors
def report(out: OutOpt = None) -> None:
    """Tables of every stored result (Markdown), printed and written under <out>/report/."""
    from reidray import flow

    flow.write_report(_open_store(out or default_output()), say)


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
) -> None:
    """Serve the encoders and the stored galleries over HTTP (Ray Serve) until Ctrl-C."""
    from reidray.serve.cli import serve_command

    config = build_job(job, None, out, None, None, random_init)
    serve_command(config.output, host, port, token, address=address, random_init=config.random_init,
                  weights={e.name: e.weights for e in config.models if e.weights}, max_upload_mb=max_upload_mb,
                  max_models=max_models, num_gpus=num_gpus, say=say)


def _finish(failures: list[str]) -> None:
    if failures:
        typer.echo(f"{len(failures)} cell(s) failed; see the FAILED lines above", err=True)
        raise typer.Exit(1)


if __name__ == "__main__":
    sys.exit(app())
