"""Each zoo model, random-initialised: reidray's preprocessing + embedding equals the library's own path.

For every model the reference path is the library's own: its preprocessing (torchreid
``build_transforms``, open_clip ``image_transform`` with the published pretrained config,
transformers' PIL image processors, timm ``create_transform``), its forward call, read out the way
the study used each model. Where the library's default crops (CLIP, DINOv2, timm), its transform is
asked for a squash, the registry's policy; everything else (size, interpolation, mean, std) is the
library's published value. The library's model is built by its public constructor on the meta
device (nothing allocated) to check that the encoder has exactly its parameter names and shapes,
so a checkpoint in the library's layout loads key for key; the forward runs on the encoder's own
module, which is the library's class (one build per model keeps the CPU cost down).

Tolerances: the pixels must agree to 1e-5 (both sides are PIL resizes of the same image, then
x/255 and (x-mean)/std in float32; only the order of float operations may differ, ~1e-7), and the
L2-normalised embeddings to 1e-4 absolute (the same float32 network on inputs equal to ~1e-7: a
deep ViT amplifies that to ~1e-6; a wrong interpolation, mean, std, token or pooling moves
components by 1e-2 or more, see ``test_tolerance_catches_a_wrong_preprocessing``). OSNet's raw
features are compared relatively (1e-4).

The large models (CLIP-L/14, DINOv2-L/14, PE-Core-L/14) are marked slow; their parameter counts
are checked on the meta device.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reidray.models import MODELS, build, get
from reidray.models.preprocess import prepare

PIXEL_ATOL = 1e-5
EMBED_ATOL = 1e-4
LARGE = {"clip-vit-l14", "dinov2-l14", "pe-core-l14-336"}


def _n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---- the library's own reference paths: (reference pixels [N,3,H,W], reference embedding) ----


def _same_layout(ours: torch.nn.Module, library: torch.nn.Module) -> None:
    """Identical parameter/buffer names and shapes: the library's checkpoints load key for key."""
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in library.state_dict().items()}
    assert mine == theirs


def _ref_osnet(enc, images):
    import torchreid
    from torchreid.reid.data.transforms import build_transforms

    spec = enc.spec
    _, transform = build_transforms(*spec.input_size, norm_mean=list(spec.mean), norm_std=list(spec.std))
    with torch.device("meta"):
        library = torchreid.models.build_model(spec.arch, num_classes=751, loss="softmax", pretrained=False)
    theirs = {k: v for k, v in library.state_dict().items() if not k.startswith("classifier.")}
    assert {k: v.shape for k, v in enc.model.state_dict().items()} == {k: v.shape for k, v in theirs.items()}
    pixels = torch.stack([transform(im) for im in images])
    return pixels, enc.model(pixels)  # torchreid's eval-mode forward


