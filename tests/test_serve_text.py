"""Text towers (reidray/models/text.py): the library's own text embedding, from the registry's weights.

No pretrained weights here (no network): each test writes a checkpoint in the library's own format
from a randomly initialised model, loads it through ``build_text`` exactly as real weights would
be, and checks the embedding against the library's reference computation on the same model.
The numbers mean nothing; the wiring is what is tested.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reidray.errors import UnknownNameError, WeightsNotFoundError
from reidray.models import get
from reidray.models.text import NoTextTowerError, build_text, has_text_tower, text_models

TEXTS = ["a person in a red jacket", "a man with a blue coat"]


def test_the_language_aligned_models_have_text_towers():
    towers = text_models()
    assert {"clip-vit-b32", "clip-vit-b16", "clip-vit-l14", "siglip2-b16-256", "siglip2-b16-384"} <= set(towers)
    assert all(get(m).paradigm == "language-aligned" for m in towers)
    assert not has_text_tower(get("clip-reid-vit-b16"))  # open_clip too, but only its image side exists
    assert not has_text_tower(get("handcrafted"))


def test_models_without_a_text_tower_say_which_have_one():
    with pytest.raises(NoTextTowerError, match="handcrafted has no text tower.*clip-vit-b32.*siglip2-b16-256"):
        build_text("handcrafted")
    with pytest.raises(UnknownNameError, match="valid models"):
        build_text("no-such-model")


def test_clip_text_tower_loads_the_checkpoint_and_matches_open_clip(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    spec = get("clip-vit-b32")
    torch.manual_seed(1)
    reference = open_clip.create_model(spec.arch).eval()
    checkpoint = tmp_path / "open_clip_model.safetensors"  # the file the hub repo holds
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(checkpoint))

    tower = build_text("clip-vit-b32", weights=checkpoint)
    assert not hasattr(tower.model, "visual")  # the image side is not carried twice
    with torch.inference_mode():
        got = tower(TEXTS)
        want = reference.encode_text(open_clip.get_tokenizer(spec.arch)(TEXTS), normalize=True)
    assert got.shape == (2, spec.dim) and tower.random_init is False
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(got.norm(dim=-1), torch.ones(2))


@pytest.fixture(scope="module")
def siglip_folder(tmp_path_factory):
    """A tiny SigLIP checkpoint + a word-level tokenizer, laid out as the hub repo is (config, weights, tokenizer)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast, SiglipConfig, SiglipModel

    folder = tmp_path_factory.mktemp("siglip2")
    words = ["<pad>", "<eos>", "<unk>", "a", "person", "in", "red", "jacket", "man", "with", "blue", "coat"]
    core = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single="$A <eos>", special_tokens=[("<eos>", 1)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")
    tokenizer.save_pretrained(folder)
    dim = get("siglip2-b16-256").dim
    config = SiglipConfig(
        text_config={"vocab_size": len(words), "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "max_position_embeddings": 64, "projection_size": dim},
        vision_config={"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
                       "image_size": 32, "patch_size": 16},
    )
    torch.manual_seed(2)
    model = SiglipModel(config).eval()
    model.save_pretrained(folder)
    return folder, model, tokenizer


def test_siglip_text_tower_matches_get_text_features_on_lowercased_padded_text(siglip_folder):
    folder, model, tokenizer = siglip_folder
    tower = build_text("siglip2-b16-256", weights=folder)
    ids = tokenizer(TEXTS, padding="max_length", max_length=64, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        want = F.normalize(model.get_text_features(input_ids=ids).pooler_output, dim=-1)
        got = tower([t.upper() for t in TEXTS])  # SigLIP2 was trained on lowercased text
    assert got.shape == (2, get("siglip2-b16-256").dim)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def _copy(folder, dest, names):
    import shutil

    dest.mkdir()
    for name in names:
        shutil.copy(folder / name, dest / name)
    return dest


def _no_other_sources(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.delenv("REIDRAY_WEIGHTS", raising=False)


@pytest.mark.parametrize("name", ["siglip2-b16-256", "siglip2-b16-384"])
def test_siglip2_entries_name_the_tokenizer_files_beside_the_weights(name):
    spec = get(name)
    assert {"tokenizer_config.json", "tokenizer.json"} <= set(spec.text_files)
    assert not set(spec.text_files) & set(spec.weights_files)  # image embedding does not wait for them


def test_siglip_text_tower_needs_only_the_registry_files(siglip_folder, tmp_path, monkeypatch):
    folder, _, _ = siglip_folder
    spec = get("siglip2-b16-256")
    _no_other_sources(tmp_path, monkeypatch)
    exact = _copy(folder, tmp_path / "exact", spec.weights_files + spec.text_files)
    assert build_text(spec.name, weights=exact)(TEXTS).shape == (2, spec.dim)


@pytest.mark.parametrize("missing", get("siglip2-b16-256").text_files)
def test_siglip_without_a_tokenizer_file_says_what_to_download(siglip_folder, tmp_path, monkeypatch, missing):
    folder, _, _ = siglip_folder
    spec = get("siglip2-b16-256")
    _no_other_sources(tmp_path, monkeypatch)
    bare = _copy(folder, tmp_path / "bare", [f for f in spec.weights_files + spec.text_files if f != missing])
    download = r"python -m reidray.run weights --download -m siglip2-b16-256`.*google/siglip2-base-patch16-256"
    with pytest.raises(WeightsNotFoundError, match=f"tokenizer files.*{missing}.*{download}"):
        build_text(spec.name, weights=bare)


def test_siglip_tokenizer_files_are_downloaded_when_downloads_are_on(siglip_folder, tmp_path, monkeypatch):
    """The hub is out of reach here: its download function is replaced by one serving the fixture's
    files, so what is checked is reidray's side (asks for exactly the registry's files, loads them)."""
    import shutil

    import huggingface_hub

    folder, _, _ = siglip_folder
    spec = get("siglip2-b16-256")
    _no_other_sources(tmp_path, monkeypatch)
    bare = _copy(folder, tmp_path / "bare", list(spec.weights_files))
    asked: list[tuple[str, str]] = []

    def fake_hub(repo: str, name: str) -> str:
        asked.append((repo, name))
        (tmp_path / "hub").mkdir(exist_ok=True)
        return shutil.copy(folder / name, tmp_path / "hub" / name)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_hub)
    monkeypatch.setenv("REIDRAY_DOWNLOAD", "1")
    assert build_text(spec.name, weights=bare)(TEXTS).shape == (2, spec.dim)
    assert asked == [(spec.weights_id, name) for name in spec.text_files]
    monkeypatch.setenv("REIDRAY_DOWNLOAD", "0")
    with pytest.raises(WeightsNotFoundError, match=r"not found, downloads are off \(REIDRAY_DOWNLOAD=0\)"):
        build_text(spec.name, weights=_copy(folder, tmp_path / "bare2", list(spec.weights_files)))
