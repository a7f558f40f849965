"""Live search: reidray's Serve app against one plain process doing the same work, in one run.

    python benchmarks/bench_serve.py                        # handcrafted, synthetic gallery, 1/8/32 clients
    python benchmarks/bench_serve.py --levels 1,8,32 --seconds 10
    python benchmarks/bench_serve.py --ingress proxy                 # Serve's Python proxy instead of HAProxy
    python benchmarks/bench_serve.py --url http://host:8000 --token T --images q/   # a running service only

Without ``--url`` it starts everything locally: Ray, the built-in synthetic dataset (``--n-ids``
identities), the model's cell through the real embed pipeline, then two servers on free loopback
ports: the Serve app (``reidray.serve.app``) and the *plain* baseline, one uvicorn process with
a FastAPI app that loads the same cell and calls the same reidray functions (``decode_resize``,
the embed stage's ``EncoderActor``, the galleries' faiss index), no Ray. Each level sends
``POST /search`` (top-10) from that many concurrent clients, each sending its next query image as
soon as its previous answer arrives, for ``--seconds`` per side (at most ``--requests``); the
sides alternate within each level, so all meet the same machine load. Ray starts with the HTTP
front ``python -m reidray.run serve`` gives by default (``--ingress``: ``reidray.serve.ingress``).

Latency and throughput are client-side, over real HTTP on 127.0.0.1. The time per hop comes from
the servers' ``Server-Timing`` header (``reidray.serve.timing``; both sides run with it on):
``proxy`` is the client's latency minus the time inside the ingress app (the HTTP server and, for
Serve, its HTTP front and the hop to the replica), ``ingress`` the app's own work (checks, reading
the body, the response), ``encoder`` the wait for the image's answer less the search (queue,
decode, forward pass), ``index`` the faiss search; ``decode`` and ``forward`` are those steps over
the batch the request was in, ``batch`` the mean batch size; medians. Wall-clock figures depend on
what else the machine runs; the second table does less: the CPU milliseconds each process group
spent per request (Linux /proc, the servers being this process's descendants).

The functions (``prepare``, ``start_serve``, ``plain_server``, ``run_level``,
``compare``, ``markdown``) are importable: the GPU proof and tests/test_serve_speed.py use them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
from fastapi import FastAPI, Query, Request  # at module level: the plain app's annotations resolve here
from fastapi.responses import JSONResponse

from reidray.serve.ingress import DEFAULT, INGRESSES, use_ingress

DATASET = "reidray-synth"
HOPS = ("proxy", "ingress", "encoder", "index")


# Ports handed out here lie where nothing else picks its own: above Ray's worker ports (10002-19999),
# below Serve's direct-ingress replica ports (30000+) and Linux's ephemeral range (32768+), from
# which the kernel serves every `bind(port 0)` and outgoing connection. So between our pick and
# the server's bind no other process takes one. Parallel test processes (pytest-xdist sets
# PYTEST_XDIST_WORKER=gw<n>) draw from separate slices, so they never pick the same one.
PORTS = range(20000, 30000)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports free now, held open together while picked."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw")
    slices = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    size = len(PORTS) // slices
    candidates = list(PORTS[int(worker) * size:(int(worker) + 1) * size])
    random.shuffle(candidates)
    held: list[socket.socket] = []
    try:
        for port in candidates:
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use
                s.close()
                continue
            held.append(s)
            if len(held) == n:
                return [s.getsockname()[1] for s in held]
        raise RuntimeError(f"fewer than {n} free ports in {candidates[0]}-{candidates[-1]}")
    finally:
        for s in held:
            s.close()


def prepare(out: str, n_ids: int, model: str, random_init: bool = False) -> list[Path]:
    """The synthetic data and the model's cell under ``out`` (Ray must be up); returns the query images."""
    from reidray import datasets
    from reidray.datasets.synth import generate
    from reidray.embed.pipeline import embed_cell
    from reidray.store import Store

    root = Path(out) / "data"
    generate(root, n_ids=n_ids)
    manifest = datasets.load(DATASET, root)
    store = Store.open(out)
    store.write_table(store.manifest_path(DATASET), manifest)
    embed_cell(store, model, DATASET, manifest, random_init=random_init, say=lambda _: None)
    return [Path(p) for p, s in zip(manifest.column("path").to_pylist(), manifest.column("split").to_pylist())
            if s == "query"]


