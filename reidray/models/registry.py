"""The registry: one entry per model, every fact about it in one place (the catalogue).

It imports neither torch nor any model library, so anything that only needs a model's facts
(the CLI's name checks, the grid, serve's routing) reads them without loading a framework;
``factory`` builds encoders from these entries.

A model's weights, input size, resize policy, normalisation, embedding output, distance and
parameter count live only here (DESIGN.md: one concept, one home). The builders in the family
modules (``osnet``, ``clipreid``, ``openclip``, ``hf``, ``pe_spatial``, ``handcrafted``,
``control``) read the spec and nothing else.

Preprocessing policy. Every model gets the whole crop squashed to its input size (no centre
crop: a 224-wide crop of a 2:1 person image would cut off head and feet), with the
interpolation and mean/std of the model's own published preprocessing. The study's
``ToPILImage`` bug (paper_code.md section 1) is not reproduced.

Choices beyond the study. CLIP-ReID's default checkpoint is the released MSMT17 CLIP-ReID + SIE +
OLP model (the method's headline model); the study's config resolved to the ViT-baseline file,
which loads too (give its path: stride and cameras are read from the checkpoint). PE-Core is
labelled language-aligned (it is a CLIP model, trained image-text contrastively), where the
paper's Table 1 says self-supervised.

Precision. The encoders are built and loaded in float32 and, by default (``precision: auto``), run
in float32; a job or model entry may opt into bf16/fp16 autocast (``embed/actor.py``), which is
part of the cell's fingerprint.

Parameter counts. ``params_m`` is the vision tower reidray runs (what costs time and memory).
Table 1 of the paper counted whole modules; ``paper_params_m`` keeps its figure and
``paper_params_scope`` says what it covers, so a test can check the comparable count.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from reidray.errors import UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
# What transformers (>= 5) reads to build SigLIP2's Gemma tokenizer: tokenizer.json holds the
# vocabulary, merges and special tokens. The repos' tokenizer.model (sentencepiece) and
# special_tokens_map.json are never read when these two are there.
_SIGLIP2_TOKENIZER = ("tokenizer_config.json", "tokenizer.json")


@dataclass(frozen=True)
class ModelSpec:
    """Everything about one model (docs/contracts.md, Models); fields after ``batch_size`` are reidray's own."""

    name: str
    paradigm: str  # supervised | language-aligned | self-supervised | hand-crafted | control
    params_m: float  # vision tower as built, millions
    input_size: tuple[int, int]  # (h, w)
    resize: str  # squash
    interpolation: str  # bilinear | bicubic
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    dim: int
    normalize: bool  # the encoder's output is L2-normalised
    metric: str  # cosine | euclidean
    weights_id: str  # hub repo id, or the checkpoint's file name
    needs_weights: bool
    uses_camera: bool
    batch_size: int
    family: str  # builder module under reidray.models
    library: str  # the library that defines the architecture
    arch: str  # that library's name for the architecture
    embedding: str  # which output is the embedding
    trained_on: str = ""  # registered dataset the default checkpoint was fine-tuned on (its cameras, for SIE)
    revision: str = ""  # set when reidray's computation of the embedding changes: stored cells are redone
    weights_files: tuple[str, ...] = ()  # files needed from the hub repo (hub models)
    text_files: tuple[str, ...] = ()  # more files of that repo the text tower needs (its tokenizer)
    weights_url: str = ""  # where the weights come from (download source, or the page to get them)
    paper_name: str = ""  # the name in the paper's Table 1
    paper_params_m: float | None = None  # Table 1's figure
    paper_params_scope: str = ""  # what Table 1's figure counts
    # an encoder by reference (models/references): its library, version and resolved config, which go
    # into the cell fingerprint and cell.json; empty for registered models
    source: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def _spec(**kw: object) -> ModelSpec:
    kw.setdefault("resize", "squash")
    return ModelSpec(**kw)  # type: ignore[arg-type]


