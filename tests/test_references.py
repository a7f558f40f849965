"""Encoders by reference: each equals its library's own path on the same images, and a wrong one
fails before any work with one line saying what was tried."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from reidray import models
from reidray.models.preprocess import prepare, resize
from reidray.models.references import ReferenceError, parse
from reidray.run import app
from reidray.store import dir_name

TOL = 1e-5


def squares(n: int, size: int = 97, seed: int = 1) -> list[Image.Image]:
    """Square images at an odd size: squash and the libraries' resize-and-centre-crop agree on them."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray((rng.random((size, size, 3)) * 255).astype(np.uint8)) for _ in range(n)]


def ours(name: str, images: list[Image.Image], **build) -> tuple[torch.nn.Module, torch.Tensor]:
    encoder = models.build(name, **build)
    with torch.inference_mode():
        return encoder, encoder(prepare(images, encoder.spec))


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x.float(), dim=-1)


def test_timm_equals_timms_own_transform_and_forward(person_crops):
    import timm

    name = "timm:resnet18.a1_in1k"
    spec = models.get(name)
    assert (spec.input_size, spec.interpolation, spec.dim, spec.paradigm) == ((224, 224), "bicubic", 512, "custom")
    assert spec.params_m == pytest.approx(11.177, abs=1e-3) and spec.source["library"] == "timm"
    for ref, images in ((name, squares(3)), (name + "?resize=crop", person_crops(3))):
        encoder, got = ours(ref, images, random_init=True)
        lib = timm.create_model("resnet18.a1_in1k", pretrained=False, num_classes=0).eval()
        lib.load_state_dict(encoder.model.state_dict())
        config = timm.data.resolve_model_data_config(lib)
        transform = timm.data.create_transform(**{**config, "crop_pct": 1.0})  # timm's eval transform, no border cut
        with torch.inference_mode():
            want = lib(torch.stack([transform(im) for im in images]))
        assert close(got, unit(want)) < TOL, ref


def test_timm_loads_weights_found_under_reidray_weights(tmp_path, monkeypatch):
    import safetensors.torch
    import timm

    torch.manual_seed(9)
    published = timm.create_model("resnet18.a1_in1k", pretrained=False).eval()  # with its classifier
    folder = tmp_path / "timm" / "resnet18.a1_in1k"
    folder.mkdir(parents=True)
    safetensors.torch.save_file(published.state_dict(), str(folder / "model.safetensors"))
    monkeypatch.setenv("REIDRAY_WEIGHTS", str(tmp_path))
    images = squares(2)
    assert models.weights_status("timm:resnet18.a1_in1k") == (True, str(folder / "model.safetensors"))
    encoder, got = ours("timm:resnet18.a1_in1k", images)
    published.reset_classifier(0)
    transform = timm.data.create_transform(**{**timm.data.resolve_model_data_config(published), "crop_pct": 1.0})
    with torch.inference_mode():
        want = published(torch.stack([transform(im) for im in images]))
    assert not encoder.random_init and close(got, unit(want)) < TOL


