"""Getting the weights: where each model's come from, and fetching the missing ones.

``python -m reidray.run weights`` lists, per model, where its weights come from (a Hugging Face
hub repo and its files, or the Google Drive id of a released checkpoint file), whether reidray
finds them on this machine and where; ``--download`` fetches the missing ones, with a progress
bar. Downloads land in ``$REIDRAY_WEIGHTS`` when it is set (its layout: ``weights.py``), else in
the libraries' caches (the hub cache; torch's checkpoint folder for files).

Every file is checked before it counts as there, and written atomically (to a temporary name in
the target folder, renamed when complete and checked), so a failed download leaves nothing at the
target:

- hub files: their size, and the sha256 the hub publishes for large (LFS) files, against the
  hub's listing; ``huggingface_hub`` writes them atomically itself;
- Drive files: the size the server announced (Drive publishes no hash), then the file must load
  as the model's checkpoint with the registry's architecture (``registry.build``);
- a local source (a path or ``file://`` URL in ``weights_url``, for mirrors and tests): its size.

Offline, each model fails at once with one line (hosts are probed for two seconds, once each).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from reidray.errors import ReidrayError
from reidray.models import weights as _weights
from reidray.models.registry import ModelSpec

COMMAND = "python -m reidray.run weights --download"
Say = Callable[[str], None]


def command_for(name: str) -> str:
    """The command that fetches one model's weights."""
    return f"{COMMAND} -m {name}"


def _kind(spec: ModelSpec) -> str:
    if spec.weights_files:
        return "hub"
    url = urlparse(spec.weights_url)
    if url.hostname == "drive.google.com":
        return "drive"
    return "file" if url.scheme in ("", "file") else "url"


def source(spec: ModelSpec) -> str:
    """Where the weights come from, in words."""
    kind = _kind(spec)
    if kind == "hub":
        return f"hub {spec.weights_id}: {', '.join(spec.weights_files + spec.text_files)}"
    if kind == "drive":
        drive_id = spec.weights_url.rsplit("id=", 1)[-1]
        return f"Google Drive id {drive_id}: {spec.weights_id}"
    return f"{spec.weights_url}: {spec.weights_id}"


def destination(spec: ModelSpec) -> Path | None:
    """The folder a download lands in; None: the hub cache (``huggingface_hub`` picks the path)."""
    root = os.environ.get(_weights.ENV_DIR)
    if root:
        base = Path(root).expanduser()
        return base / spec.weights_id if spec.weights_files else base
    return None if spec.weights_files else _weights.checkpoint_dir()


def where_line() -> str:
    """Where reidray looks for weights, and where ``--download`` puts them."""
    from huggingface_hub import constants

    root = os.environ.get(_weights.ENV_DIR)
    folder = f"${_weights.ENV_DIR}={root}" if root else f"${_weights.ENV_DIR} (unset)"
    caches = f"hub cache {constants.HF_HUB_CACHE}, checkpoint files in {_weights.checkpoint_dir()}"
    return (f"reidray looks in: a job's weights: path, then {folder}, then the {caches}; "
            f"downloads go to {'$' + _weights.ENV_DIR if root else 'the caches'}")


def status_lines(names: list[str]) -> list[str]:
    """Two lines per model: ready (and where) or missing, and its source."""
    from reidray.models.registry import get

    lines = []
    for name in names:
        spec = get(name)
        if not spec.needs_weights:
            continue
        found = _weights.local(spec)
        state = f"ready    {found}" if found else f"missing  (get it: {command_for(name)})"
        lines.append(f"{name:20s} {state}\n{'':20s} from {source(spec)}")
    return lines


def download(spec: ModelSpec, say: Say = print) -> Path:
    """Fetch ``spec``'s weights (all its hub files, text tower's included); what ``build`` loads."""
    kind = _kind(spec)
    if kind == "hub":
        folder = hub_files(spec, spec.weights_files + spec.text_files, destination(spec))
        return _weights.target(spec, folder)
    folder = destination(spec)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / spec.weights_id
    part = folder / f".{spec.weights_id}.part-{os.getpid()}"
    try:
        expected = _fetch_file(spec, part, kind)
        if part.stat().st_size != expected:
            raise ReidrayError(f"got {part.stat().st_size:,} bytes of {expected:,}")
        _check_checkpoint(spec, part)
        part.replace(target)
    finally:
        part.unlink(missing_ok=True)
    say(f"{spec.name}: {target} ({target.stat().st_size / 1e6:.1f} MB, checked)")
    return target


