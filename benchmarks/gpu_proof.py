"""GPU proof: every figure a CPU cannot give, in one command that writes them all down.

    python benchmarks/gpu_proof.py --out DIR            # a GPU machine: about 8 minutes, models built there
    python benchmarks/gpu_proof.py --out DIR --smoke    # every part at tiny sizes, one model, on the CPU
    bash benchmarks/gpu_proof.sh                        # the lent device machine's one call (see that file)

It writes DIR/gpu_proof.json and DIR/gpu_proof.md, rewritten after every part (and every model
within a part), so a run that is killed still leaves what it measured. Parts (run in the order
of ``PARTS``):

- environment: GPU name, driver, CUDA, torch, Ray and the model libraries' versions;
- forward: per model, the encoder actor's own ``embed`` at the registry batch size, bf16 and fp32
  (the forward-only ceiling, ``common.forward_only``);
- pipeline: per model, JPEG files -> Ray Data decode -> encoder actor -> Parquet on a few thousand
  synthetic images (``bench_embed.pipeline_run``), its ratio to the forward-only ceiling at the
  same precision and the encoder busy fraction; targets: ratio >= 0.9 for ViTs, >= 0.7 for OSNet;
- score: ``evaluate`` end to end at MSMT17 size (11,659 x 82,161, 768-d) on the GPU, target < 0.5 s
  (``bench_score.make_problem``);
- serve: p50/p99 latency and requests/s of POST /search through reidray's Serve app over loopback
  (``bench_serve``), with the faiss index the app builds;
- precision: bf16 against fp32 rankings on the same images (``bench_precision.agreement``);
- rerank: the score problem with k-reciprocal re-ranking, where ``evaluate`` has it.

Every part is guarded: one that fails, or needs a package this machine lacks (Ray on a bare GPU
image, say), is recorded as skipped with the reason, and the run goes on; once ``--budget`` seconds
are spent, the remaining parts and models are skipped with that reason. Weights are random
(no hub): the speeds are those of the real models, the mAP values mean nothing.
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import inspect
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from common import device_name, forward_only, sample_pixels, synthetic_manifest

from reidray.models import get

MODELS = ("osnet-x1.0", "clip-vit-b16", "dinov2-b14", "siglip2-b16-256", "pe-core-l14-336")
# Quick and decisive first; re-ranking last, as its time at MSMT17 size on a GPU is not known yet.
PARTS = ("environment", "score", "forward", "pipeline", "serve", "precision", "rerank")
RERANK = {"k1": 20, "k2": 6, "lambda_value": 0.3}
SCORE_TARGET_S = 0.5
LIBRARIES = ("ray", "open_clip_torch", "torchreid", "transformers", "timm", "faiss-cpu", "faiss-gpu-cu12", "pyarrow",
             "pydantic", "fastapi", "numpy")


@dataclass(frozen=True)
class Sizes:
    """How much each part does: the GPU run's sizes, or the smoke run's."""

    models: tuple[str, ...]
    batch_size: int | None  # None: each model's registry batch size
    forward_seconds: float
    pipeline_images: int
    precision_ids: int
    score_size: str  # a bench_score.SIZES key
    serve_model: str
    serve_ids: int
    serve_requests: int
    serve_seconds: float  # of load per level
    serve_levels: tuple[int, ...]


GPU = Sizes(models=MODELS, batch_size=None, forward_seconds=3.0, pipeline_images=3072, precision_ids=20,
            score_size="msmt", serve_model="dinov2-b14", serve_ids=50, serve_requests=300, serve_seconds=8.0,
            serve_levels=(1, 16))
# One model, the lightest of the five (2.2M parameters): every code path, at the least CPU time (each
# model adds its builds and Ray Data runs). With dinov2-b14 the smoke run took 7 minutes of CI, with
# osnet-x1.0 under 3; the ViT paths run in the full GPU run and in tests/test_models_zoo.py.
SMOKE = Sizes(models=("osnet-x1.0",), batch_size=2, forward_seconds=0.0, pipeline_images=16,
              precision_ids=3, score_size="tiny", serve_model="osnet-x1.0", serve_ids=3, serve_requests=4,
              serve_seconds=60.0, serve_levels=(1, 2))


class Unavailable(Exception):
    """A part that cannot run in this build; its message is the reason."""


def reason_for(exc: Exception) -> str:
    """Why a part or model was skipped, in one line (the traceback goes to the log)."""
    if isinstance(exc, Unavailable):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] != "reidray":  # reidray's own: a bug
        return f"needs the Python package {exc.name!r}, which is not installed here"
    traceback.print_exc()
    first = str(exc).splitlines()[0] if str(exc) else ""
    return f"failed: {type(exc).__name__}" + (f": {first}" if first else "")


class Proof:
    """The run's record: parts run in order, guarded, each saved to JSON and Markdown as it ends."""

    def __init__(self, out: Path, budget_s: float, meta: dict) -> None:
        self.out, self.budget_s = out, budget_s
        self.started = time.monotonic()
        self.data: dict[str, Any] = {**meta, "budget_s": budget_s, "parts": {}}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def over_budget(self) -> str | None:
        """The reason to skip what remains, once the budget is spent."""
        if self.elapsed() < self.budget_s:
            return None
        return f"time budget of {self.budget_s:.0f} s spent ({self.elapsed():.0f} s elapsed) before this started"

    def run(self, name: str, part: Callable[[Callable[[str, Any], None]], dict | None], budgeted: bool = True) -> None:
        """Run one part; ``part(record)`` may save figures as it goes with ``record(key, value)``."""
        entry: dict[str, Any] = {"status": "running", "figures": {}}
        self.data["parts"][name] = entry
        reason = self.over_budget() if budgeted else None
        if reason:
            return self._end(entry, 0.0, reason)
        print(f"[{self.elapsed():6.1f} s] {name} ...", flush=True)

        def record(key: str, value: Any) -> None:
            entry["figures"][key] = value
            self.save()

        start = time.monotonic()
        try:
            entry["figures"].update(part(record) or {})
            reason = None
        except Exception as exc:  # a broken part must not cost the others their figures
            reason = reason_for(exc)
        self._end(entry, time.monotonic() - start, reason)

    def _end(self, entry: dict, seconds: float, reason: str | None) -> None:
        entry["seconds"] = round(seconds, 2)
        if reason:
            entry["status"], entry["reason"] = ("partial" if entry["figures"] else "skipped"), reason
        else:
            entry["status"] = "done" if entry["figures"] else "skipped"
            if not entry["figures"]:
                entry["reason"] = "the part produced no figures"
        print(f"[{self.elapsed():6.1f} s]   {entry['status']}" + (f": {entry['reason']}" if reason else ""), flush=True)
        self.save()

    def save(self) -> None:
        self.data["elapsed_s"] = round(self.elapsed(), 1)
        for name, text in (("gpu_proof.json", json.dumps(self.data, indent=2, default=str)),
                           ("gpu_proof.md", markdown(self.data))):
            tmp = self.out / f".{name}.tmp"
            tmp.write_text(text + "\n")
            tmp.replace(self.out / name)  # a reader (or a kill) never sees half a file


