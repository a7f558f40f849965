"""CLIP-ReID ViT-B/16 (Li et al., AAAI 2023), from its released checkpoints, for inference.

CLIP-ReID is not a package, so reidray builds the image tower itself from open_clip's parts
(the OpenAI CLIP transformer blocks with QuickGELU), under the same parameter names as the
released files: ``image_encoder.*`` (OpenAI CLIP's visual naming) and ``cv_embed``. Two changes
from OpenAI's tower, both read from the checkpoint:

- the patch stride (16, or 12 for the "OLP" overlapping-patch models), visible in the shape of
  ``image_encoder.positional_embedding``: a 256x128 input gives 16x8 (+1) positions at stride 16
  and 21x10 (+1) at stride 12;
- the camera embedding (SIE), ``cv_embed`` [n_cams, 768], present in SIE models only. It is added,
  times ``SIE_COE``, to the CLS token.

Which images get a camera embedding. The per-camera embeddings are learned for the cameras of the
dataset the checkpoint was trained on (the registry's ``trained_on``: MSMT17, 15 cameras, for the
default file), so they are used only there: ``build(..., dataset="msmt17")``. On every other
dataset the encoder adds none, because that is what CLIP-ReID's own code does whenever it has no
camera label: its model's forward sets the camera embedding to None when ``cam_label`` is None,
and its test processor passes ``cam_label=None`` unless ``MODEL.SIE_CAMERA`` is on, in which case it
indexes ``cv_embed`` with the test set's own camera ids, assuming they are the training cameras.
The repository has no cross-domain evaluation and no "mean camera" path; averaging the embeddings
would be an input the network never saw in training, and the study ran CLIP-ReID with
``sie_camera: false`` (paper_code.md section 1). A camera id outside the checkpoint's cameras on the
training dataset is an error. An explicit ``weights:`` file is taken as trained on ``trained_on``
too: a released Market-1501 or Duke SIE file would get its camera embedding nowhere (and fail on
MSMT17's cameras 6 and up); such a file needs its own registry entry.

The test feature is CLIP-ReID's ``TEST.NECK_FEAT='before'``: ln_post(CLS) (768) concatenated with
its projection (512), 1280-d, L2-normalised, as in its person configs. The BN-necks, classifiers,
prompt learner and text encoder in a checkpoint are training-only and ignored by name; any other
key, or a missing or mis-shaped tower key, is an error: nothing is loaded with ``strict=False``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from open_clip.transformer import LayerNorm, QuickGELU, Transformer
from torch import nn

from reidray.errors import ReidrayError
from reidray.models import torchfile
from reidray.models.checks import check_shapes
from reidray.models.encoder import Encoder
from reidray.models.registry import ModelSpec

WIDTH, LAYERS, HEADS, PATCH, EMBED_DIM = 768, 12, 12, 16, 512
SIE_COE = 1.0  # the README's SIE+OLP command (MODEL.SIE_COE 1.0); checkpoints do not record it
# The registry's default checkpoint (MSMT17, CLIP-ReID + SIE + OLP): what a random-init build mimics.
DEFAULT_STRIDE, DEFAULT_CAMS = 12, 15
TRAINING_ONLY = ("bottleneck.", "bottleneck_proj.", "classifier.", "classifier_proj.", "prompt_learner.", "text_encoder.")


def grid(stride: int, input_size: tuple[int, int]) -> tuple[int, int]:
    """Patch grid (rows, cols) of CLIP-ReID's conv stem at ``stride`` on an (h, w) input."""
    h, w = input_size
    return (h - PATCH) // stride + 1, (w - PATCH) // stride + 1


class ClipReidVisual(nn.Module):
    """OpenAI CLIP's ViT-B/16 image tower with a configurable conv stride and a non-square grid."""

    def __init__(self, stride: int, input_size: tuple[int, int]) -> None:
        super().__init__()
        rows, cols = grid(stride, input_size)
        scale = WIDTH**-0.5
        self.conv1 = nn.Conv2d(3, WIDTH, kernel_size=PATCH, stride=stride, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(WIDTH))
        self.positional_embedding = nn.Parameter(scale * torch.randn(rows * cols + 1, WIDTH))
        self.ln_pre = LayerNorm(WIDTH)
        self.transformer = Transformer(WIDTH, LAYERS, HEADS, act_layer=QuickGELU)
        self.ln_post = LayerNorm(WIDTH)
        self.proj = nn.Parameter(scale * torch.randn(WIDTH, EMBED_DIM))

    def forward(self, pixels: torch.Tensor, cls_offset: torch.Tensor | None) -> torch.Tensor:
        """ln_post(CLS) [N, 768]; ``cls_offset`` [N, 768] is added to the CLS token (SIE)."""
        x = self.conv1(pixels).flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        if cls_offset is not None:
            cls = cls + cls_offset.to(x.dtype).unsqueeze(1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0])


