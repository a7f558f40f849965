"""``hf:<repo or folder>``: transformers' ``AutoModel`` with its image processor config.

The folder (a local one, or the hub repo's files found like any hub model's) holds
``config.json``, ``preprocessor_config.json`` and, for trained weights, ``model.safetensors``.
Preprocessing from the image processor (``AutoImageProcessor``): the input is its crop size when
it centre-crops, else its size (``shortest_edge`` gives a square); its mean and std (when it
normalises) and its resample filter. The embedding (``embedding=`` overrides it, and the spec
states it): ``image-features`` for image-text models (``get_image_features``), else
``pooler`` (``pooler_output``) where the model returns one, else ``cls`` (token 0 of
``last_hidden_state``); ``mean`` averages all tokens. A random-init build still needs the two
config files: the architecture is read from them.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import transformers
from transformers import AutoConfig, AutoImageProcessor, AutoModel

from reidray.errors import ReidrayError, WeightsNotFoundError
from reidray.models import weights as _weights
from reidray.models.references import Reference, count_params, make_spec, on_meta, output_dim, probe
from reidray.models.references.wrap import ReferenceEncoder
from reidray.models.registry import ModelSpec

CONFIG_FILES = ("config.json", "preprocessor_config.json")
WEIGHTS_FILE = "model.safetensors"
EMBEDDINGS = ("image-features", "pooler", "cls", "mean")
_RESAMPLE = {2: "bilinear", 3: "bicubic"}
_TEXT = ("text_model.", "text_projection", "logit_scale", "logit_bias")  # a dual model's text side, not counted


def _local_folder(ref: Reference) -> Path | None:
    path = Path(ref.target).expanduser()
    return path.absolute() if path.is_dir() or ref.target.startswith((".", "/", "~")) else None


def _hub_stub(ref: Reference, files: tuple[str, ...]) -> ModelSpec:
    """What ``weights.resolve`` needs to find a hub repo's files."""
    from reidray.models.registry import ModelSpec

    return ModelSpec(name=ref.text, paradigm="custom", params_m=0.0, input_size=(1, 1), resize="squash",
                     interpolation="bilinear", mean=(0.0,) * 3, std=(1.0,) * 3, dim=1, normalize=True, metric="cosine",
                     weights_id=ref.target, needs_weights=True, uses_camera=False, batch_size=1, family="references",
                     library="transformers", arch="", embedding="", weights_files=files,
                     weights_url=f"https://huggingface.co/{ref.target}")


def _tried(ref: Reference, files: tuple[str, ...]) -> str:
    root = os.environ.get(_weights.ENV_DIR)
    places = [f"${_weights.ENV_DIR}/{ref.target}" if root else f"${_weights.ENV_DIR} (unset)",
              "the Hugging Face cache", f"a download from https://huggingface.co/{ref.target}"]
    return f"tried {', '.join(places)} for {', '.join(files)}"


def config_folder(ref: Reference) -> Path:
    """The folder holding the config files: the local folder, or the hub repo's files found by the registry's rules."""
    folder = _local_folder(ref)
    if folder is not None:
        missing = [f for f in CONFIG_FILES if not (folder / f).is_file()]
        if missing:
            raise ref.fail(f"tried folder {folder}: it lacks {', '.join(missing)} (what save_pretrained writes for the "
                           "model and its image processor)")
        return folder
    try:
        return _weights.resolve(_hub_stub(ref, CONFIG_FILES))
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{exc}; {_tried(ref, CONFIG_FILES)}; the architecture is read from them, so "
                                   "--random-init needs them too (or give a local folder: hf:/path/to/folder)") from None


def _input(ref: Reference, processor) -> tuple[tuple[int, int], str, tuple, tuple]:
    def hw(size) -> tuple[int, int] | None:
        get = size.get if isinstance(size, dict) else lambda k: getattr(size, k, None)
        if get("height") and get("width"):
            return int(get("height")), int(get("width"))
        if get("shortest_edge"):
            return int(get("shortest_edge")), int(get("shortest_edge"))
        return None

    crop = hw(processor.crop_size) if getattr(processor, "do_center_crop", False) and getattr(processor, "crop_size", None) else None
    size = crop or hw(getattr(processor, "size", None) or {})
    if size is None:
        raise ref.fail(f"the image processor ({type(processor).__name__}) states no input size reidray can use")
    resample = getattr(processor, "resample", 2)
    interpolation = _RESAMPLE.get(int(getattr(resample, "value", resample)), f"resample {resample}")
    if getattr(processor, "do_rescale", True) is False or abs(getattr(processor, "rescale_factor", 1 / 255) - 1 / 255) > 1e-9:
        raise ref.fail("the image processor does not rescale pixels by 1/255; reidray's pipeline assumes it does")
    if getattr(processor, "do_normalize", True):
        mean, std = tuple(processor.image_mean), tuple(processor.image_std)
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    return size, interpolation, mean, std


