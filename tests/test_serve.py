"""The Serve application over real HTTP: one local Serve instance for the whole module.

The handcrafted gallery is made by the real batch pipeline (synthetic data -> embed_cell), so the
served embeddings and rankings are checked against what the pipeline stored. The text search is
checked for wiring only, with a random-init CLIP text tower: its numbers mean nothing (the tower
itself is checked against open_clip in test_serve_text.py).
"""

from __future__ import annotations

import asyncio
import io
from pathlib import Path

import httpx
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import yaml
from PIL import Image

from benchmarks.bench_serve import free_ports
from reidray import datasets
from reidray.cells import CellRecord
from reidray.datasets.synth import generate
from reidray.errors import ReidrayError
from reidray.models import get
from reidray.serve.settings import check_exposure, is_loopback, parse_settings
from reidray.store import Store, seal_parts

TOKEN = "test-token-1234"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DATASET = "reidray-synth"
MAX_UPLOAD = 256 * 1024
MAX_PIXELS = 1_000_000
PROMPTS = ["a person in a red jacket", "a woman carrying a yellow bag"]


def _hand_made_cell(store: Store, manifest: pa.Table, model: str, planted: np.ndarray,
                    random_init: bool = True) -> list[str]:
    """A cell of ``model`` written by hand: the first gallery rows ``planted``, every other image a
    random unit vector; returns the planted rows' image ids."""
    from reidray.embed.actor import embedding_array

    spec = get(model)
    rows = manifest.sort_by("split")  # one row per manifest image, as verification wants; gallery first
    vectors = np.random.default_rng(0).normal(size=(rows.num_rows, spec.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    vectors[: len(planted)] = planted
    table = rows.select(["image_id", "pid", "camid", "split"]).append_column("embedding", embedding_array(vectors))
    cell = store.cell_dir(model, DATASET)
    store.write_table(f"{cell}/part-0.parquet", table)
    parts, _ = seal_parts(store, model, DATASET)
    record = CellRecord(model=model, dataset=DATASET, fingerprint="hand-made-for-the-wiring-test",
                        n_images=table.num_rows, dim=spec.dim, embed_seconds=0.0, device="cpu", precision="fp32",
                        random_init=random_init, weights_id=spec.weights_id, paradigm=spec.paradigm,
                        params_m=spec.params_m, metric=spec.metric, normalize=spec.normalize, parts=parts,
                        total_bytes=sum(p.bytes for p in parts))
    store.write_json(f"{cell}/cell.json", record.to_marker())
    return table.column("image_id").to_pylist()[: len(planted)]


def _text_galleries(store: Store, manifest: pa.Table) -> dict[str, str]:
    """clip-vit-b32: two rows are the Embedder's own (random-init) text embeddings of PROMPTS, asked
    through a Serve handle; over HTTP the same prompts must find them. siglip2-b16-256: a gallery
    whose text tower cannot be built on this machine (no config or tokenizer files). clip-vit-b16: a
    gallery embedded with trained weights, which the random-init service must refuse to mix."""
    from ray import serve

    from reidray.serve.app import APP_NAME
    from reidray.serve.embedder import TEXT_PREFIX

    handle = serve.get_deployment_handle("Embedder", APP_NAME)
    handle = handle.options(multiplexed_model_id=TEXT_PREFIX + "clip-vit-b32")
    planted = np.stack([response.result() for response in [handle.embed_texts.remote(p) for p in PROMPTS]])
    _hand_made_cell(store, manifest, "siglip2-b16-256", np.zeros((0, get("siglip2-b16-256").dim), np.float32))
    _hand_made_cell(store, manifest, "clip-vit-b16", np.zeros((0, get("clip-vit-b16").dim), np.float32),
                    random_init=False)
    return dict(zip(PROMPTS, _hand_made_cell(store, manifest, "clip-vit-b32", planted)))


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    """Synthetic data, the handcrafted cell from the real pipeline, a text cell, then Serve on a free port."""
    from ray import serve

    from reidray.embed.pipeline import embed_cell
    from reidray.serve.app import APP_NAME, build_app

    root = tmp_path_factory.mktemp("data")
    generate(root, n_ids=30)
    manifest = datasets.load(DATASET, root)
    store = Store.open(str(tmp_path_factory.mktemp("out")))
    store.write_table(store.manifest_path(DATASET), manifest)
    embed_cell(store, "handcrafted", DATASET, manifest, say=lambda _: None)

    port = free_ports(1)[0]
    serve.shutdown()  # HTTP options apply only to a fresh Serve: never inherit another module's instance
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"out": store.base, "token": TOKEN, "random_init": True, "max_upload_bytes": MAX_UPLOAD,
                         "max_image_pixels": MAX_PIXELS}), name=APP_NAME, route_prefix="/")
    planted = _text_galleries(store, manifest)  # galleries are read on first use: written after start is fine
    cell = store.read_cell("handcrafted", DATASET)
    paths = dict(zip(manifest.column("image_id").to_pylist(), manifest.column("path").to_pylist()))
    cell = cell.append_column("path", pa.array([paths[i] for i in cell.column("image_id").to_pylist()]))
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", headers=AUTH, timeout=120) as client:
        yield {"client": client, "cell": cell, "planted": planted, "url": f"http://127.0.0.1:{port}"}
    serve.shutdown()


