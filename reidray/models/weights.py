"""Where a model's weights come from.

In order: the explicit path (``weights:`` in the job file, or ``build(weights=...)``); the weights
folder ``$REIDRAY_WEIGHTS``; the libraries' own caches (the Hugging Face hub cache for hub models,
torch's checkpoint folder for file checkpoints); then a download, only when it can work. The
first three only look at the disk, so a missing model fails in milliseconds with a message naming
the model, the file or hub repo expected and where to put it.

Layout of ``$REIDRAY_WEIGHTS``: a file checkpoint sits at ``$REIDRAY_WEIGHTS/<file name>``; a hub
model's files at ``$REIDRAY_WEIGHTS/<org>/<repo>/`` (what ``python -m reidray.run weights
--download`` writes there when the variable is set; ``fetch.py``).

Downloads during a run: ``REIDRAY_DOWNLOAD=1`` always tries, ``REIDRAY_DOWNLOAD=0`` never does;
otherwise reidray does not try when ``HF_HUB_OFFLINE`` is set, and tries only after a two-second
check that the host answers, so an offline machine never waits on network timeouts.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path
from urllib.parse import urlparse

from reidray.errors import WeightsNotFoundError
from reidray.models.registry import ModelSpec

ENV_DIR = "REIDRAY_WEIGHTS"
ENV_DOWNLOAD = "REIDRAY_DOWNLOAD"
_PROBE_SECONDS = 2.0
_TRUE = {"1", "true", "yes", "on"}


def _is_file_checkpoint(spec: ModelSpec) -> bool:
    """File checkpoints (torchreid zoo, CLIP-ReID) versus hub repos (open_clip, transformers, timm)."""
    return not spec.weights_files


def target(spec: ModelSpec, folder: Path) -> Path:
    """What a builder receives: the checkpoint file, or the folder when the library needs several files."""
    if _is_file_checkpoint(spec):
        return folder / spec.weights_id
    return folder / spec.weights_files[0] if len(spec.weights_files) == 1 else folder


def _complete(spec: ModelSpec, folder: Path) -> bool:
    if _is_file_checkpoint(spec):
        return (folder / spec.weights_id).is_file()
    return all((folder / f).is_file() for f in spec.weights_files)


def expected(spec: ModelSpec) -> str:
    if _is_file_checkpoint(spec):
        return f"file {spec.weights_id} (from {spec.weights_url})"
    return f"hub repo {spec.weights_id} (files {', '.join(spec.weights_files)})"


def where_to_put(spec: ModelSpec) -> str:
    return f"${ENV_DIR}/{spec.weights_id}" + ("" if _is_file_checkpoint(spec) else "/")


def _explicit(spec: ModelSpec, weights: str | Path) -> Path:
    """An explicit path: a checkpoint file, or a folder holding the expected files."""
    path = Path(weights).expanduser()
    if path.is_file() and (_is_file_checkpoint(spec) or len(spec.weights_files) == 1):
        return path
    if path.is_dir():
        for folder in (path, path / spec.weights_id):
            if _complete(spec, folder):
                return target(spec, folder)
    raise WeightsNotFoundError(
        f"model {spec.name}: weights path {path} is not {'a file or ' if len(spec.weights_files) < 2 else ''}"
        f"a folder holding {expected(spec)}; fix the path in the job file"
    )


def _weights_dir(spec: ModelSpec) -> Path | None:
    root = os.environ.get(ENV_DIR)
    if not root:
        return None
    base = Path(root).expanduser()
    folder = base if _is_file_checkpoint(spec) else base / spec.weights_id
    return target(spec, folder) if _complete(spec, folder) else None


def checkpoint_dir() -> Path:
    """torch's checkpoint folder, where file checkpoints are cached: ``torch.hub.get_dir()/checkpoints``,
    derived by torch's documented rule ($TORCH_HOME, else $XDG_CACHE_HOME/torch, else ~/.cache/torch)
    so that looking for weights does not import torch (tests hold it equal to torch's own)."""
    cache = os.environ.get("XDG_CACHE_HOME", os.path.join("~", ".cache"))
    home = os.environ.get("TORCH_HOME", os.path.join(cache, "torch"))
    return Path(home).expanduser() / "hub" / "checkpoints"


def _library_cache(spec: ModelSpec) -> Path | None:
    if _is_file_checkpoint(spec):
        folder = checkpoint_dir()
        return target(spec, folder) if _complete(spec, folder) else None
    from huggingface_hub import try_to_load_from_cache

    found = [try_to_load_from_cache(spec.weights_id, f) for f in spec.weights_files]
    if not all(isinstance(p, str) for p in found):
        return None
    return target(spec, Path(found[0]).parent)


def local(spec: ModelSpec, weights: str | Path | None = None) -> Path | None:
    """Where the weights are on this machine (explicit path, then the folder, then the cache), or None."""
    if weights is not None:
        return _explicit(spec, weights)
    return _weights_dir(spec) or _library_cache(spec)


def _host_answers(url: str) -> bool:
    """A TCP connect to the download host, bounded by a thread so slow DNS cannot stall us; a
    local source (no host) always answers."""
    host = urlparse(url).hostname or ""
    if not host:
        return True
    result: list[bool] = []

    def probe() -> None:
        try:
            socket.create_connection((host, 443), timeout=_PROBE_SECONDS).close()
            result.append(True)
        except OSError:
            result.append(False)

    worker = threading.Thread(target=probe, daemon=True)
    worker.start()
    worker.join(_PROBE_SECONDS + 0.5)
    return bool(result and result[0])


def _download_blocker(spec: ModelSpec) -> str | None:
    """Why no download will be tried, or None when it should be."""
    choice = os.environ.get(ENV_DOWNLOAD, "").strip().lower()
    if choice in _TRUE:
        return None
    if choice in {"0", "false", "no", "off"}:
        return f"downloads are off ({ENV_DOWNLOAD}={choice})"
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE:
        return "offline (HF_HUB_OFFLINE is set)"
    if not _host_answers(spec.weights_url):
        return f"offline ({urlparse(spec.weights_url).hostname} does not answer)"
    return None


def _download(spec: ModelSpec) -> Path:
    if _is_file_checkpoint(spec):
        from reidray.models import fetch

        return fetch.download(spec)  # atomic, size-checked, loaded once as the model's checkpoint
    return target(spec, _hub_folder(spec, spec.weights_files))


def _hub_folder(spec: ModelSpec, files: tuple[str, ...]) -> Path:
    """Download ``files`` of the model's hub repo into the hub cache; the folder holding them."""
    from huggingface_hub import hf_hub_download

    paths = [hf_hub_download(spec.weights_id, f) for f in files]
    return Path(paths[0]).parent


def _failure(exc: Exception) -> str:
    return f"download failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def download_hub_files(spec: ModelSpec, files: tuple[str, ...]) -> tuple[Path | None, str]:
    """More files of a hub model's repo (the text tower's tokenizer), under the weights' download
    rules: (the folder holding them, "") or (None, why no download was tried or why it failed)."""
    blocker = _download_blocker(spec)
    if blocker is not None:
        return None, blocker
    try:
        return _hub_folder(spec, files), ""
    except Exception as exc:  # network and hub errors: the caller reports the files as missing
        return None, _failure(exc)


def resolve(spec: ModelSpec, weights: str | Path | None = None) -> Path:
    """The local path of ``spec``'s weights, downloading only when allowed and reachable.

    Raises WeightsNotFoundError naming the model, what is expected and where to put it.
    """
    found = local(spec, weights)
    if found is not None:
        return found
    blocker = _download_blocker(spec)
    if blocker is None:
        try:
            return _download(spec)
        except WeightsNotFoundError:
            raise
        except Exception as exc:  # network and hub errors: report them as missing weights
            blocker = _failure(exc)
    raise WeightsNotFoundError(
        f"model {spec.name}: weights not found, {blocker}; expected {expected(spec)}; "
        f"run `python -m reidray.run weights --download -m {spec.name}`, or put it at {where_to_put(spec)}, "
        "or give its path as weights: in the job file"
    )


def status(spec: ModelSpec, weights: str | Path | None = None) -> tuple[bool, str]:
    """(available, where or why not), from the disk only."""
    if not spec.needs_weights:
        return True, "built in (no weights)"
    try:
        found = local(spec, weights)
    except WeightsNotFoundError as exc:
        return False, str(exc)
    if found is not None:
        return True, str(found)
    return False, (f"missing: expected {expected(spec)} at {where_to_put(spec)} or in the library cache; "
                   f"run `python -m reidray.run weights --download -m {spec.name}`")
