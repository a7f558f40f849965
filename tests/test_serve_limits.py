"""Serve's limits on what one request may cost and what a gallery must be, without a Serve instance:
the decoder, the gallery index and the status each error gets (tests/test_serve.py drives the same
code over real HTTP)."""

from __future__ import annotations

import asyncio
import io
import subprocess

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from reidray.cells import CellRecord
from reidray.embed.actor import embedding_array
from reidray.errors import ImageTooLargeError, ReidrayError
from reidray.models import get
from reidray.serve.app import _status, decode_resize
from reidray.serve.galleries import Galleries
from reidray.serve.settings import MAX_IMAGE_PIXELS, ServeSettings, clean_token, resolve_token
from reidray.store import Store, seal_parts


def _png(width: int, height: int) -> bytes:
    """A blank image: a PNG of a few hundred KB at most that would decode to width x height pixels."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def test_the_default_pixel_budget_keeps_one_decoded_upload_under_48_mb():
    assert ServeSettings(out="/x").max_image_pixels == MAX_IMAGE_PIXELS
    assert MAX_IMAGE_PIXELS * 4 <= 48 * 2**20  # RGBA, the widest mode PIL decodes a photo into


@pytest.mark.parametrize("side", [6300, 20000])  # past our budget; past PIL's own bomb ceiling too
def test_an_over_budget_image_gets_413(side):
    with pytest.raises(ImageTooLargeError, match="exceeds the limit") as caught:
        decode_resize(_png(side, side), get("handcrafted"), MAX_IMAGE_PIXELS)
    assert _status(caught.value) == 413


@pytest.mark.parametrize("token, expected", [("", None), ("   ", None), ("\t\n", None), (" s3cret ", "s3cret")])
def test_a_blank_token_is_no_token(token, expected, monkeypatch):
    monkeypatch.delenv("REIDRAY_SERVE_TOKEN", raising=False)
    assert clean_token(token) == expected
    assert resolve_token(ServeSettings(out="/x", token=token)) == expected


def _cell(store: Store, vectors: np.ndarray, model: str = "handcrafted", dataset: str = "reidray-synth") -> None:
    n = len(vectors)
    table = pa.table({"image_id": [f"g{i}.jpg" for i in range(n)], "pid": pa.array(range(n), pa.int64()),
                      "camid": pa.array([0] * n, pa.int32()), "split": ["gallery"] * n,
                      "embedding": embedding_array(vectors.astype(np.float32))})
    store.write_table(f"{store.cell_dir(model, dataset)}/part-0.parquet", table)
    parts, _ = seal_parts(store, model, dataset)  # as embed records them: the cell verifies
    spec = get(model)
    record = CellRecord(model=model, dataset=dataset, fingerprint="nan-test", n_images=n, dim=spec.dim,
                        embed_seconds=0.0, device="cpu", precision="fp32", random_init=False,
                        weights_id=spec.weights_id, paradigm=spec.paradigm, params_m=spec.params_m,
                        metric=spec.metric, normalize=spec.normalize, parts=parts,
                        total_bytes=sum(p.bytes for p in parts))
    store.write_json(f"{store.cell_dir(model, dataset)}/cell.json", record.to_marker())


def test_a_gallery_with_nan_embeddings_is_refused_and_listed_as_not_searchable(tmp_path):
    store = Store.open(str(tmp_path))
    vectors = np.random.default_rng(0).normal(size=(8, get("handcrafted").dim))
    vectors[3, 5] = np.nan
    _cell(store, vectors)
    galleries = Galleries(Store.open(str(tmp_path), read_only=True), max_kept=2, random_init=False)
    marker = store.cell_marker("handcrafted", "reidray-synth")
    assert galleries.problem("handcrafted", "reidray-synth", marker) is None  # not yet looked at
    with pytest.raises(ReidrayError, match="1 of its embeddings contain NaN") as caught:
        asyncio.run(galleries.index("handcrafted", "reidray-synth"))
    assert _status(caught.value) == 409
    assert "not searchable" in galleries.problem("handcrafted", "reidray-synth", marker)


def test_serve_opens_the_output_root_without_writing(tmp_path):
    with pytest.raises(ReidrayError, match="does not exist"):
        Store.open(str(tmp_path / "missing"), read_only=True)
    root = tmp_path / "ro"
    root.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(root)]).returncode != 0:
        pytest.skip("cannot mount a read-only folder here (needs root)")
    try:
        with pytest.raises(ReidrayError, match="not writable"):
            Store.open(str(root))
        assert Store.open(str(root), read_only=True).base == str(root)
    finally:
        subprocess.run(["umount", str(root)], check=True)