class ClipReidEncoder(Encoder):
    """The 1280-d CLIP-ReID test feature; parameter names are the released checkpoints' own."""

    def __init__(self, spec: ModelSpec, *, stride: int, n_cams: int, random_init: bool) -> None:
        super().__init__(spec, random_init=random_init)
        self.stride = stride
        self.image_encoder = ClipReidVisual(stride, spec.input_size)
        self.cv_embed = nn.Parameter(torch.randn(n_cams, WIDTH) * 0.02) if n_cams else None

    def _camera_offset(self, camids: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """SIE_COE * cv_embed[camid] per image, or None (no camera embedding) without camera ids."""
        if self.cv_embed is None or camids is None:
            return None
        n_cams = self.cv_embed.shape[0]
        camids = camids.to(device=device, dtype=torch.long).view(-1)
        if bool(((camids < 0) | (camids >= n_cams)).any()):
            bad = int(camids[(camids < 0) | (camids >= n_cams)][0])
            raise ReidrayError(
                f"model {self.spec.name}: camera id {bad} is outside the checkpoint's {n_cams} cameras "
                f"({self.spec.trained_on}'s); the camera embedding is only used on that dataset"
            )
        return SIE_COE * self.cv_embed[camids]

    def features(self, pixels: torch.Tensor, camids: torch.Tensor | None) -> torch.Tensor:
        cls = self.image_encoder(pixels, self._camera_offset(camids, pixels.device))
        return torch.cat([cls, cls @ self.image_encoder.proj.to(cls.dtype)], dim=1)


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The state dict of a CLIP-ReID checkpoint file, unwrapped and without a DDP ``module.`` prefix."""
    try:
        state = torchfile.load(path)
    except Exception as exc:
        raise ReidrayError(f"CLIP-ReID checkpoint {path} does not load with torch.load: {exc}") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ReidrayError(f"CLIP-ReID checkpoint {path} holds a {type(state).__name__}, not a state dict")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _stride_of(state: dict[str, torch.Tensor], spec: ModelSpec, path: Path) -> int:
    """The conv stride whose patch grid matches the checkpoint's position embedding."""
    key = "image_encoder.positional_embedding"
    if key not in state:
        raise ReidrayError(f"model {spec.name}: {path} is not a CLIP-ReID ViT checkpoint: no {key}")
    positions = state[key].shape[0] - 1
    strides = [s for s in range(1, PATCH + 1) if grid(s, spec.input_size)[0] * grid(s, spec.input_size)[1] == positions]
    if len(strides) != 1:
        raise ReidrayError(
            f"model {spec.name}: {path}: {key} has {positions} patch positions, which no conv stride gives at input "
            f"{spec.input_size[0]}x{spec.input_size[1]}"
        )
    return strides[0]


def load_released(encoder: ClipReidEncoder, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a released state dict strictly; training-only keys are skipped by name, nothing else."""
    tower = {k: v for k, v in state.items() if k.startswith("image_encoder.") or k == "cv_embed"}
    unknown = sorted(k for k in state if k not in tower and not k.startswith(TRAINING_ONLY))
    if unknown:
        raise ReidrayError(f"{path} has keys outside CLIP-ReID's layout: {', '.join(unknown[:5])}")
    try:
        encoder.load_state_dict(tower, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        raise ReidrayError(f"{path} does not match CLIP-ReID's image tower: {detail[:400]}") from exc


def build(spec: ModelSpec, path: Path | None, *, random_init: bool) -> ClipReidEncoder:
    """The encoder for ``path`` (stride and cameras read from it), or a random one shaped like the default."""
    if random_init or path is None:
        return ClipReidEncoder(spec, stride=DEFAULT_STRIDE, n_cams=DEFAULT_CAMS, random_init=True)
    state = read_checkpoint(path)
    cams = state["cv_embed"].shape[0] if "cv_embed" in state else 0
    encoder = ClipReidEncoder(spec, stride=_stride_of(state, spec, path), n_cams=cams, random_init=False)
    check_shapes(spec.name, path, {k: tuple(v.shape) for k, v in state.items()},
                 {k: tuple(v.shape) for k, v in encoder.state_dict().items()}, "CLIP-ReID ViT-B/16", "image_encoder.")
    load_released(encoder, state, path)
    return encoder
