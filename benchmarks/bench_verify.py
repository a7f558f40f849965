"""What verifying a stored cell costs, on an MSMT17-size cell (126,441 images x 768-d float32).

    python benchmarks/bench_verify.py                 # MSMT17 size, parts of 256 rows
    python benchmarks/bench_verify.py --rows 20000    # quicker

The cell is laid out as the embed stage writes it: one snappy Parquet file per encoder batch
(``--batch`` rows), with the ``LABELS`` columns and a fixed-size float32 ``embedding``, under a
store's ``embeddings/<model>/<dataset>/`` (written with pyarrow, not Ray Data, so that Ray's
start-up does not blur the figures). Timed, best of ``--repeat``, page cache warm (as right after
embedding):

* plain read: ``Store.read_cell``, the unverified read the stages used before;
* seal: ``seal_parts``, what embed now does after writing (read each part once, hash, parse);
* verify (ids): ``verify_cell(columns=[])``, embed's skip check and the report's provenance;
* verify (full): ``verify_cell`` returning the whole table, what score and serve read;
* SHA-256 alone, one thread, over every part's bytes.

It prints the embedding rate below which each check stays under 1% of embedding the cell.
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from reidray.cells import CellRecord
from reidray.store import Store, seal_parts, verify_cell

MSMT17_IMAGES = 126_441
MODEL, DATASET = "bench", "msmt17"


def write_cell(store: Store, rows: int, dim: int, batch: int) -> pa.Array:
    """The cell's parts as the pipeline writes them; returns the manifest's image ids."""
    rng = np.random.default_rng(0)
    ids = pa.array([f"bounding_box_test/{i:04d}_c{i % 15 + 1}_{i:06d}.jpg" for i in range(rows)])
    directory = Path(store.cell_dir(MODEL, DATASET))
    directory.mkdir(parents=True, exist_ok=True)
    for n, start in enumerate(range(0, rows, batch)):
        size = min(batch, rows - start)
        vectors = rng.standard_normal((size, dim), dtype=np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        part = pa.table({
            "image_id": ids.slice(start, size),
            "pid": pa.array(np.arange(start, start + size) // 30, pa.int64()),
            "camid": pa.array(np.arange(start, start + size) % 15, pa.int32()),
            "split": pa.array(["gallery"] * size),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        })
        pq.write_table(part, directory / f"run_{n:06d}-0.parquet")
    return ids


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=MSMT17_IMAGES)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--batch", type=int, default=256, help="rows per part (the encoder batch)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        store = Store.open(tmp)
        ids = write_cell(store, args.rows, args.dim, args.batch)
        parts, _ = seal_parts(store, MODEL, DATASET)
        record = CellRecord(model=MODEL, dataset=DATASET, fingerprint="bench", n_images=args.rows, dim=args.dim,
                            embed_seconds=0.0, device="cpu", precision="fp32", random_init=True, weights_id="",
                            paradigm="control", params_m=0.0, metric="cosine", normalize=True, parts=parts,
                            total_bytes=sum(p.bytes for p in parts))
        files = store.list_files(store.cell_dir(MODEL, DATASET), ".parquet")
        total = record.total_bytes
        print(f"cell: {args.rows:,} rows x {args.dim}-d float32, {len(parts)} parts, {total / 1e6:,.0f} MB")
        timings = {
            "plain read (Store.read_cell, unverified)": best(lambda: store.read_cell(MODEL, DATASET), args.repeat),
            "seal (embed, after writing)": best(lambda: seal_parts(store, MODEL, DATASET), args.repeat),
            "verify, ids only (embed skip check, report)": best(
                lambda: verify_cell(store, record, ids, columns=[]), args.repeat),
            "verify, full table (score, serve)": best(lambda: verify_cell(store, record, ids), args.repeat),
            "SHA-256 alone, one thread": best(
                lambda: [hashlib.sha256(Path(f).read_bytes()).digest() for f in files], args.repeat),
        }
        for name, seconds in timings.items():
            rate = args.rows / (100 * seconds)  # embedding slower than this: the check is under 1% of it
            print(f"{name:45s} {seconds:7.2f} s  ({total / seconds / 1e6:6.0f} MB/s)  "
                  f"under 1% of embedding below {rate:,.0f} images/s")


if __name__ == "__main__":
    main()
