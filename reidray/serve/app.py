"""The Ray Serve application: ``reidray.serve.app:build_app`` (the import path config files use).

Two deployments. ``Gateway``, the FastAPI ingress, checks each request (token, size, names,
image), decodes and resizes the image on the CPU exactly as the embed stage does, and keeps the
galleries' faiss indexes. Where the encoders get no GPU, the Gateway also runs the image
encoders itself (``embedder.LocalQueries``: decode, forward pass and search in one batched pass),
because each hop between deployments cost more than the encoding (docs/benchmarks.md); with
GPUs, ``Embedder`` holds them and the Gateway sends it resized pixels. ``Embedder`` always
holds the text towers. Endpoints::

    GET  /healthz        liveness, open without a token
    GET  /models         the models served here (and which have a text tower)
    GET  /galleries      the stored, complete (model, dataset) cells, and whether each is searchable
    POST /embed          ?model=&dataset=  body: the image's bytes      -> its embedding
    POST /search         ?model=&gallery=&k=   body: the image's bytes  -> top-k gallery images
    POST /search/text    {"model", "gallery", "text", "k"}             -> top-k gallery images
                         (language-aligned models: models.text.text_models())

Images travel as the raw request body (``curl --data-binary @q.jpg -H 'Content-Type:
image/jpeg'``): no multipart parser, and the size limit applies to the image itself. Statuses:
400 a body that is not an image, 401 no or wrong token, 404 an unknown model or gallery (the
message lists the valid names), 409 a gallery embedded by another version of the served model
(other weights, random or not, another dimension) or whose files fail verification,
413 a body or image past the limits, 415 a body declared as something other than an image,
422 bad parameters (or text for a model with no text tower), 503 a model that cannot be loaded.
A failed request fails alone: nothing a client sends can take a replica down.

Camera ids: CLIP-ReID uses ``camid=`` only for the dataset its checkpoint was trained on
(``/search`` with that gallery, ``/embed`` with that ``dataset=``), exactly as that dataset's
cells were embedded; elsewhere it is ignored (``models.uses_camera_ids``).

No ``from __future__ import annotations`` here: FastAPI reads the routes' annotations at run
time, from a copy of this module's globals that Serve pickles with the class.
"""

import asyncio
import functools
import logging
from typing import Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve.handle import DeploymentHandle

from reidray.errors import (
    CellError,
    ImageDecodeError,
    ImageTooLargeError,
    ReidrayError,
    UnknownNameError,
    WeightsNotFoundError,
    user_error,
)
from reidray.models import MODELS, ModelSpec, get, uses_camera_ids, weights_status
from reidray.models.text import NoTextTowerError, has_text_tower, text_models
from reidray.serve.embedder import (
    DATASET_SEP,
    TEXT_PREFIX,
    Embedder,
    ImageItem,
    LocalQueries,
    LocalQuery,
    ModelLoadError,
)
from reidray.serve.galleries import (
    Galleries,
    GalleryIndex,
    GalleryMismatchError,
    UnknownGalleryError,
    list_galleries,
)
from reidray.serve.guard import Guard, Policy
from reidray.serve.settings import ServeSettings, check_exposure, parse_settings, resolve_token
from reidray.serve.timing import note, span
from reidray.store import Store

APP_NAME = "reidray"
MAX_K = 100
MAX_TEXT_CHARS = 1000
IMAGE_BODY = {"requestBody": {"required": True, "content": {"image/*": {"schema": {"type": "string",
                                                                                  "format": "binary"}}}}}
log = logging.getLogger("ray.serve")


class UnservedModelError(ReidrayError):
    """A model name that is not registered, or whose weights are not on this server."""


class NotAnImageError(ReidrayError):
    """A body declared as something other than an image."""


class ParameterError(ReidrayError):
    """A parameter the route's schema cannot express (e.g. a camera id a model needs)."""


STATUS: list[tuple[type[Exception], int]] = [
    (UnservedModelError, 404), (UnknownNameError, 404), (UnknownGalleryError, 404),
    (NoTextTowerError, 422), (ParameterError, 422), (ImageTooLargeError, 413), (ImageDecodeError, 400),
    (NotAnImageError, 415), (GalleryMismatchError, 409), (WeightsNotFoundError, 503), (ModelLoadError, 503),
    (CellError, 500),
]


