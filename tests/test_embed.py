"""The embed stage through a real Ray instance: resume, crash recovery, a killed encoder actor."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray

from reidray.cells import CellRecord
from reidray.config import EmbedSettings
from reidray.datasets import load
from reidray.datasets.synth import generate
from reidray.embed.actor import EncoderActor
from reidray.embed.dataset import shared_decode_blocker
from reidray.embed.pipeline import decoded_images, embed_cell, fingerprint_for, resources, stored_cell
from reidray.embed.progress import ProgressTracker, finished_line, progress_line, tracker_name
from reidray.errors import CellError
from reidray.models import get
from reidray.store import manifest_hash
from reidray.store import Store

DATASET = "reidray-synth"
MODEL = "handcrafted"
SMALL_BATCHES = EmbedSettings(batch_size=32, decode_batch_size=32, progress_seconds=0.5)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, pa.Table]:
    root = tmp_path_factory.mktemp("data")
    generate(root)
    return root, load(DATASET, root)


@pytest.fixture(scope="module")
def reference(ray_session, data, tmp_path_factory) -> dict[str, np.ndarray]:
    """Embeddings of an undisturbed run, keyed by image id."""
    store = Store.open(str(tmp_path_factory.mktemp("ref")))
    embed_cell(store, MODEL, DATASET, data[1], say=lambda _: None)
    return _by_id(store.read_cell(MODEL, DATASET))


def _by_id(table: pa.Table) -> dict[str, np.ndarray]:
    vectors = np.stack(table.column("embedding").to_numpy(zero_copy_only=False))
    return dict(zip(table.column("image_id").to_pylist(), vectors))


def _assert_exact(store: Store, manifest: pa.Table, reference: dict[str, np.ndarray]) -> None:
    table = store.read_cell(MODEL, DATASET)
    ids = table.column("image_id").to_pylist()
    assert len(ids) == len(set(ids)) == manifest.num_rows
    assert set(ids) == set(manifest.column("image_id").to_pylist())
    got = _by_id(table)
    assert all(np.array_equal(got[k], reference[k]) for k in reference)


def test_complete_cell_is_skipped_and_a_half_written_one_redone(ray_session, data, reference, tmp_path):
    store = Store.open(str(tmp_path))
    manifest = data[1]
    first = embed_cell(store, MODEL, DATASET, manifest, say=lambda _: None)
    assert not first.skipped
    again = embed_cell(store, MODEL, DATASET, manifest, say=lambda _: None)
    assert again.skipped and again.fingerprint == first.fingerprint
    assert 0 < store.cell_marker(MODEL, DATASET)["encoder_busy_fraction"] <= 1
    # Precision is part of the fingerprint: the fp32 cell does not stand in for a bf16 run.
    digest = manifest_hash(manifest)
    for precision, complete in (("fp32", True), ("bf16", False)):
        fp = fingerprint_for(MODEL, digest, dataset=DATASET, weights=None, random_init=False,
                             settings=EmbedSettings(precision=precision))
        assert (stored_cell(store, MODEL, DATASET, fp, manifest)[0] is not None) == complete
    # A crash after some part files but before the marker: stale parts plus a junk file.
    cell_dir = Path(store.cell_dir(MODEL, DATASET))
    (cell_dir / "cell.json").unlink()
    part = next(cell_dir.glob("*.parquet"))
    (cell_dir / "extra-stale.parquet").write_bytes(part.read_bytes())
    redone = embed_cell(store, MODEL, DATASET, manifest, say=lambda _: None)
    assert not redone.skipped
    _assert_exact(store, manifest, reference)


def test_the_cell_record_carries_the_model_facts_and_an_incomplete_record_is_redone(ray_session, data, tmp_path):
    store = Store.open(str(tmp_path))
    manifest = data[1]
    first = embed_cell(store, MODEL, DATASET, manifest, say=lambda _: None)
    spec = get(MODEL)
    marker = store.cell_marker(MODEL, DATASET)
    assert (marker["paradigm"], marker["params_m"], marker["metric"], marker["normalize"]) == (
        spec.paradigm, spec.params_m, spec.metric, spec.normalize)
    assert CellRecord.from_marker(marker, skipped=True) == replace(first, skipped=True)
    assert [part["name"] for part in marker["parts"]] == sorted(
        p.name for p in Path(store.cell_dir(MODEL, DATASET)).glob("*.parquet"))
    assert sum(part["rows"] for part in marker["parts"]) == marker["n_images"] == manifest.num_rows
    # A record written by an older reidray (no model facts) is not trusted, even with the right fingerprint.
    old = {k: v for k, v in marker.items() if k not in ("paradigm", "params_m", "metric", "normalize")}
    store.write_json(f"{store.cell_dir(MODEL, DATASET)}/cell.json", old)
    with pytest.raises(CellError, match="lacks paradigm, params_m, metric, normalize; rerun embed"):
        CellRecord.from_marker(old, skipped=True)
    lines: list[str] = []
    redone = embed_cell(store, MODEL, DATASET, manifest, say=lines.append)
    assert any("redoing the cell: its cell.json lacks paradigm" in line for line in lines), lines
    assert not redone.skipped and redone.fingerprint == first.fingerprint
    assert store.cell_marker(MODEL, DATASET)["metric"] == spec.metric


def test_a_changed_manifest_invalidates_the_cell(ray_session, data, tmp_path):
    store = Store.open(str(tmp_path))
    manifest = data[1]
    embed_cell(store, MODEL, DATASET, manifest, say=lambda _: None)
    smaller = manifest.slice(0, manifest.num_rows - 5)
    cell = embed_cell(store, MODEL, DATASET, smaller, say=lambda _: None)
    assert not cell.skipped and cell.n_images == smaller.num_rows


def test_a_killed_encoder_actor_loses_and_duplicates_nothing(ray_session, data, reference, tmp_path):
    store = Store.open(str(tmp_path))
    manifest = data[1]
    lines: list[str] = []
    result: dict = {}
    worker = threading.Thread(
        target=lambda: result.update(cell=embed_cell(store, MODEL, DATASET, manifest, settings=SMALL_BATCHES,
                                                     say=lines.append))
    )
    worker.start()
    tracker, killed = None, 0
    deadline = time.monotonic() + 120
    while worker.is_alive() and time.monotonic() < deadline and not killed:
        try:
            tracker = tracker or ray.get_actor(tracker_name(MODEL, DATASET))
            done = ray.get(tracker.count.remote())
            actors = ray.get(tracker.encoder_actors.remote())
        except ValueError:  # the tracker is not up yet
            time.sleep(0.1)
            continue
        if actors and 0 < done < manifest.num_rows // 2:
            ray.kill(actors[0], no_restart=False)  # mid-cell, while batches are in flight
            killed += 1
        time.sleep(0.05)
    worker.join(timeout=300)
    assert killed == 1, "the actor was never caught mid-cell"
    assert "cell" in result, lines
    _assert_exact(store, manifest, reference)


def test_a_killed_driver_resumes_on_rerun(ray_session, data, reference, tmp_path):
    root, manifest = data
    out = tmp_path / "out"
    address = ray_session.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "reidray.run", "embed", "--data-root", str(root), "--out", str(out),
           "-m", MODEL, "-d", DATASET, "--address", address]
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    cell_dir = out / "embeddings" / MODEL / DATASET
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and driver.poll() is None and not cell_dir.is_dir():
        time.sleep(0.1)
    driver.kill()  # SIGKILL: no cleanup, no marker
    driver.wait()
    assert not (cell_dir / "cell.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "RAY_AUTH_MODE": os.environ.get("RAY_AUTH_MODE", "disabled")})
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert (cell_dir / "cell.json").is_file()
    _assert_exact(Store.open(str(out)), manifest, reference)


def test_progress_line_reads_like_a_person_wrote_it():
    assert progress_line("embed m/d", 1200, 12936, 4.0) == (
        "embed m/d: 1,200/12,936 images (9%), 300 images/s, about 39 s left"
    )
    assert progress_line("embed m/d", 13000, 12936, 10.0).startswith("embed m/d: 12,936/12,936 images (100%)")


def test_bf16_autocast_is_applied_and_stays_close_to_fp32(data):
    manifest = data[1].slice(0, 16).to_pydict()
    from reidray.embed.decode import decode_resize

    pixels = decode_resize({k: np.asarray(v) for k, v in manifest.items()}, MODEL)["pixels"]
    batch = {**{k: np.asarray(v) for k, v in manifest.items()}, "pixels": pixels}
    fp32, bf16 = (EncoderActor(MODEL, None, False, precision=p, device="cpu")(batch) for p in ("fp32", "bf16"))
    a, b = (np.stack(t.column("embedding").to_numpy(zero_copy_only=False)) for t in (fp32, bf16))
    assert not np.array_equal(a, b), "bf16 produced fp32's exact numbers: autocast did not run"
    cosine = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    assert cosine.min() > 0.999


def test_decoding_is_spread_over_one_task_per_decode_batch(ray_session, data):
    manifest = data[1]
    decoded = decoded_images(manifest, MODEL, EmbedSettings(decode_batch_size=50)).materialize()
    assert decoded.num_blocks() == -(-manifest.num_rows // 50)
    assert sorted(decoded.unique("image_id")) == sorted(manifest.column("image_id").to_pylist())


def test_a_shared_decoded_copy_must_fit_half_the_object_store(ray_session, data):
    assert shared_decode_blocker(data[1], "clip-vit-b16") is None
    store_bytes = ray.cluster_resources()["object_store_memory"]
    rows = int(store_bytes / (224 * 224 * 3)) // 2 + 1  # just over half of it at 224x224
    big = pa.table({"image_id": pa.nulls(rows, pa.string())})
    assert "would fill more than half of the object store" in shared_decode_blocker(big, "clip-vit-b16")
    assert shared_decode_blocker(big.slice(0, rows - 2), "clip-vit-b16") is None


def test_busy_fraction_is_work_over_each_actors_span(ray_session):
    tracker = ProgressTracker.remote()
    try:
        assert ray.get(tracker.busy_fraction.remote()) is None
        assert ray.get(tracker.steady_rate.remote()) is None
        # actor a: busy 0-1 and 3-4 (3.5-4 overlaps, counted once) of 0-4; actor b: busy 10-12 of 10-12
        batches = [(8, 3.0, 4.0, "a"), (8, 0.0, 1.0, "a"), (8, 3.5, 4.0, "a"), (8, 10.0, 12.0, "b")]
        for n, start, end, actor in batches:
            tracker.add.remote(n, start, end, actor)
        assert ray.get(tracker.busy_fraction.remote()) == pytest.approx((1 + 1 + 2) / (4 + 2))
        assert ray.get(tracker.count.remote()) == 32
        # after the first batch (ended at 1): 24 images until the last one ended, at 12
        assert ray.get(tracker.steady_rate.remote()) == pytest.approx(24 / 11)
    finally:
        ray.kill(tracker)


def _record(**kw) -> CellRecord:
    return CellRecord(model="m", dataset="d", fingerprint="fp", n_images=12936, dim=512, embed_seconds=20.0,
                      device="cuda", precision="bf16", random_init=False, weights_id="", paradigm="supervised",
                      params_m=1.0, metric="cosine", normalize=True, **kw)


def test_finished_line_names_a_starved_gpu():
    cell = _record(encoder_busy_fraction=0.5)
    line = finished_line(cell)
    assert line.startswith("embed m/d: 12,936 images in 20.0 s (647 images/s, cuda, encoder busy 50%)")
    assert "waited on decoding" in line
    fed = _record(encoder_busy_fraction=0.95)
    assert "waited" not in finished_line(fed)


def test_auto_precision_is_fp32_on_gpus_too_and_bf16_is_opt_in(ray_session):
    """Published numbers are fp32 until bf16's tolerance is measured on a GPU with trained weights."""
    for gpus in (0, 1):
        assert resources(EmbedSettings(num_gpus=gpus)).precision == "fp32"
        assert resources(EmbedSettings(num_gpus=gpus, precision="bf16")).precision == "bf16"
    assert resources(EmbedSettings(num_gpus=1)).device == "cuda"
