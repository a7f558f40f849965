"""``python -m reidray.run weights [--download]``: the listing, the offline failure, atomic writes.

No model host is reachable here, so downloads are exercised through a local-file source (a
``file://`` URL in the registry entry, the way a mirror would be given); the hub and Drive paths
share everything after the transfer (the part file, the size check, the load check, the rename).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import pytest
import torch
from typer.testing import CliRunner

from reidray.errors import ReidrayError
from reidray.models import build, get, names
from reidray.models import fetch, registry
from reidray.run import app

OSNET = get("osnet-x1.0")
NEEDS_WEIGHTS = [n for n in names() if get(n).needs_weights]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("REIDRAY_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _zoo_file(path, seed: int = 0) -> dict[str, torch.Tensor]:
    from reidray.models import osnet

    torch.manual_seed(seed)
    state = osnet.backbone(OSNET.arch).state_dict()
    torch.save({"state_dict": state, "epoch": 150}, path)
    return state


def _local_source(monkeypatch, src) -> registry.ModelSpec:
    spec = dataclasses.replace(OSNET, weights_url=f"file://{src}")
    monkeypatch.setitem(registry.MODELS, OSNET.name, spec)
    return spec


def test_listing_names_each_model_its_source_and_this_command():
    result = CliRunner().invoke(app, ["weights"])
    assert result.exit_code == 0, result.output
    assert "REIDRAY_WEIGHTS=" in result.output.splitlines()[0]
    for name in NEEDS_WEIGHTS:
        assert f"{name} " in result.output and f"weights --download -m {name}" in result.output
    assert "Google Drive id 1vduhq5DpN2q1g4fYEZfPI17MJeh9qyrA" in result.output  # OSNet's zoo file
    assert "hub facebook/dinov2-base: config.json, model.safetensors" in result.output
    assert "huggingface-cli" not in result.output


def test_offline_download_fails_fast_one_line_per_model(monkeypatch):
    monkeypatch.setattr(fetch._weights, "_host_answers", lambda url: time.sleep(0.01) or False)
    start = time.monotonic()
    failures = fetch.download_missing(names(), say=lambda line: None)
    assert time.monotonic() - start < 5
    assert [line.split(":")[0] for line in failures] == [f"model {n}" for n in NEEDS_WEIGHTS]
    for name, line in zip(NEEDS_WEIGHTS, failures):
        assert "\n" not in line and "offline" in line
        assert f"`python -m reidray.run weights --download -m {name}`" in line
    result = CliRunner().invoke(app, ["weights", "--download", "-m", "dinov2-b14"])
    assert result.exit_code == 1
    assert "model dinov2-b14: not downloaded, offline (HF_HUB_OFFLINE is set)" in result.output


def test_local_source_is_fetched_checked_and_then_ready(tmp_path, monkeypatch):
    src = tmp_path / "mirror" / OSNET.weights_id
    src.parent.mkdir()
    saved = _zoo_file(src)
    _local_source(monkeypatch, src)
    said: list[str] = []
    assert fetch.download_missing([OSNET.name], say=said.append) == []
    target = tmp_path / "weights" / OSNET.weights_id
    assert target.read_bytes() == src.read_bytes() and "checked" in said[-1]
    loaded = build(OSNET.name)  # found in $REIDRAY_WEIGHTS, no path given
    assert all(torch.equal(loaded.model.state_dict()[k], v) for k, v in saved.items())
    said.clear()
    assert fetch.download_missing([OSNET.name], say=said.append) == [] and said == [f"{OSNET.name}: ready at {target}"]


def test_a_failed_download_leaves_nothing_at_the_target(tmp_path, monkeypatch):
    src = tmp_path / "quota.html"
    src.write_bytes(b"<html>Google Drive: quota exceeded</html>")
    spec = _local_source(monkeypatch, src)
    with pytest.raises(ReidrayError, match="not osnet-x1.0's checkpoint"):
        fetch.download(spec)
    folder = tmp_path / "weights"
    assert list(folder.iterdir()) == []  # no target, no part file
    failures = fetch.download_missing([OSNET.name], say=lambda line: None)
    assert len(failures) == 1 and "download failed" in failures[0] and not list(folder.iterdir())


def test_hub_files_are_checked_against_the_published_size_and_sha256(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"weights")
    digest = hashlib.sha256(b"weights").hexdigest()
    assert fetch._mismatch(path, 7, digest) is None
    assert "the hub lists 8" in fetch._mismatch(path, 8, digest)
    assert "the hub publishes" in fetch._mismatch(path, 7, "0" * 64)