class Hit(BaseModel):
    rank: int
    image_id: str
    pid: int
    camid: int
    score: float = Field(description="higher is closer: cosine similarity, or minus the Euclidean distance")


class SearchResponse(BaseModel):
    model: str
    gallery: str
    metric: str
    random_init: bool = Field(description="random weights: the ranking means nothing (tests only)")
    gallery_size: int
    results: list[Hit]


class EmbedResponse(BaseModel):
    model: str
    dim: int
    metric: str
    normalized: bool
    random_init: bool
    embedding: list[float]


class TextQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str
    gallery: str
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    k: int = Field(default=10, ge=1, le=MAX_K)


app = FastAPI(title="reidray", summary="Person re-identification: embeddings and gallery search")
app.add_middleware(Guard)


def _status(exc: ReidrayError) -> int:
    for kind, status in STATUS:
        if isinstance(exc, kind):
            return status
    return 400


@app.exception_handler(ReidrayError)
async def _reidray_error(request: Request, exc: ReidrayError) -> JSONResponse:
    return JSONResponse({"detail": str(exc)}, status_code=_status(exc))


@app.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("reidray: request %s %s failed", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error ({type(exc).__name__}); the request was not served, "
                                   "the service keeps running"}, status_code=500)


def decode_resize(data: bytes, spec: ModelSpec, max_pixels: int) -> np.ndarray:
    """The embed stage's CPU step on uploaded bytes: decode (``reidray.images``, the pixel count
    checked from the header first), then ``resize``."""
    from reidray.images import decode
    from reidray.models.preprocess import resize

    try:
        image = decode(data, max_pixels)
    except ImageTooLargeError as exc:
        raise ImageTooLargeError(f"{exc}; send a smaller crop") from None
    except ImageDecodeError as exc:
        raise ImageDecodeError(
            f"the request body is not an image that decodes ({exc}); send the bytes of a JPEG, PNG, BMP or WebP file"
        ) from None
    return resize(image, spec)


async def _unwrap(response) -> Any:
    """Await a deployment call; a reidray error raised in the replica comes back as itself."""
    try:
        return await response
    except Exception as exc:
        cause = user_error(exc)
        if cause is not None:
            raise cause from None
        raise


def _http_host() -> str:
    """The host Serve's proxies listen on; unknown counts as exposed (the token rule fails closed)."""
    try:
        from ray.serve.context import _get_global_client

        return str(_get_global_client().http_config.host)
    except Exception:
        return "0.0.0.0"


def served_specs(settings: ServeSettings) -> dict[str, ModelSpec]:
    """The registry's models and the encoders by reference the settings name (models/references):
    only those, so a client can never make the server import code by naming it."""
    return {**MODELS, **{name: get(name) for name in settings.references}}


def _unavailable_models(settings: ServeSettings, specs: dict[str, ModelSpec]) -> dict[str, str]:
    """Served models whose weights are not on this server, with the reason (random init needs none)."""
    if settings.random_init:
        return {}
    missing = {}
    for name, spec in specs.items():
        if spec.needs_weights:
            available, where = weights_status(name, settings.weights.get(name))
            if not available:
                missing[name] = where
    return missing


