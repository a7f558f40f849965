"""A weights file of another architecture than the registry entry's fails, in one line, naming
the model, the file and what differs, on every loading path (transformers, open_clip, timm,
torchreid; CLIP-ReID's is in test_models_clipreid).

The open_clip and timm files hold only the tower's stem (patch and position embeddings): the
check reads the file's shapes before any tensor is loaded, so that is all it sees; the
transformers folder and the torchreid file are whole random models of the wrong size.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from reidray.models import build, get
from reidray.models.checks import ArchitectureError, facts


def _one_line(info: pytest.ExceptionInfo, model: str, path: Path, *fragments: str) -> None:
    message = str(info.value)
    assert "\n" not in message and message.startswith(f"model {model}: {path}")
    for fragment in fragments:
        assert fragment in message, message


def test_a_small_dinov2_folder_is_not_dinov2_b14(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    small = Dinov2Model(Dinov2Config(hidden_size=384, num_hidden_layers=2, num_attention_heads=6, image_size=518,
                                     patch_size=14, layerscale_value=1.0))
    small.save_pretrained(tmp_path / "small")
    with pytest.raises(ArchitectureError) as info:
        build("dinov2-b14", weights=tmp_path / "small")
    _one_line(info, "dinov2-b14", tmp_path / "small" / "config.json",
              "hidden_size 384 (registry 768)", "num_hidden_layers 2 (registry 12)", "reidray.run weights")


def _stem(path: Path, tensors: dict[str, tuple[int, ...]]) -> Path:
    save_file({k: torch.zeros(shape) for k, shape in tensors.items()}, path)
    return path


def test_open_clip_files_of_another_patch_or_image_size(tmp_path):
    # ViT-B/16 weights given for clip-vit-b32: patch 16, 14x14 grid
    b16 = _stem(tmp_path / "b16.safetensors", {"visual.conv1.weight": (768, 3, 16, 16),
                                               "visual.positional_embedding": (197, 768)})
    with pytest.raises(ArchitectureError) as info:
        build("clip-vit-b32", weights=b16)
    _one_line(info, "clip-vit-b32", b16, "patch size 16 (registry 32)")
    # a B/32 trained at 256 px: open_clip would resample its 8x8 position table to 7x7 and load it
    big = _stem(tmp_path / "b32-256.safetensors", {"visual.conv1.weight": (768, 3, 32, 32),
                                                   "visual.positional_embedding": (65, 768),
                                                   "visual.proj": (768, 512)})
    with pytest.raises(ArchitectureError) as info:
        build("clip-vit-b32", weights=big)
    _one_line(info, "clip-vit-b32", big, "image size 256 (registry 224)")


def test_timm_pe_spatial_file_of_another_image_size(tmp_path):
    small = _stem(tmp_path / "model.safetensors", {"patch_embed.proj.weight": (384, 3, 16, 16),
                                                   "pos_embed": (1, 197, 384)})
    with pytest.raises(ArchitectureError) as info:
        build("pe-spatial-s16-512", weights=small)
    _one_line(info, "pe-spatial-s16-512", small, "image size 224 (registry 512)")


def test_torchreid_file_of_another_width(tmp_path):
    from reidray.models import osnet

    torch.manual_seed(0)
    narrow = osnet.backbone("osnet_x0_5")  # the zoo's half-width OSNet, given as osnet-x1.0
    path = tmp_path / "osnet_x0_5.pth"
    torch.save({"state_dict": narrow.state_dict()}, path)
    with pytest.raises(ArchitectureError) as info:
        build("osnet-x1.0", weights=path)
    _one_line(info, "osnet-x1.0", path, "conv1.conv.weight is [32, 3, 7, 7] (registry [64, 3, 7, 7])")


def test_facts_read_each_library_layout():
    """The same ViT-B/16 at 224 in the layouts of open_clip, timm, transformers and CLIP-ReID."""
    layouts = {
        "visual.": {"visual.conv1.weight": (768, 3, 16, 16), "visual.positional_embedding": (197, 768),
                    "visual.proj": (768, 512), "visual.transformer.resblocks.11.ln_1.weight": (768,)},
        "": {"patch_embed.proj.weight": (768, 3, 16, 16), "pos_embed": (1, 197, 768), "blocks.11.norm1.weight": (768,)},
        "embeddings.": {"embeddings.patch_embeddings.projection.weight": (768, 3, 16, 16),
                        "embeddings.position_embeddings": (1, 197, 768), "encoder.layer.11.norm1.weight": (768,)},
    }
    for prefix, shapes in layouts.items():
        more = {k.replace("11", str(i)): v for k, v in shapes.items() if "11" in k for i in range(11)}
        got = facts({**shapes, **more}, prefix)
        assert {k: got[k] for k in ("width", "patch size", "image size")} == {
            "width": "768", "patch size": "16", "image size": "224"}, prefix
        if prefix != "embeddings.":  # transformers' blocks sit outside its embeddings
            assert got["depth"] == "12"
    assert facts({"visual.proj": (768, 512)}, "visual.")["embedding dimension"] == "512"


def test_the_registry_weights_pass_their_own_check():
    """The control: each family's own architecture, read the same way, agrees with itself."""
    import open_clip

    spec = get("clip-vit-b16")
    model = open_clip.create_model(spec.arch, pretrained=None, device="meta")
    got = facts({k: tuple(v.shape) for k, v in model.state_dict().items()}, "visual.")
    assert got == {"depth": "12", "width": "768", "patch size": "16", "image size": "224",
                   "embedding dimension": str(spec.dim)}
