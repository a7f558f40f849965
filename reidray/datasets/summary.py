"""What the datasets under a data root hold, beside their official sizes (for `reidray.run datasets`)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from reidray.config import SYNTHETIC
from reidray.datasets.manifest import NO_CAMERA, SPLITS
from reidray.datasets.registry import discover, get, names
from reidray.errors import ReidrayError


def split_counts(table: pa.Table, split: str) -> dict[str, int]:
    """Images, identities (junk and distractor labels excluded), cameras, junk and distractors."""
    part = table.filter(pc.equal(table["split"], split))
    real = part.filter(pc.invert(pc.or_(part["is_junk"], part["is_distractor"])))
    cams = set(pc.unique(part["camid"]).to_pylist()) - {NO_CAMERA}
    return {
        "images": part.num_rows,
        "identities": len(pc.unique(real["pid"])),
        "cameras": len(cams),
        "junk": int(pc.sum(part["is_junk"]).as_py() or 0),
        "distractors": int(pc.sum(part["is_distractor"]).as_py() or 0),
    }


def summarize(root: str | Path) -> list[dict]:
    """One row per (dataset found under `root`, split): measured counts, official counts and a
    `mismatch` text (empty when they agree). A dataset that fails to parse gives one row
    with its `error` and split None; nothing else is read from it. Parsing is the real parse:
    CUHK03's original release gets its images extracted on the first call."""
    rows = []
    for name, folder in discover(root).items():
        spec = get(name)
        base = {"dataset": name, "folder": str(folder)}
        try:
            table = spec.parse(folder)
        except ReidrayError as exc:
            rows.append({**base, "split": None, "mismatch": "", "error": str(exc)})
            continue
        for split in SPLITS:
            measured = split_counts(table, split)
            official = spec.official.get(split)
            if not measured["images"] and official is None:
                continue
            diffs = []
            for key in ("images", "identities", "cameras"):
                want = getattr(official, key) if official else None
                base_key = f"official_{key}"
                measured[base_key] = want
                if want is not None and want != measured[key]:
                    diffs.append(f"{key} {measured[key]} != {want} official")
            rows.append({**base, "split": split, **measured, "mismatch": "; ".join(diffs), "error": ""})
    return rows


def summary_lines(root: str | Path) -> list[str]:
    """`summarize(root)` as text for the CLI: one block per dataset found, mismatches called
    out, then the registered datasets that were not found."""
    rows = summarize(root)
    lines, seen = [], []
    for row in rows:
        if row["dataset"] not in seen:
            seen.append(row["dataset"])
            lines.append(f"{row['dataset']}  {row['folder']}")
            note = get(row["dataset"]).note
            if note:
                lines.append(f"  note: {note}")
        if row["error"]:
            lines.append(f"  ERROR: {row['error']}")
            continue
        flags = f"  ({row['junk']:,} junk, {row['distractors']:,} distractors)" if row["junk"] or row["distractors"] else ""
        official = "/".join("?" if row[f"official_{k}"] is None else f"{row[f'official_{k}']:,}"
                            for k in ("images", "identities", "cameras"))
        verdict = f"MISMATCH: {row['mismatch']}" if row["mismatch"] else "ok"
        lines.append(
            f"  {row['split']:8s}{row['images']:>9,} images {row['identities']:>7,} ids {row['cameras']:>3} cams"
            f"{flags}   official {official}   {verdict}"
        )
    missing = [n for n in names() if n not in seen and n != SYNTHETIC]  # built in: generated when used
    if not rows:
        lines.append(f"no dataset found under {root}")
    if missing:
        lines.append(f"not found: {', '.join(missing)}")
    if SYNTHETIC not in seen:
        lines.append(f"built in: {SYNTHETIC} (generated when a run uses it)")
    return lines
