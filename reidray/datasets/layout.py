"""File-system helpers every parser shares: case-insensitive lookup, image listing, discovery.

Released datasets get unpacked in many ways (upper/lower case, an extra wrapping folder,
stray files such as Thumbs.db); these helpers absorb that so each parser states only its
own layout rules.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

from reidray.errors import DatasetLayoutError

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp"})


def norm(name: str) -> str:
    """Folder-name key that ignores case and punctuation: 'Market-1501' ~ 'market1501'."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def child(parent: Path, *names: str, kind: str = "any") -> Path | None:
    """The entry of `parent` named like one of `names` (case-insensitive), tried in order."""
    try:
        entries = {e.name.lower(): Path(e.path) for e in os.scandir(parent)}
    except (FileNotFoundError, NotADirectoryError):
        return None
    for name in names:
        path = entries.get(name.lower())
        if path is None:
            continue
        if kind == "dir" and not path.is_dir() or kind == "file" and not path.is_file():
            continue
        return path
    return None


def require(parent: Path, *names: str, dataset: str, kind: str = "dir", hint: str = "") -> Path:
    """Like `child`, but a missing entry is a DatasetLayoutError that says what to do."""
    found = child(parent, *names, kind=kind)
    if found is None:
        what = " or ".join(repr(n) for n in names)
        todo = hint or "re-extract the dataset archive so that the folder is complete"
        raise DatasetLayoutError(f"{dataset}: {what} not found in {parent}; {todo}")
    return found


def is_image(path: Path | str) -> bool:
    """True for the image extensions ReID releases use, in any case (.jpg, .JPG, .jpeg, .png, .bmp)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTS


def images(folder: Path, *, recursive: bool = False) -> list[Path]:
    """Image files of `folder` (and below it if `recursive`), sorted, so parsing never
    depends on directory-listing order."""
    if recursive:
        found = [
            Path(d) / f for d, _, files in os.walk(folder) for f in files if is_image(f)
        ]
    else:
        found = [Path(e.path) for e in os.scandir(folder) if e.is_file() and is_image(e.name)]
    return sorted(found)


def candidates(root: Path, matches_name: Callable[[str], bool]) -> Iterable[Path]:
    """Folders at most two levels under `root` (root itself included) whose own name or
    whose parent's name (below root) matches: 'market1501/Market-1501-v15.09.15' is found
    from either name; anything deeper is not searched."""
    root = Path(root)
    if matches_name(root.name):
        yield root
    for first in _subdirs(root):
        first_matches = matches_name(first.name)
        if first_matches:
            yield first
        for second in _subdirs(first):
            if first_matches or matches_name(second.name):
                yield second


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(folder) if e.is_dir() and not e.name.startswith("."))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
