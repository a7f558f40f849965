"""Weights resolution: explicit path, $REIDRAY_WEIGHTS, the libraries' caches, download policy; real loads.

Checkpoints are random models saved in each library's own format (torchreid zoo .pth, timm
model.safetensors, transformers save_pretrained, open_clip_model.safetensors) and must load back
to identical weights (the open_clip one to identical outputs), marked as not random.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from reidray.errors import ReidrayError, WeightsNotFoundError
from reidray.models import build, get, names, status_rows, weights_status
from reidray.models import weights as W
from reidray.models.preprocess import prepare


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """No real caches, no network, no weights folder unless a test sets one."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("REIDRAY_DOWNLOAD", "0")
    monkeypatch.delenv("REIDRAY_WEIGHTS", raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf-cache"))


def _pixels(spec, n: int = 2) -> torch.Tensor:
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (150, 70, 3), dtype=np.uint8)) for _ in range(n)]
    return prepare(images, spec)


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Equal state dicts (cheaper than a forward; outputs then follow, as test_models_zoo shows)."""
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- OSNet: a torchreid model-zoo file ------------------------------------------------------

OSNET = get("osnet-x1.0")


def _save_zoo_checkpoint(path: Path, seed: int) -> torch.nn.Module:
    """A random OSNet saved like torchreid's zoo files: {'state_dict': ...} with a 751-id classifier."""
    from reidray.models import osnet

    torch.manual_seed(seed)

    model = osnet.backbone(OSNET.arch)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.classifier.weight"] = torch.randn(751, 512)
    state["module.classifier.bias"] = torch.zeros(751)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": state, "epoch": 150}, path)
    return osnet.OsnetEncoder(OSNET, model, random_init=False).eval()


def test_resolution_order_explicit_then_folder_then_cache(tmp_path, monkeypatch):
    explicit = _save_zoo_checkpoint(tmp_path / "mine.pth", seed=1)
    folder = _save_zoo_checkpoint(tmp_path / "weights" / OSNET.weights_id, seed=2)
    cache = _save_zoo_checkpoint(tmp_path / "torch-home" / "hub" / "checkpoints" / OSNET.weights_id, seed=3)
    monkeypatch.setenv("REIDRAY_WEIGHTS", str(tmp_path / "weights"))

    loaded = build(OSNET.name, weights=tmp_path / "mine.pth")
    assert loaded.random_init is False and _same_weights(loaded, explicit)
    assert _same_weights(build(OSNET.name), folder)
    assert weights_status(OSNET.name) == (True, str(tmp_path / "weights" / OSNET.weights_id))
    monkeypatch.delenv("REIDRAY_WEIGHTS")
    assert _same_weights(build(OSNET.name), cache)
    ok, where = weights_status(OSNET.name)
    assert ok and where.endswith(f"checkpoints/{OSNET.weights_id}")


def test_a_wrong_explicit_path_is_named(tmp_path):
    with pytest.raises(WeightsNotFoundError, match="nowhere.pth"):
        build(OSNET.name, weights=tmp_path / "nowhere.pth")
    ok, why = weights_status(OSNET.name, tmp_path / "nowhere.pth")
    assert not ok and "nowhere.pth" in why


def test_osnet_checkpoint_with_a_missing_key_fails(tmp_path):
    path = tmp_path / "bad.pth"
    _save_zoo_checkpoint(path, seed=4)
    state = torch.load(path, weights_only=True)
    del state["state_dict"]["module.conv5.bn.weight"]
    torch.save(state, path)
    with pytest.raises(ReidrayError, match="conv5.bn.weight"):
        build(OSNET.name, weights=path)


class _Runs:
    """Anything a weights-only load must refuse: unpickling it would call ``print``."""

    def __reduce__(self):
        return (print, ("code ran",))


@pytest.mark.parametrize("legacy", [False, True])
def test_zoo_file_with_numpy_scalars_loads_weights_only(tmp_path, legacy):
    """torchreid's zoo files hold the run's numpy scalars (deep-person-reid #592); the 2019 ones
    are in torch's legacy format, pickled under numpy 1's ``numpy.core`` names."""
    path = tmp_path / "zoo.pth"
    saved = _save_zoo_checkpoint(path, seed=8)
    state = torch.load(path, weights_only=True)
    state |= {"rank1": np.float32(0.942), "mAP": np.float64(0.826), "step": np.int64(150)}
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    if legacy:
        path.write_bytes(path.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    with pytest.raises(Exception, match="numpy"):  # what the allow-list is for
        torch.load(path, weights_only=True)
    assert _same_weights(build(OSNET.name, weights=path), saved)

    torch.save(dict(state, extra=_Runs()), path)
    with pytest.raises(ReidrayError, match="does not load"):
        build(OSNET.name, weights=path)


# ---- hub models: $REIDRAY_WEIGHTS/<org>/<repo>/ and the Hugging Face cache ------------------

PE = get("pe-spatial-s16-512")


def _save_timm(folder: Path, seed: int) -> torch.nn.Module:
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    enc = build(PE.name, random_init=True)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in enc.model.state_dict().items()}, folder / "model.safetensors")
    return enc


