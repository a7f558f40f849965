"""Models: the registry of the 11 encoders (+ baselines), their builders and shared preprocessing.

See docs/contracts.md (Models) for the interface and ``registry.py`` for every fact per model.
The catalogue (``MODELS``, ``ModelSpec``, ``get``, ``names``) and the weights status import no
framework; ``Encoder`` and ``build`` bring in torch when first used.
"""

from typing import Any

from reidray.models.registry import MODELS, ModelSpec, get, names, uses_camera_ids
from reidray.models.factory import build, status_rows, weights_status

__all__ = [
    "MODELS", "Encoder", "ModelSpec", "build", "get", "names", "status_rows", "uses_camera_ids", "weights_status",
]


def __getattr__(name: str) -> Any:
    if name == "Encoder":  # torch, only when someone asks for the class
        from reidray.models.encoder import Encoder

        return Encoder
    raise AttributeError(f"module 'reidray.models' has no attribute {name!r}")
