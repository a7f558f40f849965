"""The model registry, shared preprocessing and the two weight-free encoders."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from reidray.errors import UnknownNameError, WeightsNotFoundError
from reidray.models import MODELS, build, get, names, status_rows, weights_status
from reidray.models.preprocess import normalize, prepare, resize

PARADIGMS = {"supervised", "language-aligned", "self-supervised", "hand-crafted", "control"}


def test_unknown_name_lists_valid_names():
    with pytest.raises(UnknownNameError) as info:
        get("no-such-model")
    message = str(info.value)
    assert "no-such-model" in message
    for name in ("handcrafted", "random", "osnet-x1.0", "clip-reid-vit-b16"):
        assert name in message
    with pytest.raises(UnknownNameError):
        build("no-such-model")


def test_registry_holds_the_eleven_and_the_baselines():
    paper = [s.paper_name for s in MODELS.values() if s.paper_name]
    assert len(paper) == 11 and len(set(paper)) == 11
    assert {"handcrafted", "random"} <= set(names())
    for spec in MODELS.values():
        assert spec.paradigm in PARADIGMS, spec.name
        assert spec.resize == "squash" and spec.interpolation in {"bilinear", "bicubic"}
        assert spec.metric in {"cosine", "euclidean"}
        assert len(spec.mean) == len(spec.std) == 3 and min(spec.std) > 0
        assert spec.needs_weights == bool(spec.weights_id), spec.name
        with pytest.raises(dataclasses.FrozenInstanceError):
            spec.dim = 1  # type: ignore[misc]


def test_resize_squashes_with_pil_and_normalize_matches_torchvision(person_crops):
    from torchvision import transforms as T

    spec = get("clip-vit-b16")  # bicubic, non-trivial mean/std
    image = person_crops(1)[0]
    arr = resize(image, spec)
    assert arr.dtype == np.uint8 and arr.shape == (*spec.input_size, 3)
    ours = normalize(torch.from_numpy(arr[None]), spec)[0]
    ref = T.Compose(
        [
            T.Resize(spec.input_size, interpolation=T.InterpolationMode.BICUBIC),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )(image)
    assert ours.shape == ref.shape == (3, *spec.input_size)
    assert torch.allclose(ours, ref, atol=1e-6)
    # the same image already at the input size is left untouched
    assert np.array_equal(resize(Image.fromarray(arr), spec), arr)


def test_normalize_rejects_float_or_nchw_input():
    spec = get("handcrafted")
    with pytest.raises(ValueError):
        normalize(torch.zeros(1, 3, 128, 64, dtype=torch.uint8), spec)
    with pytest.raises(ValueError):
        normalize(torch.zeros(1, 128, 64, 3), spec)


@pytest.mark.parametrize("name", ["handcrafted", "random"])
def test_weight_free_encoder_contract(name, person_crops):
    spec = get(name)
    enc = build(name)
    assert enc.spec is spec and enc.random_init is False and not enc.training
    pixels = prepare(person_crops(6), spec)
    out = enc(pixels)
    assert out.shape == (6, spec.dim) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    assert torch.allclose(out.norm(dim=1), torch.ones(6), atol=1e-5)
    # deterministic: a second build, a second call
    assert torch.equal(build(name)(pixels), out)
    # batch independence: each row depends on its image only
    single = torch.cat([enc(pixels[i : i + 1]) for i in range(6)])
    assert torch.allclose(single, out, atol=1e-5)
    assert torch.allclose(enc(pixels.flip(0)), out.flip(0), atol=1e-5)
    # wrong input size fails loudly
    with pytest.raises(ValueError):
        enc(torch.zeros(1, 3, 32, 32))


def test_weight_free_encoders_need_no_weights():
    for name in ("handcrafted", "random"):
        assert weights_status(name) == (True, "built in (no weights)")
    rows = {r["model"]: r for r in status_rows()}
    assert set(rows) == set(names())
    assert rows["handcrafted"]["available"] is True


def _gain_and_cast(pixels: torch.Tensor, gain: tuple[float, float, float]) -> torch.Tensor:
    g = torch.tensor(gain).view(1, 3, 1, 1)
    return (pixels * g).clamp(0, 1)


def test_handcrafted_separates_clothing_and_ignores_camera_colour_cast(person_crops):
    """Same clothes under a different brightness/colour cast stay closer than different clothes."""
    enc = build("handcrafted")
    spec = enc.spec
    pixels = prepare(person_crops(8, seed=3), spec)
    seen_again = _gain_and_cast(pixels, (0.7, 0.8, 0.95))
    a, b = enc(pixels), enc(seen_again)
    same = (a * b).sum(1)
    sims = a @ b.T
    other = sims.masked_fill(torch.eye(8, dtype=torch.bool), -1).max(1).values
    assert (same > other).all(), (same, other)
    assert same.min() > 0.95


def test_random_control_carries_no_identity(person_crops):
    """A tiny change to an image gives an unrelated embedding: the control scores at chance."""
    enc = build("random")
    pixels = prepare(person_crops(64, seed=5), enc.spec)
    nudged = pixels.clone()
    nudged[:, :, 0, 0] = (nudged[:, :, 0, 0] + 1 / 255).clamp(0, 1)
    sims = (enc(pixels) * enc(nudged)).sum(1)
    assert sims.abs().mean() < 0.15  # 256-d Gaussian noise: |cos| ~ 0.05
    gram = enc(pixels) @ enc(pixels).T
    off = gram[~torch.eye(64, dtype=torch.bool)]
    assert off.abs().mean() < 0.1


def test_random_init_of_a_weight_free_model_is_not_marked():
    assert build("handcrafted", random_init=True).random_init is False


def test_missing_weights_fail_fast_with_what_and_where(tmp_path, monkeypatch):
    import time

    monkeypatch.setenv("REIDRAY_WEIGHTS", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("REIDRAY_DOWNLOAD", raising=False)
    for name in ("osnet-x1.0", "siglip2-b16-256"):
        spec = get(name)
        start = time.monotonic()
        with pytest.raises(WeightsNotFoundError) as info:
            build(name)
        assert time.monotonic() - start < 5
        message = str(info.value)
        assert name in message and spec.weights_id in message and "REIDRAY_WEIGHTS" in message
        assert "\n" not in message
        ok, why = weights_status(name)
        assert ok is False and spec.weights_id in why
