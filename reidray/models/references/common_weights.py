"""Weights of hub-published references (timm, open_clip, transformers), by the registry's rules.

``weights.resolve`` looks in order at the explicit path, ``$REIDRAY_WEIGHTS``, the library cache and
a download (only when online); a miss here adds the places it looked to the registry's message.
"""

from __future__ import annotations

from pathlib import Path

from reidray.errors import WeightsNotFoundError
from reidray.models import weights as _weights
from reidray.models.registry import ModelSpec


def tried(spec: ModelSpec, explicit: str | Path | None) -> list[str]:
    """Where ``weights.resolve`` looks for ``spec``, in its order, as the error lists them."""
    import os

    places = [f"weights: {explicit}" if explicit else "no weights: path in the job file"]
    root = os.environ.get(_weights.ENV_DIR)
    places.append(f"${_weights.ENV_DIR}/{spec.weights_id}" if root else f"${_weights.ENV_DIR} (unset)")
    places.append("the Hugging Face cache" if spec.weights_files else "torch's checkpoint folder")
    places.append(f"a download from {spec.weights_url}")
    return places


def resolve(spec: ModelSpec, explicit: str | Path | None) -> Path:
    if not spec.weights_id:
        raise WeightsNotFoundError(
            f"model {spec.name}: {spec.library} publishes no weights for it; pass --random-init or give a "
            "weights file as weights: in the job file"
        )
    try:
        return _weights.resolve(spec, explicit)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{exc}; tried: {', '.join(tried(spec, explicit))}") from None


def status(spec: ModelSpec, explicit: str | Path | None) -> tuple[bool, str]:
    if not spec.weights_id:
        return False, f"{spec.library} publishes no weights for it (--random-init only)"
    return _weights.status(spec, explicit)
