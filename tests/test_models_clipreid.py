"""CLIP-ReID: released checkpoint layout, strict loading, SIE, and the reference image path.

The checkpoints written here have the released files' key layout (paper_code.md section 2):
``image_encoder.*`` (OpenAI CLIP visual naming), ``cv_embed`` for SIE models, the BN-necks and
the two classifiers (1,041 MSMT17 ids), and for CLIP-ReID (not baseline) files the prompt
learner, optionally behind a DDP ``module.`` prefix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from reidray.errors import ReidrayError
from reidray.models import build, get
from reidray.models import clipreid
from reidray.models.preprocess import prepare

N_IDS = 1041
SPEC = get("clip-reid-vit-b16")


def _crops(n: int = 3, seed: int = 0) -> list[Image.Image]:
    """The crops these checks were tuned on (the SIE check compares batches at default tolerance)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        img = (rng.random((150, 70, 3)) * 80).astype(np.uint8)
        img[30:80, 10:60] = rng.integers(0, 256, 3)
        img[80:140, 15:55] = rng.integers(0, 256, 3)
        out.append(Image.fromarray(img))
    return out


def _released_state(encoder: clipreid.ClipReidEncoder, *, prompt: bool, ddp: bool) -> dict[str, torch.Tensor]:
    """``encoder``'s weights plus the training-only heads, keyed as in the released files."""
    state = dict(encoder.state_dict())
    for name, dim in (("bottleneck", 768), ("bottleneck_proj", 512)):
        state |= {f"{name}.weight": torch.ones(dim), f"{name}.bias": torch.zeros(dim),
                  f"{name}.running_mean": torch.zeros(dim), f"{name}.running_var": torch.ones(dim),
                  f"{name}.num_batches_tracked": torch.tensor(0)}
    state["classifier.weight"] = torch.randn(N_IDS, 768)
    state["classifier_proj.weight"] = torch.randn(N_IDS, 512)
    if prompt:
        state["prompt_learner.cls_ctx"] = torch.randn(N_IDS, 4, 512)
    return {f"module.{k}": v for k, v in state.items()} if ddp else state


def _released_file(folder: Path, name: str, *, seed: int, stride: int, n_cams: int, prompt: bool,
                   ddp: bool) -> tuple[clipreid.ClipReidEncoder, Path]:
    """A random model of the given layout, saved under ``name`` as a released file."""
    torch.manual_seed(seed)
    enc = clipreid.ClipReidEncoder(SPEC, stride=stride, n_cams=n_cams, random_init=True).eval()
    path = folder / name
    torch.save(_released_state(enc, prompt=prompt, ddp=ddp), path)
    return enc, path


@pytest.fixture(scope="module")
def baseline(tmp_path_factory) -> tuple[clipreid.ClipReidEncoder, Path]:
    """A random stride-16, no-SIE model (the ViT-baseline layout), saved as a released file."""
    return _released_file(tmp_path_factory.mktemp("clipreid"), "MSMT17_vit_base.pth",
                          seed=1, stride=16, n_cams=0, prompt=False, ddp=False)


@pytest.fixture(scope="module")
def sie_olp(tmp_path_factory) -> tuple[clipreid.ClipReidEncoder, Path]:
    """A random stride-12 model with 15 camera embeddings (the SIE-OLP layout), DDP-prefixed."""
    return _released_file(tmp_path_factory.mktemp("clipreid"), "MSMT17_clipreid_12x12sie_ViT-B-16_60.pth",
                          seed=2, stride=12, n_cams=15, prompt=True, ddp=True)


def test_grids_of_the_released_strides():
    assert clipreid.grid(16, (256, 128)) == (16, 8)
    assert clipreid.grid(12, (256, 128)) == (21, 10)


def test_saved_checkpoint_loads_back_to_identical_outputs(baseline):
    enc, path = baseline
    loaded = build(SPEC.name, weights=path)
    assert loaded.random_init is False and loaded.stride == 16 and loaded.cv_embed is None
    pixels = prepare(_crops(), SPEC)
    with torch.no_grad():
        assert torch.equal(loaded(pixels), enc(pixels))