def _openclip_pretrained_cfg(spec) -> dict:
    """The open_clip pretrained config whose hub id is the registry's weights_id."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    for arch, tag in open_clip.list_pretrained():
        cfg = get_pretrained_cfg(arch, tag)
        if cfg.get("hf_hub", "").rstrip("/") == spec.weights_id:
            return cfg
    raise AssertionError(f"{spec.weights_id} is not an open_clip pretrained weight")


def _ref_openclip(enc, images):
    import open_clip

    spec = enc.spec
    cfg = _openclip_pretrained_cfg(spec)
    assert (spec.interpolation, spec.mean, spec.std) == (cfg["interpolation"], cfg["mean"], cfg["std"])
    assert cfg.get("quick_gelu", False) == spec.arch.endswith("-quickgelu")
    transform = open_clip.image_transform(
        spec.input_size, is_train=False, mean=cfg["mean"], std=cfg["std"],
        interpolation=cfg["interpolation"], resize_mode="squash",
    )
    pixels = torch.stack([transform(im) for im in images])
    library = open_clip.create_model(spec.arch, pretrained=None, device="meta")
    _same_layout(enc.visual, library.visual)
    library.visual = enc.visual  # the text tower stays on the meta device, unused by encode_image
    return pixels, library.eval().encode_image(pixels, normalize=True)


def _ref_hf(enc, images):
    from transformers import BitImageProcessorPil, SiglipImageProcessorPil
    from transformers.image_utils import PILImageResampling

    spec = enc.spec
    h, w = spec.input_size
    if spec.name.startswith("siglip2"):
        # google/siglip2-base-patch16-*/preprocessor_config.json: squash, bilinear (resample 2), 0.5/0.5
        processor = SiglipImageProcessorPil(
            size={"height": h, "width": w}, resample=PILImageResampling.BILINEAR,
            image_mean=[0.5] * 3, image_std=[0.5] * 3, rescale_factor=1 / 255,
        )
    else:
        # facebook/dinov2-*/preprocessor_config.json: bicubic (resample 3), ImageNet mean/std; its
        # resize-256-then-crop-224 replaced by the registry's squash to 224
        processor = BitImageProcessorPil(
            size={"height": h, "width": w}, do_center_crop=False, resample=PILImageResampling.BICUBIC,
            image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225], rescale_factor=1 / 255,
        )
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.device("meta"):
        _same_layout(enc.model, type(enc.model)(enc.model.config))
    return pixels, F.normalize(enc.model(pixel_values=pixels).pooler_output, dim=-1)


def _ref_pe_spatial(enc, images):
    import timm
    from timm.data import create_transform, resolve_data_config

    spec = enc.spec
    with torch.device("meta"):
        library = timm.create_model(spec.arch, pretrained=False)
    _same_layout(enc.model, library)
    cfg = resolve_data_config({}, model=library)
    assert (cfg["mean"], cfg["std"], cfg["input_size"][1:]) == (spec.mean, spec.std, spec.input_size)
    # Meta's PE transform is a bilinear squash (timm's card says bicubic + centre crop)
    transform = create_transform(**dict(cfg, interpolation="bilinear", crop_mode="squash", crop_pct=1.0))
    pixels = torch.stack([transform(im) for im in images])
    return pixels, enc.model.forward_features(pixels).mean(dim=1)  # the study's token mean


REFERENCES = {"osnet": _ref_osnet, "openclip": _ref_openclip, "hf": _ref_hf, "pe_spatial": _ref_pe_spatial}
ZOO = [s.name for s in MODELS.values() if s.family in REFERENCES]


def _param(name: str):
    return pytest.param(name, marks=pytest.mark.slow) if name in LARGE else name


@pytest.mark.parametrize("name", [_param(n) for n in ZOO])
def test_matches_the_library_reference(name, person_crops):
    spec = get(name)
    enc = build(name, random_init=True)
    assert enc.random_init is True and not enc.training
    assert _n_params(enc) == pytest.approx(spec.params_m * 1e6, abs=500)  # the registry's count, to 0.001M
    images = person_crops(2)
    pixels = prepare(images, spec)
    with torch.no_grad():
        ref_pixels, ref = REFERENCES[spec.family](enc, images)
        ours = enc(pixels)
    assert ref_pixels.shape == pixels.shape
    assert (ref_pixels - pixels).abs().max() < PIXEL_ATOL
    assert ours.shape == ref.shape == (len(images), spec.dim)
    if spec.normalize:
        assert (ours - ref).abs().max() < EMBED_ATOL
    else:
        assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    # the two images give different embeddings: the comparison is not between constants
    assert (ours[0] - ours[1]).abs().max() > 100 * EMBED_ATOL


def test_random_init_is_the_same_model_in_every_process():
    """build() seeds random init itself, whatever the caller's RNG state (Ray actors must agree)."""
    torch.manual_seed(123)
    first = build("pe-spatial-s16-512", random_init=True).state_dict()
    torch.rand(10)
    second = build("pe-spatial-s16-512", random_init=True).state_dict()
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_tolerance_catches_a_wrong_preprocessing(person_crops):
    """A one-field change in the spec (interpolation, mean) fails both checks by a wide margin."""
    import dataclasses

    enc = build("clip-vit-b32", random_init=True)
    images = person_crops(2)
    with torch.no_grad():
        ref_pixels, ref = _ref_openclip(enc, images)
        for change in ({"interpolation": "bilinear"}, {"mean": (0.5, 0.5, 0.5)}):
            wrong = dataclasses.replace(enc.spec, **change)
            pixels = prepare(images, wrong)
            assert (ref_pixels - pixels).abs().max() > 100 * PIXEL_ATOL
            assert (enc(pixels) - ref).abs().max() > 10 * EMBED_ATOL


# ---- parameter counts against the paper's Table 1 -------------------------------------------


def _comparable_params(name: str) -> int:
    """What Table 1 counted for the model (see each spec's paper_params_scope), on the meta device."""
    import open_clip
    import timm
    from transformers import SiglipModel

    from reidray.models import clipreid, hf, osnet

    spec = get(name)
    if spec.family == "osnet":
        # backbone + softmax classifier; 2.5M fits Celeb-reID's 632 training ids (Market's 751 give 2.555M)
        return _n_params(osnet.backbone(spec.arch)) + 632 * (512 + 1)
    with torch.device("meta"):
        if spec.family == "clipreid":
            # stride-16 ViT-B/16 at 256x128, no SIE, + BN-neck affine (768+512)*2 + classifiers for 1,041 ids
            tower = clipreid.ClipReidEncoder(spec, stride=16, n_cams=0, random_init=True)
            return _n_params(tower) + 2 * (768 + 512) + 1041 * (768 + 512)
        if spec.family == "openclip":
            return _n_params(open_clip.create_model(spec.arch, pretrained=None, device="meta"))
        if spec.family == "hf":
            config = hf.full_config(spec)
            return _n_params(SiglipModel(config) if name.startswith("siglip2") else hf._ARCH[name][0](config))
        if spec.family == "pe_spatial":
            return _n_params(timm.create_model(spec.arch, pretrained=False))
    raise AssertionError(name)


@pytest.mark.parametrize("name", [s.name for s in MODELS.values() if s.paper_params_m])
def test_parameter_count_matches_table_1(name):
    spec = get(name)
    assert _comparable_params(name) / 1e6 == pytest.approx(spec.paper_params_m, rel=0.01)
