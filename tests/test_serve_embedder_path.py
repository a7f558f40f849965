"""The image path of the GPU layout, run on the CPU: the Gateway sends resized pixels to the
``Embedder`` deployment (``image_encoders: embedder``) instead of encoding in its own process.

tests/test_serve.py covers the default CPU layout (encoders in the ingress); here the same
queries must get the stored embeddings and the same rankings the other way round, and the
opt-in ``Server-Timing`` header must name the hops the benchmark reads.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from benchmarks.bench_serve import DATASET, prepare, start_serve
from reidray.serve.timing import parse
from reidray.store import Store


@pytest.mark.slow
def test_images_through_the_embedder_deployment_get_the_stored_answers(ray_session, tmp_path):
    from ray import serve

    from reidray.serve.galleries import build_index

    out = str(tmp_path)
    queries = prepare(out, 10, "handcrafted")[:4]
    store = Store.open(out)
    manifest = store.read_table(store.manifest_path(DATASET), columns=["image_id", "path"])
    image_ids = dict(zip(manifest.column("path").to_pylist(), manifest.column("image_id").to_pylist()))
    cell = store.read_cell("handcrafted", DATASET)
    stored = dict(zip(cell.column("image_id").to_pylist(), cell.column("embedding").to_pylist()))
    index = build_index(store, "handcrafted", DATASET, store.cell_marker("handcrafted", DATASET))

    serve.shutdown()  # HTTP options apply only to a fresh Serve
    try:
        url = start_serve(out, image_encoders="embedder")
        with httpx.Client(base_url=url, timeout=120) as client:
            for path in queries:
                body = Path(path).read_bytes()
                image_id = image_ids[str(path)]
                embedded = client.post("/embed", params={"model": "handcrafted"}, content=body,
                                       headers={"Content-Type": "image/jpeg"})
                assert embedded.status_code == 200, embedded.text
                vector = np.array(embedded.json()["embedding"], dtype=np.float32)
                np.testing.assert_allclose(vector, np.array(stored[image_id], dtype=np.float32), atol=1e-5, rtol=0)
                found = client.post("/search", params={"model": "handcrafted", "gallery": DATASET, "k": 5},
                                    content=body, headers={"Content-Type": "image/jpeg"})
                assert found.status_code == 200, found.text
                assert [h["image_id"] for h in found.json()["results"]] == [
                    h["image_id"] for h in index.search(vector, 5)]
                hops = parse(found.headers["server-timing"])
                assert {"app", "encode", "forward", "search", "batch"} <= set(hops)
                assert "decode" not in hops  # only the in-ingress pass reports one: this went through the Embedder
                assert hops["app"] >= hops["encode"] >= hops["forward"] > 0
    finally:
        serve.shutdown()