def _without_sie(encoder: clipreid.ClipReidEncoder, cls_shift: torch.Tensor | None = None) -> clipreid.ClipReidEncoder:
    """The expected computation: the same tower with no camera embedding, ``cls_shift`` added to its
    class embedding (SIE adds coe * cv_embed[cam] to the CLS token, before the position embedding)."""
    plain = clipreid.ClipReidEncoder(SPEC, stride=encoder.stride, n_cams=0, random_init=True).eval()
    plain.load_state_dict({k: v for k, v in encoder.state_dict().items() if k != "cv_embed"})
    if cls_shift is not None:
        plain.image_encoder.class_embedding.data += cls_shift
    return plain


def test_sie_olp_checkpoint_loads_and_uses_the_camera_on_its_training_dataset(sie_olp):
    enc, path = sie_olp
    loaded = build(SPEC.name, weights=path, dataset=SPEC.trained_on)
    assert SPEC.trained_on == "msmt17" and loaded.use_camera
    assert loaded.stride == 12 and loaded.cv_embed.shape == (15, 768)
    pixels = prepare(_crops(1), SPEC).expand(2, -1, -1, -1)
    cams = torch.tensor([0, 3])
    with torch.no_grad():
        out = loaded(pixels, cams)
        assert torch.equal(out, F.normalize(enc.features(pixels, cams), dim=-1))
        assert (out[0] - out[1]).abs().max() > 1e-3  # the camera embedding is used
        expected = _without_sie(loaded, clipreid.SIE_COE * loaded.cv_embed[3])(pixels[:1])
        assert torch.allclose(expected, out[1:2], atol=1e-5)
        with pytest.raises(ReidrayError, match="camera id 15 is outside the checkpoint's 15 cameras"):
            loaded(pixels[:1], torch.tensor([15]))
        with pytest.raises(ValueError, match="no camera ids"):
            loaded(pixels[:1])


def test_market_and_msmt17_cells_take_the_two_camera_paths(sie_olp):
    """The same pixels and camera ids: the MSMT17 cell adds each image's camera embedding, the
    Market cell none (CLIP-ReID's forward with cam_label=None); the fingerprints differ."""
    from reidray.embed.actor import EncoderActor
    from reidray.embed.pipeline import cell_fingerprint
    from reidray.models.preprocess import resize

    _, path = sie_olp
    images = _crops(2)
    cams = np.array([1, 4])
    batch = {"image_id": np.array(["a", "b"]), "pid": np.array([7, 8]), "camid": cams,
             "split": np.array(["query", "gallery"]), "pixels": np.stack([resize(im, SPEC) for im in images])}
    cells = {d: EncoderActor(SPEC.name, str(path), False, device="cpu", dataset=d) for d in ("msmt17", "market1501")}
    got = {d: np.stack(actor(batch).column("embedding").to_numpy(zero_copy_only=False)) for d, actor in cells.items()}
    loaded = cells["msmt17"].encoder
    pixels = prepare(images, SPEC)
    with torch.no_grad():
        msmt = torch.cat([_without_sie(loaded, clipreid.SIE_COE * loaded.cv_embed[c])(pixels[i:i + 1])
                          for i, c in enumerate(cams)])
        market = _without_sie(loaded)(pixels)
    assert np.abs(got["msmt17"] - msmt.numpy()).max() < 1e-5
    assert np.abs(got["market1501"] - market.numpy()).max() < 1e-5
    assert np.abs(got["msmt17"] - got["market1501"]).max() > 1e-3
    fps = {d: cell_fingerprint(SPEC.name, str(path), False, "digest", dataset=d)
           for d in ("msmt17", "market1501", "last")}
    assert fps["msmt17"] != fps["market1501"] == fps["last"]