def _rows(cell: pa.Table, split: str) -> pa.Table:
    return cell.filter(pc.equal(cell.column("split"), split)).sort_by("image_id")


def _vectors(table: pa.Table) -> np.ndarray:
    column = table.column("embedding").combine_chunks()
    return column.flatten().to_numpy().reshape(table.num_rows, -1)


def _post_image(client: httpx.Client, path: str, route: str = "/embed", **params) -> httpx.Response:
    return client.post(route, params={"model": "handcrafted", **params}, content=Path(path).read_bytes(),
                       headers={"Content-Type": "image/jpeg"})


def _brute_force(cell: pa.Table, query: np.ndarray, k: int) -> list[str]:
    """The top-k gallery image ids by cosine similarity, in numpy: what faiss must return."""
    gallery = _rows(cell, "gallery")
    g = _vectors(gallery)
    scores = (g / np.linalg.norm(g, axis=1, keepdims=True)) @ (query / np.linalg.norm(query))
    order = np.argsort(-scores, kind="stable")[:k]
    return [gallery.column("image_id")[int(i)].as_py() for i in order]


def _replicas() -> set[str]:
    import ray

    return {a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]}


def test_healthz_is_open_and_everything_else_needs_the_token(service):
    url = service["url"]
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": TOKEN}):
        for path in ("/models", "/galleries", "/docs", "/openapi.json"):
            response = httpx.get(f"{url}{path}", headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"] == "Bearer"
    response = httpx.post(f"{url}/embed", params={"model": "handcrafted"}, content=b"x")
    assert response.status_code == 401
    assert httpx.get(f"{url}/models", headers=AUTH).status_code == 200


def test_models_and_galleries_are_listed(service):
    client = service["client"]
    models = client.get("/models").json()
    handcrafted = next(m for m in models["models"] if m["name"] == "handcrafted")
    assert handcrafted["dim"] == get("handcrafted").dim and handcrafted["random_init"] is False
    assert "clip-vit-b32" in models["text_models"] and "handcrafted" not in models["text_models"]
    galleries = {(g["model"], g["dataset"]): g for g in client.get("/galleries").json()["galleries"]}
    assert galleries[("handcrafted", DATASET)]["n_images"] == service["cell"].num_rows
    assert galleries[("clip-vit-b32", DATASET)]["random_init"] is True
    assert galleries[("handcrafted", DATASET)]["searchable"] and galleries[("clip-vit-b32", DATASET)]["searchable"]
    trained = galleries[("clip-vit-b16", DATASET)]
    assert not trained["searchable"] and "random weights" in trained["problem"]


def test_embed_equals_the_batch_pipeline(service):
    client, cell = service["client"], service["cell"]
    sample = pa.concat_tables([_rows(cell, "query").slice(0, 3), _rows(cell, "gallery").slice(5, 2)])
    for row, stored in zip(sample.to_pylist(), _vectors(sample)):
        response = _post_image(client, row["path"])
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == "handcrafted" and body["dim"] == stored.shape[0] and body["random_init"] is False
        np.testing.assert_allclose(np.array(body["embedding"], dtype=np.float32), stored, atol=1e-5, rtol=0)


def test_search_ranks_the_query_identity_first_and_equals_brute_force(service):
    client, cell = service["client"], service["cell"]
    queries = _rows(cell, "query")
    first = 0
    for row, stored in zip(queries.to_pylist(), _vectors(queries)):
        response = _post_image(client, row["path"], "/search", gallery=DATASET, k=5)
        assert response.status_code == 200, response.text
        body = response.json()
        hits = body["results"]
        assert body["metric"] == "cosine" and body["gallery_size"] == _rows(cell, "gallery").num_rows
        assert [h["image_id"] for h in hits] == _brute_force(cell, stored, 5), row["image_id"]
        assert all(a["score"] >= b["score"] for a, b in zip(hits, hits[1:]))
        first += hits[0]["pid"] == row["pid"]
        gallery = _rows(cell, "gallery")
        top = gallery.filter(pc.equal(gallery.column("image_id"), hits[0]["image_id"])).to_pylist()[0]
        assert (hits[0]["pid"], hits[0]["camid"]) == (top["pid"], top["camid"])
    # Each synthetic identity has its own clothing colours: the baseline puts it first almost always.
    assert first / queries.num_rows >= 0.8, (first, queries.num_rows)


def test_text_search_finds_the_planted_text_embeddings(service):
    client, planted = service["client"], service["planted"]
    for prompt, image_id in planted.items():
        response = client.post("/search/text", json={"model": "clip-vit-b32", "gallery": DATASET, "text": prompt,
                                                     "k": 3})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["random_init"] is True and len(body["results"]) == 3
        assert body["results"][0]["image_id"] == image_id
        assert body["results"][0]["score"] == pytest.approx(1.0, abs=1e-4)
    response = client.post("/search/text", json={"model": "handcrafted", "gallery": DATASET, "text": "red"})
    assert response.status_code == 422 and "clip-vit-b32" in response.json()["detail"]


def _png(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("L", (width, height)).save(out, format="PNG")  # compresses to almost nothing
    return out.getvalue()


def test_bad_inputs_get_their_status_and_the_service_keeps_answering(service):
    client, cell = service["client"], service["cell"]
    path = _rows(cell, "query").column("path")[0].as_py()
    jpeg = Path(path).read_bytes()
    before = _replicas()
    assert any("Gateway" in name for name in before) and any("Embedder" in name for name in before)

    def chunks():
        for _ in range(8):
            yield b"\xff" * (64 * 1024)  # 512 KiB, chunked: no Content-Length to refuse up front

    cases = [
        ("POST", "/embed", {"params": {"model": "nope"}, "content": jpeg}, 404, "models served here: "),
        ("POST", "/search", {"params": {"model": "handcrafted", "gallery": "nope"}, "content": jpeg}, 404,
         f"galleries of handcrafted: {DATASET}"),
        ("POST", "/search", {"params": {"model": "handcrafted", "gallery": "../../etc"}, "content": jpeg}, 404,
         "no gallery"),
        ("POST", "/search", {"params": {"model": "random", "gallery": DATASET}, "content": jpeg}, 404,
         "galleries of random: none stored"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": b"hello"}, 400, "not an image that decodes"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": jpeg[: len(jpeg) // 2]}, 400, "decode"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": b""}, 400, "empty"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": jpeg,
                            "headers": {"Content-Type": "text/plain"}}, 415, "not an image"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": jpeg,
                            "headers": {"Content-Type": "multipart/form-data; boundary=x"}}, 415, "not an image"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": b"\0" * (MAX_UPLOAD + 1)}, 413, "exceeds"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": chunks()}, 413, "exceeds"),
        ("POST", "/embed", {"params": {"model": "handcrafted"}, "content": _png(2000, 1000)}, 413, "pixels"),
        ("POST", "/embed", {"params": {"model": "clip-reid-vit-b16", "dataset": "msmt17"}, "content": jpeg}, 422,
         "camid"),
        ("POST", "/search/text", {"json": {"model": "clip-vit-b16", "gallery": DATASET, "text": "red"}}, 409,
         "embedded with weights timm/vit_base_patch16_clip_224.openai but this service runs clip-vit-b16 with random"),
        # No SigLIP2 config or tokenizer on this machine: even a random-init text tower cannot be built.
        ("POST", "/search/text", {"json": {"model": "siglip2-b16-256", "gallery": DATASET, "text": "red"}}, 503,
         "siglip2-b16-256"),
        ("POST", "/embed", {"content": jpeg}, 422, "model"),
        ("POST", "/search", {"params": {"model": "handcrafted", "gallery": DATASET, "k": 0}, "content": jpeg}, 422,
         "greater than or equal to 1"),
        ("POST", "/search", {"params": {"model": "handcrafted", "gallery": DATASET, "k": 10**6}, "content": jpeg}, 422,
         "less than or equal to 100"),
        ("POST", "/search/text", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422, ""),
        ("POST", "/search/text", {"json": {"model": "clip-vit-b32", "gallery": DATASET, "text": ""}}, 422, "text"),
        ("POST", "/search/text", {"json": {"model": "clip-vit-b32", "gallery": DATASET, "text": "x" * 5000}}, 422,
         "at most 1000 characters"),
        ("POST", "/search/text", {"json": {"model": "clip-vit-b32", "gallery": DATASET, "text": "x", "extra": 1}},
         422, "extra"),
        ("GET", "/embed", {}, 405, ""),
        ("GET", "/no-such-route", {}, 404, ""),
    ]
    for method, route, kwargs, status, words in cases:
        response = client.request(method, route, **kwargs)
        assert response.status_code == status, (route, kwargs.get("params"), status, response.text)
        assert words in response.text, (route, words, response.text)

    assert client.get("/healthz").status_code == 200
    response = _post_image(client, path)
    assert response.status_code == 200
    np.testing.assert_allclose(response.json()["embedding"], _vectors(_rows(cell, "query"))[0], atol=1e-5)
    assert _replicas() == before  # no replica died and was replaced


