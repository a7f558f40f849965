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
import tempfile
import time

import numpy as np
import ray
from common import SYNTH, device_name, forward_only, sample_pixels, synthetic_manifest

from reidray.config import EmbedSettings
from reidray.embed.decode import decode_resize
from reidray.embed.pipeline import embed_cell, resources
from reidray.models import get
from reidray.store import Store

DEFAULT_MODELS = "handcrafted,osnet-x1.0,clip-vit-b16,dinov2-b14"


def pipeline_run(root: str, model: str, manifest, settings: EmbedSettings, random_init: bool) -> dict:
    """One cell through the real pipeline (files -> Ray Data decode -> encoder actors -> Parquet):
    its steady images/s (after the first batch) and the encoder actors' busy fraction."""
    store = Store.open(os.path.join(root, model))
    cell = embed_cell(store, model, SYNTH, manifest, random_init=random_init, settings=settings, say=lambda _: None)
    marker = store.cell_marker(model, SYNTH)
    return {"images": cell.n_images, "images_per_s": marker.get("steady_images_per_second") or cell.images_per_second,
            "encoder_busy": marker.get("encoder_busy_fraction")}


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
    manifest = synthetic_manifest(work, args.images)
    res = resources(settings)
    print(f"device: {device_name()}; precision {res.precision}; {manifest.num_rows} images per model")
    print("| model | batch | forward-only img/s | pipeline img/s (steady) | ratio | decode/core img/s | cores to feed "
          "| encoder busy |")
    print("|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        run = pipeline_run(os.path.join(work, "out"), model, manifest, settings, args.random_init)
        batch = args.batch_size or get(model).batch_size
        ceiling = forward_only(model, sample_pixels(manifest, model, batch), batch_size=batch,
                               precision=res.precision, device=res.device, random_init=args.random_init,
                               seconds=args.forward_seconds)
        decode = decode_per_core(model, manifest)
        pipeline, busy = run["images_per_s"], run["encoder_busy"]
        print(f"| {model} | {batch} | {ceiling:.1f} | {pipeline:.1f} | {pipeline / ceiling:.2f} | {decode:.0f} | "
              f"{ceiling / decode:.2f} | {'-' if busy is None else f'{busy:.2f}'} |", flush=True)


if __name__ == "__main__":
    main()
