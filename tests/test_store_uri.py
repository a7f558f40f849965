"""Output roots given as URIs: on a cluster `--out s3://...` or `gs://...` lets workers on many nodes
write to one place through pyarrow filesystems. A `file://` URI takes the same code paths (the
URI branch of Store, URIs handed to Ray Data and Polars) without a bucket, so it is tested here.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from typer.testing import CliRunner

from reidray.config import load_job
from reidray.run import app
from reidray.store import Store

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "jobs" / "quick.yaml"


def test_a_file_uri_root_resolves_to_its_folder_and_hands_out_uris(tmp_path):
    root = (tmp_path / "out").as_uri()
    assert root.startswith("file:///")
    store = Store.open(root)
    assert isinstance(store.fs, pafs.LocalFileSystem)
    assert store.base == str(tmp_path / "out") and (tmp_path / "out").is_dir()
    # Paths for this process's filesystem; URIs for other processes (Ray workers, Polars).
    assert store.path("results", "m__d.parquet") == f"{tmp_path}/out/results/m__d.parquet"
    assert store.uri("results") == f"{root}/results"
    assert Store.open(root + "/").uri("results") == f"{root}/results"
    assert not list((tmp_path / "out").iterdir()), "the write probe was left behind"


def test_writes_through_a_uri_root_are_atomic_and_read_back(tmp_path):
    store = Store.open((tmp_path / "out").as_uri())
    target = store.path("embeddings", "m", "d", "cell.json")
    assert store.read_json(target) is None and not store.exists(target)
    store.write_json(target, {"fingerprint": "abc", "n_images": 3})
    assert store.read_json(target) == {"fingerprint": "abc", "n_images": 3}
    store.write_json(target, {"fingerprint": "def"})  # replaces, never appends
    assert store.cell_marker("m", "d") == {"fingerprint": "def"}
    table = pa.table({"image_id": ["a", "b"], "embedding": [[0.0, 1.0], [1.0, 0.0]]})
    store.write_table(store.path("embeddings", "m", "d", "part-0.parquet"), table)
    assert store.list_files(store.cell_dir("m", "d"), ".parquet") == [store.path("embeddings", "m", "d", "part-0.parquet")]
    assert store.read_cell("m", "d").equals(table)
    # Nothing but the finished files: the temporary siblings were renamed away.
    assert sorted(p.name for p in (tmp_path / "out" / "embeddings" / "m" / "d").iterdir()) == ["cell.json", "part-0.parquet"]
    store.clear_dir(store.cell_dir("m", "d"))
    assert store.cell_marker("m", "d") is None and store.list_files(store.cell_dir("m", "d"), ".parquet") == []


def test_an_unusable_uri_fails_in_one_line(tmp_path):
    from reidray.errors import ReidrayError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ReidrayError, match="not writable"):
        Store.open((blocker / "out").as_uri())
    with pytest.raises(ReidrayError, match="cannot be opened"):
        Store.open("nosuchscheme://bucket/out")


@pytest.mark.slow
def test_the_quick_job_writes_to_a_file_uri_root_and_polars_reads_the_results(ray_session, tmp_path, monkeypatch):
    monkeypatch.setenv("REIDRAY_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    root = out.as_uri()
    runner = CliRunner()
    result = runner.invoke(app, ["all", "--job", str(QUICK), "--out", root], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert f"report written to {root}/report/results.md" in result.output

    job = load_job(QUICK)
    expected = {(m.name, d) for m in job.models for d in job.datasets}
    # Polars reads the results through the URI, as a notebook would read s3://.../results/.
    results = pl.read_parquet(f"{root}/results/*.parquet")
    assert set(zip(results["model"], results["dataset"])) == expected
    assert results["mAP"].is_between(0, 1).all()
    assert results.equals(pl.read_parquet(out / "results" / "*.parquet"))
    store = Store.open(root)
    for model, dataset in expected:
        marker = store.cell_marker(model, dataset)
        assert marker is not None and marker["n_images"] == pl.read_parquet(
            f"{root}/embeddings/{model}/{dataset}/*.parquet").height
    # The synthetic images are made in the local cache, then copied once under the root, and the
    # manifest points the workers (on any node) at that shared copy.
    assert (tmp_path / "cache" / "data").is_dir()
    manifest = pl.read_parquet(f"{root}/manifests/reidray-synth.parquet")
    assert manifest["path"].str.starts_with(f"{root}/data/reidray-synth/").all()
    copied = {p.relative_to(out / "data" / "reidray-synth").as_posix()
              for p in (out / "data" / "reidray-synth").rglob("*.jpg")}
    assert set(manifest["image_id"]) <= copied

    # Resuming works through the URI too: complete cells are found and skipped.
    again = runner.invoke(app, ["all", "--job", str(QUICK), "--out", root], catch_exceptions=False)
    assert again.exit_code == 0, again.output
    for model, dataset in expected:
        assert f"embed {model}/{dataset}: complete already" in again.output
    assert "copying to" not in again.output
