"""The job file: the README's example is a valid job that names every setting, and bad values
are refused with their line."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import yaml

from reidray.config import EmbedSettings, JobConfig, ScoreSettings, SyntheticSettings, load_job
from reidray.datasets.synth import generate
from reidray.errors import ReidrayError

README = Path(__file__).parents[1] / "README.md"


def readme_job() -> str:
    section = README.read_text().split("## Job files", 1)[1]
    return re.search(r"```yaml\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_is_a_valid_job_naming_every_setting(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(readme_job())
    job = load_job(path)
    assert job.score.num_cpus == 1 and job.embed.concurrency == (1, 8)
    assert job.weights_for("clip-reid-vit-b16") == "/data/reid/weights/clipreid.pth"
    data = yaml.safe_load(readme_job())
    assert set(data) == set(JobConfig.model_fields)
    assert set(data["embed"]) == set(EmbedSettings.model_fields)
    assert set(data["score"]) == set(ScoreSettings.model_fields)


def test_the_readme_states_each_settings_default():
    data = yaml.safe_load(readme_job())
    cluster_values = {"embed": ("num_gpus", "concurrency"), "score": ()}  # the example's, not defaults
    for section, model in (("embed", EmbedSettings), ("score", ScoreSettings)):
        defaults = model().model_dump()
        stated = {k: v for k, v in data[section].items() if k not in cluster_values[section]}
        assert stated == {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items() if k in stated}


@pytest.mark.parametrize("text, line, words", [
    ("name: x\nscore:\n  num_cpus: 0\n", 3, "score.num_cpus"),
    ("name: x\nscore:\n  threads: 4\n", 3, "score.threads"),
    ("name: x\nembed:\n  precision: fp8\n", 3, "embed.precision"),
    ("name: x\nscore:\n  rerank:\n    lambda_value: 2\n", 4, "score.rerank.lambda_value"),
    ("name: x\nscore:\n  aqe: {qe_k: 5}\n", 3, "score.aqe.qe_k"),
    ("name: x\nfusions:\n  - {name: f, models: [a, b], weights: [1]}\n", 3, "fusions.0"),
    ("name: x\nfusions:\n  - {name: f, models: [a]}\n", 3, "fusions.0.models"),
])
def test_a_bad_setting_names_its_line(tmp_path, text, line, words):
    path = tmp_path / "job.yaml"
    path.write_text(text)
    with pytest.raises(ReidrayError, match=rf"line {line}: {re.escape(words)}"):
        load_job(path)


def test_post_processing_is_off_unless_asked_and_takes_the_defaults_from_an_empty_mapping(tmp_path):
    assert ScoreSettings().postprocessing() == {}
    path = tmp_path / "job.yaml"
    path.write_text("score:\n  rerank: {}\n  aqe: {k: 3}\n")
    assert load_job(path).score.postprocessing() == {
        "rerank": {"k1": 20, "k2": 6, "lambda_value": 0.3},
        "aqe": {"k": 3, "alpha": 3.0, "times": 1},
    }
    path.write_text("score:\n  rerank: null\n")
    assert load_job(path).score.postprocessing() == {}


def test_a_model_entrys_precision_overrides_the_jobs_for_that_model_only():
    job = JobConfig.model_validate({"models": ["osnet-x1.0", {"name": "dinov2-l14", "precision": "fp32"}],
                                    "embed": {"precision": "bf16", "batch_size": 64}})
    assert job.embed_for("dinov2-l14").precision == "fp32"
    assert job.embed_for("dinov2-l14").batch_size == 64
    assert job.embed_for("osnet-x1.0").precision == "bf16"
    assert job.embed_for("not-in-the-grid") == job.embed


def test_the_synthetic_settings_are_generates_size_options_with_its_defaults():
    options = {name: p.default for name, p in inspect.signature(generate).parameters.items()
               if p.kind is p.KEYWORD_ONLY and name != "layout"}
    assert SyntheticSettings().model_dump() == options
