"""The encoder deployment: the registry's encoders (and text towers) loaded on demand, batched.

Each replica keeps at most ``max_models_per_replica`` towers (Serve's model multiplexing, least
recently used evicted), and Serve routes a model's requests to a replica that already holds it.
The multiplexed id is the model name for its image encoder and ``text:<model>`` for its text tower.
Requests are gathered into batches (``@serve.batch``; Serve splits a batch by model id), and the
forward pass runs off the event loop so the next batch gathers meanwhile.

An image model is held as the embed stage's own ``EncoderActor`` (normalise + encoder, in the
same precision rule: ``auto`` is fp32, bf16/fp16 only when set), fed uint8 pixels the ingress
resized with the stage's ``resize``: a served embedding is the stored one, computed the same way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
from ray import serve

from reidray.config import resolve_precision
from reidray.errors import ReidrayError

TEXT_PREFIX = "text:"
DATASET_SEP = "@"  # "<model>@<dataset>": an image encoder that uses that dataset's camera ids


class ModelLoadError(ReidrayError):
    """A registered model that this server cannot load (weights missing, builder unavailable)."""


@dataclass(frozen=True)
class ImageItem:
    """One image for the encoder: pixels [H, W, 3] uint8 at the model's input size, its camera id."""

    pixels: np.ndarray
    camid: int | None = None


@serve.deployment(name="Embedder", max_ongoing_requests=64, ray_actor_options={"num_cpus": 1})
class Embedder:
    """Image and text embeddings from the models this replica has loaded."""

    def __init__(self, *, random_init: bool, weights: dict[str, str], precision: str, max_models_per_replica: int,
                 max_batch_size: int, batch_wait_timeout_s: float) -> None:
        import torch

        self.torch = torch
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.precision = resolve_precision(precision)
        self.random_init = random_init
        self.weights = weights

        async def load(model_id: str):
            return await asyncio.to_thread(self._load, model_id)

        # Wired here, not as a decorator, so the bound comes from the app's settings.
        self.get_model = serve.multiplexed(max_num_models_per_replica=max_models_per_replica)(load)
        for method in (self.embed_images, self.embed_texts):
            method.set_max_batch_size(max_batch_size)
            method.set_batch_wait_timeout_s(batch_wait_timeout_s)

    def _load(self, model_id: str):
        """An ``EncoderActor`` for an image model, a ``TextEncoder`` for ``text:<model>``."""
        from reidray.embed.actor import EncoderActor
        from reidray.models.text import build_text

        name, _, dataset = model_id.removeprefix(TEXT_PREFIX).partition(DATASET_SEP)
        try:
            if model_id.startswith(TEXT_PREFIX):
                return build_text(name, weights=self.weights.get(name), random_init=self.random_init,
                                  device=self.device)
            return EncoderActor(name, self.weights.get(name), self.random_init, precision=self.precision,
                                device=self.device, dataset=dataset or None)
        except ReidrayError:
            raise
        except Exception as exc:  # a missing family module, a broken checkpoint: say which model
            raise ModelLoadError(
                f"model {name} could not be loaded on this server: {type(exc).__name__}: {exc}"
            ) from exc

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed_images(self, items: list[ImageItem]) -> list[np.ndarray]:
        """A batch of one model's images -> embeddings (float32 [dim] each)."""
        actor = await self.get_model(serve.get_multiplexed_model_id())
        return list(await asyncio.to_thread(self._forward_images, actor, items))

    def _forward_images(self, actor, items: list[ImageItem]) -> np.ndarray:
        torch = self.torch
        pixels = torch.from_numpy(np.stack([item.pixels for item in items])).to(self.device)
        camids = None
        if actor.encoder.use_camera:
            camids = torch.tensor([item.camid for item in items], dtype=torch.int64, device=self.device)
        return actor.embed(pixels, camids).cpu().numpy()

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def embed_texts(self, texts: list[str]) -> list[np.ndarray]:
        """A batch of one model's sentences -> text embeddings in its image space."""
        tower = await self.get_model(serve.get_multiplexed_model_id())
        return list(await asyncio.to_thread(self._forward_texts, tower, texts))

    def _forward_texts(self, tower, texts: list[str]) -> np.ndarray:
        with self.torch.inference_mode():
            return tower(texts).float().cpu().numpy()
