"""``torchreid:<arch>``: a torchreid network in eval mode, with a weights file, as torchreid tests it.

torchreid's test transform is ``Resize((height, width))`` (a squash, bilinear), ``ToTensor`` and
ImageNet ``Normalize``, with its default 256x128 (``size=HxW`` for another); its eval-mode
``forward`` returns the test features, compared by euclidean distance without normalisation
(torchreid's ``dist_metric`` and ``normalize_feature`` defaults). The weights file comes from the
job entry's ``weights:``, else ``$REIDRAY_WEIGHTS/<arch>.pth`` (or ``.pth.tar``); it loads strictly
except for the training classifier, which eval mode never uses.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import torch

from reidray.errors import ReidrayError, WeightsNotFoundError
from reidray.models.references import Reference, count_params, make_spec, output_dim
from reidray.models.references.wrap import ReferenceEncoder
from reidray.models.registry import IMAGENET_MEAN, IMAGENET_STD, ModelSpec

DEFAULT_SIZE = (256, 128)
SUFFIXES = (".pth", ".pth.tar", ".pt")


def _torchreid():
    with warnings.catch_warnings():  # torchreid warns at import that its Cython ranker is absent
        warnings.simplefilter("ignore")
        import torchreid
    return torchreid


def _network(ref: Reference) -> torch.nn.Module:
    models = _torchreid().models
    names = sorted(models.__model_factory)
    if ref.target not in names:
        similar = [n for n in names if ref.target.split("_")[0] in n][:8]
        raise ref.fail(f"tried torchreid.models.build_model({ref.target!r}): no such architecture; "
                       f"torchreid has {', '.join(similar or names[:8])}, ...")
    model = models.build_model(name=ref.target, num_classes=1, loss="softmax", pretrained=False)
    return model.eval()


def _size(ref: Reference) -> tuple[int, int]:
    text = ref.options.get("size")
    if text is None:
        return DEFAULT_SIZE
    h, sep, w = text.lower().partition("x")
    if not (sep and h.isdigit() and w.isdigit()):
        raise ref.fail(f"size={text} is not HxW, e.g. size=256x128")
    return int(h), int(w)


def spec(ref: Reference) -> ModelSpec:
    model = _network(ref)
    size = _size(ref)
    params = count_params(model, ("classifier.",))
    return make_spec(
        ref, input_size=size, interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD,
        dim=output_dim(model, model, size), params=params, library="torchreid",
        version=getattr(_torchreid(), "__version__", ""), arch=ref.target,
        embedding="eval-mode forward (torchreid's test features)", config={"height": size[0], "width": size[1]},
        metric="euclidean", normalize=False, needs_weights=True, weights_id=f"{ref.target}.pth",
    )


def _candidates(spec: ModelSpec) -> list[Path]:
    root = os.environ.get("REIDRAY_WEIGHTS")
    arch = spec.arch
    return [Path(root).expanduser() / f"{arch}{s}" for s in SUFFIXES] if root else []


def resolve_weights(spec: ModelSpec, weights: str | Path | None) -> Path:
    if weights:
        path = Path(weights).expanduser()
        if path.is_file():
            return path
        raise WeightsNotFoundError(f"model {spec.name}: tried weights: {path}: not a file; fix the path in the job file")
    for path in _candidates(spec):
        if path.is_file():
            return path
    tried = ", ".join(map(str, _candidates(spec))) or "$REIDRAY_WEIGHTS (unset)"
    raise WeightsNotFoundError(
        f"model {spec.name}: no weights file; tried no weights: in the job file, {tried}; torchreid's model zoo "
        "files are not fetched for references: give the file as weights: in the job file, or pass --random-init"
    )


def weights_status(spec: ModelSpec, weights: str | Path | None) -> tuple[bool, str]:
    try:
        return True, str(resolve_weights(spec, weights))
    except WeightsNotFoundError as exc:
        return False, str(exc)


def build(ref: Reference, spec: ModelSpec, path: Path | None, *, weights: str | Path | None,
          random_init: bool) -> ReferenceEncoder:
    from reidray.models.osnet import read_checkpoint

    model = _network(ref)
    if path is None:
        return ReferenceEncoder(spec, model, _forward, random_init=True)
    state = {k: v for k, v in read_checkpoint(path).items() if not k.startswith("classifier.")}
    own = {k for k in model.state_dict() if not k.startswith("classifier.")}
    missing, unexpected = sorted(own - set(state)), sorted(set(state) - own)
    if missing or unexpected:
        raise ReidrayError(f"model {spec.name}: {path} does not match torchreid's {ref.target}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}")
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a mis-shaped tensor
        raise ReidrayError(f"model {spec.name}: {path} does not match torchreid's {ref.target}: "
                           f"{' '.join(str(exc).split())[:300]}") from None
    return ReferenceEncoder(spec, model, _forward, random_init=False)


def _forward(model: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    if model.training:
        raise RuntimeError("torchreid networks return logits in training mode; call .eval()")
    return model(pixels)