def _handcrafted(name: str, *, dim: int, arch: str, embedding: str) -> ModelSpec:
    """The hand-crafted descriptor or one of its halves: one preprocessing, no weights, no camera."""
    return _spec(
        name=name, paradigm="hand-crafted", params_m=0.0, input_size=(128, 64), interpolation="bilinear",
        mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dim=dim, normalize=True, metric="cosine", weights_id="",
        needs_weights=False, uses_camera=False, batch_size=256, family="handcrafted", library="reidray", arch=arch,
        embedding=embedding,
    )


def _hub(repo: str) -> str:
    return f"https://huggingface.co/{repo}"


_SPECS: list[ModelSpec] = [
    _spec(
        name="osnet-x1.0", paradigm="supervised", params_m=2.170, input_size=(256, 128),
        interpolation="bilinear", mean=IMAGENET_MEAN, std=IMAGENET_STD, dim=512,
        # torchreid's own test setting: raw features, euclidean distance
        normalize=False, metric="euclidean",
        weights_id="osnet_x1_0_market_256x128_amsgrad_ep150_stp60_lr0.0015_b64_fb10_softmax_labelsmooth_flip.pth",
        needs_weights=True, uses_camera=False, trained_on="market1501", batch_size=256, family="osnet",
        library="torchreid",
        arch="osnet_x1_0", embedding="eval-mode output: global average pool -> fc (512, BN, ReLU)",
        weights_url="https://drive.google.com/uc?id=1vduhq5DpN2q1g4fYEZfPI17MJeh9qyrA",
        paper_name="OSNet-x1.0", paper_params_m=2.5,
        paper_params_scope=(
            "backbone + a softmax classifier sized to the evaluated dataset's training ids: 2.5M fits "
            "Celeb-reID's 632 (2.494M); the Market-1501 classifier of the zoo file gives 2.555M"
        ),
    ),
    _spec(
        name="clip-reid-vit-b16", paradigm="supervised", params_m=86.215, input_size=(256, 128),
        interpolation="bilinear", mean=HALF, std=HALF, dim=1280, normalize=True, metric="cosine",
        weights_id="MSMT17_clipreid_12x12sie_ViT-B-16_60.pth",
        needs_weights=True, uses_camera=True, trained_on="msmt17", batch_size=128, family="clipreid",
        library="open_clip",
        arch="ViT-B-16 (OpenAI layout, QuickGELU), conv stride and SIE read from the checkpoint",
        embedding="cat(ln_post(CLS) 768, ln_post(CLS) @ proj 512), before the BN-necks (TEST.NECK_FEAT=before)",
        weights_url="https://drive.google.com/uc?id=1sPZbWTv2_stXBGutjHMvE87pAbSAgVaz",
        paper_name="CLIP-ReID", paper_params_m=87.5,
        paper_params_scope="ViT-B/16 visual at 256x128 stride 16 + BN-necks + two classifiers for MSMT17's 1,041 ids",
    ),
    _spec(
        name="clip-vit-b32", paradigm="language-aligned", params_m=87.849, input_size=(224, 224),
        interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD, dim=512, normalize=True, metric="cosine",
        weights_id="timm/vit_base_patch32_clip_224.openai", weights_files=("open_clip_model.safetensors",),
        needs_weights=True, uses_camera=False, batch_size=256, family="openclip", library="open_clip",
        arch="ViT-B-32-quickgelu", embedding="encode_image: ln_post(CLS) @ proj",
        weights_url=_hub("timm/vit_base_patch32_clip_224.openai"),
        paper_name="CLIP-B-32", paper_params_m=151.0, paper_params_scope="whole CLIP model (image + text towers)",
    ),
    _spec(
        name="clip-vit-b16", paradigm="language-aligned", params_m=86.193, input_size=(224, 224),
        interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD, dim=512, normalize=True, metric="cosine",
        weights_id="timm/vit_base_patch16_clip_224.openai", weights_files=("open_clip_model.safetensors",),
        needs_weights=True, uses_camera=False, batch_size=256, family="openclip", library="open_clip",
        arch="ViT-B-16-quickgelu", embedding="encode_image: ln_post(CLS) @ proj",
        weights_url=_hub("timm/vit_base_patch16_clip_224.openai"),
        paper_name="CLIP-B-16", paper_params_m=150.0, paper_params_scope="whole CLIP model (image + text towers)",
    ),
    _spec(
        name="clip-vit-l14", paradigm="language-aligned", params_m=303.966, input_size=(224, 224),
        interpolation="bicubic", mean=OPENAI_MEAN, std=OPENAI_STD, dim=768, normalize=True, metric="cosine",
        weights_id="timm/vit_large_patch14_clip_224.openai", weights_files=("open_clip_model.safetensors",),
        needs_weights=True, uses_camera=False, batch_size=128, family="openclip", library="open_clip",
        arch="ViT-L-14-quickgelu", embedding="encode_image: ln_post(CLS) @ proj",
        weights_url=_hub("timm/vit_large_patch14_clip_224.openai"),
        paper_name="CLIP-L-14", paper_params_m=428.0, paper_params_scope="whole CLIP model (image + text towers)",
    ),
    _spec(
        name="siglip2-b16-256", paradigm="language-aligned", params_m=92.930, input_size=(256, 256),
        interpolation="bilinear", mean=HALF, std=HALF, dim=768, normalize=True, metric="cosine",
        weights_id="google/siglip2-base-patch16-256", weights_files=("config.json", "model.safetensors"),
        text_files=_SIGLIP2_TOKENIZER,
        needs_weights=True, uses_camera=False, batch_size=256, family="hf", library="transformers",
        arch="SiglipVisionModel", embedding="get_image_features: attention-pool (MAP) head output",
        weights_url=_hub("google/siglip2-base-patch16-256"),
        paper_name="SigLIP2-256", paper_params_m=375.2,
        paper_params_scope="whole SigLIP model (image + text towers, 256k-token vocabulary)",
    ),
    _spec(
        name="siglip2-b16-384", paradigm="language-aligned", params_m=93.176, input_size=(384, 384),
        interpolation="bilinear", mean=HALF, std=HALF, dim=768, normalize=True, metric="cosine",
        weights_id="google/siglip2-base-patch16-384", weights_files=("config.json", "model.safetensors"),
        text_files=_SIGLIP2_TOKENIZER,
        needs_weights=True, uses_camera=False, batch_size=128, family="hf", library="transformers",
        arch="SiglipVisionModel", embedding="get_image_features: attention-pool (MAP) head output",
        weights_url=_hub("google/siglip2-base-patch16-384"),
        paper_name="SigLIP2-384", paper_params_m=375.5,
        paper_params_scope="whole SigLIP model (image + text towers, 256k-token vocabulary)",
    ),
    _spec(
        name="dinov2-b14", paradigm="self-supervised", params_m=86.580, input_size=(224, 224),
        interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, dim=768, normalize=True, metric="cosine",
        weights_id="facebook/dinov2-base", weights_files=("config.json", "model.safetensors"),
        needs_weights=True, uses_camera=False, batch_size=256, family="hf", library="transformers",
        arch="Dinov2Model", embedding="pooler_output: final-LayerNorm CLS token (x_norm_clstoken)",
        revision="released position resize",
        weights_url=_hub("facebook/dinov2-base"),
        paper_name="DINOv2-B14", paper_params_m=86.6, paper_params_scope="the backbone (Table 1 rounds it to 87M)",
    ),
    _spec(
        name="dinov2-l14", paradigm="self-supervised", params_m=304.369, input_size=(224, 224),
        interpolation="bicubic", mean=IMAGENET_MEAN, std=IMAGENET_STD, dim=1024, normalize=True, metric="cosine",
        weights_id="facebook/dinov2-large", weights_files=("config.json", "model.safetensors"),
        needs_weights=True, uses_camera=False, batch_size=128, family="hf", library="transformers",
        arch="Dinov2Model", embedding="pooler_output: final-LayerNorm CLS token (x_norm_clstoken)",
        revision="released position resize",
        weights_url=_hub("facebook/dinov2-large"),
        paper_name="DINOv2-L14", paper_params_m=304.4, paper_params_scope="the backbone",
    ),
    _spec(
        name="pe-core-l14-336", paradigm="language-aligned", params_m=317.152, input_size=(336, 336),
        interpolation="bilinear", mean=HALF, std=HALF, dim=1024, normalize=True, metric="cosine",
        weights_id="timm/PE-Core-L-14-336", weights_files=("open_clip_model.safetensors",),
        needs_weights=True, uses_camera=False, batch_size=64, family="openclip", library="open_clip",
        arch="PE-Core-L-14-336", embedding="encode_image: attention-pooled, projected image embedding",
        weights_url=_hub("timm/PE-Core-L-14-336"),
        paper_name="PE-Core-L14", paper_params_m=671.1, paper_params_scope="whole CLIP model (image + text towers)",
    ),
    _spec(
        name="pe-spatial-s16-512", paradigm="self-supervised", params_m=21.983, input_size=(512, 512),
        interpolation="bilinear", mean=HALF, std=HALF, dim=384,
        # a dense-feature model with no trained global embedding: the study's token mean, compared by angle
        normalize=False, metric="cosine",
        weights_id="timm/vit_pe_spatial_small_patch16_512.fb", weights_files=("model.safetensors",),
        needs_weights=True, uses_camera=False, batch_size=64, family="pe_spatial", library="timm",
        arch="vit_pe_spatial_small_patch16_512",
        embedding="mean of all output tokens (CLS + 32x32 patches), no final norm, no projection",
        weights_url=_hub("timm/vit_pe_spatial_small_patch16_512.fb"),
        paper_name="PE-Spatial-S16", paper_params_m=22.0, paper_params_scope="the vision tower",
    ),
    _handcrafted(
        "handcrafted", dim=774, arch="colour + texture stripe histograms",
        embedding="Hellinger-mapped colour (hue; saturation x brightness), gradient and SILTP histograms over 6 stripes",
    ),
    # The hand-crafted descriptor's two halves, each a model of its own: complementary encoders
    # that need no weights, fused by the embedded default (config.DEFAULT_FUSIONS).
    _handcrafted(
        "handcrafted-colour", dim=216, arch="colour stripe histograms",
        embedding="handcrafted's colour families only: hue and saturation x brightness histograms over 6 stripes",
    ),
    _handcrafted(
        "handcrafted-texture", dim=558, arch="texture stripe histograms",
        embedding="handcrafted's texture families only: gradient orientation, strength and SILTP histograms over 6 stripes",
    ),
    _spec(
        name="random", paradigm="control", params_m=0.0, input_size=(128, 64),
        interpolation="bilinear", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), dim=256, normalize=True,
        metric="cosine", weights_id="", needs_weights=False, uses_camera=False, batch_size=256,
        family="control", library="reidray", arch="pixel-seeded noise",
        embedding="Gaussian noise seeded by a hash of the exact pixels (no identity information)",
    ),
]

MODELS: dict[str, ModelSpec] = {s.name: s for s in _SPECS}


def names() -> list[str]:
    """Registered model names, in the registry's order (the paper's order, then the baselines)."""
    return list(MODELS)


def get(name: str) -> ModelSpec:
    """The spec of ``name``, a registered name or a reference (``timm:...``, ``python:...``: see
    ``models/references``, which imports the reference's library); UnknownNameError lists the valid names."""
    from reidray.models import references

    if references.is_reference(name):
        return references.spec(name)
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError("model", name, names()) from None


def uses_camera_ids(spec: ModelSpec, dataset: str | None) -> bool:
    """Whether ``spec``'s encoder adds its per-camera embedding for images of ``dataset``.

    Only on the dataset its checkpoint was trained on: camera ids of any other dataset name other
    cameras (Market's camera 3 is not MSMT17's camera 3; Celeb-reID's "camera" is an image index),
    so there the encoder runs without camera embedding (see ``clipreid``).
    """
    return spec.uses_camera and dataset is not None and dataset == spec.trained_on
