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
# What ``auto`` means for the encoders, on CPUs and GPUs alike (embed and serve): bf16/fp16 are
# opt-in until their ranking tolerance is measured on a GPU with the trained weights.
AUTO_PRECISION = "fp32"


def resolve_precision(precision: str) -> str:
    """The arithmetic an encoder runs in: ``auto`` is ``AUTO_PRECISION``, on any device."""
    return AUTO_PRECISION if precision == "auto" else precision


def first_problem(exc: ValidationError) -> tuple[tuple, str]:
    """The first validation error as (its location, ``"where: what"``), for a one-line message."""
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "(top level)"
    return err["loc"], f"{where}: {err['msg']}"


class ModelEntry(BaseModel):
    """One model of the grid, with an optional explicit weights file and precision."""

    model_config = ConfigDict(extra="forbid")
    name: str
    weights: str | None = None
    precision: Precision | None = Field(default=None, description="overrides embed.precision for this model")


class DatasetEntry(BaseModel):
    """A dataset of one's own in a job file: its name and source (see ``datasets/custom.py``)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    source: str = Field(description="market-style:<folder>, manifest:<file>, or a .csv/.parquet file")
    protocol: Literal["market", "no-camera-filter"] | None = Field(
        default=None, description="default: market, or no-camera-filter for a manifest without camid"
    )


class EmbedSettings(BaseModel):
    """How the embed stage asks Ray for resources."""

    model_config = ConfigDict(extra="forbid")
    batch_size: int | None = Field(default=None, gt=0, description="per-model default when unset")
    num_gpus: float | None = Field(default=None, ge=0, description="per actor; auto: 1 if GPUs exist")
    concurrency: tuple[int, int] = Field(default=(1, 4), description="actor pool (min, max)")
    decode_batch_size: int = Field(default=64, gt=0)
    precision: Precision = Field(
        default="auto", description="auto: fp32 (bf16/fp16 autocast only when set)"
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

    def resources(self) -> dict[str, float]:
        """What one score task asks Ray for: checked before embedding and watched while scoring."""
        return {"CPU": self.num_cpus, "GPU": self.num_gpus}

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


# The embedded default's fusion (no job file, no -m): the hand-crafted descriptor's colour and
# texture halves, two encoders that need no weights and see different things. Weights 0.7/0.3 were
# picked on the default reidray-synth set, where they lift mAP above both members (colour 69.2,
# texture 15.0, fused 70.8; equal weights give 65.6).
DEFAULT_FUSIONS = [
    FusionEntry(name="fusion-colour-texture", models=["handcrafted-colour", "handcrafted-texture"],
                weights=[0.7, 0.3]),
]


class SyntheticSettings(BaseModel):
    """The size of the built-in reidray-synth dataset: ``datasets.synth.generate``'s size options."""

    model_config = ConfigDict(extra="forbid")
    n_ids: int = Field(default=100, ge=2, description="test identities (query and gallery)")
    n_cams: int = Field(default=6, ge=2, description="cameras")
    n_train_ids: int | None = Field(default=None, ge=0, description="train identities; null: n_ids // 2")
    seed: int = Field(default=0, description="the drawing's seed")


class JobConfig(BaseModel):
    """A whole run: what to evaluate, where the data is, where results go."""

    model_config = ConfigDict(extra="forbid")
    name: str = "adhoc"
    data_root: str | None = None
    output: str = Field(default_factory=lambda: default_output())
    models: list[ModelEntry] = Field(default_factory=list)
    datasets: list[str | DatasetEntry] = Field(
        default_factory=list, description="registered names, sources ([name=]market-style:<folder>, <file>.csv), entries"
    )
    dataset_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    random_init: bool = False
    synthetic: SyntheticSettings = Field(default_factory=SyntheticSettings)
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
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "cannot be parsed"
        raise ReidrayError(f"job file {path}, line {line}: not valid YAML ({problem})") from None
    except yaml.YAMLError as exc:
        raise ReidrayError(f"job file {path}: not valid YAML ({type(exc).__name__})") from None
    if not isinstance(data, dict):
        raise ReidrayError(f"job file {path}: the top level must be a mapping of settings")
    try:
        job = JobConfig.model_validate(data)
    except ValidationError as exc:
        loc, problem = first_problem(exc)
        raise ReidrayError(f"job file {path}, line {_line_of(node, loc)}: {problem}") from None
    problems = unknown_names(job)
    if problems:
        loc, problem = problems[0]
        raise ReidrayError(f"job file {path}, line {_line_of(node, loc)}: {problem}")
    return job


def unknown_names(job: JobConfig) -> list[tuple[tuple, str]]:
    """Every model or dataset name of ``job`` that is not registered, as (its location, the message)."""
    from reidray.datasets.custom import is_source
    from reidray.datasets.registry import get as get_dataset
    from reidray.models.registry import get as get_model

    # datasets of one's own (sources, entries) are checked when declared, with their own messages
    dataset_names = [name if isinstance(name, str) and not is_source(name) else None for name in job.datasets]
    problems = []
    for key, names, get in (("models", [e.name for e in job.models], get_model), ("datasets", dataset_names, get_dataset)):
        for index, name in enumerate(names):
            if name is None:
                continue
            try:
                get(name)
            except ReidrayError as exc:
                problems.append(((key, index), str(exc)))
    return problems


def check_names(job: JobConfig) -> None:
    """Refuse unknown model or dataset names before any work starts (command-line names)."""
    problems = unknown_names(job)
    if problems:
        raise ReidrayError(problems[0][1])


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


WAIT_ENV = "REIDRAY_WAIT_SECONDS"


def wait_seconds() -> float:
    """How long reidray waits for something outside it before it stops and says why: a Ray cluster
    to answer at --address, a node that can hold an encoder actor or a score task (an autoscaler
    adding one). $REIDRAY_WAIT_SECONDS, default 60: a property of the cluster, not of the grid
    (cluster/runtime_env.yaml and the KubeRay manifests give GPU nodes time to boot)."""
    value = os.environ.get(WAIT_ENV, "60")
    try:
        seconds = float(value)
    except ValueError:
        raise ReidrayError(f"{WAIT_ENV}={value!r} is not a number of seconds") from None
    return max(seconds, 0.0)


def default_output() -> str:
    return os.environ.get("REIDRAY_OUT", "out")
