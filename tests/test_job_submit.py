"""The path users take on clusters, end to end: a real Ray head, a real `ray job submit`.

`ray start --head` on loopback, `ray job submit --working-dir . -- python -m reidray.run all --job
jobs/quick.yaml`, results on disk, the head stopped. The head is this test's alone: its own ports,
its own temp dir, stopped by signalling its own processes (found through /proc: Linux, as CI).
`ray stop` would also kill the test session's Ray instance (tests/conftest.py) and anyone else's
on the machine, so it is never used.

Also here: every job file in jobs/ validates, and the paper grid is the study's 11 x 9.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import polars as pl
import pytest
import yaml

from raycluster import BIN, LocalHead, describe, ray_env
from reidray.config import load_job
from reidray.errors import ReidrayError

ROOT = Path(__file__).resolve().parents[1]
RUNTIME_ENV = ROOT / "cluster" / "runtime_env.yaml"


@pytest.mark.slow
@pytest.mark.timeout(480)  # the bounds below: head 120 s, job 240 s, stop 55 s
def test_ray_job_submit_to_a_real_head_runs_the_quick_grid(tmp_path):
    out = tmp_path / "out"  # absolute: the driver runs in Ray's copy of the working dir
    head = LocalHead()
    try:
        head.start()
        processes = head.ours()
        submitted = subprocess.run(
            [str(BIN / "ray"), "job", "submit", "--address", head.address,
             "--working-dir", ".", "--runtime-env", str(RUNTIME_ENV.relative_to(ROOT)),
             "--", "python", "-m", "reidray.run", "all", "--job", "jobs/quick.yaml", "--out", str(out)],
            cwd=ROOT, env=ray_env(), capture_output=True, text=True, timeout=240,
        )
        log = submitted.stdout + submitted.stderr
        assert submitted.returncode == 0, log[-6000:]
        assert "succeeded" in log, log[-3000:]

        # The job ran the code uploaded from this checkout, without the local environment or outputs.
        packages = list((head.temp_dir / "session_latest" / "runtime_resources" / "working_dir_files").glob("_ray_pkg_*"))
        package = next(p for p in packages if p.is_dir())
        assert (package / "reidray" / "run.py").is_file() and (package / "jobs" / "quick.yaml").is_file()
        for excluded in (".venv", "out", "data", ".git"):
            assert not (package / excluded).exists(), f"{excluded}/ was uploaded with the working dir"

        # Results on disk, where --out said, readable with Polars.
        results = pl.read_parquet(out / "results" / "*.parquet")
        job = load_job(ROOT / "jobs" / "quick.yaml")
        cells = set(zip(results["model"], results["dataset"]))
        assert cells == {(m.name, d) for m in job.models for d in job.datasets}, cells
        assert results["mAP"].is_between(0, 1).all() and (results["mAP"] > 0).all()
        assert (out / "report" / "results.md").is_file()
        for model, dataset in cells:
            assert (out / "embeddings" / model / dataset / "cell.json").is_file()
    finally:
        head.stop()
    assert head.process is not None and head.process.poll() is not None, "ray start is still running"
    survivors = head.alive(processes) | head.ours()
    assert not survivors, f"processes of the test's head survived its stop: {describe(survivors)}"


# --- a relative --out under `ray job submit` ---------------------------------------------------------

def test_a_root_inside_a_submitted_jobs_working_dir_copy_is_warned_about(tmp_path, monkeypatch):
    """What Ray 2.60's job supervisor gives the driver (checked against a real head): its cwd is the
    unpacked working dir, and RAY_JOB_CONFIG_JSON_ENV_VAR holds the runtime env and submission id."""
    from typer.testing import CliRunner

    from reidray.run import app
    from reidray.store import RAY_JOB_ENV, Store, job_copy_warning

    copy = tmp_path / "runtime_resources" / "working_dir_files" / "_ray_pkg_0123abcd"
    (copy / "out").mkdir(parents=True)  # report reads an existing root (a missing one is refused first)
    monkeypatch.chdir(copy)
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps({
        "runtime_env": {"working_dir": "gcs://_ray_pkg_0123abcd.zip"},
        "metadata": {"job_submission_id": "raysubmit_XYZ", "job_name": "raysubmit_XYZ"}}))

    result = CliRunner().invoke(app, ["report", "--out", "out"])  # no results: fails after the warning
    warning = result.stderr.split("\n")[0]
    assert warning.startswith(f"warning: output root {copy / 'out'} lies in Ray's temporary copy"), result.stderr
    assert "raysubmit_XYZ" in warning and "absolute path" in warning and "s3://" in warning and "gs://" in warning

    shared = tmp_path / "shared"  # an absolute root outside the copy, or any URI: where the user meant
    assert job_copy_warning(Store.open(str(shared))) is None
    assert job_copy_warning(Store.open((tmp_path / "uri").as_uri())) is None
    monkeypatch.setenv(RAY_JOB_ENV, json.dumps({"runtime_env": {}, "metadata": {}}))  # no --working-dir
    assert job_copy_warning(Store.open("out")) is None
    monkeypatch.delenv(RAY_JOB_ENV)  # a driver started by hand
    assert job_copy_warning(Store.open("out")) is None


# --- the job files ----------------------------------------------------------------------------------

JOBS = sorted((ROOT / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_job_file_validates_and_names_registered_models_and_datasets(path):
    from reidray import datasets, models

    job = load_job(path)
    assert job.models and job.datasets, f"{path.name} names no grid"
    for entry in job.models:
        models.get(entry.name)  # UnknownNameError lists the valid names
    for name in job.datasets:
        datasets.get(name)
    assert set(job.dataset_options) <= set(job.datasets), "options for a dataset outside the grid"


def test_the_paper_grid_is_the_studys_eleven_models_by_nine_datasets_on_gpus():
    from reidray import models

    job = load_job(ROOT / "jobs" / "paper.yaml")
    names = [m.name for m in job.models]
    assert len(names) == len(set(names)) == 11
    assert all(models.get(n).paradigm != "control" and n != "handcrafted" for n in names)
    assert job.datasets == ["market1501", "dukemtmcreid", "msmt17", "cuhk03", "grid", "celebreid", "pku", "last",
                            "iust"]
    assert job.dataset_options["cuhk03"] == {"variant": "detected"}  # what the study states it used
    # A cluster that scales from zero shows the driver no GPU at start: the request must be explicit.
    assert job.embed.num_gpus == 1 and job.embed.concurrency[0] >= 1
    assert job.data_root and job.data_root.startswith("/")


def test_a_wrong_job_file_is_rejected_with_its_line_and_reason(tmp_path):
    text = yaml.safe_dump(yaml.safe_load((ROOT / "jobs" / "paper.yaml").read_text()), sort_keys=False)
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("embed:")) + 1
    bad = tmp_path / "bad.yaml"
    bad.write_text("\n".join([*lines[:at], "  num_gpu: 1", *lines[at:]]) + "\n")  # a typo'd key
    with pytest.raises(ReidrayError) as caught:
        load_job(bad)
    assert f"line {at + 1}" in str(caught.value) and "num_gpu" in str(caught.value), caught.value
