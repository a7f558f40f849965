"""Write a CSV manifest over reidray's synthetic images: a dataset "by list", runnable offline.

    python examples/make_manifest.py /tmp/mydata            # -> /tmp/mydata/mycams.csv
    python -m reidray.run all -m python:examples.my_encoder:build -d /tmp/mydata/mycams.csv

Your own data needs only such a file: one row per image with ``path`` (relative to the file),
``pid``, ``camid``, ``split`` (query, gallery or train) and optionally ``junk``/``distractor``.
Here the rows come from the synthetic release's Market-style file names; yours would come from
your cameras' annotations.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from reidray.config import SYNTHETIC
from reidray.datasets import load, synth


def write_manifest(root: Path, name: str = "mycams", n_ids: int = 40) -> Path:
    """Generate (or reuse) the synthetic images under ``root`` and list them in ``root/<name>.csv``."""
    folder = synth.generate(root, n_ids=n_ids)
    rows = load(SYNTHETIC, folder).to_pylist()
    out = root / f"{name}.csv"
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "pid", "camid", "split", "junk", "distractor"])
        for row in rows:
            path = Path(row["path"]).relative_to(root.absolute()).as_posix()
            writer.writerow([path, row["pid"], row["camid"], row["split"], int(row["is_junk"]), int(row["is_distractor"])])
    return out


if __name__ == "__main__":
    print(write_manifest(Path(sys.argv[1] if len(sys.argv) > 1 else "mydata").absolute()))