def test_a_burst_of_concurrent_clients_all_get_correct_answers(service):
    url, cell = service["url"], service["cell"]
    rows = pa.concat_tables([_rows(cell, "query").slice(0, 12), _rows(cell, "gallery").slice(0, 12)])
    stored = _vectors(rows)

    async def one(client: httpx.AsyncClient, i: int) -> None:
        row = rows.slice(i, 1).to_pylist()[0]
        search = i % 2 == 1
        params = {"model": "handcrafted", **({"gallery": DATASET, "k": 3} if search else {})}
        response = await client.post("/search" if search else "/embed", params=params,
                                     content=Path(row["path"]).read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 200, response.text
        if search:
            assert [h["image_id"] for h in response.json()["results"]] == _brute_force(cell, stored[i], 3)
        else:
            np.testing.assert_allclose(response.json()["embedding"], stored[i], atol=1e-5, rtol=0)

    async def burst() -> None:
        limits = httpx.Limits(max_connections=16)
        async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=120, limits=limits) as client:
            await asyncio.gather(*(one(client, i) for i in range(rows.num_rows)))

    asyncio.run(burst())


def test_serve_config_file_is_valid_and_builds():
    from ray.serve.schema import ServeDeploySchema

    from reidray.serve import app

    config = yaml.safe_load((Path(app.__file__).parent / "serve_config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(config)
    (application,) = schema.applications
    assert application.import_path == "reidray.serve.app:build_app"
    assert {d.name for d in application.deployments} == {"Gateway", "Embedder"}
    assert parse_settings(application.args).out == config["applications"][0]["args"]["out"]
    assert config["http_options"]["host"] == "0.0.0.0"  # so the token rule must hold there


def test_settings_reject_unknown_keys_and_bad_values():
    with pytest.raises(ReidrayError, match="bogus"):
        parse_settings({"out": "/o", "bogus": 1})
    with pytest.raises(ReidrayError, match="max_upload_bytes"):
        parse_settings({"out": "/o", "max_upload_bytes": 0})


def test_the_command_refuses_an_open_host_without_a_token_before_starting_anything(tmp_path, monkeypatch):
    from reidray.serve.cli import serve_command

    monkeypatch.delenv("REIDRAY_SERVE_TOKEN", raising=False)
    with pytest.raises(ReidrayError, match="refusing to serve on 0.0.0.0 without a bearer token"):
        serve_command(str(tmp_path), host="0.0.0.0", port=free_ports(1)[0])


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "localhost", "::1", "[::1]"])
def test_loopback_hosts_may_run_without_a_token(host):
    assert is_loopback(host)
    check_exposure(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "my-host.example", ""])
def test_exposed_hosts_need_a_token(host):
    assert not is_loopback(host)
    with pytest.raises(ReidrayError, match="without a bearer token"):
        check_exposure(host, None)
    check_exposure(host, "a-token")
