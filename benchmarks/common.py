"""Helpers the benchmarks share: the device's name, synthetic images and the forward-only ceiling.

Nothing here imports Ray or Pydantic, so ``gpu_proof.py`` can still measure the forward-only ceiling
on a machine that has torch and the model libraries but not Ray (a bare GPU image).
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from reidray.datasets import load
from reidray.datasets.synth import generate
from reidray.embed.actor import EncoderActor
from reidray.embed.decode import decode_resize

SYNTH = "reidray-synth"


def device_name() -> str:
    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} (CUDA)"
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    return f"{cpu}, {os.cpu_count()} cores, no GPU"


def synthetic_manifest(root: str | Path, images: int) -> pa.Table:
    """The first ``images`` rows of a synthetic dataset (all splits) large enough to hold them."""
    generate(root, n_ids=max(3, images // 8))  # 11-16 images per test identity, all splits
    manifest = load(SYNTH, root)
    return manifest.slice(0, min(images, manifest.num_rows))


def sample_pixels(manifest: pa.Table, model: str, n: int) -> np.ndarray:
    """The first ``n`` manifest images decoded and resized for ``model``: uint8 [n, H, W, 3]."""
    rows = manifest.slice(0, min(n, manifest.num_rows)).to_pydict()
    return decode_resize({k: np.asarray(v) for k, v in rows.items()}, model)["pixels"]


def forward_only(model: str, pixels: np.ndarray, *, batch_size: int, precision: str, device: str,
                 random_init: bool, seconds: float) -> float:
    """Images/s of the encoder actor's own ``embed`` on full batches already on the device.

    ``pixels`` (real decoded images) are replicated into one batch of ``batch_size``; the time
    covers at least two batches after a warm-up batch, and at least ``seconds``."""
    actor = EncoderActor(model, None, random_init, precision=precision, device=device)
    reps = -(-batch_size // len(pixels))
    batch = torch.from_numpy(np.concatenate([pixels] * reps)[:batch_size]).to(actor.device)
    camids = torch.zeros(batch_size, dtype=torch.int64, device=actor.device) if actor.spec.uses_camera else None

    def step() -> None:
        actor.embed(batch, camids)
        if actor.device.startswith("cuda"):
            torch.cuda.synchronize()

    step()  # warm-up: kernels, allocator
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or done < 2 * batch_size:
        step()
        done += batch_size
    return done / (time.perf_counter() - start)
