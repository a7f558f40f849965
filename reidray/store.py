"""Where everything lives under the output root, atomic writes, and cell fingerprints.

The output root is a local folder or a URI that pyarrow understands (``file://``, ``s3://``,
``gs://``), so that workers on many nodes write to one place. Layout::

    <root>/manifests/<dataset>.parquet
    <root>/embeddings/<model>/<dataset>/part-*.parquet + cell.json (written last)
    <root>/results/<model>__<dataset>.parquet
    <root>/results/ranklists/<model>__<dataset>.parquet   (the rank lists the report draws)
    <root>/report/...

A cell is complete exactly when its ``cell.json`` exists, carries the fingerprint the current
run computes and ``verify_cell`` finds the folder as the record describes it (the parts it lists
and no other, their sizes, SHA-256 and rows, one row per manifest image); everything else about a
cell is scratch and is redone. Every reader (embed's skip check, score, serve, the report)
verifies before use.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reidray import __version__
from reidray.cells import EMBEDDING, IMAGE_ID, CellRecord, Part
from reidray.errors import CellError, ReidrayError

CELL_MARKER = "cell.json"
INVALID_MARKER = "invalid.json"  # a later stage found the cell unusable: the next embed redoes it
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray sets it in a submitted job's driver: runtime_env, submission id


@dataclass(frozen=True)
class Store:
    """The output root: a pyarrow filesystem and a base path on it."""

    root: str
    fs: pafs.FileSystem
    base: str

    @classmethod
    def open(cls, root: str, *, read_only: bool = False) -> Store:
        """Resolve ``root`` (a path or URI) and check that it can be written, or with ``read_only``
        (serve, which only reads) that a local root exists, writing nothing."""
        if not root.strip():
            raise ReidrayError("the output root is empty; pass --out with a folder or a URI")
        try:
            if "://" in root:
                fs, base = pafs.FileSystem.from_uri(root)
            else:
                # absolute, so Ray workers (whose working directory differs) find the same place
                fs, base = pafs.LocalFileSystem(), _absolute(root)
                root = base
        except (pa.ArrowInvalid, OSError) as exc:
            raise ReidrayError(f"output root {root!r} cannot be opened: {exc}") from exc
        store = cls(root=root, fs=fs, base=base.rstrip("/"))
        if not read_only:
            store._check_writable()
        elif "://" not in root and not Path(store.base).is_dir():
            raise ReidrayError(f"output root {root} does not exist; pass --out with the folder `all` or `embed` wrote")
        return store

    def _check_writable(self) -> None:
        probe = self.path(f".write-probe-{uuid.uuid4().hex}")
        try:
            self.fs.create_dir(self.base, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise ReidrayError(
                f"output root {self.root!r} is not writable ({exc}); pass --out with a folder you can write"
            ) from exc

    def path(self, *parts: str) -> str:
        return "/".join([self.base, *parts])

    def uri(self, *parts: str) -> str:
        """A path other processes (Ray workers, Polars) can open: the URI form for remote roots."""
        if "://" in self.root:
            location, _, options = self.root.partition("?")  # e.g. ?endpoint_override=... for MinIO
            uri = "/".join([location.rstrip("/"), *parts])
            return f"{uri}?{options}" if options else uri
        return self.path(*parts)

    # --- layout -------------------------------------------------------------------------
    def manifest_path(self, dataset: str) -> str:
        return self.path("manifests", f"{dataset}.parquet")

    def cell_dir(self, model: str, dataset: str) -> str:
        return self.path("embeddings", dir_name(model), dir_name(dataset))

    def results_dir(self) -> str:
        return self.path("results")

    def result_path(self, model: str, dataset: str) -> str:
        return self.path("results", f"{dir_name(model)}__{dir_name(dataset)}.parquet")

    def ranklist_path(self, model: str, dataset: str) -> str:
        return self.path("results", "ranklists", f"{dir_name(model)}__{dir_name(dataset)}.parquet")

    def report_dir(self) -> str:
        return self.path("report")

    # --- reading and writing --------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write atomically, so readers never see half a file. Local roots: a temporary sibling,
        flushed to disk (fsync) before the rename, so a crash leaves the old file or the new one.
        Object stores: one PUT, which the store makes visible only whole, once it succeeds."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        if isinstance(self.fs, pafs.LocalFileSystem):
            with open(tmp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, path)
            return
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as src:
            return src.read()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, path: str) -> Any | None:
        """The parsed file, or None when it is missing. A file that is there but cannot be read or
        is not JSON is a ReidrayError naming it: a failed read never passes for "not written"."""
        if self.fs.get_file_info(path).type == pafs.FileType.NotFound:
            return None
        try:
            return json.loads(self.read_bytes(path))
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            raise ReidrayError(f"{self.uri_of(path)} exists but cannot be read ({_cause(exc)})") from None

    def uri_of(self, path: str) -> str:
        """``uri`` for a path this store handed out (messages name files as the user passed the root)."""
        return self.uri(path[len(self.base) + 1:]) if path.startswith(self.base + "/") else path

    def delete(self, path: str) -> None:
        """Remove a file if it is there (a folder in its place is left alone)."""
        if self.fs.get_file_info(path).type == pafs.FileType.File:
            self.fs.delete_file(path)

    def write_table(self, path: str, table: pa.Table) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.write_bytes(path, sink.getvalue().to_pybytes())

    def read_table(self, path: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(path, columns=columns, filesystem=self.fs)

    def clear_dir(self, path: str) -> None:
        if self.exists(path):
            self.fs.delete_dir_contents(path, missing_dir_ok=True)
        self.fs.create_dir(path, recursive=True)

    # --- cells --------------------------------------------------------------------------
    def cell_marker(self, model: str, dataset: str) -> dict | None:
        """The cell's ``cell.json``: None when there is none; CellError when it cannot be read."""
        try:
            return self.read_json(f"{self.cell_dir(model, dataset)}/{CELL_MARKER}")
        except ReidrayError as exc:
            raise CellError(f"cell {model}/{dataset}: {exc}; {redo_hint(model, dataset)}") from None

    def cell_record(self, model: str, dataset: str) -> CellRecord | None:
        """The cell's record as stored (None: no marker); CellError when unreadable or incomplete."""
        marker = self.cell_marker(model, dataset)
        return None if marker is None else CellRecord.from_marker(marker, skipped=True)

    def mark_invalid(self, model: str, dataset: str, reason: str) -> None:
        """Record that a later stage found the cell unusable: it then fails verification, so score
        and serve refuse it and the next embed redoes it."""
        self.write_json(f"{self.cell_dir(model, dataset)}/{INVALID_MARKER}", {"reason": reason})

    def drop_results(self, model: str, dataset: str) -> None:
        """Remove the cell's results and rank-list files: they no longer describe a stored cell."""
        self.delete(self.result_path(model, dataset))
        self.delete(self.ranklist_path(model, dataset))

    def list_files(self, directory: str, suffix: str) -> list[str]:
        """Files directly in ``directory`` ending with ``suffix``, sorted; none if it is missing."""
        selector = pafs.FileSelector(directory, allow_not_found=True)
        return sorted(
            info.path for info in self.fs.get_file_info(selector) if info.is_file and info.base_name.endswith(suffix)
        )

    def read_cell(self, model: str, dataset: str) -> pa.Table:
        """A cell's part files as they are, unverified (tests and tools inspect cells with it;
        the stages read through ``verify_cell``)."""
        directory = self.cell_dir(model, dataset)
        parts = self.list_files(directory, ".parquet")
        if not parts:
            raise ReidrayError(f"cell {model}/{dataset} has no embeddings under {directory}")
        return pa.concat_tables(pq.read_table(p, filesystem=self.fs) for p in parts)


