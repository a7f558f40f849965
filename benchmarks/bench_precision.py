"""Mixed precision against fp32: how far bf16 / fp16 autocast moves each model's rankings.

For each model, in one run on one device: the synthetic test split is embedded through the real
pipeline (``embed_cell``) at fp32 and at each lower precision, each cell is scored with the real
protocol, and the lower precision is compared with fp32 on what a ranking is judged by:

- dmAP, dR1: the change of mAP and rank-1, in points (percent);
- top-10 overlap: per query, the share of its 10 nearest gallery images that stay in the top 10,
  averaged over queries;
- min cos: the lowest cosine between an image's fp32 and low-precision embeddings.

    bash .ci/env python benchmarks/bench_precision.py --models handcrafted,osnet-x1.0 --random-init
    python benchmarks/bench_precision.py --random-init --precisions bf16,fp16        # on a GPU

A model passes when |dmAP| and |dR1| stay within ``--tolerance`` points (see docs/benchmarks.md).
Random-initialised weights rank close to chance, with many near-ties; that makes the overlap a
harsher test than trained weights would face. Their mAP values are not results.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from common import device_name

from reidray.config import SYNTHETIC, EmbedSettings
from reidray.datasets import get as get_dataset
from reidray.datasets import load
from reidray.datasets.synth import generate
from reidray.embed.pipeline import embed_cell
from reidray.models import get
from reidray.score.graph import joined_cell
from reidray.score.protocols import score_cell
from reidray.store import Store

DATASET = SYNTHETIC
DEFAULT_MODELS = "handcrafted,osnet-x1.0,clip-vit-b16,dinov2-b14"
TOLERANCE = 0.5  # points of mAP and rank-1 (docs/benchmarks.md, "Mixed precision")


def embed_and_score(work: str, model: str, manifest: pa.Table, precision: str,
                    random_init: bool) -> tuple[dict, pa.Table]:
    """The cell's single result row and its joined embeddings, at ``precision``."""
    store = Store.open(os.path.join(work, precision, model))
    store.write_table(store.manifest_path(DATASET), manifest)
    settings = EmbedSettings(precision=precision, progress_seconds=3600)
    cell = embed_cell(store, model, DATASET, manifest, random_init=random_init, settings=settings, say=lambda _: None)
    table = joined_cell(store, cell).sort_by("image_id")
    (row,) = score_cell(get_dataset(DATASET).protocol, table, cell.metric, cell=cell.name)
    return row, table


def matrix(table: pa.Table) -> np.ndarray:
    """The embedding column as a float64 [N, D] array."""
    return np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)


def vectors(table: pa.Table, split: str, metric: str) -> np.ndarray:
    x = matrix(table.filter(pc.equal(table.column("split"), split)))
    return x / np.linalg.norm(x, axis=1, keepdims=True) if metric == "cosine" else x


def top10(table: pa.Table, metric: str) -> np.ndarray:
    """Each query's 10 nearest gallery rows (by the model's metric)."""
    q, g = vectors(table, "query", metric), vectors(table, "gallery", metric)
    dist = -q @ g.T if metric == "cosine" else (q**2).sum(1)[:, None] - 2 * q @ g.T + (g**2).sum(1)[None]
    return np.argsort(dist, axis=1, kind="stable")[:, :10]


def compare(base: pa.Table, low: pa.Table, metric: str) -> tuple[float, float]:
    """(mean top-10 overlap, lowest per-image cosine) between the two precisions' embeddings."""
    a, b = top10(base, metric), top10(low, metric)
    overlap = float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(a, b)]))
    ea, eb = matrix(base), matrix(low)
    cos = (ea * eb).sum(1) / (np.linalg.norm(ea, axis=1) * np.linalg.norm(eb, axis=1))
    return overlap, float(cos.min())


def query_gallery_manifest(work: str, ids: int) -> pa.Table:
    """The query and gallery rows of a synthetic dataset with ``ids`` test identities (no train split)."""
    generate(work, n_ids=ids, n_train_ids=0)
    manifest = load(DATASET, work)
    return manifest.filter(pc.is_in(manifest.column("split"), value_set=pa.array(["query", "gallery"])))


def agreement(work: str, model: str, manifest: pa.Table, precisions: list[str], random_init: bool,
              tolerance: float) -> list[dict]:
    """One row per lower precision: how far it moves ``model``'s ranking away from fp32's."""
    metric = get(model).metric
    base_row, base = embed_and_score(work, model, manifest, "fp32", random_init)
    rows = []
    for precision in precisions:
        row, low = embed_and_score(work, model, manifest, precision, random_init)
        d_map, d_r1 = 100 * (row["mAP"] - base_row["mAP"]), 100 * (row["rank1"] - base_row["rank1"])
        overlap, min_cos = compare(base, low, metric)
        rows.append({"model": model, "precision": precision, "mAP_fp32": 100 * base_row["mAP"], "dmAP": d_map,
                     "rank1_fp32": 100 * base_row["rank1"], "drank1": d_r1, "top10_overlap": overlap,
                     "min_cos": min_cos, "within": max(abs(d_map), abs(d_r1)) <= tolerance})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", default=DEFAULT_MODELS)
    parser.add_argument("--precisions", default="bf16", help="compared with fp32, comma-separated")
    parser.add_argument("--ids", type=int, default=20, help="synthetic test identities (about 10 images each)")
    parser.add_argument("--random-init", action="store_true", help="random weights (no download needed)")
    parser.add_argument("--tolerance", type=float, default=TOLERANCE, help="largest |dmAP| and |dR1|, in points")
    args = parser.parse_args()

    ray.init(include_dashboard=False, log_to_driver=False)
    work = tempfile.mkdtemp(prefix="bench-precision-")
    manifest = query_gallery_manifest(work, args.ids)
    print(f"device: {device_name()}; {manifest.num_rows} images; tolerance {args.tolerance} points")
    print("| model | precision | mAP fp32 | dmAP | R1 fp32 | dR1 | top-10 overlap | min cos | within |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for r in agreement(work, model, manifest, args.precisions.split(","), args.random_init, args.tolerance):
            print(f"| {model} | {r['precision']} | {r['mAP_fp32']:.2f} | {r['dmAP']:+.2f} | {r['rank1_fp32']:.2f} | "
                  f"{r['drank1']:+.2f} | {r['top10_overlap']:.3f} | {r['min_cos']:.4f} | "
                  f"{'yes' if r['within'] else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
