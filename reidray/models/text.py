"""Text towers of the language-aligned models, for text-to-image person search.

The registry's encoders are vision towers. CLIP and SigLIP2 were trained with a text tower whose
embedding lives in the same space as the image embedding, so a sentence ("a person in a red
jacket") can be ranked against a stored gallery. This module builds that tower for a registry
entry, with the weights from the same place as the vision tower (``weights.resolve``: the explicit
path, ``$REIDRAY_WEIGHTS``, the library cache, then a download when allowed), and returns
L2-normalised embeddings of ``spec.dim``.

* CLIP (open_clip): the checkpoint holds both towers; the whole model is created from it with
  open_clip and the vision tower dropped. The BPE tokenizer ships with open_clip.
* SigLIP2 (transformers): ``SiglipTextModel`` from the hub folder; its Gemma tokenizer files
  (``tokenizer.json``, ``tokenizer_config.json``, ...) must sit in that folder or the hub cache.
  Text is lowercased and padded to 64 tokens with no attention mask, as the model was trained.

``random_init=True`` builds the architecture from a fixed seed (the same in every process, like
``models.build``): for tests of the wiring only; its embeddings mean nothing.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reidray.errors import ReidrayError, WeightsNotFoundError
from reidray.models import weights as _weights
from reidray.models.registry import MODELS, ModelSpec, get

SIGLIP_MAX_TOKENS = 64
SIGLIP_TOKENIZER_FILES = ("tokenizer_config.json", "tokenizer.json", "special_tokens_map.json", "tokenizer.model")


class NoTextTowerError(ReidrayError):
    """A model without a text tower was asked to embed text."""


def has_text_tower(spec: ModelSpec) -> bool:
    """Language-aligned models trained with a text tower that reidray can build (CLIP, SigLIP2)."""
    return spec.paradigm == "language-aligned" and spec.family in _BUILDERS


def text_models() -> list[str]:
    """Registered models with a text tower, in the registry's order."""
    return [name for name, spec in MODELS.items() if has_text_tower(spec)]


class TextEncoder(nn.Module):
    """Sentences -> L2-normalised embeddings [N, spec.dim], in the space of the model's images."""

    def __init__(self, spec: ModelSpec, *, random_init: bool) -> None:
        super().__init__()
        self.spec = spec
        self.random_init = random_init

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        raise NotImplementedError

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, texts: list[str]) -> torch.Tensor:
        device = next(self.parameters()).device
        out = self.features(self.tokenize(texts).to(device)).float()
        if out.shape[-1] != self.spec.dim:
            raise ReidrayError(f"model {self.spec.name}: text tower gives {out.shape[-1]}-d embeddings, "
                               f"the image tower {self.spec.dim}-d; the checkpoint does not match the registry")
        return F.normalize(out, dim=-1)

    def extra_repr(self) -> str:
        return f"name={self.spec.name!r}, random_init={self.random_init}"


class OpenClipText(TextEncoder):
    """open_clip's CLIP with its vision tower removed: ``encode_text`` on BPE tokens."""

    def __init__(self, spec: ModelSpec, path: Path | None, *, random_init: bool) -> None:
        import open_clip

        super().__init__(spec, random_init=random_init)
        model = open_clip.create_model(spec.arch, pretrained=None if path is None else str(path))
        del model.visual  # the image side is the registry encoder's job; keep only what text needs
        self.model = model
        self._tokenizer = open_clip.get_tokenizer(spec.arch)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tokenizer(texts)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class SiglipText(TextEncoder):
    """transformers' ``SiglipTextModel``: the pooled (head) output of the last token."""

    def __init__(self, spec: ModelSpec, folder: Path, *, random_init: bool) -> None:
        from transformers import AutoTokenizer, SiglipTextConfig, SiglipTextModel

        super().__init__(spec, random_init=random_init)
        tokenizer_dir = _siglip_tokenizer_dir(spec, folder)
        if random_init:
            self.model = SiglipTextModel(SiglipTextConfig.from_pretrained(folder))
        else:
            self.model = SiglipTextModel.from_pretrained(folder)
        self._tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        batch = self._tokenizer([t.lower() for t in texts], padding="max_length", max_length=SIGLIP_MAX_TOKENS,
                                truncation=True, return_tensors="pt")
        return batch["input_ids"]

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens).pooler_output


def _siglip_tokenizer_dir(spec: ModelSpec, folder: Path) -> Path:
    """The weights folder when it holds the tokenizer, else the hub cache's snapshot; never downloads."""
    if (folder / "tokenizer_config.json").is_file():
        return folder
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(spec.weights_id, "tokenizer_config.json")
    if isinstance(cached, str):
        return Path(cached).parent
    raise WeightsNotFoundError(
        f"model {spec.name}: the text tower needs the tokenizer files ({', '.join(SIGLIP_TOKENIZER_FILES)}) "
        f"beside the weights in {folder}; get them with `huggingface-cli download {spec.weights_id} "
        f"{' '.join(SIGLIP_TOKENIZER_FILES)} --local-dir {folder}`"
    )


def _hub_folder(spec: ModelSpec, weights: str | Path | None, random_init: bool) -> Path:
    """SigLIP2's hub folder (config and tokenizer are needed even for random weights)."""
    if not random_init:
        return Path(_weights.resolve(spec, weights))
    available, where = _weights.status(spec, weights)
    if not available:
        raise WeightsNotFoundError(
            f"model {spec.name}: a random-init text tower still needs the config and tokenizer files; {where}"
        )
    return Path(where)


def _build_openclip(spec: ModelSpec, weights: str | Path | None, random_init: bool) -> TextEncoder:
    path = None if random_init else Path(_weights.resolve(spec, weights))
    return OpenClipText(spec, path, random_init=random_init)


def _build_hf(spec: ModelSpec, weights: str | Path | None, random_init: bool) -> TextEncoder:
    return SiglipText(spec, _hub_folder(spec, weights, random_init), random_init=random_init)


_BUILDERS = {"openclip": _build_openclip, "hf": _build_hf}


def build_text(
    name: str, *, weights: str | Path | None = None, random_init: bool = False, device: str = "cpu"
) -> TextEncoder:
    """The text tower of ``name`` in eval mode on ``device``.

    Raises UnknownNameError for an unregistered name, NoTextTowerError (listing the models that
    have one) for a model without a text tower, WeightsNotFoundError when files are missing.
    """
    spec = get(name)
    if not has_text_tower(spec):
        raise NoTextTowerError(
            f"model {name} has no text tower; text queries work with: {', '.join(text_models())}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # the same random tower in every process, as models.build does
        encoder = _BUILDERS[spec.family](spec, weights, random_init)
    encoder.requires_grad_(False)
    return encoder.to(device).eval()