def redo_hint(model: str, dataset: str) -> str:
    """What fixes a cell that fails verification: the one line every refusal ends with."""
    return f"redo it with `python -m reidray.run embed -m {model} -d {dataset} --redo`"


def _cause(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@dataclass(frozen=True)
class ReadPart:
    """A part as read: its facts, and its table (or why it does not parse) with its file schema."""

    part: Part
    table: pa.Table | None
    schema: pa.Schema | None
    error: str = ""


def read_parts(store: Store, paths: list[str], columns: list[str] | None = None) -> list[ReadPart]:
    """Each Parquet part read once: its bytes hashed (SHA-256, in threads: hashlib releases the
    GIL) and parsed from the same buffer, so verifying costs the hashing alone."""

    def one(path: str) -> ReadPart:
        data = store.read_bytes(path)
        digest = hashlib.sha256(data).hexdigest()
        part = Part(name=path.rsplit("/", 1)[-1], rows=-1, bytes=len(data), sha256=digest)
        try:
            file = pq.ParquetFile(pa.BufferReader(data))
            table = file.read(columns=columns)
        except (pa.ArrowException, OSError) as exc:
            return ReadPart(part, None, None, _cause(exc))
        return ReadPart(Part(part.name, table.num_rows, part.bytes, digest), table, file.schema_arrow)

    with ThreadPoolExecutor(max_workers=min(8, max(1, len(paths)))) as pool:
        return list(pool.map(one, paths))


def seal_parts(store: Store, model: str, dataset: str) -> tuple[tuple[Part, ...], pa.Table]:
    """The parts embed just wrote, as the record lists them, and the cell's table read from them."""
    read = read_parts(store, store.list_files(store.cell_dir(model, dataset), ".parquet"))
    broken = [f"{r.part.name} ({r.error})" for r in read if r.table is None]
    if broken or not read:
        raise CellError(f"cell {model}/{dataset}: the parts written do not read back: "
                        f"{', '.join(broken) or 'none written'}; the cell will be redone")
    return tuple(r.part for r in read), pa.concat_tables(r.table for r in read)


class CellFaultError(CellError):
    """A stored cell that does not match its record; ``fault`` says how, without the fix."""

    def __init__(self, record: CellRecord, fault: str) -> None:
        self.fault = fault
        super().__init__(f"cell {record.name}: {fault}; {redo_hint(record.model, record.dataset)}")


def verify_cell(store: Store, record: CellRecord, manifest_ids: pa.Array | pa.ChunkedArray | None,
                columns: list[str] | None = None) -> pa.Table:
    """The cell's table (only ``columns`` and the image ids, when given), after checking the folder
    against ``record``: not marked invalid, exactly the listed parts, each of the recorded size,
    SHA-256 and rows, the totals and ``dim`` as recorded, unique image ids and, given
    ``manifest_ids``, one row per manifest image. Any fault is a CellFaultError naming the cell,
    the part and the fix. The one check every reader makes before using a cell."""
    directory = store.cell_dir(record.model, record.dataset)
    try:
        invalid = store.read_json(f"{directory}/{INVALID_MARKER}")
    except ReidrayError as exc:
        invalid = {"reason": str(exc)}
    if invalid is not None:
        raise CellFaultError(record, f"marked invalid ({invalid.get('reason', '?')})")
    present = {path.rsplit("/", 1)[-1]: path for path in store.list_files(directory, ".parquet")}
    listed = {part.name: part for part in record.parts}
    missing, extra = sorted(listed.keys() - present.keys()), sorted(present.keys() - listed.keys())
    if not listed:
        raise CellFaultError(record, "its cell.json lists no parts")
    if missing:
        raise CellFaultError(record, f"part {missing[0]} is missing (cell.json lists {len(listed)} parts)")
    if extra:
        raise CellFaultError(record, f"part {extra[0]} is not listed in cell.json (a stray or copied file)")
    wanted = None if columns is None else list(dict.fromkeys([IMAGE_ID, *columns]))
    read = read_parts(store, [present[name] for name in sorted(listed)], wanted)
    for r in read:
        found, expected = r.part, listed[r.part.name]
        if found.bytes != expected.bytes:
            raise CellFaultError(record, f"part {found.name} is {found.bytes:,} bytes, cell.json records "
                                         f"{expected.bytes:,} (truncated or replaced)")
        if found.sha256 != expected.sha256:
            raise CellFaultError(record, f"part {found.name} does not match its SHA-256 in cell.json "
                                         "(changed after embedding)")
        if r.table is None:
            raise CellFaultError(record, f"part {found.name} does not read as Parquet ({r.error})")
        if found.rows != expected.rows:
            raise CellFaultError(record, f"part {found.name} holds {found.rows:,} rows, cell.json records "
                                         f"{expected.rows:,}")
        dim = r.schema.field(EMBEDDING).type.list_size if EMBEDDING in r.schema.names else None
        if dim != record.dim:
            raise CellFaultError(record, f"part {found.name} holds {dim}-d embeddings, cell.json records "
                                         f"dim={record.dim}")
    table = pa.concat_tables(r.table for r in read)
    if table.num_rows != record.n_images:
        raise CellFaultError(record, f"cell.json records n_images={record.n_images:,} but its parts hold "
                                     f"{table.num_rows:,} rows")
    if sum(part.bytes for part in record.parts) != record.total_bytes:
        raise CellFaultError(record, "cell.json's total_bytes is not the sum of its parts' sizes")
    problem = id_problem(table.column(IMAGE_ID), manifest_ids)
    if problem:
        raise CellFaultError(record, problem)
    return table


def id_problem(ids: pa.ChunkedArray, manifest_ids: pa.Array | pa.ChunkedArray | None) -> str | None:
    """Why a cell's image ids are not one per image (of the manifest, when given), or None."""
    unique = pc.unique(ids)
    if len(unique) != len(ids):
        counts = pc.value_counts(ids)
        first = next(c["values"] for c in counts.to_pylist() if c["counts"] > 1)
        return f"{len(ids) - len(unique):,} rows repeat an image id (first: {first})"
    if manifest_ids is None:
        return None
    unknown = pc.filter(unique, pc.invert(pc.is_in(unique, value_set=manifest_ids)))
    if len(unknown):
        return f"{len(unknown):,} embedded images are not in the manifest (first: {unknown[0]})"
    if len(unique) != len(manifest_ids):
        absent = pc.filter(manifest_ids, pc.invert(pc.is_in(manifest_ids, value_set=unique)))
        return f"{len(absent):,} manifest images have no embedding (first: {absent[0]})"
    return None


def dir_name(name: str) -> str:
    """A model or dataset name as a folder name: the name itself when it is safe on every filesystem and
    object store (every registered name is), else its safe characters and a hash of the whole name
    (``timm:vit_small.augreg`` -> ``timm_vit_small.augreg-1a2b3c4d``). The name itself stays in
    ``cell.json`` and the results rows."""
    if _SAFE_NAME.fullmatch(name) and len(name) <= 100:
        return name
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-")[:80]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def _absolute(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def job_copy_warning(store: Store) -> str | None:
    """Why a local root would be lost, when it lies in a submitted Ray job's working-dir copy.

    Under ``ray job submit --working-dir``, the driver runs in Ray's temporary copy of that folder,
    so a relative ``--out`` resolves into it. Only a warning: on a one-machine cluster the files
    are there until Ray cleans up its session.
    """
    if "://" in store.root:
        return None
    try:
        job = json.loads(os.environ.get(RAY_JOB_ENV) or "{}")
    except ValueError:
        return None
    copy = Path.cwd().resolve()
    if not (job.get("runtime_env") or {}).get("working_dir") or not Path(store.base).is_relative_to(copy):
        return None
    submission = (job.get("metadata") or {}).get("job_submission_id", "?")
    return (
        f"output root {store.root} lies in Ray's temporary copy of the working dir of job {submission} "
        f"({copy}): Ray deletes it, and workers on other nodes write to that path on their own disks. "
        "Pass --out an absolute path on storage that every node shares, or an object-store URI (s3://..., gs://...)"
    )


def manifest_hash(table: pa.Table) -> str:
    """Identity of a manifest's content: the images and their labels, not where they lie."""
    h = hashlib.sha256()
    cols = [c for c in table.column_names if c != "path"]
    sorted_table = table.select(cols).sort_by("image_id")
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, sorted_table.schema) as writer:
        writer.write_table(sorted_table)
    h.update(sink.getvalue().to_pybytes())
    return h.hexdigest()[:16]


def fingerprint(fields: dict[str, Any]) -> str:
    """A short stable hash of a cell's inputs; reidray's version is always part of it."""
    payload = json.dumps({**fields, "reidray": __version__}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
