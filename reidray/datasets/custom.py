"""Datasets of your own, by layout or by list, under names you choose.

* ``market-style:<folder>``: any folder in Market-1501's layout and naming (``query/``,
  ``bounding_box_test/``, optional ``bounding_box_train/``; ``<pid>_c<camera>...`` file names;
  pid -1 junk, 0000 distractors), evaluated with the Market protocol.
* a manifest file, ``manifest:<file>`` or just ``<file>.csv`` / ``<file>.parquet``: one row per
  image with columns ``path`` (relative to the file's folder, or absolute), ``pid`` (integer),
  ``camid`` (integer; optional: without it the protocol is ``no-camera-filter``), ``split``
  (``query`` | ``gallery`` | ``train``) and optional ``junk`` / ``distractor`` (booleans; ``is_junk``
  and ``is_distractor`` are accepted too). The protocol is ``market`` (a gallery image of the
  query's identity and camera is not a match) when camid is there, else ``no-camera-filter``;
  a job entry may name either. The file is checked before any work, and every problem found is
  one line of the error: a missing column, a value of the wrong kind, a path that cannot be read,
  a query identity with no match in the gallery under the protocol, camid missing where the
  protocol needs it.

On the command line: ``-d [name=]market-style:<folder>`` or ``-d [name=]<file>.csv``; the name
defaults to the folder's or file's stem. In a job file::

    datasets:
      - market1501
      - {name: mycams, source: /data/mycams.csv}               # protocol from the columns
      - {name: lobby, source: market-style:/data/lobby, protocol: market}

A declared dataset is resolved like a registered one (``datasets.get(name)``, its ``protocol``)
in the process that declared it: the driver, which hands the protocol to the score tasks. Its name
must be a plain folder name (it names result rows, cells and serve galleries) and not a
registered dataset's. The images must be readable at the same paths on every node that embeds.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from reidray.cells import MANIFEST_SCHEMA
from reidray.datasets import manifest, market1501
from reidray.datasets.spec import DatasetSpec
from reidray.errors import DatasetLayoutError, ReidrayError

MARKET_STYLE, MANIFEST = "market-style", "manifest"
PROTOCOLS = ("market", "no-camera-filter")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
FILE_SUFFIXES = (".csv", ".parquet")
REQUIRED = ("path", "pid", "split")
FLAGS = {"is_junk": ("junk", "is_junk"), "is_distractor": ("distractor", "is_distractor")}
_EXAMPLES = 3  # values quoted per problem line

_DECLARED: dict[str, DatasetSpec] = {}


@dataclass(frozen=True)
class Source:
    """A dataset of one's own: its name, what it is (market-style folder or manifest file), where."""

    name: str
    kind: str
    path: Path
    protocol: str | None = None


def is_source(text: str) -> bool:
    """Whether a ``-d`` value or job entry string names a source rather than a registered dataset."""
    return "=" in text or text.startswith((MARKET_STYLE + ":", MANIFEST + ":")) or text.lower().endswith(FILE_SUFFIXES)


def parse_source(text: str, protocol: str | None = None, name: str | None = None) -> Source:
    """``[name=]market-style:<folder>``, ``[name=]manifest:<file>`` or ``[name=]<file>.csv|.parquet``."""
    if name is None and "=" in text.split(":", 1)[0]:
        name, _, text = text.partition("=")
    kind, sep, rest = text.partition(":")
    if sep and kind in (MARKET_STYLE, MANIFEST):
        path = rest
    elif text.lower().endswith(FILE_SUFFIXES):
        kind, path = MANIFEST, text
    else:
        raise ReidrayError(
            f"dataset source {text!r}: not market-style:<folder>, manifest:<file> or a .csv/.parquet file"
        )
    where = Path(path).expanduser().absolute()
    name = name if name is not None else re.sub(r"[^A-Za-z0-9._-]+", "-", where.stem if kind == MANIFEST else where.name)
    return Source(name=name, kind=kind, path=where, protocol=protocol)


def declare(source: Source) -> DatasetSpec:
    """Check ``source`` up front and make its name resolvable with ``datasets.get`` in this process
    (declaring a name again replaces it: a notebook may point it elsewhere)."""
    from reidray.datasets.registry import REGISTRY

    if not NAME.fullmatch(source.name):
        raise ReidrayError(f"dataset name {source.name!r}: use letters, digits, '.', '_' or '-' (it names folders)")
    if source.name in REGISTRY:
        raise ReidrayError(f"dataset name {source.name!r} is a registered dataset's; give {source.path} another name")
    if source.protocol is not None and source.protocol not in PROTOCOLS:
        raise ReidrayError(f"dataset {source.name}: protocol {source.protocol!r} is not one of {', '.join(PROTOCOLS)}")
    if source.kind == MARKET_STYLE:
        spec = _market_style(source)
    else:
        spec = _manifest_file(source)
    _DECLARED[source.name] = spec
    return spec


