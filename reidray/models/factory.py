"""Building encoders from the catalogue's entries, and where their weights stand.

``build`` imports torch and the model's library only when called; ``weights_status`` and
``status_rows`` look at the disk only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from reidray.models.registry import MODELS, get, uses_camera_ids

if TYPE_CHECKING:
    from reidray.models.encoder import Encoder


def build(
    name: str,
    *,
    weights: str | Path | None = None,
    random_init: bool = False,
    device: str = "cpu",
    dataset: str | None = None,
) -> Encoder:
    """Build ``name``'s encoder in eval mode on ``device``, weights resolved (see ``weights.resolve``).

    ``dataset`` is the dataset whose images it will embed: it decides whether camera ids are used
    (``registry.uses_camera_ids``); None (no dataset, e.g. a bare embedding request) means they are not.

    ``random_init=True`` skips the weights and initialises the architecture from a fixed seed,
    so every process (e.g. each Ray actor) builds the same random model; it is for tests and
    throughput runs only, and the encoder carries ``random_init=True`` into every output.
    Raises WeightsNotFoundError when the weights are missing and cannot be downloaded.
    """
    import importlib

    import torch

    from reidray.models import references
    from reidray.models import weights as _weights

    if references.is_reference(name):  # timm:..., python:...: built by the reference's own scheme
        return references.build(name, weights=weights, random_init=random_init, device=device)
    spec = get(name)
    path = None
    if spec.needs_weights and not random_init:
        path = _weights.resolve(spec, weights)
    family = importlib.import_module(f"reidray.models.{spec.family}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = family.build(spec, path, random_init=random_init and spec.needs_weights)
    encoder.use_camera = uses_camera_ids(spec, dataset)
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


def weights_status(name: str, weights: str | Path | None = None) -> tuple[bool, str]:
    """(available, where the weights are or why not), looking only on this machine (never downloads)."""
    from reidray.models import references
    from reidray.models import weights as _weights

    if references.is_reference(name):
        return references.weights_status(name, weights)
    return _weights.status(get(name), weights)


def status_rows(weights: dict[str, str | Path] | None = None) -> list[dict[str, object]]:
    """One row per model for ``python -m reidray.run models``: the spec's headline facts and weights status."""
    rows = []
    for spec in MODELS.values():
        ok, where = weights_status(spec.name, (weights or {}).get(spec.name))
        rows.append(
            {
                "model": spec.name,
                "paradigm": spec.paradigm,
                "params_m": spec.params_m,
                "input": f"{spec.input_size[0]}x{spec.input_size[1]}",
                "dim": spec.dim,
                "metric": spec.metric,
                "library": spec.library,
                "weights_id": spec.weights_id or "-",
                "available": ok,
                "weights": where,
            }
        )
    return rows