def test_matches_open_clip_vision_transformer_with_clip_reid_transforms(baseline):
    """The reference image path: open_clip's OpenAI ViT-B/16 at 256x128 (stride 16 = patch),
    fed by CLIP-ReID's own test transform (bilinear Resize(256,128), ToTensor, Normalize(0.5, 0.5)),
    feature cat(ln_post(CLS), CLS @ proj) L2-normalised (TEST.NECK_FEAT 'before', FEAT_NORM 'yes')."""
    import open_clip
    from torchvision import transforms as T

    enc, _ = baseline
    ref = open_clip.create_model("ViT-B-16-quickgelu", pretrained=None, force_image_size=(256, 128)).visual.eval()
    tower = {k.removeprefix("image_encoder."): v for k, v in enc.state_dict().items()}
    ref.load_state_dict(tower, strict=True)
    captured = {}
    ref.ln_post.register_forward_hook(lambda m, i, o: captured.update(cls=o[:, 0]))
    transform = T.Compose([T.Resize((256, 128)), T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)])
    images = _crops()
    with torch.no_grad():
        projected = ref(torch.stack([transform(im) for im in images]))
        expected = F.normalize(torch.cat([captured["cls"], projected], dim=1), dim=1)
        ours = enc(prepare(images, SPEC))
    assert ours.shape == (3, 1280)
    assert (ours - expected).abs().max() < 1e-4  # same float32 network, pixels equal to ~1e-7


def _load_into_fresh(state: dict[str, torch.Tensor], stride: int = 16, n_cams: int = 0) -> None:
    fresh = clipreid.ClipReidEncoder(SPEC, stride=stride, n_cams=n_cams, random_init=True)
    clipreid.load_released(fresh, state, Path("ckpt.pth"))


def test_missing_mismatched_or_foreign_keys_fail_loudly(baseline):
    enc, _ = baseline
    good = _released_state(enc, prompt=False, ddp=False)
    _load_into_fresh(good)  # the control: the untouched state loads

    missing = dict(good)
    del missing["image_encoder.transformer.resblocks.5.mlp.c_fc.weight"]
    with pytest.raises(ReidrayError, match="resblocks.5.mlp.c_fc.weight"):
        _load_into_fresh(missing)

    mismatched = dict(good, **{"image_encoder.proj": torch.zeros(768, 256)})
    with pytest.raises(ReidrayError, match="proj"):
        _load_into_fresh(mismatched)

    foreign = dict(good, **{"head.fc.weight": torch.zeros(3, 3)})
    with pytest.raises(ReidrayError, match="head.fc.weight"):
        _load_into_fresh(foreign)

    with pytest.raises(ReidrayError, match="cv_embed"):  # an SIE model given a checkpoint without cameras
        _load_into_fresh(good, n_cams=15)


def test_bad_files_name_the_file(tmp_path, baseline):
    enc, _ = baseline
    odd = _released_state(enc, prompt=False, ddp=False)
    odd["image_encoder.positional_embedding"] = torch.zeros(100, 768)  # no stride gives 99 patches
    path = tmp_path / "odd.pth"
    torch.save(odd, path)
    with pytest.raises(ReidrayError, match="odd.pth"):
        build(SPEC.name, weights=path)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"<html>quota exceeded</html>")
    with pytest.raises(ReidrayError, match="junk.pth"):
        build(SPEC.name, weights=junk)


def test_a_file_of_another_depth_or_embedding_dimension_is_named(tmp_path, baseline):
    enc, _ = baseline
    good = _released_state(enc, prompt=False, ddp=False)
    shallow = {k: v for k, v in good.items() if not any(f"resblocks.{i}." in k for i in range(6, 12))}
    narrow = dict(good, **{"image_encoder.proj": torch.zeros(768, 256)})
    for name, state, mismatch in (("shallow.pth", shallow, "depth 6 (registry 12)"),
                                  ("narrow.pth", narrow, "embedding dimension 256 (registry 512)")):
        torch.save(state, tmp_path / name)
        with pytest.raises(ReidrayError) as info:
            build(SPEC.name, weights=tmp_path / name)
        message = str(info.value)
        assert message.startswith(f"model {SPEC.name}: {tmp_path / name}") and mismatch in message
        assert "\n" not in message
