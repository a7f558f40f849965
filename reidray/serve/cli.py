"""``python -m reidray.run serve``: start Ray (or join a cluster), run the Serve app, block until Ctrl-C."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from reidray.errors import ReidrayError
from reidray.serve.ingress import DEFAULT, INGRESSES, Ingress, stop_orphaned_haproxy, use_ingress
from reidray.serve.settings import MB, TOKEN_ENV, check_exposure, check_port, clean_token


def serve_command(
    out: str,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str | None = None,
    *,
    address: str | None = None,
    random_init: bool = False,
    weights: dict[str, str] | None = None,
    max_upload_mb: float = 10.0,
    max_models: int = 3,
    num_gpus: float | None = None,
    say: Callable[[str], None] = print,
    references: list[str] | None = None,
    ingress: Ingress = DEFAULT,
) -> None:
    """Serve the encoders and the galleries stored under ``out`` on ``host:port`` until interrupted.

    Refuses, before starting anything, to listen beyond loopback without a token (``token`` or
    $REIDRAY_SERVE_TOKEN). Serve's HTTP options are cluster-wide: on a cluster where Serve already
    runs, the existing host and port stay in force. ``ingress`` picks the HTTP front of a Ray this
    command starts (``serve/ingress.py``); a joined cluster keeps the front its nodes started with.
    """
    from ray import serve

    from reidray.connect import check_address, connect
    from reidray.models import get
    from reidray.serve.app import APP_NAME, build_app
    from reidray.store import Store

    if ingress not in INGRESSES:
        raise ReidrayError(f"--ingress {ingress!r}: choose one of {', '.join(INGRESSES)}")
    token = clean_token(token or os.environ.get(TOKEN_ENV))
    check_port(port)
    check_exposure(host, token)
    for name in references or []:
        get(name)  # a wrong reference fails here, before anything starts
    store = Store.open(out, read_only=True)
    root = store.root if "://" in store.root else store.base  # replicas do not share our working directory
    args = {
        "out": root, "token": token, "random_init": random_init, "weights": {k: str(Path(v).expanduser().resolve())
                                                                              for k, v in (weights or {}).items()},
        "max_upload_bytes": int(max_upload_mb * MB), "max_models_per_replica": max_models, "num_gpus": num_gpus,
        "references": list(references or []),
    }
    local = check_address(address) is None
    if local:
        ingress, why = use_ingress(ingress)
        if ingress == "haproxy" and (stale := stop_orphaned_haproxy()):
            say(f"stopped {len(stale)} HAProxy process(es) left by a serve that was killed (pid {', '.join(map(str, stale))})")
        front = "behind HAProxy" if ingress == "haproxy" else f"through Serve's HTTP proxy{f' ({why})' if why else ''}"
    else:
        front = "through the cluster's HTTP front"
    connect(address)  # before build_app, which looks for GPUs in the cluster
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # its start-up INFO lines; our line says it
    application = build_app(args)
    serve.start(http_options={"host": host, "port": port})
    try:
        serve.run(application, name=APP_NAME, route_prefix="/")
    except Exception as exc:
        last = (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise ReidrayError(f"the Serve application did not start: {last}") from exc
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}"
    if local:
        wait_until_answering(port, host)
    say(f"reidray serving {root} at {url} {front} ({'token required' if token else 'no token: loopback only'}); "
        "GET /healthz /models /galleries, POST /embed /search /search/text; Ctrl-C stops")
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)  # `kill`, systemd and Kubernetes stop it like Ctrl-C
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        say("stopping")
        serve.shutdown()


def wait_until_answering(port: int, host: str, seconds: float = 60.0) -> None:
    """Return once ``GET /healthz`` answers 200 on the HTTP port: behind HAProxy the port opens
    before the replicas are in its table, and the start line must not promise a service that
    answers 503."""
    probe = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    url = f"http://{'[' + probe + ']' if ':' in probe else probe}:{port}/healthz"
    deadline = time.monotonic() + seconds
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return
        except OSError:  # refused, reset, 503 (HTTPError), timeout
            pass
        if time.monotonic() > deadline:
            raise ReidrayError(f"the Serve application started but {url} did not answer 200 within {seconds:.0f} s")
        time.sleep(0.2)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt
