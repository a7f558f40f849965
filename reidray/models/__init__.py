"""Models: the registry of the 11 encoders (+ baselines), their builders and shared preprocessing.

See docs/contracts.md (Models) for the interface and ``registry.py`` for every fact per model.
"""

from reidray.models.encoder import Encoder
from reidray.models.registry import (
    MODELS,
    ModelSpec,
    build,
    get,
    names,
    status_rows,
    uses_camera_ids,
    weights_status,
)

__all__ = [
    "MODELS", "Encoder", "ModelSpec", "build", "get", "names", "status_rows", "uses_camera_ids", "weights_status",
]
