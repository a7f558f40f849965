"""The encoders: the ``Embedder`` deployment (text towers; image encoders on GPUs) and ``LocalQueries``
(image encoders inside the ingress, for CPU serving), both loading models on demand and batching.

Each replica keeps at most ``max_models_per_replica`` towers (Serve's model multiplexing, least
recently used evicted), and Serve routes a model's requests to a replica that already holds it.
The multiplexed id is the model name for its image encoder and ``text:<model>`` for its text tower.
Requests are gathered into batches (``@serve.batch``; Serve splits a batch by model id), and the
forward pass runs off the event loop so the next batch gathers meanwhile. No batch waits to fill
by default (``batch_wait_timeout_s`` 0): what queued during a pass is the next batch.

An image model is held as the embed stage's own ``EncoderActor`` (normalise + encoder, in the
same precision rule: ``auto`` is fp32, bf16/fp16 only when set), fed uint8 pixels the ingress
resized with the stage's ``resize``: a served embedding is the stored one, computed the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from ray import serve

from reidray.config import resolve_precision
from reidray.errors import ReidrayError
from reidray.models.registry import ModelSpec
from reidray.serve.galleries import GalleryIndex

TEXT_PREFIX = "text:"
DATASET_SEP = "@"  # "<model>@<dataset>": an image encoder that uses that dataset's camera ids


class ModelLoadError(ReidrayError):
    """A registered model that this server cannot load (weights missing, builder unavailable)."""


@dataclass(frozen=True)
class ImageItem:
    """One image for the encoder: pixels [H, W, 3] uint8 at the model's input size, its camera id."""

    pixels: np.ndarray
    camid: int | None = None


@dataclass(frozen=True)
class Embedded:
    """One image's embedding (float32 [dim]), with the forward pass of its batch (ms) and the batch's size."""

    vector: np.ndarray
    forward_ms: float
    batch: int


def load(model_id: str, *, weights: dict[str, str], random_init: bool, precision: str, device: str):
    """An ``EncoderActor`` for an image model, a ``TextEncoder`` for ``text:<model>``."""
    from reidray.embed.actor import EncoderActor
    from reidray.models.text import build_text

    name, _, dataset = model_id.removeprefix(TEXT_PREFIX).partition(DATASET_SEP)
    try:
        if model_id.startswith(TEXT_PREFIX):
            return build_text(name, weights=weights.get(name), random_init=random_init, device=device)
        return EncoderActor(name, weights.get(name), random_init, precision=precision, device=device,
                            dataset=dataset or None)
    except ReidrayError:
        raise
    except Exception as exc:  # a missing family module, a broken checkpoint: say which model
        raise ModelLoadError(f"model {name} could not be loaded on this server: {type(exc).__name__}: {exc}") from exc


def forward_images(actor, items: list[ImageItem]) -> list[Embedded]:
    """One forward pass over a batch of one model's images (blocking: run it off the event loop)."""
    import torch

    start = time.perf_counter()
    pixels = torch.from_numpy(np.stack([item.pixels for item in items])).to(actor.device)
    camids = None
    if actor.encoder.use_camera:
        camids = torch.tensor([item.camid for item in items], dtype=torch.int64, device=actor.device)
    vectors = actor.embed(pixels, camids).cpu().numpy()
    took = (time.perf_counter() - start) * 1e3
    return [Embedded(v, took, len(items)) for v in vectors]


@dataclass(frozen=True)
class LocalQuery:
    """One image query for the in-process path: the raw upload, and the gallery to search (or None)."""

    spec: ModelSpec
    model_id: str  # the model name, or "<model>@<dataset>" for an encoder that uses that dataset's cameras
    body: bytes
    camid: int | None
    index: GalleryIndex | None = None
    k: int = 0


@dataclass(frozen=True)
class Answer:
    """An embedding and, for a search, its hits; with the times of the pass it was in (ms) and its size."""

    vector: np.ndarray
    hits: list[dict] | None
    decode_ms: float
    forward_ms: float
    search_ms: float
    batch: int


