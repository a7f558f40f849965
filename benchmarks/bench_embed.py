"""Embed throughput: the full pipeline from files on disk against the forward-only ceiling.

For each model, in one run on one device: forward-only = the encoder actor's own ``embed`` on
preprocessed uint8 batches already on the device (same batch size and precision as the
pipeline); pipeline = ``embed_cell`` from JPEG files through Ray Data (decode tasks → actor pool
→ Parquet), measured after its first batch (steady state, without model loading). The ratio is
how close the pipeline keeps the encoder busy. Three more columns say whether the CPU stage keeps
up: decode/core = the CPU stage's work (read, decode, resize) on one core; cores to feed =
forward-only / decode per core, the CPU cores a node needs per encoder to keep it busy; encoder
busy = the share of the encoder actors' time between their first and last batch spent embedding
rather than waiting for decoded input (``ProgressTracker.busy_fraction``).

    python benchmarks/bench_embed.py --models handcrafted,osnet-x1.0,clip-vit-b16 --random-init
    bash .ci/env python benchmarks/bench_embed.py --images 2048 --random-init   # default model set

Random-initialised weights cost the same time as trained ones; their embeddings are not results.
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
import ray
import torch

from reidray.config import EmbedSettings
from reidray.datasets import load
from reidray.datasets.synth import generate
from reidray.embed.actor import EncoderActor
from reidray.embed.decode import decode_resize
from reidray.embed.pipeline import embed_cell, resources
from reidray.models import get
from reidray.store import Store

DEFAULT_MODELS = "handcrafted,osnet-x1.0,clip-vit-b16,dinov2-b14"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, no GPU"


def forward_only(model: str, manifest, settings: EmbedSettings, random_init: bool, seconds: float) -> float:
    """Images/s of the actor's ``embed`` on real decoded images replicated into full batches."""
    res = resources(settings)
    actor = EncoderActor(model, None, random_init, precision=res.precision, device="cuda" if res.num_gpus else "cpu")
    batch_size = settings.batch_size or get(model).batch_size
    rows = manifest.slice(0, min(batch_size, manifest.num_rows)).to_pydict()
    pixels = decode_resize({k: np.asarray(v) for k, v in rows.items()}, model)["pixels"]
    reps = -(-batch_size // len(pixels))
    batch = torch.from_numpy(np.concatenate([pixels] * reps)[:batch_size]).to(actor.device)
    camids = torch.zeros(batch_size, dtype=torch.int64, device=actor.device) if actor.spec.uses_camera else None

    def step() -> None:
        actor.embed(batch, camids)
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    step()  # warm-up: kernels, allocator
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * batch_size:
        step()
        done += batch_size
    return done / (time.perf_counter() - start)


def decode_per_core(model: str, manifest, images: int = 256) -> float:
    """Images/s of the CPU stage's work (read, decode, resize) on one core, in this process."""
    rows = manifest.slice(0, min(images, manifest.num_rows)).to_pydict()
    batch = {k: np.asarray(v) for k, v in rows.items()}
    decode_resize(batch, model)  # warm the file cache, as the pipeline run did
    start = time.perf_counter()
    decode_resize(batch, model)
    return len(batch["path"]) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--images", type=int, default=1024, help="images through the pipeline per model")
    parser.add_argument("--random-init", action="store_true", help="random weights (no download needed)")
    parser.add_argument("--forward-seconds", type=float, default=10.0)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    args = parser.parse_args()

    ray.init(include_dashboard=False, log_to_driver=False)
    settings = EmbedSettings(batch_size=args.batch_size, precision=args.precision, progress_seconds=3600)
    work = tempfile.mkdtemp(prefix="bench-embed-")
    n_ids = max(100, args.images // 8)
    generate(work, n_ids=n_ids)
    manifest = load("reidray-synth", work)
    manifest = manifest.slice(0, min(args.images, manifest.num_rows))
    res = resources(settings)
    print(f"device: {device_name()}; precision {res.precision}; {manifest.num_rows} images per model")
    print("| model | batch | forward-only img/s | pipeline img/s (steady) | ratio | decode/core img/s | cores to feed "
          "| encoder busy |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        store = Store.open(os.path.join(work, "out", model))
        cell = embed_cell(store, model, "reidray-synth", manifest, random_init=args.random_init,
                          settings=settings, say=lambda _: None)
        marker = store.cell_marker(model, "reidray-synth")
        pipeline = marker.get("steady_images_per_second") or cell.images_per_second
        ceiling = forward_only(model, manifest, settings, args.random_init, args.forward_seconds)
        decode = decode_per_core(model, manifest)
        batch = args.batch_size or get(model).batch_size
        busy = marker.get("encoder_busy_fraction")
        print(f"| {model} | {batch} | {ceiling:.1f} | {pipeline:.1f} | {pipeline / ceiling:.2f} | {decode:.0f} | "
              f"{ceiling / decode:.2f} | {'-' if busy is None else f'{busy:.2f}'} |", flush=True)


if __name__ == "__main__":
    main()
