"""The job files users submit: every one in jobs/ validates, the paper grid is the study's 11 x 9, a
wrong one is refused with its line, and an output root inside Ray's copy of the working dir is
warned about. `ray job submit` itself runs against a real multi-node head in tests/test_multinode.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from reidray.config import load_job
from reidray.errors import ReidrayError

ROOT = Path(__file__).resolve().parents[1]


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