def test_open_clip_equals_encode_image_with_its_preprocess(person_crops):
    import open_clip

    name = "open_clip:ViT-B-32/openai?resize=crop"
    images = person_crops(2)
    encoder, got = ours(name, images, random_init=True)
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    model, _, preprocess = open_clip.create_model_and_transforms(
        "ViT-B-32", pretrained=None, force_quick_gelu=True, image_mean=cfg["mean"], image_std=cfg["std"],
        image_interpolation=cfg["interpolation"], image_resize_mode=cfg["resize_mode"],
    )
    model.visual.load_state_dict(encoder.model.state_dict())
    with torch.inference_mode():
        want = model.eval().encode_image(torch.stack([preprocess(im) for im in images]), normalize=True)
    assert encoder.spec.dim == 512 and encoder.spec.params_m == pytest.approx(87.849, abs=1e-3)
    assert close(got, want) < TOL


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A small DINOv2 saved locally with its image processor: trained weights without a hub."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

    folder = tmp_path_factory.mktemp("hf-dinov2")
    torch.manual_seed(3)
    Dinov2Model(Dinov2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                             image_size=224, patch_size=14)).save_pretrained(folder)
    BitImageProcessor(size={"shortest_edge": 256}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
                      resample=3, image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("random_init", [False, True])
def test_hf_equals_automodel_with_its_image_processor(hf_folder, person_crops, random_init):
    from transformers import AutoImageProcessor, AutoModel

    name = f"hf:{hf_folder}"
    images = person_crops(3)
    encoder, got = ours(name, images, random_init=random_init)
    spec = encoder.spec
    assert (spec.input_size, spec.interpolation, spec.dim) == ((224, 224), "bicubic", 64)
    assert spec.embedding.startswith("pooler_output") and encoder.random_init is random_init
    lib = AutoModel.from_pretrained(hf_folder).eval()
    if random_init:
        lib.load_state_dict(encoder.model.state_dict())
    # the processor's own PIL pipeline, its resize set to the input size (reidray squashes)
    processor = AutoImageProcessor.from_pretrained(hf_folder, backend="pil", do_center_crop=False,
                                                   size={"height": 224, "width": 224})
    with torch.inference_mode():
        want = lib(**processor(images=images, return_tensors="pt")).pooler_output
    assert close(got, unit(want)) < TOL
    cls = models.build(name + "?embedding=cls", random_init=random_init)
    assert cls.spec.embedding.startswith("last_hidden_state[:, 0]")


def test_python_protocol_builds_measures_and_embeds():
    spec = models.get("python:examples.my_encoder:build")
    assert (spec.input_size, spec.dim, spec.metric, spec.needs_weights) == ((128, 64), 384, "cosine", False)
    assert spec.source["library"] == "python" and spec.source["config"]["module_sha256"]
    encoder, got = ours(spec.name, squares(2))
    assert got.shape == (2, 384) and torch.allclose(got.norm(dim=1), torch.ones(2))


@pytest.mark.parametrize("name, tried", [
    ("timm:no_such_net_v9", "tried timm.create_model('no_such_net_v9'"),
    ("open_clip:ViT-B-32/no-such-tag", "tried open_clip.get_pretrained_cfg('ViT-B-32', 'no-such-tag')"),
    ("open_clip:No-Such-Arch/openai", "tried open_clip.list_models()"),
    ("hf:/no/such/folder", "tried folder /no/such/folder"),
    ("hf:someone/no-such-repo", "tried $REIDRAY_WEIGHTS"),
    ("torchreid:no_such_arch", "tried torchreid.models.build_model('no_such_arch')"),
    ("python:no_such_module:build", "tried import no_such_module"),
    ("python:examples.my_encoder:missing", "tried examples.my_encoder.missing"),
    ("nope:thing", "use one of python:, timm:, open_clip:, hf:, torchreid:"),
    ("timm:resnet18?colour=red", "unknown option(s) colour"),
])
def test_a_wrong_reference_fails_in_one_line_saying_what_was_tried(name, tried):
    with pytest.raises(Exception) as err:
        models.get(name)
    assert tried in str(err.value) and "\n" not in str(err.value)


def test_a_wrong_reference_stops_the_run_before_any_work(tmp_path):
    result = CliRunner().invoke(app, ["all", "--out", str(tmp_path), "-m", "timm:no_such_net_v9"])
    assert result.exit_code == 2
    assert "tried timm.create_model" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "manifests").exists()  # nothing was parsed, embedded or started


def test_hub_weights_offline_fail_fast_listing_the_places_tried():
    with pytest.raises(Exception) as err:
        models.build("timm:resnet18.a1_in1k")
    message = str(err.value)
    assert "tried" in message and "$REIDRAY_WEIGHTS" in message and "Hugging Face cache" in message
    assert "\n" not in message
    available, why = models.weights_status("timm:resnet18.a1_in1k")
    assert not available and "timm/resnet18.a1_in1k" in why


def test_registered_names_are_unchanged_and_references_get_safe_folders():
    assert parse("timm:vit_small_patch16_224.augreg_in1k?resize=pad").options == {"resize": "pad"}
    assert all(dir_name(n) == n for n in models.names())
    a, b = dir_name("timm:a/b"), dir_name("timm:a_b")
    assert a != b and "/" not in a and ":" not in a
    with pytest.raises(ReferenceError):
        parse("timm:x?resize=stretch") and models.get("timm:resnet18?resize=stretch")


@pytest.mark.parametrize("policy", ["squash", "crop", "pad"])
def test_resize_policies_keep_the_input_size(person_crops, policy):
    spec = models.get(f"python:examples.my_encoder:build?resize={policy}")
    pixels = resize(person_crops(1)[0].resize((90, 60)), spec)  # wider than tall: the policies differ
    assert pixels.shape == (128, 64, 3)
    if policy == "pad":  # the border is the mean colour, which normalises to zero
        assert tuple(pixels[0, 0]) == tuple(round(m * 255) for m in spec.mean)


def test_torchreid_loads_a_weights_file_and_equals_its_test_transform_and_forward(tmp_path, person_crops):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid

    torch.manual_seed(5)
    net = torchreid.models.build_model("osnet_x0_25", num_classes=7, loss="softmax", pretrained=False).eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "mine.pth")
    images = person_crops(3)
    encoder, got = ours("torchreid:osnet_x0_25", images, weights=tmp_path / "mine.pth")
    _, test_transform = torchreid.data.transforms.build_transforms(256, 128)
    with torch.inference_mode():
        want = net(torch.stack([test_transform(im) for im in images]))
    assert (encoder.spec.metric, encoder.spec.normalize, encoder.random_init) == ("euclidean", False, False)
    assert close(got, want) < TOL
    other = torchreid.models.build_model("osnet_x0_5", num_classes=7, loss="softmax", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    with pytest.raises(Exception, match="does not match torchreid's osnet_x0_25"):
        models.build("torchreid:osnet_x0_25", weights=tmp_path / "other.pth")
