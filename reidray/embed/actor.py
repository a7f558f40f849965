"""The encoder actor: one loaded model per actor, batches of pixels in, embeddings out."""

from __future__ import annotations

import contextlib
import os
import time

import numpy as np
import pyarrow as pa

from reidray.cells import EMBEDDING, LABELS


def embedding_array(vectors: np.ndarray) -> pa.FixedSizeListArray:
    """Embeddings as Arrow's fixed-size list of float32: what Polars and faiss read directly."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])


class EncoderActor:
    """Holds the model on its device; Ray Data feeds it batches from the decode stage."""

    def __init__(self, model: str, weights: str | None, random_init: bool, precision: str = "fp32",
                 device: str | None = None, tracker=None, dataset: str | None = None) -> None:
        import torch

        from reidray.models import build

        self.torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device == "cpu":
            # Ray pins a worker to one thread; on a CPU-only node this actor is the only encoder
            # (see embed.pipeline.resources), so let torch use the node's cores.
            torch.set_num_threads(os.cpu_count() or 1)
        # the dataset decides whether camera ids are used (models.uses_camera_ids)
        self.encoder = build(model, weights=weights, random_init=random_init, device=self.device,
                             dataset=dataset).eval()
        self.spec = self.encoder.spec
        self.autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.tracker = tracker
        if tracker is not None:
            import ray  # only here: the forward-only benchmark builds an actor on machines without Ray

            context = ray.get_runtime_context()
            self.actor_id = context.get_actor_id()
            # where Ray really put this encoder, and what it could really use there
            tracker.register.remote(context.current_actor, context.get_node_id(), self.device)

    def embed(self, pixels, camids=None):
        """uint8 [N, H, W, 3] on the device -> float32 [N, dim]: normalise, then the encoder, in
        the actor's precision. The benchmark times exactly this as the forward-only ceiling."""
        from reidray.models.preprocess import normalize

        torch = self.torch
        autocast = (
            torch.autocast(self.device.split(":")[0], dtype=self.autocast_dtype)
            if self.autocast_dtype is not None
            else contextlib.nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.encoder(normalize(pixels, self.spec), camids).float()

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        started = time.time()
        torch = self.torch
        pixels = torch.from_numpy(np.ascontiguousarray(batch["pixels"])).to(self.device, non_blocking=True)
        camids = None
        if self.encoder.use_camera:
            camids = torch.from_numpy(np.asarray(batch["camid"], dtype=np.int64)).to(self.device)
        vectors = self.embed(pixels, camids).cpu().numpy()
        columns = {k: pa.array(np.asarray(batch[k])) for k in LABELS}
        if self.tracker is not None:
            self.tracker.add.remote(len(vectors), started, time.time(), self.actor_id)
        return pa.table({**columns, EMBEDDING: embedding_array(vectors)})
