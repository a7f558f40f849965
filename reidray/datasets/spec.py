"""What the registry knows about one dataset: its folder names, official counts and parser."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from reidray.datasets.layout import norm


@dataclass(frozen=True)
class Counts:
    """Official size of one split; None where no source states it. `identities` excludes the
    junk and distractor labels."""

    images: int | None
    identities: int | None
    cameras: int | None


@dataclass(frozen=True)
class DatasetSpec:
    """One registered dataset. `parse(dataset_dir, **options)` returns the validated manifest;
    `looks_like(folder)` recognises the unpacked release; `folders` are the names it is
    usually unpacked under (matched ignoring case and punctuation, as prefixes); `protocol` names
    its evaluation protocol, which score/protocols.py defines (market | grid | no-camera-filter)."""

    name: str
    title: str
    folders: tuple[str, ...]
    protocol: str
    parse: Callable[..., pa.Table]
    looks_like: Callable[[Path], bool]
    official: Mapping[str, Counts] = field(default_factory=dict)
    note: str = ""

    def matches_name(self, folder_name: str) -> bool:
        key = norm(folder_name)
        return any(key.startswith(norm(f)) for f in self.folders)
