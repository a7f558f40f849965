"""Where everything lives under the output root, atomic writes, and cell fingerprints.

The output root is a local folder or a URI that pyarrow understands (``file://``, ``s3://``,
``gs://``), so that workers on many nodes write to one place. Layout::

    <root>/manifests/<dataset>.parquet
    <root>/embeddings/<model>/<dataset>/part-*.parquet + cell.json (written last)
    <root>/results/<model>__<dataset>.parquet
    <root>/report/...

A cell is complete exactly when its ``cell.json`` exists and carries the fingerprint the current
run computes; everything else about a cell is scratch and is redone.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from reidray import __version__
from reidray.errors import ReidrayError

CELL_MARKER = "cell.json"
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RAY_JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # Ray sets it in a submitted job's driver: runtime_env, submission id


@dataclass(frozen=True)
class Store:
    """The output root: a pyarrow filesystem and a base path on it."""

    root: str
    fs: pafs.FileSystem
    base: str

    @classmethod
    def open(cls, root: str) -> Store:
        """Resolve ``root`` (a path or URI) and check that it can be written."""
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
        store._check_writable()
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

    def report_dir(self) -> str:
        return self.path("report")

    # --- reading and writing --------------------------------------------------------------
    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_bytes(self, path: str, data: bytes) -> None:
        """Write atomically: a temporary sibling, then a rename, so readers never see half a file."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with self.fs.open_output_stream(tmp) as out:
            out.write(data)
        self.fs.move(tmp, path)

    def read_bytes(self, path: str) -> bytes:
        with self.fs.open_input_stream(path) as src:
            return src.read()

    def write_json(self, path: str, obj: Any) -> None:
        self.write_bytes(path, json.dumps(obj, indent=2, sort_keys=True).encode())

    def read_json(self, path: str) -> Any | None:
        """The parsed file, or None when it is missing or unreadable (treated as not written)."""
        try:
            return json.loads(self.read_bytes(path))
        except (OSError, FileNotFoundError, json.JSONDecodeError):
            return None

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
        return self.read_json(f"{self.cell_dir(model, dataset)}/{CELL_MARKER}")

    def cell_complete(self, model: str, dataset: str, fingerprint: str) -> bool:
        marker = self.cell_marker(model, dataset)
        return marker is not None and marker.get("fingerprint") == fingerprint

    def list_files(self, directory: str, suffix: str) -> list[str]:
        """Files directly in ``directory`` ending with ``suffix``, sorted; none if it is missing."""
        selector = pafs.FileSelector(directory, allow_not_found=True)
        return sorted(
            info.path for info in self.fs.get_file_info(selector) if info.is_file and info.base_name.endswith(suffix)
        )

    def read_cell(self, model: str, dataset: str) -> pa.Table:
        """A complete cell's embeddings (only the part files, never scratch)."""
        directory = self.cell_dir(model, dataset)
        parts = self.list_files(directory, ".parquet")
        if not parts:
            raise ReidrayError(f"cell {model}/{dataset} has no embeddings under {directory}")
        return pa.concat_tables(pq.read_table(p, filesystem=self.fs) for p in parts)


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