def _fetch_file(spec: ModelSpec, part: Path, kind: str) -> int:
    """Write the checkpoint file to ``part``; the size the source announced."""
    if kind == "drive":
        import gdown

        announced: list[int | None] = [None]
        gdown.download(spec.weights_url, str(part), quiet=False,
                       progress=lambda done, total: announced.__setitem__(0, total))
        if announced[0] is None:
            raise ReidrayError("Google Drive announced no size for the file")
        return announced[0]
    if kind == "file":
        from tqdm import tqdm

        src = Path(urlparse(spec.weights_url).path if "://" in spec.weights_url else spec.weights_url)
        size = src.stat().st_size
        with src.open("rb") as fin, part.open("wb") as fout, tqdm(total=size, unit="B", unit_scale=True,
                                                                   desc=spec.weights_id) as bar:
            while chunk := fin.read(1 << 20):
                fout.write(chunk)
                bar.update(len(chunk))
        return size
    raise ReidrayError(f"no downloader for {spec.weights_url}")


def _check_checkpoint(spec: ModelSpec, path: Path) -> None:
    """The file loads as the model's checkpoint, of the registry's architecture, strictly."""
    from reidray.models.factory import build

    try:
        build(spec.name, weights=path)
    except ReidrayError as exc:
        raise ReidrayError(f"the downloaded file is not {spec.name}'s checkpoint ({exc})") from exc


def hub_files(spec: ModelSpec, files: tuple[str, ...], folder: Path | None) -> Path:
    """Download ``files`` of the hub repo (into ``folder``, or the hub cache), each checked against
    the hub's published size and, for large files, sha256; the folder holding them."""
    from huggingface_hub import HfApi, hf_hub_download

    published = {info.path: info for info in HfApi().get_paths_info(spec.weights_id, list(files))}
    paths = []
    for name in files:
        path = Path(hf_hub_download(spec.weights_id, name, local_dir=folder))
        info = published.get(name)
        problem = None if info is None else _mismatch(path, info.size, info.lfs.sha256 if info.lfs else None)
        if problem:
            path.resolve().unlink(missing_ok=True)
            path.unlink(missing_ok=True)
            raise ReidrayError(f"hub file {spec.weights_id}/{name} {problem}; removed it, run the command again")
        paths.append(path)
    return paths[0].parent


def _mismatch(path: Path, size: int | None, sha256: str | None) -> str | None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        return f"has {actual:,} bytes, the hub lists {size:,}"
    if sha256:
        digest = hashlib.sha256()
        with path.open("rb") as f:
            while chunk := f.read(1 << 24):
                digest.update(chunk)
        if digest.hexdigest() != sha256:
            return f"has sha256 {digest.hexdigest()[:12]}..., the hub publishes {sha256[:12]}..."
    return None


def _blocker(spec: ModelSpec, probed: dict[str, bool]) -> str | None:
    """Why a download asked for on the command line cannot work here (each host probed once)."""
    kind = _kind(spec)
    if kind == "file":
        return None
    if kind == "hub" and os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "offline (HF_HUB_OFFLINE is set)"
    host = urlparse(spec.weights_url).hostname or ""
    if host not in probed:
        probed[host] = _weights._host_answers(spec.weights_url)
    return None if probed[host] else f"offline ({host} does not answer)"


def download_missing(names: list[str], say: Say = print) -> list[str]:
    """Fetch every missing model of ``names``; one line per model that could not be fetched."""
    from reidray.models.registry import get

    failures: list[str] = []
    probed: dict[str, bool] = {}
    for name in names:
        spec = get(name)
        if not spec.needs_weights:
            continue
        found = _weights.local(spec)
        if found is not None:
            say(f"{name}: ready at {found}")
            continue
        blocker = _blocker(spec, probed)
        if blocker is None:
            say(f"{name}: downloading {source(spec)}")
            try:
                download(spec, say)
                continue
            except Exception as exc:  # network, hub, Drive and check failures: one line for the model
                blocker = f"download failed: {' '.join(str(exc).split())[:300]}"
        failures.append(f"model {name}: not downloaded, {blocker}; with internet run `{command_for(name)}`, "
                        f"or put {_weights.expected(spec)} at {_weights.where_to_put(spec)}")
    return failures