# ---- the parts -------------------------------------------------------------------------------


def version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def nvidia_driver() -> str | None:
    try:
        done = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                              capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout.strip() else None


def environment(_: Callable) -> dict:
    cuda = torch.cuda.is_available()
    return {
        "device": device_name(),
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "gpu_memory_gib": round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1) if cuda else None,
        "driver": nvidia_driver(),
        "cuda": torch.version.cuda,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "versions": {dist: version(dist) or "not installed" for dist in LIBRARIES},
    }


def free_accelerator() -> None:
    """Drop what the last model left on the GPU, so the next one is measured alone."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def per_model(models: tuple[str, ...], proof: Proof, record: Callable, measure: Callable[[str], dict]) -> None:
    """``measure(model)`` for each model, each guarded and recorded as it ends."""
    for model in models:
        reason = proof.over_budget()
        if reason is None:
            try:
                record(model, measure(model))
            except Exception as exc:
                reason = reason_for(exc)
            finally:
                free_accelerator()
        if reason:
            record(model, {"skipped": reason})


def not_run(sizes: Sizes, record: Callable) -> None:
    why = ("not in --models" if sizes.models not in (GPU.models, SMOKE.models) else
           f"left out of --smoke, which runs one model ({', '.join(SMOKE.models)}) to keep CI short")
    for model in MODELS:
        if model not in sizes.models:
            record(model, {"skipped": why})


class Run:
    """What the parts share: sizes, a scratch folder, the device, Ray (started once, when asked)."""

    def __init__(self, proof: Proof, sizes: Sizes, work: Path) -> None:
        self.proof, self.sizes, self.work = proof, sizes, work
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self._manifest = None

    def batch(self, model: str) -> int:
        return self.sizes.batch_size or get(model).batch_size

    def manifest(self):
        if self._manifest is None:
            self._manifest = synthetic_manifest(self.work / "synth", self.sizes.pipeline_images)
        return self._manifest

    def ray(self):
        import ray

        if not ray.is_initialized():
            from reidray.serve.ingress import use_ingress

            use_ingress()  # the serve part measures the front `reidray.run serve` starts with
            ray.init(include_dashboard=False, log_to_driver=False)
        return ray

    def forward(self, record: Callable) -> None:
        def measure(model: str) -> dict:
            batch = self.batch(model)
            pixels = sample_pixels(self.manifest(), model, batch)
            rates = {}
            for precision in ("bf16", "fp32"):
                rates[f"{precision}_images_per_s"] = round(forward_only(
                    model, pixels, batch_size=batch, precision=precision, device=self.device, random_init=True,
                    seconds=self.sizes.forward_seconds), 1)
                free_accelerator()
            return {"batch": batch, **rates}

        not_run(self.sizes, record)
        per_model(self.sizes.models, self.proof, record, measure)

    def pipeline(self, record: Callable) -> None:
        self.ray()
        from bench_embed import pipeline_run

        from reidray.config import EmbedSettings
        from reidray.embed.pipeline import resources

        settings = EmbedSettings(batch_size=self.sizes.batch_size, progress_seconds=3600)
        precision = resources(settings).precision
        forward = self.proof.data["parts"].get("forward", {}).get("figures", {})

        def measure(model: str) -> dict:
            run = pipeline_run(str(self.work / "pipeline"), model, self.manifest(), settings, random_init=True)
            ceiling = forward.get(model, {}).get(f"{precision}_images_per_s")
            if ceiling is None:  # the forward part skipped this model: measure the ceiling now
                ceiling = forward_only(model, sample_pixels(self.manifest(), model, self.batch(model)),
                                       batch_size=self.batch(model), precision=precision, device=self.device,
                                       random_init=True, seconds=self.sizes.forward_seconds)
            target = 0.7 if get(model).family == "osnet" else 0.9
            ratio = run["images_per_s"] / ceiling
            busy = run["encoder_busy"]
            return {"batch": self.batch(model), "precision": precision, "images": run["images"],
                    "images_per_s": round(run["images_per_s"], 1), "forward_only_images_per_s": round(ceiling, 1),
                    "ratio": round(ratio, 3), "target": target, "met": ratio >= target,
                    "encoder_busy": None if busy is None else round(busy, 3)}

        not_run(self.sizes, record)
        per_model(self.sizes.models, self.proof, record, measure)

    def precision(self, record: Callable) -> None:
        self.ray()
        from bench_precision import TOLERANCE, agreement, query_gallery_manifest

        work = str(self.work / "precision")
        manifest = query_gallery_manifest(work, self.sizes.precision_ids)

        def measure(model: str) -> dict:
            (row,) = agreement(work, model, manifest, ["bf16"], random_init=True, tolerance=TOLERANCE)
            return {"images": manifest.num_rows, "tolerance_points": TOLERANCE,
                    **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items() if k != "model"}}

        not_run(self.sizes, record)
        per_model(self.sizes.models, self.proof, record, measure)

    def score_problem(self):
        from bench_score import make_problem

        return make_problem(self.sizes.score_size, "clusters", 2.5)

    def timed_evaluate(self, problem, **options) -> tuple[float, dict]:
        from reidray.score import evaluate

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        metrics = evaluate(problem.qf, problem.gf, problem.q_pids, problem.g_pids, problem.q_camids,
                           problem.g_camids, metric="cosine", device=self.device, **options)
        if self.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, metrics

    def scored(self, problem, seconds: list[float], metrics: dict) -> dict:
        figures = {"queries": len(problem.qf), "gallery": len(problem.gf), "dim": int(problem.qf.shape[1]),
                   "device": self.device, "first_s": round(seconds[0], 3), "seconds": round(min(seconds), 3),
                   "mAP": round(metrics["mAP"], 4), "rank1": round(float(metrics["cmc"][0]), 4)}
        if self.device == "cuda":
            figures["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        return figures

    def score(self, record: Callable) -> dict:
        """Features (host memory) -> metrics, timed twice: the first call pays CUDA's start-up."""
        problem = self.score_problem()
        runs = [self.timed_evaluate(problem) for _ in range(2)]
        figures = self.scored(problem, [s for s, _ in runs], runs[-1][1])
        figures["features"] = "identity clusters + noise 2.5 (bench_score), cosine, end to end incl. transfer"
        if self.device == "cuda":
            figures.update(target_s=SCORE_TARGET_S, met=figures["seconds"] < SCORE_TARGET_S)
        return figures

    def rerank(self, record: Callable) -> dict | None:
        from reidray.score import evaluate

        if "rerank" not in inspect.signature(evaluate).parameters:
            raise Unavailable("reidray.score.evaluate has no rerank argument in this build (issue 16 adds it)")
        problem = self.score_problem()
        seconds, metrics = self.timed_evaluate(problem, rerank=RERANK)
        return {**self.scored(problem, [seconds], metrics), "rerank": RERANK}

    def serve(self, record: Callable) -> dict:
        self.ray()
        import bench_serve
        from ray import serve

        model = self.sizes.serve_model
        out = str(self.work / "serve")
        queries = bench_serve.prepare(out, self.sizes.serve_ids, model, random_init=True)
        try:
            url = bench_serve.start_serve(out, random_init=True)
            images = [p.read_bytes() for p in queries]
            params = {"model": model, "gallery": bench_serve.DATASET, "k": 10}
            rows = bench_serve.compare({"serve": url}, images, params, list(self.sizes.serve_levels),
                                       seconds=self.sizes.serve_seconds, max_requests=self.sizes.serve_requests)
            levels = [{k: round(v, 2) if isinstance(v, float) else v for k, v in row.items()} for row in rows]
        finally:
            serve.shutdown()
        return {"endpoint": "POST /search (k=10)", "model": model, "encoder_device": self.device,
                "index": faiss_index(), "query_images": len(images), "levels": levels}