def declare_all(entries: list[Any]) -> list[str]:
    """The dataset names of a job's ``datasets:`` list, declaring each source (a string like
    ``mycams=market-style:/data/x`` or an entry with ``name``, ``source``, ``protocol``) on the way."""
    names, sources = [], {}
    for entry in entries:
        if isinstance(entry, str) and not is_source(entry):
            names.append(entry)
            continue
        source = parse_source(entry) if isinstance(entry, str) else parse_source(entry.source, entry.protocol, entry.name)
        if sources.setdefault(source.name, source.path) != source.path:
            raise ReidrayError(f"dataset name {source.name!r} is given to both {sources[source.name]} and {source.path}")
        names.append(declare(source).name)
    return names


def declared(name: str) -> DatasetSpec | None:
    return _DECLARED.get(name)


def folder(name: str) -> Path | None:
    """Where a declared dataset is loaded from (``datasets.load(name, folder)``); None if not declared."""
    spec = _DECLARED.get(name)
    return None if spec is None else Path(spec.folders[0])


def _market_style(source: Source) -> DatasetSpec:
    from reidray.datasets import market_style

    if not source.path.is_dir() or not market_style.looks_like(source.path):
        raise DatasetLayoutError(
            f"dataset {source.name}: {source.path} is not a folder in Market-1501's layout (query/ and "
            "bounding_box_test/ with <pid>_c<camera>... file names)"
        )
    return DatasetSpec(
        name=source.name, title=f"{source.name} (Market-1501 layout)", folders=(str(source.path),),
        protocol=source.protocol or "market",
        parse=lambda dataset_dir: market1501.parse(dataset_dir, dataset=source.name),
        looks_like=lambda candidate: Path(candidate) == source.path, note=str(source.path),
    )


def _manifest_file(source: Source) -> DatasetSpec:
    table, protocol = read_manifest(source.path, source.name, source.protocol)
    return DatasetSpec(
        name=source.name, title=f"{source.name} (manifest {source.path.name})", folders=(str(source.path.parent),),
        protocol=protocol, parse=lambda _dataset_dir: table,
        looks_like=lambda candidate: Path(candidate) == source.path.parent, note=str(source.path),
    )


# --- manifest files --------------------------------------------------------------------------------

def _read(path: Path, name: str) -> pa.Table:
    if not path.is_file():
        raise DatasetLayoutError(f"dataset {name}: manifest {path} does not exist")
    try:
        if path.suffix.lower() == ".parquet":
            import pyarrow.parquet as pq

            return pq.read_table(path)
        from pyarrow import csv

        return csv.read_csv(path, convert_options=csv.ConvertOptions(strings_can_be_null=True))
    except (pa.ArrowException, OSError) as exc:
        raise DatasetLayoutError(f"dataset {name}: manifest {path} does not read as "
                                 f"{'Parquet' if path.suffix.lower() == '.parquet' else 'CSV'}: "
                                 f"{str(exc).splitlines()[0]}") from None


def _integers(table: pa.Table, column: str, problems: list[str]) -> list[int] | None:
    values = table.column(column)
    try:
        cast = pc.cast(values, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        bad = [v for v in values.to_pylist() if not _is_int(v)][:_EXAMPLES]
        problems.append(f"column {column} must hold integers; found {', '.join(map(repr, bad))}")
        return None
    if cast.null_count:
        problems.append(f"column {column} is empty in {cast.null_count} row(s), e.g. row "
                        f"{_rows(pc.is_null(cast))[0]}; every image needs one")
        return None
    return cast.to_pylist()


def _is_int(value: Any) -> bool:
    try:
        return value is not None and float(value) == int(float(value))
    except (TypeError, ValueError):
        return False


def _rows(mask: pa.ChunkedArray) -> list[int]:
    """1-based data row numbers (the header is row 0) where ``mask`` is true."""
    return [i + 1 for i, v in enumerate(mask.to_pylist()) if v]


def _flag(table: pa.Table, names: tuple[str, ...], problems: list[str]) -> list[bool]:
    column = next((n for n in names if n in table.column_names), None)
    if column is None:
        return [False] * table.num_rows
    truth = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False, "": False}
    out, bad = [], []
    for value in table.column(column).to_pylist():
        key = "" if value is None else str(value).strip().lower()
        if isinstance(value, bool):
            out.append(value)
        elif key in truth:
            out.append(truth[key])
        else:
            out.append(False)
            bad.append(value)
    if bad:
        problems.append(f"column {column} must hold true/false (or 1/0); found {', '.join(map(repr, bad[:_EXAMPLES]))}")
    return out


