"""The CPU stage: read each image once, decode it, resize it for the model; fail loudly on bad files.

A file that one node cannot read may be fine on the driver's machine (a data root mounted on some
nodes only, or differently): the error names the node it failed on as well as the path.
"""

from __future__ import annotations

import socket

import numpy as np

from reidray.cells import LABELS
from reidray.errors import ImageDecodeError
from reidray.images import read_image
from reidray.models import get
from reidray.models.preprocess import resize


def decode_resize(batch: dict[str, np.ndarray], model: str) -> dict[str, np.ndarray]:
    """Ray Data batch function: manifest rows in, uint8 pixels at the model's input size out."""
    spec = get(model)
    try:
        pixels = np.stack([resize(read_image(str(p)), spec) for p in batch["path"]])
    except ImageDecodeError as exc:
        raise type(exc)(f"{exc}; read on {this_node()}") from None
    return {**{k: batch[k] for k in LABELS}, "pixels": pixels}


def this_node() -> str:
    """This process's node as an operator finds it: Ray's node IP and id (as ``cell.json`` records
    node ids), and the host name; just the host name outside Ray."""
    import ray

    host = socket.gethostname()
    if not ray.is_initialized():
        return f"host {host}"
    node_id = ray.get_runtime_context().get_node_id()
    return f"node {ray.util.get_node_ip_address()} (host {host}, node id {node_id})"
