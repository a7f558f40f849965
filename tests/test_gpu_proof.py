"""The GPU proof script (benchmarks/gpu_proof.py): its guards, and a real --smoke run on the CPU."""

from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import gpu_proof  # noqa: E402

EXPECTED_PARTS = ("environment", "score", "forward", "pipeline", "serve", "precision", "rerank")


def _read(out: Path) -> dict:
    return json.loads((out / "gpu_proof.json").read_text())


def test_failing_part_missing_package_and_budget_are_skipped_with_reasons_and_saved_as_they_end(tmp_path):
    proof = gpu_proof.Proof(tmp_path, budget_s=3600, meta={"smoke": True})
    seen = []

    def works(record):
        record("first", 1)
        seen.append(_read(tmp_path)["parts"]["works"]["figures"])  # saved before the part ends
        return {"second": 2}

    def needs_a_package(record):
        importlib.import_module("reidray_no_such_package")

    def lost_own_module(record):
        raise ModuleNotFoundError("No module named 'reidray.gone'", name="reidray.gone")

    def breaks_half_way(record):
        record("before", 3)
        raise RuntimeError("boom\nsecond line")

    proof.run("works", works)
    proof.run("needs", needs_a_package)
    proof.run("own", lost_own_module)  # a bug in reidray, not a missing package
    proof.run("breaks", breaks_half_way)
    proof.budget_s = 0
    proof.run("late", works)

    parts = _read(tmp_path)["parts"]
    assert seen == [{"first": 1}]
    assert parts["works"]["status"] == "done" and parts["works"]["figures"] == {"first": 1, "second": 2}
    assert parts["needs"]["status"] == "skipped"
    assert "'reidray_no_such_package'" in parts["needs"]["reason"] and "not installed" in parts["needs"]["reason"]
    assert parts["own"]["reason"] == "failed: ModuleNotFoundError: No module named 'reidray.gone'"
    assert parts["breaks"] == {**parts["breaks"], "status": "partial", "figures": {"before": 3},
                               "reason": "failed: RuntimeError: boom"}
    assert parts["late"]["status"] == "skipped" and "time budget" in parts["late"]["reason"]
    md = (tmp_path / "gpu_proof.md").read_text()
    for name in ("works", "needs", "breaks", "late"):
        assert f"| {name} | {parts[name]['status']} |" in md


def test_models_past_the_budget_are_skipped_one_by_one(tmp_path):
    proof = gpu_proof.Proof(tmp_path, budget_s=3600, meta={})
    measured = []

    def part(record):
        def measure(model):
            measured.append(model)
            if model == "b":
                raise ModuleNotFoundError("no", name="open_clip")
            proof.budget_s = 0  # spent after the first model
            return {"images_per_s": 1.0}

        gpu_proof.per_model(("a", "b"), proof, record, measure)

    proof.run("forward", part)
    figures = _read(tmp_path)["parts"]["forward"]["figures"]
    assert measured == ["a"]
    assert figures["a"] == {"images_per_s": 1.0}
    assert "time budget" in figures["b"]["skipped"]


@pytest.mark.slow
def test_smoke_run_names_every_part_with_figures_or_a_reason(tmp_path):
    """The whole script at tiny sizes, as CI runs it: every part really runs here (all packages are
    installed), so only re-ranking may be skipped, and only when ``evaluate`` has no ``rerank``."""
    root = BENCHMARKS.parent
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_proof.py"), "--out", str(tmp_path), "--smoke",
                           "--budget", "600"], cwd=root, capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    proof = _read(tmp_path)
    parts = proof["parts"]
    assert tuple(parts) == EXPECTED_PARTS
    from reidray.score import evaluate

    has_rerank = "rerank" in inspect.signature(evaluate).parameters
    for name, part in parts.items():
        if name == "rerank" and not has_rerank:
            assert part["status"] == "skipped" and "rerank" in part["reason"]
            continue
        assert part["status"] == "done", (name, part, done.stdout[-4000:])
        assert part["figures"], name
    env = parts["environment"]["figures"]
    assert env["torch"] and env["versions"]["ray"] != "not installed"
    for model in gpu_proof.MODELS:
        for name in ("forward", "pipeline", "precision"):
            entry = parts[name]["figures"][model]
            if model not in gpu_proof.SMOKE.models:
                assert "left out of --smoke" in entry["skipped"]
            elif name == "forward":
                assert entry["bf16_images_per_s"] > 0 and entry["fp32_images_per_s"] > 0
            elif name == "pipeline":
                assert entry["images"] == proof["sizes"]["pipeline_images"] and entry["ratio"] > 0
                assert 0 < entry["encoder_busy"] <= 1
            else:
                assert entry["precision"] == "bf16" and -1 <= entry["min_cos"] <= 1
    score = parts["score"]["figures"]
    assert (score["queries"], score["gallery"]) == (300, 2000) and 0 < score["mAP"] <= 1
    serve = parts["serve"]["figures"]
    assert "faiss" in serve["index"] and [lv["clients"] for lv in serve["levels"]] == list(gpu_proof.SMOKE.serve_levels)
    assert all(0 < lv["p50_ms"] <= lv["p99_ms"] and lv["requests"] == gpu_proof.SMOKE.serve_requests
               for lv in serve["levels"])
    md = (tmp_path / "gpu_proof.md").read_text()
    assert "| part | status | seconds | reason |" in md
    assert all(f"| {name} | " in md for name in EXPECTED_PARTS)
    assert "## Embedding" in md and "## Scoring" in md and "## Serve" in md
