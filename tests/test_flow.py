"""The whole flow through a real Ray instance: synthetic data → embed → score → results → report."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from reidray.config import JobConfig, ScoreSettings
from reidray.datasets.synth import generate
from reidray.errors import ReidrayError
from reidray.report.frame import load_results
from reidray.run import app
from reidray.score import evaluate
from reidray.store import Store

runner = CliRunner()


def cli(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    generate(root)
    return root


@pytest.fixture(scope="module")
def flow_run(ray_session, synth_root, tmp_path_factory):
    """One full run of the two models, shared by the assertions below."""
    out = tmp_path_factory.mktemp("out")
    result = cli("all", "--data-root", str(synth_root), "--out", str(out), "-m", "handcrafted,random",
                 "-d", "reidray-synth")
    assert result.exit_code == 0, result.output
    return out, result.output


def test_results_follow_the_schema_and_cover_every_cell(flow_run):
    out, _ = flow_run
    results = pl.read_parquet(out / "results" / "*.parquet")
    # with no job file, every cell has its plain, re-ranked and query-expanded row
    kinds = results.group_by("model").agg(pl.col("postprocess").sort()).sort("model")
    assert kinds.rows() == [(m, ["aqe", "none", "rerank"]) for m in ("handcrafted", "random")]
    for column in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP"):
        assert results[column].is_between(0, 1).all()
    manifest = pl.read_parquet(out / "manifests" / "reidray-synth.parquet")
    cell = pl.read_parquet(out / "embeddings" / "handcrafted" / "reidray-synth" / "*.parquet")
    assert cell.height == manifest.height and cell["image_id"].n_unique() == manifest.height
    assert (out / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").is_file()


def test_baseline_far_above_chance_and_random_encoder_at_chance(flow_run):
    out, _ = flow_run
    results = pl.read_parquet(out / "results" / "*.parquet").filter(pl.col("postprocess") == "none")
    baseline = results.filter(pl.col("model") == "handcrafted").row(0, named=True)
    control = results.filter(pl.col("model") == "random").row(0, named=True)
    # The chance level of these very queries and galleries: the same evaluator on labels alone,
    # with features drawn at random (averaged over a few draws).
    manifest = pl.read_parquet(out / "manifests" / "reidray-synth.parquet").filter(~pl.col("is_junk"))
    q, g = manifest.filter(pl.col("split") == "query"), manifest.filter(pl.col("split") == "gallery")
    rng = np.random.default_rng(0)
    chance = np.mean([
        evaluate(rng.normal(size=(q.height, 32)), rng.normal(size=(g.height, 32)), q["pid"].to_numpy(),
                 g["pid"].to_numpy(), q["camid"].to_numpy(), g["camid"].to_numpy())["mAP"]
        for _ in range(3)
    ])
    # Each synthetic identity differs in clothing colours and pattern: a colour/texture
    # baseline must find most true matches, many times the chance level (a few percent).
    assert baseline["mAP"] > 0.5, baseline
    assert baseline["rank1"] > 0.7, baseline
    assert abs(control["mAP"] - chance) < max(0.03, chance), (control["mAP"], chance)
    assert baseline["mAP"] > 8 * control["mAP"]


def test_report_is_printed_and_written(flow_run):
    out, output = flow_run
    report = (out / "report" / "results.md").read_text()
    assert "| handcrafted |" in report and "reidray-synth" in report
    assert "| handcrafted |" in output
    assert "## Post-processing: mAP (%) plain and after re-ranking / query expansion" in report


def test_rerun_skips_complete_cells_and_redoes_a_broken_one(ray_session, flow_run, synth_root):
    out, _ = flow_run
    (out / "embeddings" / "random" / "reidray-synth" / "cell.json").unlink()  # a crash before the marker
    result = cli("all", "--data-root", str(synth_root), "--out", str(out), "-m", "handcrafted,random",
                 "-d", "reidray-synth")
    assert result.exit_code == 0, result.output
    assert "embed handcrafted/reidray-synth: complete already" in result.output
    assert "embed random/reidray-synth: complete already" not in result.output
    # Results scored from the very embeddings found complete are current: not rewritten.
    assert "score handcrafted/reidray-synth: results current already, skipped" in result.output
    assert "score random/reidray-synth: stored" in result.output
    rows = pl.read_parquet(out / "embeddings" / "random" / "reidray-synth" / "*.parquet")
    assert rows.height == rows["image_id"].n_unique()


def test_score_tasks_take_the_cpus_the_job_gives_them(ray_session, flow_run, synth_root, tmp_path):
    out, _ = flow_run
    before = pl.read_parquet(out / "results" / "handcrafted*.parquet")
    job = tmp_path / "job.yaml"
    job.write_text("score:\n  num_cpus: 2\n")
    result = cli("score", "--job", str(job), "--data-root", str(synth_root), "--out", str(out),
                 "-m", "handcrafted", "-d", "reidray-synth")
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output and "waiting" not in result.output
    assert "score handcrafted/reidray-synth: stored" in result.output.splitlines()
    after = pl.read_parquet(out / "results" / "handcrafted*.parquet")
    assert after["postprocess"].to_list() == ["none"]  # the job file asks for no post-processing
    assert after["mAP"].to_list() == before.filter(pl.col("postprocess") == "none")["mAP"].to_list()
    assert after["created_at"].to_list() != before["created_at"].to_list()


DRIVER = """
import sys
from reidray.run import app
try:
    app(sys.argv[1:])
