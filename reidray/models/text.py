"""Text towers of the language-aligned models, for text-to-image person search.

The registry's encoders are vision towers. CLIP and SigLIP2 were trained with a text tower whose
embedding lives in the same space as the image embedding, so a sentence ("a person in a red
jacket") can be ranked against a stored gallery. This module builds that tower for a registry
entry, with the weights from the same place as the vision tower (``weights.resolve``: the explicit
path, ``$REIDRAY_WEIGHTS``, the library cache, then a download when allowed), and returns
L2-normalised embeddings of ``spec.dim``.

* CLIP (open_clip): the checkpoint holds both towers; the whole model is created from it with
  open_clip and the vision tower dropped. The BPE tokenizer ships with open_clip.
* SigLIP2 (transformers): ``SiglipTextModel`` from the hub folder, loaded strictly (only the
  image tower's keys may go unused). Its Gemma tokenizer files are the registry entry's
  ``text_files`` (not among its ``weights_files``: image embedding does not need them); they are
  found in that folder, in ``$REIDRAY_WEIGHTS/<repo>/`` or in the hub cache, else downloaded under
  the weights' rules. Text is lowercased and padded to 64 tokens with no attention mask, as the
  model was trained.

``random_init=True`` builds the published architecture from a fixed seed (the same in every
process, like ``models.build``): for tests of the wiring only; its embeddings mean nothing.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from reidray.errors import ReidrayError, WeightsNotFoundError
from reidray.models import weights as _weights
from reidray.models.registry import MODELS, ModelSpec, get

SIGLIP_MAX_TOKENS = 64
_SIGLIP_NOT_TEXT = ("vision_model.", "logit_scale", "logit_bias")  # checkpoint keys the text tower leaves


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
        pretrained = None if path is None else str(path)
        model = open_clip.create_model(spec.arch, pretrained=pretrained, require_pretrained=pretrained is not None)
        del model.visual  # the image side is the registry encoder's job; keep only what text needs
        self.model = model
        self._tokenizer = open_clip.get_tokenizer(spec.arch)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        return self._tokenizer(texts)

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.encode_text(tokens)


class SiglipText(TextEncoder):
    """transformers' ``SiglipTextModel``: the pooled (head) output of the last token."""

    def __init__(self, spec: ModelSpec, folder: Path | None, *, random_init: bool) -> None:
        from transformers import AutoTokenizer, SiglipTextModel

        from reidray.models.hf import full_config

        super().__init__(spec, random_init=random_init)
        self._tokenizer = AutoTokenizer.from_pretrained(_siglip_tokenizer_dir(spec, folder), local_files_only=True)
        if random_init:  # the published architecture, as the vision tower's random build uses
            self.model = SiglipTextModel(full_config(spec).text_config)
        else:
            self.model = _load_siglip_text(spec, SiglipTextModel, folder)

    def tokenize(self, texts: list[str]) -> torch.Tensor:
        batch = self._tokenizer([t.lower() for t in texts], padding="max_length", max_length=SIGLIP_MAX_TOKENS,
                                truncation=True, return_tensors="pt")
        return batch["input_ids"]

    def features(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=tokens).pooler_output


def _load_siglip_text(spec: ModelSpec, cls: type, folder: Path) -> nn.Module:
    """The text tower from the local checkpoint; every text key must be there, only image keys may go unused."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the load report would list every vision key as unused
    try:
        model, info = cls.from_pretrained(folder, local_files_only=True, output_loading_info=True, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    missing = list(info.get("missing_keys", ())) + [str(k) for k in info.get("mismatched_keys", ())]
    unused = [k for k in info.get("unexpected_keys", ()) if not k.startswith(_SIGLIP_NOT_TEXT)]
    if missing or unused:
        raise ReidrayError(f"model {spec.name}: {folder} does not hold SigLIP's text tower: "
                           f"missing/mismatched {missing[:5]}, unexpected {unused[:5]}")
    return model


def _siglip_tokenizer_dir(spec: ModelSpec, folder: Path | None) -> Path:
    """The folder holding all of ``spec.text_files``: the weights folder, ``$REIDRAY_WEIGHTS``, the
    hub cache, or a download under the weights' rules (the weights resolver fetches only the
    vision tower's files); otherwise the error names the files and the command that gets them.
    """
    candidates = [folder] if folder is not None else []
    if os.environ.get(_weights.ENV_DIR):
        candidates.append(Path(os.environ[_weights.ENV_DIR]).expanduser() / spec.weights_id)
    for candidate in candidates:
        if all((candidate / name).is_file() for name in spec.text_files):
            return candidate
    from huggingface_hub import try_to_load_from_cache

    cached = [try_to_load_from_cache(spec.weights_id, name) for name in spec.text_files]
    if all(isinstance(path, str) for path in cached):
        return Path(cached[0]).parent
    downloaded, why_not = _weights.download_hub_files(spec, spec.text_files)
    if downloaded is not None:
        return downloaded
    where = folder or Path(f"${_weights.ENV_DIR}") / spec.weights_id
    raise WeightsNotFoundError(
        f"model {spec.name}: the text tower needs the tokenizer files ({', '.join(spec.text_files)}), "
        f"not found, {why_not}; run `python -m reidray.run weights --download -m {spec.name}` (it fetches them "
        f"with the weights), or put them from hub repo {spec.weights_id} in {where}"
    )


def _build_openclip(spec: ModelSpec, weights: str | Path | None, random_init: bool) -> TextEncoder:
    path = None if random_init else Path(_weights.resolve(spec, weights))
    return OpenClipText(spec, path, random_init=random_init)


def _build_hf(spec: ModelSpec, weights: str | Path | None, random_init: bool) -> TextEncoder:
    if random_init:  # random weights, but the tokenizer is still needed: look beside any weights given
        return SiglipText(spec, Path(weights).expanduser() if weights else None, random_init=True)
    return SiglipText(spec, Path(_weights.resolve(spec, weights)), random_init=False)


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