class LocalQueries:
    """Image queries answered in the calling process (the ingress, when encoders get no GPU).

    Queries that arrive while a pass runs wait in Serve's batch queue and go into the next pass
    together. One pass is one worker thread doing, for the whole batch, what the embed stage and
    the galleries do: decode and resize each upload (``decode``, with its checks), one forward
    pass per model, one index search per gallery. So a query crosses threads once, not once per
    step, and at one client nothing waits (``batch_wait_timeout_s`` 0 by default); under load the
    batch grows with the queue. A query whose upload does not decode fails alone. Models are kept
    per process, least recently used dropped; torch gets the CPUs Ray assigned the replica.
    """

    def __init__(self, decode: Callable[[bytes, ModelSpec], np.ndarray], *, random_init: bool,
                 weights: dict[str, str], precision: str, max_models: int, max_batch_size: int,
                 batch_wait_timeout_s: float) -> None:
        options = {"weights": weights, "random_init": random_init, "precision": resolve_precision(precision),
                   "device": "cpu"}
        threads = _assigned_cpus()

        async def get(model_id: str):
            actor = await asyncio.to_thread(load, model_id, **options)
            actor.torch.set_num_threads(threads)  # EncoderActor takes every core: here, the replica's share
            return actor

        self.decode = decode
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models)(get)
        self._run.set_max_batch_size(max_batch_size)
        self._run.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def answer(self, query: LocalQuery) -> Answer:
        """The query's answer; its own error (an upload that does not decode) raised here."""
        answer = await self._run(query)
        if isinstance(answer, Exception):
            raise answer
        return answer

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _run(self, queries: list[LocalQuery]) -> list[Answer | Exception]:
        models = {q.model_id: await self.get_model(q.model_id) for q in queries}
        return await asyncio.to_thread(self._pass, models, queries)

    def _pass(self, models: dict, queries: list[LocalQuery]) -> list[Answer | Exception]:
        clock = time.perf_counter
        start = clock()
        pixels: list[np.ndarray | Exception] = []
        for q in queries:
            try:
                pixels.append(self.decode(q.body, q.spec))
            except ReidrayError as exc:
                pixels.append(exc)
        decoded = clock()
        vectors: dict[int, np.ndarray] = {}
        for model, actor in models.items():
            rows = [i for i, q in enumerate(queries) if q.model_id == model and not isinstance(pixels[i], Exception)]
            if rows:
                items = [ImageItem(pixels[i], queries[i].camid) for i in rows]
                vectors.update(zip(rows, (e.vector for e in forward_images(actor, items))))
        encoded = clock()
        hits: dict[int, list[dict]] = {}
        for index in {id(q.index): q.index for q in queries if q.index is not None}.values():
            rows = [i for i, q in enumerate(queries) if q.index is index and i in vectors]
            if rows:
                found = index.search_many(np.stack([vectors[i] for i in rows]), [queries[i].k for i in rows])
                hits.update(zip(rows, found))
        searched = clock()
        times = {"decode_ms": (decoded - start) * 1e3, "forward_ms": (encoded - decoded) * 1e3,
                 "search_ms": (searched - encoded) * 1e3, "batch": len(queries)}
        return [pixels[i] if isinstance(pixels[i], Exception) else Answer(vectors[i], hits.get(i), **times)
                for i in range(len(queries))]


def _assigned_cpus() -> int:
    """The CPUs Ray assigned this replica, at least one (the torch threads that fit its share)."""
    import ray

    try:
        return max(1, int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1)))
    except Exception:  # outside Ray (a plain process): one thread per request path
        return 1


@serve.deployment(name="Embedder", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class Embedder:
    """Image and text embeddings from the models this replica has loaded."""

    def __init__(self, *, random_init: bool, weights: dict[str, str], precision: str, max_models_per_replica: int,
                 max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
        options = {"weights": weights, "random_init": random_init, "precision": resolve_precision(precision),
                   "device": device}

        async def get(model_id: str):
            return await asyncio.to_thread(load, model_id, **options)

        # Wired here, not as a decorator, so the bound comes from the app's settings.
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(get)
        for method in (self.embed_images, self.embed_texts):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def embed_images(self, items: list[ImageItem]) -> list[Embedded]:
        """A batch of one model's images -> embeddings (float32 [dim] each)."""
        actor = await self.get_model(serve.get_multiplexed_model_id())
        return await asyncio.to_thread(forward_images, actor, items)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        """A batch of one model's sentences -> text embeddings in its image space."""
        tower = await self.get_model(serve.get_multiplexed_model_id())
        return list(await asyncio.to_thread(self._forward_texts, tower, texts))

    @staticmethod
    def _forward_texts(tower, texts: list[str]) -> np.ndarray:
        import torch

        with torch.inference_mode():
            return tower(texts).float().cpu().numpy()