def _embedding(ref: Reference, model: torch.nn.Module, size: tuple[int, int]) -> str:
    chosen = ref.options.get("embedding")
    if chosen is not None:
        if chosen not in EMBEDDINGS:
            raise ref.fail(f"embedding={chosen} is not one of {', '.join(EMBEDDINGS)}")
        if chosen == "image-features" and not hasattr(model, "get_image_features"):
            raise ref.fail(f"{type(model).__name__} has no get_image_features; use embedding=pooler, cls or mean")
        return chosen
    if hasattr(model, "get_image_features"):
        return "image-features"
    out = probe(lambda x: model(pixel_values=x), model, size)
    return "pooler" if getattr(out, "pooler_output", None) is not None else "cls"


def embed_with(how: str):
    """The call that turns ``pixel_values`` into the embedding ``how`` names."""

    def embed(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        if how == "image-features":
            out = model.get_image_features(pixel_values=pixels)
            return out if isinstance(out, torch.Tensor) else out.pooler_output
        out = model(pixel_values=pixels)
        if how == "pooler":
            return out.pooler_output
        return out.last_hidden_state[:, 0] if how == "cls" else out.last_hidden_state.mean(dim=1)

    return embed


_DESCRIBE = {"image-features": "get_image_features", "pooler": "pooler_output",
             "cls": "last_hidden_state[:, 0] (the CLS token)", "mean": "last_hidden_state.mean(tokens)"}


def spec(ref: Reference) -> ModelSpec:
    folder = config_folder(ref)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
    size, interpolation, mean, std = _input(ref, processor)
    model = on_meta(lambda: AutoModel.from_config(config))
    how = _embedding(ref, model, size)
    local = _local_folder(ref) is not None
    return make_spec(
        ref, input_size=size, interpolation=interpolation, mean=mean, std=std,
        dim=output_dim(lambda x: embed_with(how)(model, x), model, size), params=count_params(model, _TEXT),
        library="transformers", version=transformers.__version__, arch=type(model).__name__,
        embedding=_DESCRIBE[how], config={"model_type": config.model_type, "processor": type(processor).__name__,
                                          "folder": str(folder) if local else None, "embedding": how},
        needs_weights=True, weights_id=str(folder) if local else ref.target,
        weights_files=("config.json", WEIGHTS_FILE), weights_url="" if local else f"https://huggingface.co/{ref.target}",
    )


def resolve_weights(spec: ModelSpec, weights: str | Path | None) -> Path:
    ref = Reference(spec.name, "hf", spec.weights_id)
    folder = Path(weights).expanduser() if weights else _local_folder(ref)
    if folder is not None:
        if not (folder / WEIGHTS_FILE).is_file():
            raise WeightsNotFoundError(f"model {spec.name}: tried {folder / WEIGHTS_FILE}: not there; save the model "
                                       "there with save_pretrained, or pass --random-init")
        return folder
    try:
        return _weights.resolve(spec)
    except WeightsNotFoundError as exc:
        raise WeightsNotFoundError(f"{exc}; {_tried(ref, spec.weights_files)}") from None


def weights_status(spec: ModelSpec, weights: str | Path | None) -> tuple[bool, str]:
    """A local folder or explicit path is looked at directly; a hub repo by ``weights.status`` (no download)."""
    if not weights and not Path(spec.weights_id).is_absolute():
        return _weights.status(spec)
    try:
        return True, str(resolve_weights(spec, weights))
    except WeightsNotFoundError as exc:
        return False, str(exc)


def build(ref: Reference, spec: ModelSpec, path: Path | None, *, weights: str | Path | None,
          random_init: bool) -> ReferenceEncoder:
    how = spec.source["config"]["embedding"]
    if path is None:
        config = AutoConfig.from_pretrained(config_folder(ref), local_files_only=True)
        return ReferenceEncoder(spec, AutoModel.from_config(config), embed_with(how), random_init=True)
    model, info = AutoModel.from_pretrained(path, local_files_only=True, output_loading_info=True, dtype=torch.float32)
    missing = list(info.get("missing_keys", ())) + [str(k) for k in info.get("mismatched_keys", ())]
    if missing:
        raise ReidrayError(f"model {spec.name}: {path} does not match {type(model).__name__}: missing or "
                           f"mismatched {missing[:5]}")
    return ReferenceEncoder(spec, model, embed_with(how), random_init=False)
