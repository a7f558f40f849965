"""``torch.load`` of a checkpoint file, always with ``weights_only=True``.

Released ``.pth`` files are pickles: loading one with ``weights_only=False`` can run any code it
holds. torchreid's model-zoo files also hold the training run's numpy scalars (``rank1`` and
friends beside ``state_dict``: deep-person-reid issue #592), which the weights-only unpickler
refuses. So exactly the numpy globals that rebuild a float or int scalar are allow-listed, under
their numpy 2 name and the ``numpy.core`` name older files were written with; nothing else is.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any


def numpy_scalar_globals() -> list:
    """What unpickling a numpy float32/float64/int64 scalar needs: ``multiarray.scalar``, ``dtype``
    and the dtype classes whose state it sets."""
    import numpy as np

    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import scalar
    dtype_classes = [type(np.dtype(name)) for name in ("float32", "float64", "int64")]
    return [scalar, (scalar, "numpy.core.multiarray.scalar"), np.dtype, *dtype_classes]


def load(path: Path, *, mmap: bool = False) -> Any:
    """The object in ``path`` (on the CPU), read by the weights-only unpickler; ``mmap`` maps the
    tensors instead of reading them (zip-format files only: older files are read whole)."""
    import torch

    with torch.serialization.safe_globals(numpy_scalar_globals()):
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap and zipfile.is_zipfile(path))