# Two replicas by default: one replica's request handling (Serve's and the app's Python, bound to
# its process) overlaps the other's encoding (docs/benchmarks.md: a small gain at 8 clients on
# 2 cores). A config file's num_replicas or autoscaling_config overrides it.
@serve.deployment(name="Gateway", num_replicas=2, max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.5})
@serve.ingress(app)
class Gateway:
    """The HTTP API: validation, decoding, galleries; image embeddings from ``LocalQueries`` in this
    replica (no GPU for encoders) or from ``Embedder``, text embeddings from ``Embedder``.

    Serve pickles this class when it is decorated, with the module globals it uses as they are
    then: everything it calls is defined above it.
    """

    def __init__(self, embedder: DeploymentHandle, settings: dict[str, Any], local_images: bool) -> None:
        self.settings: ServeSettings = parse_settings(settings)
        token = resolve_token(self.settings)
        check_exposure(_http_host(), token)
        self.embedder = embedder
        self.local = LocalQueries(
            functools.partial(decode_resize, max_pixels=self.settings.max_image_pixels),
            random_init=self.settings.random_init, weights=self.settings.weights, precision=self.settings.precision,
            max_models=self.settings.max_models_per_replica, max_batch_size=self.settings.max_batch_size,
            batch_wait_timeout_s=self.settings.batch_wait_timeout_s,
        ) if local_images else None
        self.store = Store.open(self.settings.out, read_only=True)
        self.galleries = Galleries(self.store, max_kept=self.settings.max_galleries,
                                   random_init=self.settings.random_init)
        self.specs = served_specs(self.settings)
        self.unavailable = _unavailable_models(self.settings, self.specs)
        app.state.policy = Policy(token=token, max_upload_bytes=self.settings.max_upload_bytes,
                                  server_timing=self.settings.server_timing)

    # --- helpers ----------------------------------------------------------------------------
    def _spec(self, model: str) -> ModelSpec:
        served = [m for m in self.specs if m not in self.unavailable]
        if model not in self.specs:
            raise UnservedModelError(f"unknown model {model!r}; models served here: {', '.join(served)}")
        if model in self.unavailable:
            raise UnservedModelError(f"model {model!r} is not available on this server ({self.unavailable[model]}); "
                                     f"models served here: {', '.join(served)}")
        return self.specs[model]

    def _random_init(self, spec: ModelSpec) -> bool:
        return self.settings.random_init and spec.needs_weights

    async def _image_query(self, request: Request, spec: ModelSpec, camid: int | None, dataset: str | None,
                           index: GalleryIndex | None = None, k: int = 0) -> tuple[np.ndarray, list[dict] | None]:
        """The uploaded image's embedding, as the cells of ``dataset`` were embedded (camera ids only
        on the model's training dataset: ``models.uses_camera_ids``), and, with ``index``, its top-``k`` hits."""
        use_camera = uses_camera_ids(spec, dataset)
        if use_camera and camid is None:
            raise ParameterError(f"model {spec.name} uses {dataset}'s camera id (side information): pass camid=<int>")
        camid = camid if use_camera else None
        model_id = f"{spec.name}{DATASET_SEP}{dataset}" if use_camera else spec.name
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind and not (kind.startswith("image/") or kind == "application/octet-stream"):
            raise NotAnImageError(
                f"Content-Type {kind} is not an image; send the image's bytes as the body with Content-Type "
                "image/jpeg, image/png (or application/octet-stream)"
            )
        body = await request.body()
        if not body:
            raise ImageDecodeError("the request body is empty; send the bytes of an image")
        scope = request.scope
        if self.local is not None:  # decode, encode and search in one batched pass in this process
            with span(scope, "encode"):
                answer = await self.local.answer(LocalQuery(spec, model_id, body, camid, index, k))
            for name in ("decode_ms", "forward_ms", "search_ms"):
                note(scope, name.removesuffix("_ms"), getattr(answer, name))
            note(scope, "batch", answer.batch)
            return answer.vector, answer.hits
        with span(scope, "encode"):
            pixels = await asyncio.to_thread(decode_resize, body, spec, self.settings.max_image_pixels)
            handle = self.embedder.options(multiplexed_model_id=model_id)
            embedded = await _unwrap(handle.embed_images.remote(ImageItem(pixels, camid)))
        note(scope, "forward", embedded.forward_ms)
        note(scope, "batch", embedded.batch)
        if index is None:
            return embedded.vector, None
        with span(scope, "search"):
            hits = await asyncio.to_thread(index.search, embedded.vector, k)
        return embedded.vector, hits

    def _response(self, spec: ModelSpec, index: GalleryIndex, hits: list[dict]) -> SearchResponse:
        return SearchResponse(model=spec.name, gallery=index.dataset, metric=index.metric,
                              random_init=self._random_init(spec), gallery_size=index.size,
                              results=[Hit(**h) for h in hits])

    # --- routes -----------------------------------------------------------------------------
    @app.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/models")
    async def models(self) -> dict[str, Any]:
        rows = [
            {"name": spec.name, "paradigm": spec.paradigm, "dim": spec.dim, "metric": spec.metric,
             "input_size": list(spec.input_size), "uses_camera": spec.uses_camera, "text": has_text_tower(spec),
             "random_init": self._random_init(spec)}
            for spec in self.specs.values() if spec.name not in self.unavailable
        ]
        return {"models": rows, "text_models": [m for m in text_models() if m not in self.unavailable],
                "unavailable": self.unavailable}

    @app.get("/galleries")
    async def list_(self) -> dict[str, Any]:
        rows = []
        for row, marker in await asyncio.to_thread(list_galleries, self.store):
            spec = self.specs.get(row["model"])
            if spec is None:
                problem = f"model {row['model']} is not served here (not registered, nor a reference the server was given)"
            elif spec.name in self.unavailable:
                problem = f"model {spec.name} is not available on this server ({self.unavailable[spec.name]})"
            else:
                problem = self.galleries.problem(spec.name, row["dataset"], marker)
            rows.append({**row, "metric": marker.get("metric"), "searchable": problem is None, "problem": problem})
        return {"galleries": rows}

    @app.post("/embed", openapi_extra=IMAGE_BODY)
    async def embed(self, request: Request, model: str = Query(...), camid: int | None = Query(None),
                    dataset: str | None = Query(None, description="embed as this dataset's cells were")
                    ) -> EmbedResponse:
        spec = self._spec(model)
        vector, _ = await self._image_query(request, spec, camid, dataset)
        return EmbedResponse(model=model, dim=int(vector.shape[0]), metric=spec.metric, normalized=spec.normalize,
                             random_init=self._random_init(spec), embedding=vector.tolist())

    @app.post("/search", openapi_extra=IMAGE_BODY)
    async def search(self, request: Request, model: str = Query(...), gallery: str = Query(...),
                     k: int = Query(10, ge=1, le=MAX_K), camid: int | None = Query(None)) -> SearchResponse:
        spec = self._spec(model)
        index = await self.galleries.index(model, gallery)  # an unknown gallery fails before any embedding work
        _, hits = await self._image_query(request, spec, camid, gallery, index, k)
        return self._response(spec, index, hits)

    @app.post("/search/text")
    async def search_text(self, query: TextQuery) -> SearchResponse:
        spec = self._spec(query.model)
        if not has_text_tower(spec):
            usable = [m for m in text_models() if m not in self.unavailable]
            raise NoTextTowerError(f"model {spec.name} has no text tower; text queries work with: "
                                   + (", ".join(usable) or f"none on this server (weights missing for "
                                                           f"{', '.join(text_models())})"))
        index = await self.galleries.index(spec.name, query.gallery)
        handle = self.embedder.options(multiplexed_model_id=TEXT_PREFIX + spec.name)
        vector = await _unwrap(handle.embed_texts.remote(query.text))
        return self._response(spec, index, await asyncio.to_thread(index.search, vector, query.k))


def _cluster_gpus() -> float:
    import ray

    return 1.0 if ray.is_initialized() and ray.cluster_resources().get("GPU", 0) > 0 else 0.0


def build_app(args: dict[str, Any]) -> serve.Application:
    """The bound application from Serve app args (see ``ServeSettings``).

    Replica counts and autoscaling are Serve's own deployment options (``deployments:`` in the
    config file), not reidray's. Image encoders run in the ingress (``LocalQueries``) unless the
    settings say otherwise or the encoders get GPUs, where the ``Embedder`` holds them.
    """
    settings = parse_settings(args)
    num_gpus = settings.num_gpus if settings.num_gpus is not None else _cluster_gpus()
    local_images = settings.image_encoders == "ingress" or (settings.image_encoders == "auto" and not num_gpus)
    embedder = Embedder.options(ray_actor_options={"num_cpus": 1, "num_gpus": num_gpus}).bind(
        random_init=settings.random_init, weights=settings.weights, precision=settings.precision,
        max_models_per_replica=settings.max_models_per_replica, max_batch_size=settings.max_batch_size,
        batch_wait_timeout_s=settings.batch_wait_timeout_s,
    )
    return Gateway.bind(embedder, settings.model_dump(), local_images)