def start_serve(out: str, **settings) -> str:
    """The Serve app over ``out`` on a free loopback port (Ray must be up); returns its URL."""
    from ray import serve

    from reidray.serve.app import APP_NAME, build_app

    port = free_ports(1)[0]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"out": out, "server_timing": True, **settings}), name=APP_NAME, route_prefix="/")
    return f"http://127.0.0.1:{port}"


def _healthy(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


# --- the plain baseline -------------------------------------------------------------------------
def plain_app(out: str, model: str, gallery: str, random_init: bool = False):
    """One process, no Ray: FastAPI calling the functions the Serve app calls, in a worker thread
    (on the GPU when there is one, in the Serve app's precision rule)."""
    import torch

    from reidray.config import resolve_precision
    from reidray.embed.actor import EncoderActor
    from reidray.models import get
    from reidray.serve.app import decode_resize
    from reidray.serve.galleries import build_index
    from reidray.serve.timing import span, timed
    from reidray.store import Store

    store = Store.open(out)
    spec = get(model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    encoder = EncoderActor(model, None, random_init, precision=resolve_precision("auto"), device=device)
    index = build_index(store, model, gallery, store.cell_marker(model, gallery) or {})

    def answer(scope: dict, body: bytes, k: int) -> list[dict]:
        with span(scope, "decode"):
            pixels = decode_resize(body, spec, 40_000_000)
        with span(scope, "forward"):
            vector = encoder.embed(torch.from_numpy(pixels[None]).to(device))[0].cpu().numpy()
        with span(scope, "search"):
            return index.search(vector, k)

    api = FastAPI()

    @api.get("/healthz")
    async def healthz() -> dict:
        return {"status": "ok"}

    @api.post("/search")
    async def search(request: Request, k: int = Query(10)):
        body = await request.body()
        with span(request.scope, "encode"):
            hits = await asyncio.to_thread(answer, request.scope, body, k)
        return JSONResponse({"model": model, "gallery": gallery, "results": hits})

    async def timed_app(scope, receive, send):
        if scope["type"] == "http":
            send = timed(scope, send)
        await api(scope, receive, send)

    return timed_app


@contextlib.contextmanager
def plain_server(out: str, model: str, gallery: str = DATASET, random_init: bool = False) -> Iterator[str]:
    """The plain baseline in its own process on a free loopback port; stopped on exit."""
    port = free_ports(1)[0]
    command = [sys.executable, __file__, "--plain-server", out, "--port", str(port), "--model", model,
               "--gallery", gallery, *(["--random-init"] if random_init else [])]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the plain server exited with status {proc.returncode}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the plain server did not start within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_plain(out: str, port: int, model: str, gallery: str, random_init: bool) -> None:
    import uvicorn

    uvicorn.run(plain_app(out, model, gallery, random_init), host="127.0.0.1", port=port, log_level="warning",
                access_log=False)


# --- CPU per request -----------------------------------------------------------------------------
GROUPS = (("ProxyActor", "proxy"), ("bin/haproxy", "proxy"), ("HAProxyManager", "proxy"), ("Gateway", "ingress"),
          ("Embedder", "embedder"), ("--plain-server", "plain"))


def _cpu_by_process() -> dict[int, tuple[str, float]]:
    """CPU seconds so far of this process and its descendants (Linux /proc), with each one's group name."""
    if not os.path.isdir("/proc"):
        return {}
    children: dict[int, list[int]] = {}
    stats: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            stats[int(entry)] = fields
            children.setdefault(int(fields[1]), []).append(int(entry))
    tick = os.sysconf("SC_CLK_TCK")
    out, stack = {}, [os.getpid()]
    while stack:
        pid = stack.pop()
        stack += children.get(pid, [])
        if pid not in stats:
            continue
        try:
            with open(f"/proc/{pid}/cmdline") as f:
                cmd = f.read()
        except OSError:
            continue
        group = "client" if pid == os.getpid() else next((g for key, g in GROUPS if key in cmd), "ray, other")
        out[pid] = (group, (int(stats[pid][11]) + int(stats[pid][12])) / tick)
    return out


def _cpu_per_request(before: dict, after: dict, requests: int) -> dict[str, float]:
    """CPU milliseconds per request by process group between two ``_cpu_by_process`` samples."""
    total: dict[str, float] = {}
    for pid, (group, seconds) in after.items():
        total[group] = total.get(group, 0.0) + seconds - before.get(pid, (group, 0.0))[1]
    return {f"cpu {g}": v * 1e3 / max(requests, 1) for g, v in sorted(total.items()) if v > 0}


# --- load ---------------------------------------------------------------------------------------
@dataclass
class Level:
    """One side at one concurrency: client latencies (s), wall time, and the servers' timings (ms)."""

    side: str
    clients: int
    latencies: list[float] = field(default_factory=list)
    timings: list[dict[str, float]] = field(default_factory=list)
    wall: float = 0.0

    def row(self) -> dict:
        lat = np.array(self.latencies) * 1e3
        hops = {}
        if self.timings:
            def spans(name: str) -> np.ndarray:
                return np.array([t.get(name, 0.0) for t in self.timings])

            app, encode, search = spans("app"), spans("encode"), spans("search")
            hops = {"proxy": lat[: len(app)] - app, "ingress": app - encode, "encoder": encode - search,
                    "index": search, "decode": spans("decode"), "forward": spans("forward")}
            hops = {name: float(np.median(values)) for name, values in hops.items()}
            hops["batch"] = float(np.mean(spans("batch"))) or 1.0
        return {"side": self.side, "clients": self.clients, "requests": len(lat),
                "requests_per_s": len(lat) / self.wall if self.wall else 0.0,
                "p50_ms": float(np.percentile(lat, 50)), "p99_ms": float(np.percentile(lat, 99)), **hops}


async def run_level(url: str, side: str, clients: int, images: list[bytes], params: dict, *,
                    seconds: float, max_requests: int, headers: dict | None = None) -> Level:
    """``clients`` concurrent clients posting ``/search`` until ``seconds`` pass or ``max_requests`` are sent."""
    from reidray.serve.timing import parse

    level = Level(side, clients)
    counter = iter(range(max_requests))
    stop = time.perf_counter() + seconds

    async def client(http: httpx.AsyncClient) -> None:
        for i in counter:
            if time.perf_counter() > stop:
                return
            start = time.perf_counter()
            response = await http.post("/search", params=params, content=images[i % len(images)],
                                       headers={"Content-Type": "image/jpeg"})
            level.latencies.append(time.perf_counter() - start)
            response.raise_for_status()
            if "server-timing" in response.headers:
                level.timings.append(parse(response.headers["server-timing"]))

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, headers=headers or {}, timeout=120, limits=limits) as http:
        started = time.perf_counter()
        await asyncio.gather(*(client(http) for _ in range(clients)))
        level.wall = time.perf_counter() - started
    return level


def compare(urls: dict[str, str], images: list[bytes], params: dict, levels: list[int], *, seconds: float,
            max_requests: int = 100_000, headers: dict | None = None, warmup: float = 2.0) -> list[dict]:
    """Every side at every level, sides alternating within a level; one row per (level, side)."""
    for side, url in urls.items():  # models loaded, indexes built, connections open
        asyncio.run(run_level(url, side, 4, images, params, seconds=warmup, max_requests=1000, headers=headers))
    rows = []
    for n, clients in enumerate(levels):
        order = list(urls) if n % 2 == 0 else list(reversed(urls))
        for side in order:
            before = _cpu_by_process()
            level = asyncio.run(run_level(urls[side], side, clients, images, params, seconds=seconds,
                                          max_requests=max_requests, headers=headers))
            cpu = _cpu_per_request(before, _cpu_by_process(), len(level.latencies))
            rows.append({**level.row(), **cpu})
    return sorted(rows, key=lambda r: (r["clients"], r["side"]))


def cpu_markdown(rows: list[dict]) -> str:
    """CPU milliseconds per request, by process group (a local run: servers under this process)."""
    groups = sorted({k for r in rows for k in r if k.startswith("cpu ")})
    lines = ["| clients | side | " + " | ".join(g.removeprefix("cpu ") for g in groups) + " |",
             "|---:|---|" + "---:|" * len(groups)]
    for r in rows:
        lines.append(f"| {r['clients']} | {r['side']} | " + " | ".join(f"{r.get(g, 0.0):.1f}" for g in groups) + " |")
    return "\n".join(lines)


def markdown(rows: list[dict]) -> str:
    """The rows as a Markdown table: client-side figures, then the medians per hop (ms)."""
    lines = ["| clients | side | requests/s | p50 (ms) | p99 (ms) | proxy | ingress | encoder | index |"
             " decode | forward | batch |", "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[h]:.1f}" if h in r else "" for h in (*HOPS, "decode", "forward")]
        lines.append(f"| {r['clients']} | {r['side']} | {r['requests_per_s']:.1f} | {r['p50_ms']:.1f} "
                     f"| {r['p99_ms']:.1f} | {' | '.join(cells)} | {r.get('batch', 1.0):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running service (measured alone); default: start both sides locally")
    parser.add_argument("--token", default=os.environ.get("REIDRAY_SERVE_TOKEN"))
    parser.add_argument("--out", help="output root (local start: default a temporary folder)")
    parser.add_argument("--model", default="handcrafted")
    parser.add_argument("--gallery", default=DATASET)
    parser.add_argument("--images", help="folder of query images (with --url); default: the synthetic queries")
    parser.add_argument("--n-ids", type=int, default=100, help="synthetic identities (local start)")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--seconds", type=float, default=8.0, help="load per side and level")
    parser.add_argument("--requests", type=int, default=100_000, help="at most this many per side and level")
    parser.add_argument("--serve-args", default="{}", help="JSON: extra Serve app args (ServeSettings)")
    parser.add_argument("--ingress", default=DEFAULT, choices=INGRESSES,
                        help="the Serve side's HTTP front (local start; as `reidray.run serve --ingress`)")
    parser.add_argument("--plain-server", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--random-init", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_server:
        _run_plain(args.plain_server, args.port, args.model, args.gallery, args.random_init)
        return

    params = {"model": args.model, "gallery": args.gallery, "k": 10}
    headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    levels = [int(c) for c in args.levels.split(",")]
    load_before = os.getloadavg()[0]
    if args.url:
        queries = sorted(Path(args.images).glob("*.jpg")) if args.images else []
        if not queries:
            parser.error("--url needs --images with .jpg query images")
        rows = compare({"serve": args.url.rstrip("/")}, [p.read_bytes() for p in queries], params, levels,
                       seconds=args.seconds, max_requests=args.requests, headers=headers)
    else:
        import ray
        from ray import serve

        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ingress, why = use_ingress(args.ingress)  # read by Serve's processes when Ray starts
        if why:
            print(f"Serve's HTTP proxy instead of HAProxy: {why}", file=sys.stderr)
        out = args.out or tempfile.mkdtemp(prefix="bench-serve-")
        ray.init(include_dashboard=False, log_to_driver=False)
        try:
            queries = prepare(out, args.n_ids, args.model)
            with plain_server(out, args.model, args.gallery) as plain:
                serve_url = start_serve(out, **json.loads(args.serve_args))
                sides = {"plain": plain, f"serve ({ingress})": serve_url}
                rows = compare(sides, [p.read_bytes() for p in queries], params, levels, seconds=args.seconds,
                               max_requests=args.requests)
        finally:
            serve.shutdown()
            ray.shutdown()
    print(f"model {args.model}, gallery {args.gallery}, {len(queries)} query images, POST /search k=10; "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"1-min load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(markdown(rows))
    if not args.url:
        print("\nCPU ms per request, by process (client = this benchmark's HTTP clients):")
        print(cpu_markdown(rows))
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