def faiss_index() -> str:
    """Which faiss index the Serve app searches (reidray.serve.galleries builds a flat CPU index)."""
    import faiss

    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return (f"faiss {faiss.__version__} CPU IndexFlat (reidray serve builds CPU indexes; "
            f"faiss sees {gpus} GPU{'s' if gpus != 1 else ''})")


# ---- the Markdown page -----------------------------------------------------------------------


def cell(value: Any, fmt: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    return format(value, fmt) if fmt else str(value)


def markdown(data: dict) -> str:
    """The JSON as tables: one summary row per part, then each part's figures."""
    parts, env = data["parts"], data["parts"].get("environment", {}).get("figures", {})
    lines = [f"# GPU proof ({'smoke, CPU' if data.get('smoke') else 'full'})", "",
             f"{data.get('started', '')}; {env.get('device', '-')}; driver {cell(env.get('driver'))}; "
             f"torch {cell(env.get('torch'))} (built for CUDA {cell(env.get('cuda'))}); "
             f"Ray {cell(env.get('versions', {}).get('ray'))}; budget {data['budget_s']:.0f} s, "
             f"{data.get('elapsed_s', 0):.0f} s elapsed. Random-initialised weights: speeds only.", "",
             "| part | status | seconds | reason |", "|---|---|---:|---|"]
    lines += [f"| {name} | {p['status']} | {p.get('seconds', '-')} | {p.get('reason', '')} |"
              for name, p in parts.items()]

    def models(part: str) -> dict:
        return parts.get(part, {}).get("figures", {})

    fwd, pipe, prec = models("forward"), models("pipeline"), models("precision")
    if fwd or pipe:
        lines += ["", "## Embedding (images/s)", "",
                  "| model | batch | forward bf16 | forward fp32 | pipeline | precision | ratio | target | met "
                  "| encoder busy |", "|---|---:|---:|---:|---:|---|---:|---:|---|---:|"]
        for model in MODELS:
            f, p = fwd.get(model, {}), pipe.get(model, {})
            if not (f.get("batch") or p.get("batch")):
                reason = f.get("skipped") or p.get("skipped") or "not run"
                lines.append(f"| {model} | skipped: {reason} |||||||||")
                continue
            lines.append(f"| {model} | {cell(f.get('batch', p.get('batch')))} | {cell(f.get('bf16_images_per_s'))} "
                         f"| {cell(f.get('fp32_images_per_s'))} | {cell(p.get('images_per_s'))} "
                         f"| {cell(p.get('precision'))} | {cell(p.get('ratio'), '.2f')} | {cell(p.get('target'))} "
                         f"| {cell(p.get('met'))} | {cell(p.get('encoder_busy'), '.2f')} |")
    if prec:
        lines += ["", "## bf16 against fp32 (points)", "",
                  "| model | images | mAP fp32 | dmAP | R1 fp32 | dR1 | top-10 overlap | min cos | within |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
        for model, r in ((m, prec[m]) for m in MODELS if m in prec):
            if "skipped" in r:
                lines.append(f"| {model} | skipped: {r['skipped']} ||||||||")
                continue
            lines.append(f"| {model} | {r['images']} | {r['mAP_fp32']:.2f} | {r['dmAP']:+.2f} "
                         f"| {r['rank1_fp32']:.2f} | {r['drank1']:+.2f} | {r['top10_overlap']:.3f} "
                         f"| {r['min_cos']:.4f} | {cell(r['within'])} |")
    scores = [(name, models(name)) for name in ("score", "rerank") if models(name)]
    if scores:
        lines += ["", "## Scoring", "", "| scoring | queries x gallery | device | first call s | s | target s | met "
                  "| peak GPU GiB | mAP |", "|---|---|---|---:|---:|---:|---|---:|---:|"]
        lines += [f"| {name} | {s['queries']:,} x {s['gallery']:,} | {s['device']} | {s['first_s']} | {s['seconds']} "
                  f"| {cell(s.get('target_s'))} | {cell(s.get('met'))} | {cell(s.get('peak_gpu_gib'))} | {s['mAP']} |"
                  for name, s in scores]
    srv = models("serve")
    if srv.get("levels"):
        lines += ["", f"## Serve: {srv['endpoint']}, {srv['model']} on {srv['encoder_device']}; {srv['index']}", "",
                  "| clients | requests | p50 ms | p99 ms | requests/s |", "|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['clients']} | {r['requests']} | {r['p50_ms']} | {r['p99_ms']} | {r['requests_per_s']} |"
                  for r in srv["levels"]]
    return "\n".join(lines)


# ---- the command ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="folder for gpu_proof.json and gpu_proof.md")
    parser.add_argument("--smoke", action="store_true", help="every part at tiny sizes (CPU, < 2 minutes)")
    parser.add_argument("--budget", type=float, default=480.0, help="seconds; parts not started by then are skipped")
    parser.add_argument("--models", help=f"comma-separated subset of {','.join(MODELS)}")
    args = parser.parse_args(argv)

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a local, loopback-only Ray: no token
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    sizes = SMOKE if args.smoke else GPU
    if args.models:
        unknown = sorted(set(args.models.split(",")) - set(MODELS))
        if unknown:
            parser.error(f"--models: unknown {', '.join(unknown)}; choose from {', '.join(MODELS)}")
        sizes = Sizes(**{**asdict(sizes), "models": tuple(args.models.split(","))})
    proof = Proof(args.out, args.budget, {
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "smoke": args.smoke,
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "sizes": asdict(sizes), "random_init": True})
    with tempfile.TemporaryDirectory(prefix="gpu-proof-") as work:
        run = Run(proof, sizes, Path(work))
        try:
            proof.run("environment", environment, budgeted=False)  # instant, and every run needs it
            for name in PARTS[1:]:
                proof.run(name, getattr(run, name))
        finally:
            if "ray" in sys.modules and sys.modules["ray"].is_initialized():
                sys.modules["ray"].shutdown()
    print(markdown(proof.data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
