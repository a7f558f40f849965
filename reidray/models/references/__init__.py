"""Encoders by reference: any timm, open_clip, transformers or torchreid model, or your own code,
wherever a model name is accepted (``-m``, job files, serve), without editing the registry.

A reference is ``<scheme>:<target>[?option=value&...]``:

* ``timm:<name>[.<tag>]`` — ``timm.create_model(name, num_classes=0)``: the pooled features. Input
  size, mean, std and interpolation from the model's ``pretrained_cfg`` (timm's
  ``resolve_model_data_config``); weights: the tag's hub repo (``model.safetensors``) or file.
* ``open_clip:<arch>/<pretrained>`` — the image tower's ``encode_image`` output (before
  normalisation); preprocessing from open_clip's own preprocess config merged with the pretrained
  tag's; QuickGELU as the tag says (open_clip only warns when the architecture disagrees).
* ``hf:<repo or folder>`` — transformers' ``AutoModel`` and the image processor config
  (``preprocessor_config.json``: crop size, else size; mean, std, resample). The embedding is
  stated in the spec and chosen by ``embedding=``: ``image-features`` (``get_image_features``,
  the default for image-text models), ``pooler`` (``pooler_output``, the default where the
  model has one), ``cls`` (the first token of ``last_hidden_state``, the default otherwise) or
  ``mean`` (the mean of all tokens). A folder holds config.json, preprocessor_config.json and
  model.safetensors (what ``save_pretrained`` writes); a hub repo is looked up like any hub model.
* ``torchreid:<arch>`` — ``torchreid.models.build_model(arch)`` in eval mode (its test-time
  output), torchreid's test transform (squash to 256x128, bilinear, ImageNet mean/std; ``size=HxW``
  to change it), euclidean distance on raw features (torchreid's defaults). The weights file comes
  from ``weights:`` in the job file or ``$REIDRAY_WEIGHTS/<arch>.pth``; its classifier is dropped.
* ``python:<module>:<factory>`` — your own encoder. ``<module>`` is a dotted module name,
  importable in every process that embeds (the driver's working directory, ``PYTHONPATH``, or
  Ray's ``runtime_env``); ``<factory>`` is called with no arguments (plus ``weights=`` and
  ``random_init=`` when it accepts them) and returns an object with::

      input_size: tuple[int, int]        # (h, w) the encoder takes
      mean, std: tuple[float, float, float]   # applied to pixels in [0, 1]
      interpolation: str = "bilinear"     # or "bicubic"
      metric: str = "cosine"              # or "euclidean": how embeddings are compared
      normalize: bool = True              # reidray L2-normalises the output
      dim: int                            # the embedding's length
      embed(pixels) -> embeddings         # float tensor [N, 3, h, w], normalised with mean/std,
                                          # -> float tensor [N, dim]

  If it is a ``torch.nn.Module`` (or has ``parameters()``), its parameter count is measured and it
  follows the encoder to the device; the factory owns its weights. It is called in every
  process that needs the model's facts, so keep construction cheap or load weights lazily.

Options, after ``?``: ``paradigm=`` (default ``custom``), ``resize=squash|crop|pad`` (the aspect
policy; default squash, the registry's: see ``preprocess.resize``), ``metric=cosine|euclidean``,
``normalize=true|false``, ``batch_size=N``; ``embedding=`` (hf) and ``size=HxW`` (torchreid).

Every reference resolves to a ``ModelSpec`` built from its library's own config: ``dim`` and
``params_m`` are measured on the built architecture (on the meta device where the library allows,
so no memory is spent), and ``spec.source`` records the library, its version and the resolved
config, which go into each cell's fingerprint and ``cell.json``. Weights follow the registry's
rules (``weights.resolve``): an explicit path, ``$REIDRAY_WEIGHTS``, the library's cache, a
download only when online; ``--random-init`` works for every scheme (hf needs its config files).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

from reidray.errors import ReidrayError

if TYPE_CHECKING:
    from reidray.models.encoder import Encoder
    from reidray.models.registry import ModelSpec

SCHEMES = ("python", "timm", "open_clip", "hf", "torchreid")
_MODULES = {"python": "python_ref", "timm": "timm_ref", "open_clip": "open_clip_ref", "hf": "hf_ref",
            "torchreid": "torchreid_ref"}
COMMON_OPTIONS = ("paradigm", "resize", "metric", "normalize", "batch_size")
SCHEME_OPTIONS = {"hf": ("embedding",), "torchreid": ("size",)}
DEFAULT_BATCH = 64


class ReferenceError(ReidrayError):
    """A model reference that does not resolve; the message says what was tried."""


@dataclass(frozen=True)
class Reference:
    """A parsed reference: ``text`` as given (the model's name everywhere), scheme, target, options."""

    text: str
    scheme: str
    target: str
    options: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    def fail(self, problem: str) -> ReferenceError:
        return ReferenceError(f"model {self.text}: {problem}")


def is_reference(name: str) -> bool:
    """Registered names never hold ``:``; anything with one is meant as a reference."""
    return ":" in name


def parse(text: str) -> Reference:
    """Split ``scheme:target?options``; an unknown scheme or option fails naming the valid ones."""
    scheme, _, rest = text.partition(":")
    if scheme not in SCHEMES:
        raise ReferenceError(
            f"model {text}: unknown reference scheme {scheme!r}; use one of "
            f"{', '.join(s + ':' for s in SCHEMES)} (or a registered name: python -m reidray.run models)"
        )
    target, _, query = rest.partition("?")
    options = dict(parse_qsl(query, keep_blank_values=True, strict_parsing=False)) if query else {}
    valid = COMMON_OPTIONS + SCHEME_OPTIONS.get(scheme, ())
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ReferenceError(f"model {text}: unknown option(s) {', '.join(unknown)}; {scheme}: takes {', '.join(valid)}")
    if not target:
        raise ReferenceError(f"model {text}: nothing after {scheme}:; see reidray.models.references for the forms")
    return Reference(text, scheme, target, options)


def _scheme(ref: Reference):
    import importlib

    return importlib.import_module(f"reidray.models.references.{_MODULES[ref.scheme]}")


@functools.cache
def spec(text: str) -> ModelSpec:
    """The ModelSpec of a reference (cached per process: it builds the architecture to measure it)."""
    ref = parse(text)
    return _scheme(ref).spec(ref)


def build(text: str, *, weights: str | Path | None = None, random_init: bool = False, device: str = "cpu") -> Encoder:
    """The reference's encoder in eval mode on ``device``; random init from a fixed seed, like ``factory.build``."""
    import torch

    model_spec = spec(text)
    module = _scheme(parse(text))
    # path None: random init (asked for), or a scheme that brings its own weights (python:)
    path = None if random_init or not model_spec.needs_weights else module.resolve_weights(model_spec, weights)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        encoder = module.build(parse(text), model_spec, path, weights=weights, random_init=random_init)
    encoder.requires_grad_(False)
    return encoder.to(device).eval()


def weights_status(text: str, weights: str | Path | None = None) -> tuple[bool, str]:
    """(available, where or why not), from the disk only, as ``factory.weights_status``."""
    model_spec = spec(text)
    if not model_spec.needs_weights:
        return True, "no weights to resolve (the reference brings its own)"
    return _scheme(parse(text)).weights_status(model_spec, weights)


# --- helpers the scheme modules share ------------------------------------------------------------

def make_spec(ref: Reference, *, input_size: tuple[int, int], interpolation: str, mean: Any, std: Any, dim: int,
              params: int, library: str, version: str, arch: str, embedding: str, config: dict[str, Any],
              metric: str = "cosine", normalize: bool = True, weights_id: str = "", needs_weights: bool = False,
              weights_files: tuple[str, ...] = (), weights_url: str = "") -> ModelSpec:
    """A ModelSpec from the library's facts, with the reference's options laid over them."""
    from reidray.models.preprocess import RESIZE_POLICIES
    from reidray.models.registry import ModelSpec

    opts = ref.options
    if interpolation not in ("bilinear", "bicubic"):
        raise ref.fail(f"{library} asks for {interpolation!r} interpolation; reidray resizes with bilinear or bicubic")
    resize = opts.get("resize", "squash")
    if resize not in RESIZE_POLICIES:
        raise ref.fail(f"resize={resize} is not one of {', '.join(RESIZE_POLICIES)}")
    metric = opts.get("metric", metric)
    if metric not in ("cosine", "euclidean"):
        raise ref.fail(f"metric={metric} is not cosine or euclidean")
    normalize = _flag(ref, "normalize", normalize)
    batch = opts.get("batch_size", str(DEFAULT_BATCH))
    if not batch.isdigit() or int(batch) < 1:
        raise ref.fail(f"batch_size={batch} is not a positive integer")
    source = {
        "reference": ref.text, "library": library, "version": version, "arch": arch, "embedding": embedding,
        "input_size": list(input_size), "interpolation": interpolation, "resize": resize,
        "mean": [float(m) for m in mean], "std": [float(s) for s in std], "config": config,
    }
    return ModelSpec(
        name=ref.text, paradigm=opts.get("paradigm", "custom"), params_m=round(params / 1e6, 3),
        input_size=(int(input_size[0]), int(input_size[1])), resize=resize, interpolation=interpolation,
        mean=tuple(float(m) for m in mean), std=tuple(float(s) for s in std), dim=int(dim), normalize=normalize,
        metric=metric, weights_id=weights_id, needs_weights=needs_weights, uses_camera=False,
        batch_size=int(batch), family="references", library=library, arch=arch, embedding=embedding,
        weights_files=weights_files, weights_url=weights_url, source=source,
    )


def _flag(ref: Reference, key: str, default: bool) -> bool:
    value = ref.options.get(key)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ref.fail(f"{key}={value} is not true or false")


def count_params(module: Any, skip: tuple[str, ...] = ()) -> int:
    """The parameter count, measured: the sum of ``numel`` (names starting with ``skip`` left out)."""
    if not hasattr(module, "named_parameters"):
        return 0
    return sum(p.numel() for n, p in module.named_parameters() if not n.startswith(skip))


def on_meta(make: Callable[[], Any]) -> Any:
    """Build an architecture on torch's meta device (shapes only, no memory), else on the CPU."""
    import torch

    try:
        with torch.device("meta"):
            return make()
    except Exception:  # a library that initialises weights with real arithmetic: build it for real
        return make()


def probe(forward: Callable[[Any], Any], module: Any, input_size: tuple[int, int]) -> Any:
    """One forward pass of zeros, on the module's device; an op the meta device lacks makes it run
    on the CPU instead (``to_empty``: only shapes are read, so uninitialised weights do)."""
    import torch

    device = next((p.device for p in module.parameters()), torch.device("cpu")) if hasattr(module, "parameters") else "cpu"
    with torch.inference_mode():
        try:
            return forward(torch.zeros(1, 3, *input_size, device=device))
        except Exception:
            if str(device) != "meta":
                raise
            module.to_empty(device="cpu")
            return forward(torch.zeros(1, 3, *input_size))


def output_dim(forward: Callable[[Any], Any], module: Any, input_size: tuple[int, int]) -> int:
    """The embedding length, measured by ``probe``."""
    out = probe(forward, module, input_size)
    if out.ndim != 2:
        raise ReidrayError(f"the embedding has shape {tuple(out.shape)}, not [N, D]")
    return int(out.shape[1])


__all__ = ["SCHEMES", "Reference", "ReferenceError", "build", "is_reference", "parse", "spec", "weights_status"]
