"""The random control: an embedding that carries no identity information.

Why: it gives the chance level of a dataset through the real pipeline (loading, embedding,
protocol, metric). A model scoring near it has learnt nothing usable; the metric or a protocol
scoring it well above chance has a leak (e.g. a query matched against itself, a junk image
counted as a match).

How: the embedding is noise seeded by the image's exact pixel content. The 8-bit pixels are
recovered from the normalised input and hashed with integer arithmetic (a random linear hash
modulo a prime, then a pairwise-independent hash per dimension), so identical images get identical
embeddings and any two different images, however similar (the same person one frame later),
get independent ones. Integer arithmetic makes it exact: the same on CPU and GPU and
independent of the batch it runs in.
"""

from __future__ import annotations

from pathlib import Path

import torch

from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec

_PRIME = 2_147_483_647  # 2**31 - 1: products of two residues stay below 2**62 (no int64 overflow)
_SEED = 20250101


class RandomControlEncoder(Encoder):
    """Pixel-seeded noise: deterministic per image, uninformative across images."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec, random_init=False)
        h, w = spec.input_size
        gen = torch.Generator().manual_seed(_SEED)
        # Buffers, not parameters: fixed, and they follow .to(device).
        self.register_buffer("pixel_keys", torch.randint(1, 1 << 20, (3 * h * w,), generator=gen), persistent=False)
        self.register_buffer("dim_mul", torch.randint(1, _PRIME, (spec.dim,), generator=gen), persistent=False)
        self.register_buffer("dim_add", torch.randint(0, _PRIME, (spec.dim,), generator=gen), persistent=False)

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        mean = torch.tensor(self.spec.mean, device=pixels.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=pixels.device).view(1, 3, 1, 1)
        values = ((pixels.float() * std + mean) * 255.0).round().clamp(0, 255).long().flatten(1)
        # < 256 * 2**20 * 3*H*W: far below 2**63 for any input size this encoder is built for
        seed = (values * self.pixel_keys).sum(dim=1) % _PRIME
        # (a_j * seed + b_j) mod p with random a_j, b_j: a pairwise-independent hash per dimension
        u = (seed.unsqueeze(1) * self.dim_mul + self.dim_add) % _PRIME
        uniform = (u.double() + 0.5) / _PRIME
        # Gaussian via the inverse error function: isotropic noise, so cosine scores sit at chance.
        return (2.0**0.5) * torch.erfinv(2.0 * uniform - 1.0).float()


def build(spec: ModelSpec, path: Path | None, *, random_init: bool) -> RandomControlEncoder:
    """The control encoder (no weights; its hash keys are fixed, whatever the global seed)."""
    return RandomControlEncoder(spec)