def test_timm_file_in_the_weights_folder_and_in_the_hub_cache(tmp_path, monkeypatch):
    saved = _save_timm(tmp_path / "weights" / PE.weights_id, seed=5)
    monkeypatch.setenv("REIDRAY_WEIGHTS", str(tmp_path / "weights"))
    loaded = build(PE.name)
    assert loaded.random_init is False and _same_weights(loaded, saved)

    # the Hugging Face cache layout: models--org--name/{refs/main, snapshots/<rev>/file}
    monkeypatch.delenv("REIDRAY_WEIGHTS")
    assert weights_status(PE.name)[0] is False
    repo = tmp_path / "hf-cache" / ("models--" + PE.weights_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0123abc")
    (repo / "snapshots" / "0123abc").mkdir(parents=True)
    (tmp_path / "weights" / PE.weights_id / "model.safetensors").rename(repo / "snapshots/0123abc/model.safetensors")
    ok, where = weights_status(PE.name)
    assert ok and where.endswith("snapshots/0123abc/model.safetensors")
    assert _same_weights(build(PE.name), saved)


def test_transformers_folder_loads_strictly(tmp_path):
    spec = get("dinov2-b14")
    torch.manual_seed(6)
    enc = build(spec.name, random_init=True)
    folder = tmp_path / "dinov2"
    enc.model.save_pretrained(folder)
    assert {"config.json", "model.safetensors"} <= {p.name for p in folder.iterdir()}
    loaded = build(spec.name, weights=folder)
    assert loaded.random_init is False and _same_weights(loaded, enc)

    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state[next(k for k in state if k.endswith("layer.3.mlp.fc1.weight"))]
    save_file(state, folder / "model.safetensors")
    with pytest.raises(ReidrayError, match="missing"):
        build(spec.name, weights=folder)


@pytest.mark.slow
def test_open_clip_file_loads_strictly(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    spec = get("clip-vit-b32")
    torch.manual_seed(7)
    full = open_clip.create_model(spec.arch, pretrained=None)
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in full.state_dict().items()}, path)
    loaded = build(spec.name, weights=path)
    assert loaded.random_init is False
    pixels = _pixels(spec)
    with torch.no_grad():
        assert torch.allclose(loaded(pixels), full.encode_image(pixels, normalize=True), atol=1e-6)


# ---- download policy: never a network wait when offline --------------------------------------


def test_missing_everywhere_fails_fast_naming_model_file_and_place(monkeypatch):
    monkeypatch.setattr(W, "_download", lambda spec: pytest.fail("no download may be tried"))
    for name in names():
        spec = get(name)
        if not spec.needs_weights:
            continue
        start = time.monotonic()
        with pytest.raises(WeightsNotFoundError) as info:
            build(name)
        assert time.monotonic() - start < 2.0
        message = str(info.value)
        assert message.startswith(f"model {name}:") and spec.weights_id in message
        assert "REIDRAY_WEIGHTS" in message and "\n" not in message


def test_download_policy(monkeypatch, tmp_path):
    spec = get("siglip2-b16-256")
    calls = []
    monkeypatch.setattr(W, "_download", lambda s: calls.append(s.name) or tmp_path)

    monkeypatch.setenv("REIDRAY_DOWNLOAD", "0")
    with pytest.raises(WeightsNotFoundError, match="downloads are off"):
        W.resolve(spec)
    monkeypatch.delenv("REIDRAY_DOWNLOAD")
    with pytest.raises(WeightsNotFoundError, match="HF_HUB_OFFLINE"):
        W.resolve(spec)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(W, "_host_answers", lambda url: False)
    with pytest.raises(WeightsNotFoundError, match="does not answer"):
        W.resolve(spec)
    assert calls == []
    monkeypatch.setattr(W, "_host_answers", lambda url: True)
    assert W.resolve(spec) == tmp_path
    monkeypatch.setenv("REIDRAY_DOWNLOAD", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # an explicit REIDRAY_DOWNLOAD=1 wins
    assert W.resolve(spec) == tmp_path
    assert calls == [spec.name, spec.name]


def test_probe_is_bounded():
    start = time.monotonic()
    W._host_answers("https://host.invalid/")
    assert time.monotonic() - start < W._PROBE_SECONDS + 1.0


def test_status_rows_list_every_model_without_touching_the_network(monkeypatch):
    monkeypatch.setattr(W, "_host_answers", lambda url: pytest.fail("status must not probe"))
    rows = status_rows()
    assert [r["model"] for r in rows] == names()
    for row in rows:
        assert {"model", "paradigm", "params_m", "input", "dim", "metric", "available", "weights"} <= set(row)
        assert row["available"] is (not get(row["model"]).needs_weights)


def test_the_checkpoint_folder_is_torchs_own_without_importing_torch(monkeypatch, tmp_path):
    for env in ({}, {"XDG_CACHE_HOME": str(tmp_path / "xdg")}, {"TORCH_HOME": str(tmp_path / "th")}):
        for name in ("TORCH_HOME", "XDG_CACHE_HOME"):
            monkeypatch.delenv(name, raising=False)
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        assert W.checkpoint_dir() == Path(torch.hub.get_dir()) / "checkpoints"
