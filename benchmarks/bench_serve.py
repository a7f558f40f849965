"""Latency of the Serve application: p50 and p99 of POST /embed and POST /search at a few concurrency levels.

    python benchmarks/bench_serve.py                               # handcrafted, synthetic gallery, 1/4/16 clients
    python benchmarks/bench_serve.py --levels 1,8,32 --requests 500
    python benchmarks/bench_serve.py --url http://host:8000 --token T --out s3://b/out   # a running service

Without ``--url`` it starts everything locally: Ray, the built-in synthetic dataset (``--n-ids``
identities), the handcrafted cell through the real embed pipeline, then Serve on a free loopback
port. Each level runs ``--requests`` requests from that many concurrent clients (each sends its
next query image as soon as its previous answer arrives), after a warm-up that loads the model and
the gallery index. Latency is client-side, per request, over real HTTP; the clients share the
machine with the service, which matters on a small one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

DATASET = "reidray-synth"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local(out: str, n_ids: int, model: str, random_init: bool = False) -> tuple[str, list[Path]]:
    """Ray (unless already up), the synthetic data, the model's cell and the Serve app; returns the
    URL and the query images."""
    import ray
    from ray import serve

    from reidray import datasets
    from reidray.datasets.synth import generate
    from reidray.embed.pipeline import embed_cell
    from reidray.serve.app import APP_NAME, build_app
    from reidray.store import Store

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False)
    root = Path(out) / "data"
    generate(root, n_ids=n_ids)
    manifest = datasets.load(DATASET, root)
    store = Store.open(out)
    store.write_table(store.manifest_path(DATASET), manifest)
    embed_cell(store, model, DATASET, manifest, random_init=random_init, say=lambda _: None)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"out": store.base, "random_init": random_init}), name=APP_NAME, route_prefix="/")
    queries = [Path(p) for p, s in zip(manifest.column("path").to_pylist(), manifest.column("split").to_pylist())
               if s == "query"]
    return f"http://127.0.0.1:{port}", queries


async def run_level(url: str, headers: dict, route: str, params: dict, images: list[bytes], clients: int,
                    requests: int) -> np.ndarray:
    """Per-request latencies (s) of ``requests`` requests from ``clients`` concurrent clients."""
    latencies: list[float] = []
    next_index = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for i in next_index:
            start = time.perf_counter()
            response = await http.post(route, params=params, content=images[i % len(images)],
                                       headers={"Content-Type": "image/jpeg"})
            latencies.append(time.perf_counter() - start)
            response.raise_for_status()

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return np.array(latencies)


def measure_level(url: str, headers: dict, route: str, params: dict, images: list[bytes], clients: int,
                  requests: int) -> dict:
    """One table row: p50/p99 latency (ms) and requests/s of ``requests`` requests from ``clients`` clients."""
    start = time.perf_counter()
    lat = asyncio.run(run_level(url, headers, route, params, images, clients, requests))
    wall = time.perf_counter() - start
    return {"endpoint": route, "clients": clients, "requests": len(lat),
            "p50_ms": float(np.percentile(lat, 50) * 1e3), "p99_ms": float(np.percentile(lat, 99) * 1e3),
            "requests_per_s": len(lat) / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service; default: start one locally")
    parser.add_argument("--token", default=os.environ.get("REIDRAY_SERVE_TOKEN"))
    parser.add_argument("--out", help="output root (local start: default a temporary folder)")
    parser.add_argument("--model", default="handcrafted")
    parser.add_argument("--gallery", default=DATASET)
    parser.add_argument("--images", help="folder of query images (with --url); default: the synthetic queries")
    parser.add_argument("--n-ids", type=int, default=100, help="synthetic identities (local start)")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients per level")
    parser.add_argument("--requests", type=int, default=200, help="requests per endpoint and level")
    args = parser.parse_args()

    if args.url:
        url = args.url.rstrip("/")
        queries = sorted(Path(args.images).glob("*.jpg")) if args.images else []
        if not queries:
            parser.error("--url needs --images with .jpg query images")
    else:
        url, queries = start_local(args.out or tempfile.mkdtemp(prefix="bench-serve-"), args.n_ids, args.model)
    images = [p.read_bytes() for p in queries]
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    endpoints = {
        "/embed": {"model": args.model},
        "/search": {"model": args.model, "gallery": args.gallery, "k": 10},
    }
    for route, params in endpoints.items():  # warm-up: model loaded, gallery index built, connections open
        asyncio.run(run_level(url, headers, route, params, images, 4, 20))

    rows = []
    load_before = os.getloadavg()[0]
    for route, params in endpoints.items():
        for clients in (int(c) for c in args.levels.split(",")):
            rows.append(measure_level(url, headers, route, params, images, clients, args.requests))
    print(f"model {args.model}, gallery {args.gallery}, {len(images)} query images; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print("| endpoint | clients | p50 (ms) | p99 (ms) | requests/s |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| POST {r['endpoint']} | {r['clients']} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} "
              f"| {r['requests_per_s']:.1f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
