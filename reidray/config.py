"""The run's settings and the job file (``jobs/*.yaml``) schema.

A job file names the grid (models x datasets) and how to run it. Command-line options override
the file. A wrong file is rejected with the line and the reason, before any work starts.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from reidray.errors import ReidrayError

SYNTHETIC = "reidray-synth"


Precision = Literal["auto", "fp32", "bf16", "fp16"]


class ModelEntry(BaseModel):
    """One model of the grid, with an optional explicit weights file and precision."""

    model_config = ConfigDict(extra="forbid")
    name: str
    weights: str | None = None
    precision: Precision | None = Field(default=None, description="overrides embed.precision for this model")


class EmbedSettings(BaseModel):
    """How the embed stage asks Ray for resources."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int | None = Field(default=None, gt=0, description="per-model default when unset")
    num_gpus: float | None = Field(default=None, ge=0, description="per actor; auto: 1 if GPUs exist")
    concurrency: tuple[int, int] = Field(default=(1, 4), description="actor pool (min, max)")
    decode_batch_size: int = Field(default=64, gt=0)
    precision: Precision = Field(
        default="auto", description="auto: bf16 autocast on GPUs, fp32 on CPUs"
    )
    share_decode: bool = Field(
        default=True, description="decode once for models of one input size, if the copy fits half the object store"
    )
    progress_seconds: float = Field(default=10.0, gt=0, description="how often a cell reports progress")

    @field_validator("concurrency")
    @classmethod
    def _ordered(cls, value: tuple[int, int]) -> tuple[int, int]:
        if not 1 <= value[0] <= value[1]:
            raise ValueError("concurrency must be [min, max] with 1 <= min <= max")
        return value


class RerankSettings(BaseModel):
    """k-reciprocal re-ranking (torchreid's re_ranking parameters; the paper's defaults)."""

    model_config = ConfigDict(extra="forbid")
    k1: int = Field(default=20, ge=1)
    k2: int = Field(default=6, ge=1)
    lambda_value: float = Field(default=0.3, ge=0, le=1)


class AqeSettings(BaseModel):
    """Average query expansion (fast-reid's qe_k, alpha, qe_times; its defaults)."""

    model_config = ConfigDict(extra="forbid")
    k: int = Field(default=5, ge=1)
    alpha: float = 3.0
    times: int = Field(default=1, ge=1)


class ScoreSettings(BaseModel):
    """What each cell's score task asks Ray for: it ranks on every CPU (or the GPU) it is given;
    and which post-processed rows it adds to the plain ones (null = none)."""

    model_config = ConfigDict(extra="forbid")
    num_cpus: float = Field(default=1, gt=0, description="per score task; torch ranks with this many threads")
    num_gpus: float = Field(default=0, ge=0, description="per score task; > 0 ranks on the GPU")
    rerank: RerankSettings | None = Field(
        default=None, description="{} for the defaults; adds postprocess 'rerank' rows"
    )
    aqe: AqeSettings | None = Field(default=None, description="{} for the defaults; adds postprocess 'aqe' rows")

    def postprocessing(self) -> dict[str, dict[str, Any]]:
        """Each post-processing to score after the plain rows, with evaluate's options for it."""
        chosen = {"rerank": self.rerank, "aqe": self.aqe}
        return {name: options.model_dump() for name, options in chosen.items() if options is not None}


class FusionEntry(BaseModel):
    """A fused encoder: the weighted sum of member models' per-query standardised distances,
    scored on every dataset of the grid as one more model (paradigm "fusion")."""

    model_config = ConfigDict(extra="forbid")
    name: str
    models: list[str] = Field(min_length=2)
    weights: list[float] | None = Field(default=None, description="one per model; default: equal")

    @model_validator(mode="after")
    def _one_weight_each(self) -> FusionEntry:
        if self.weights is not None and len(self.weights) != len(self.models):
            raise ValueError(f"fusion {self.name}: {len(self.weights)} weights for {len(self.models)} models")
        return self

    def member_weights(self) -> list[float]:
        return self.weights or [1.0 / len(self.models)] * len(self.models)


class JobConfig(BaseModel):
    """A whole run: what to evaluate, where the data is, where results go."""

    model_config = ConfigDict(extra="forbid")
    name: str = "adhoc"
    data_root: str | None = None
    output: str = Field(default_factory=lambda: default_output())
    models: list[ModelEntry] = Field(default_factory=list)
    datasets: list[str] = Field(default_factory=list)
    dataset_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    random_init: bool = False
    synthetic: dict[str, int] = Field(default_factory=dict, description="generate() size options")
    embed: EmbedSettings = Field(default_factory=EmbedSettings)
    score: ScoreSettings = Field(default_factory=ScoreSettings)
    fusions: list[FusionEntry] = Field(default_factory=list)
    report: Literal[True, False] = True

    @field_validator("models", mode="before")
    @classmethod
    def _names_or_entries(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    def weights_for(self, model: str) -> str | None:
        entry = self._entry(model)
        return entry.weights if entry else None

    def embed_for(self, model: str) -> EmbedSettings:
        """The embed settings of one model: the job's, with the model entry's precision if it has one."""
        entry = self._entry(model)
        if entry is None or entry.precision is None:
            return self.embed
        return self.embed.model_copy(update={"precision": entry.precision})

    def _entry(self, model: str) -> ModelEntry | None:
        return next((entry for entry in self.models if entry.name == model), None)


def load_job(path: str | Path) -> JobConfig:
    """Parse and validate a job file; errors say the file, the line and the reason."""
    path = Path(path)
    if not path.is_file():
        raise ReidrayError(f"job file {path} does not exist")
    text = path.read_text()
    try:
        node = yaml.compose(text)
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ReidrayError(f"job file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ReidrayError(f"job file {path}: the top level must be a mapping of settings")
    try:
        return JobConfig.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        line = _line_of(node, err["loc"])
        raise ReidrayError(f"job file {path}, line {line}: {where}: {err['msg']}") from exc


def _line_of(node: yaml.Node | None, loc: tuple) -> int:
    """The 1-based line of the deepest YAML node along ``loc`` that exists."""
    line = node.start_mark.line + 1 if node is not None else 1
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [(k, v) for k, v in node.value if k.value == key]
            if not match:
                break
            key_node, node = match[0]
            line = key_node.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line


def default_output() -> str:
    return os.environ.get("REIDRAY_OUT", "out")