except SystemExit as done:
    status = done.code
print("torch imported" if "torch" in sys.modules else "torch not imported")
sys.exit(status)
"""


@pytest.mark.parametrize("command", ["score", "report"])
def test_score_and_report_drivers_never_import_torch(ray_session, flow_run, synth_root, command):
    """Scoring reads stored cells and ranks in Ray tasks; the report reads results Parquet: neither
    driver needs a framework (the contracts carry every model fact they use)."""
    import subprocess
    import sys

    out, _ = flow_run
    args = ["report", "--out", str(out)]
    if command == "score":
        address = ray_session.get_runtime_context().gcs_address
        args = ["score", "--out", str(out), "--data-root", str(synth_root), "-m", "handcrafted", "-d",
                "reidray-synth", "--address", address]
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip().endswith("torch not imported"), done.stdout


def test_score_scores_every_stored_cell_when_none_is_named(ray_session, flow_run):
    out, _ = flow_run
    result = cli("score", "--out", str(out))
    assert result.exit_code == 0, result.output
    scored = sorted(line for line in result.output.splitlines() if line.startswith("score "))
    assert scored == ["score handcrafted/reidray-synth: stored", "score random/reidray-synth: stored"]


def test_a_fusion_is_one_more_model_and_a_missing_member_skips_it(ray_session, flow_run, synth_root, tmp_path):
    out, _ = flow_run
    job = tmp_path / "job.yaml"
    job.write_text("fusions:\n"
                   "  - {name: colour-only, models: [handcrafted, random], weights: [1, 0]}\n"
                   "  - {name: needs-osnet, models: [handcrafted, osnet-x1.0]}\n")
    result = cli("score", "--job", str(job), "--data-root", str(synth_root), "--out", str(out),
                 "-m", "handcrafted", "-d", "reidray-synth")
    assert result.exit_code == 0, result.output
    assert ("fusion needs-osnet/reidray-synth: skipped, member cell(s) osnet-x1.0/reidray-synth not embedded"
            in result.output)
    fused = pl.read_parquet(out / "results" / "colour-only__reidray-synth.parquet").row(0, named=True)
    plain = pl.read_parquet(out / "results" / "handcrafted__reidray-synth.parquet").filter(
        pl.col("postprocess") == "none").row(0, named=True)
    # all weight on one member: its own ranking, so the members' rows were joined image by image
    assert (fused["model"], fused["paradigm"], fused["metric"]) == ("colour-only", "fusion", "fusion")
    assert fused["mAP"] == pytest.approx(plain["mAP"], abs=1e-9)
    assert not (out / "results" / "needs-osnet__reidray-synth.parquet").exists()
    assert "| colour-only" in cli("report", "--out", str(out)).output
    assert [m["model"] for m in fused["members"]] == ["handcrafted", "random"]
    # a member embedded again since the fusion was scored (its rows name the older fingerprint):
    # the report leaves the fusion out, naming the member, and keeps the members' own rows
    path = out / "results" / "colour-only__reidray-synth.parquet"
    kept = path.read_bytes()
    try:
        older = pl.read_parquet(path).with_columns(pl.col("members").list.eval(
            pl.struct(pl.element().struct.field("model"), pl.lit("0" * 16).alias("fingerprint"))))
        older.write_parquet(path)
        frame, stale = load_results(Store.open(str(out)))
        assert "colour-only" not in frame["model"].to_list() and "handcrafted" in frame["model"].to_list()
        assert any("colour-only__reidray-synth" in line and "was embedded again" in line
                   and ("cell handcrafted/reidray-synth" in line or "cell random/reidray-synth" in line)
                   for line in stale), stale
    finally:
        path.write_bytes(kept)


def test_score_tasks_no_node_can_hold_are_waited_for_then_named(ray_session, monkeypatch):
    """On a cluster this process joined (the session's Ray, 2 CPUs), a score task larger than every
    node waits the bounded time for the autoscaler, then fails naming the resource and the setting."""
    from reidray import flow

    monkeypatch.setenv("REIDRAY_WAIT_SECONDS", "1")
    lines: list[str] = []
    flow.check_placement(JobConfig(score=ScoreSettings(num_cpus=2)), lines.append)
    assert lines == []
    for settings, missing, setting in ((ScoreSettings(num_cpus=64), "64 CPU", "score.num_cpus"),
                                       (ScoreSettings(num_gpus=1), "1 CPU, 1 GPU", "score.num_gpus")):
        start = time.monotonic()
        with pytest.raises(ReidrayError) as raised:
            flow.check_placement(JobConfig(score=settings), lines.append)
        assert time.monotonic() - start < 30
        assert lines.pop() == (f"each score task asks for {missing} but no node has that: waiting up to 1 s for the "
                               f"autoscaler to add one (lower {setting} in the job file to what a node has; "
                               "REIDRAY_WAIT_SECONDS sets how long)")
        assert str(raised.value) == (f"each score task: no node with {missing} appeared in 1 s; lower {setting} in the "
                                     "job file to what a node has")


def test_unknown_names_fail_in_one_line_listing_the_valid_ones(tmp_path):
    result = runner.invoke(app, ["all", "--out", str(tmp_path), "-m", "no-such-model"])
    assert result.exit_code == 2
    assert "unknown model 'no-such-model'" in result.output and "handcrafted" in result.output
    result = runner.invoke(app, ["all", "--out", str(tmp_path), "-d", "no-such-set"])
    assert result.exit_code == 2
    assert "unknown dataset 'no-such-set'" in result.output and "market1501" in result.output


def test_missing_data_root_and_unwritable_output_fail_clearly(tmp_path):
    result = runner.invoke(app, ["all", "--out", str(tmp_path), "--data-root", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["all", "--out", str(blocker / "out")])
    assert result.exit_code == 2 and "not writable" in result.output


def test_an_image_that_does_not_decode_fails_its_cell_by_name(ray_session, tmp_path):
    root = tmp_path / "data"
    generate(root)
    victim = sorted((root / "reidray-synth" / "query").iterdir())[3]
    victim.write_bytes(b"this is not a jpeg")
    out = tmp_path / "out"
    result = cli("all", "--data-root", str(root), "--out", str(out), "-m", "handcrafted", "-d", "reidray-synth")
    assert result.exit_code == 1
    assert victim.name in result.output and "does not decode" in result.output
    assert not (out / "embeddings" / "handcrafted" / "reidray-synth" / "cell.json").exists()
    assert not list(out.glob("results/*.parquet"))


@pytest.mark.parametrize("command", ["all", "embed", "score", "report", "serve", "datasets", "models"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output
