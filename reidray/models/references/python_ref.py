"""``python:<module>:<factory>``: your own encoder, through the small protocol of the package docstring.

The factory is called with no arguments, plus ``weights=`` (the job entry's path) and
``random_init=`` when its signature takes them. What it returns is checked once, up front, and
every missing or wrong attribute is named in one line.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from reidray.models.references import Reference, count_params, make_spec, output_dim
from reidray.models.references.wrap import ReferenceEncoder
from reidray.models.registry import ModelSpec

DEFAULTS = {"interpolation": "bilinear", "metric": "cosine", "normalize": True}
REQUIRED = ("input_size", "mean", "std", "dim", "embed")


def _factory(ref: Reference) -> Callable[..., Any]:
    module_name, _, attr = ref.target.partition(":")
    if not module_name or not attr:
        raise ref.fail("write python:<module>:<factory>, e.g. python:my_package.encoders:build")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ref.fail(f"tried import {module_name}: {exc}; make it importable (run from its folder, set "
                       "PYTHONPATH, or ship it with Ray's runtime_env py_modules)") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ref.fail(f"tried {module_name}.{attr}: {'not callable' if factory is not None else 'no such attribute'}")
    return factory


def _make(ref: Reference, weights: str | Path | None = None, random_init: bool = False) -> Any:
    factory = _factory(ref)
    accepted = inspect.signature(factory).parameters
    kwargs = {k: v for k, v in (("weights", weights), ("random_init", random_init)) if k in accepted}
    obj = factory(**kwargs)
    missing = [a for a in REQUIRED if not hasattr(obj, a)]
    if missing:
        raise ref.fail(f"the object {ref.target} returned ({type(obj).__name__}) lacks {', '.join(missing)}; "
                       "see reidray.models.references for the protocol")
    return obj


def _facts(ref: Reference, obj: Any) -> dict[str, Any]:
    facts = {k: getattr(obj, k, v) for k, v in DEFAULTS.items()}
    try:
        size = tuple(int(x) for x in obj.input_size)
        mean, std = tuple(float(x) for x in obj.mean), tuple(float(x) for x in obj.std)
        dim = int(obj.dim)
    except (TypeError, ValueError) as exc:
        raise ref.fail(f"input_size, mean, std and dim must be numbers ({exc})") from None
    if len(size) != 2 or len(mean) != 3 or len(std) != 3:
        raise ref.fail(f"input_size must be (h, w) and mean, std three values each; got {size}, {mean}, {std}")
    return {**facts, "input_size": size, "mean": mean, "std": std, "dim": dim}


def spec(ref: Reference) -> ModelSpec:
    obj = _make(ref)
    facts = _facts(ref, obj)
    measured = output_dim(obj.embed, obj, facts["input_size"])
    if measured != facts["dim"]:
        raise ref.fail(f"dim says {facts['dim']} but embed returns {measured} values per image")
    module = importlib.import_module(ref.target.partition(":")[0])
    return make_spec(
        ref, input_size=facts["input_size"], interpolation=facts["interpolation"], mean=facts["mean"],
        std=facts["std"], dim=facts["dim"], params=count_params(obj), library="python",
        version=str(getattr(module, "__version__", "")), arch=f"{ref.target} -> {type(obj).__qualname__}",
        embedding="embed(pixels)", config={"module_sha256": _source_hash(module)},
        metric=facts["metric"], normalize=bool(facts["normalize"]),
    )


def _source_hash(module: Any) -> str | None:
    """The module file's content hash: editing your encoder's code makes its cells be redone."""
    path = getattr(module, "__file__", None)
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16] if path and Path(path).is_file() else None


class _Module(torch.nn.Module):
    """Holds a protocol object that is not a Module, so the Encoder can carry it."""

    def __init__(self, obj: Any) -> None:
        super().__init__()
        self.obj = obj

    def to(self, *args, **kwargs):  # follow the encoder to its device when the object can
        if hasattr(self.obj, "to"):
            self.obj = self.obj.to(*args, **kwargs)
        return super().to(*args, **kwargs)


def build(ref: Reference, spec: ModelSpec, path: Path | None, *, weights: str | Path | None,
          random_init: bool) -> ReferenceEncoder:
    obj = _make(ref, weights=weights, random_init=random_init)
    if _facts(ref, obj)["input_size"] != spec.input_size:
        raise ref.fail("the factory returned a different input_size than when it was first called")
    model = obj if isinstance(obj, torch.nn.Module) else _Module(obj)
    embed = (lambda m, x: m.embed(x)) if isinstance(obj, torch.nn.Module) else (lambda m, x: m.obj.embed(x))
    return ReferenceEncoder(spec, model, embed, random_init=random_init)