def read_manifest(path: Path, name: str, protocol: str | None = None) -> tuple[pa.Table, str]:
    """The manifest table (``MANIFEST_SCHEMA``) of a CSV or Parquet file and its protocol (the one
    given, else by whether camid is there), checked whole first: DatasetLayoutError with one line
    per problem found."""
    path = Path(path).absolute()
    table = _read(path, name)
    problems: list[str] = []
    needed = REQUIRED + (("camid",) if protocol == "market" else ())
    missing = [c for c in needed if c not in table.column_names]
    if missing:
        why = {"camid": " (the market protocol needs camera ids; or set protocol: no-camera-filter)"}
        problems += [f"column {c} is missing{why.get(c, '')}" for c in missing]
        raise _problems(name, path, problems)
    protocol = protocol or ("market" if "camid" in table.column_names else "no-camera-filter")
    pids = _integers(table, "pid", problems)
    camids = _integers(table, "camid", problems) if "camid" in table.column_names else [manifest.NO_CAMERA] * table.num_rows
    if camids is not None and protocol == "market" and manifest.NO_CAMERA in camids:
        problems.append(f"camid is -1 in row {camids.index(manifest.NO_CAMERA) + 1}: the market protocol needs a "
                        "camera id for every image (or set protocol: no-camera-filter)")
    splits = [None if s is None else str(s).strip() for s in table.column("split").to_pylist()]
    bad_splits = sorted({str(s) for s in splits if s not in manifest.SPLITS})
    if bad_splits:
        problems.append(f"column split must be query, gallery or train; found {', '.join(bad_splits[:_EXAMPLES])}")
    junk = _flag(table, FLAGS["is_junk"], problems)
    distractor = _flag(table, FLAGS["is_distractor"], problems)
    paths, image_ids = _paths(table, path.parent, problems)
    for split in ("query", "gallery"):
        if split not in splits:
            problems.append(f"no {split} rows (split == {split}); evaluation needs both query and gallery images")
    if pids is not None and camids is not None and not bad_splits:
        _check_matches(pids, camids, splits, junk, distractor, protocol, problems)
    if problems:
        raise _problems(name, path, problems)
    out = pa.Table.from_pydict(
        {"image_id": image_ids, "path": paths, "pid": pids, "camid": camids, "split": splits,
         "is_junk": junk, "is_distractor": distractor},
        schema=MANIFEST_SCHEMA,
    )
    return manifest.validate(out, name), protocol


def _paths(table: pa.Table, base: Path, problems: list[str]) -> tuple[list[str], list[str]]:
    """Absolute paths and image ids (relative to the manifest's folder where they lie below it)."""
    paths, ids, unreadable, seen, repeated = [], [], [], set(), []
    for row, value in enumerate(table.column("path").to_pylist(), start=1):
        text = "" if value is None else str(value).strip()
        full = Path(os.path.normpath(base / Path(text).expanduser())) if text else base
        if not text or not full.is_file() or not os.access(full, os.R_OK):
            unreadable.append(f"{text or '(empty)'} (row {row})")
        key = full.as_posix()
        if key in seen:
            repeated.append(f"{text} (row {row})")
        seen.add(key)
        paths.append(str(full))
        ids.append(full.relative_to(base).as_posix() if full.is_relative_to(base) else key)
    if unreadable:
        problems.append(f"{len(unreadable)} path(s) cannot be read as files, e.g. {', '.join(unreadable[:_EXAMPLES])}; "
                        f"paths are relative to {base}")
    if repeated:
        problems.append(f"{len(repeated)} path(s) are listed more than once, e.g. {', '.join(repeated[:_EXAMPLES])}")
    return paths, ids


def _check_matches(pids: list[int], camids: list[int], splits: list[str | None], junk: list[bool],
                   distractor: list[bool], protocol: str, problems: list[str]) -> None:
    """Every scored query needs a true match in the gallery under the protocol (Market: another camera)."""
    gallery: dict[int, set[int]] = {}
    for pid, cam, split, j, d in zip(pids, camids, splits, junk, distractor):
        if split == "gallery" and not j and not d:
            gallery.setdefault(pid, set()).add(cam)
    unmatched = sorted({
        pid for pid, cam, split, j, d in zip(pids, camids, splits, junk, distractor)
        if split == "query" and not j and not d
        and not (gallery.get(pid, set()) - ({cam} if protocol == "market" else set()))
    })
    if unmatched:
        rule = "in another camera " if protocol == "market" else ""
        problems.append(f"{len(unmatched)} query identit{'y has' if len(unmatched) == 1 else 'ies have'} no gallery "
                        f"image {rule}(protocol {protocol}), e.g. pid {', '.join(map(str, unmatched[:_EXAMPLES]))}; "
                        "add their gallery images or drop those queries")


def _problems(name: str, path: Path, problems: list[str]) -> DatasetLayoutError:
    head = f"dataset {name}: manifest {path}"
    return DatasetLayoutError("\n".join(f"{head}: {p}" for p in problems))
