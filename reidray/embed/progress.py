"""Progress a person can follow: images done, images/s and time left, per cell.

The encoder actors count what they embed into a small per-cell actor; the driver polls it while
Ray Data runs. The same actor keeps the encoder actors' handles, so a test (or an operator) can
find and kill one mid-cell to check that the cell still ends complete and exact. It also keeps how
long each encoder actor spent working between its first and last batch: the share of that time it
was busy says whether the CPU stage kept it fed (1.0) or starved it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import ray

if TYPE_CHECKING:
    from reidray.cells import CellRecord

STARVED = 0.7  # encoder busy below this share of its time: the CPU stage is the bottleneck


@ray.remote(num_cpus=0)
class ProgressTracker:
    """Counts embedded images for one cell and remembers which actors are embedding it."""

    def __init__(self) -> None:
        self.done = 0
        self.actors: list = []
        self.placements: set[tuple[str, str]] = set()  # (node id, torch device) of each encoder actor
        self.work: dict[str, list[tuple[float, float, int]]] = {}  # actor id -> (start, end, images) per batch

    def add(self, n: int, started: float, finished: float, actor_id: str) -> None:
        """``n`` images embedded by ``actor_id`` between wall-clock ``started`` and ``finished``
        (stamped by the actor, not on arrival)."""
        self.done += n
        self.work.setdefault(actor_id, []).append((started, finished, n))

    def steady_rate(self) -> float | None:
        """Images/s after the first batch: the pipeline's pace without model loading and warm-up."""
        batches = [batch for intervals in self.work.values() for batch in intervals]
        if not batches:
            return None
        _, first_end, first_n = min(batches, key=lambda batch: batch[1])
        last_end = max(end for _, end, _ in batches)
        return (self.done - first_n) / (last_end - first_end) if last_end > first_end else None

    def busy_fraction(self) -> float | None:
        """Share of the encoder actors' time, from each one's first batch to its last, spent
        embedding rather than waiting for input; None before the first batch. Overlapping
        batches of one actor (concurrent calls) count once."""
        busy = span = 0.0
        for intervals in self.work.values():
            first, covered_to = min(intervals)[0], float("-inf")
            for start, end, _ in sorted(intervals):
                busy += max(0.0, end - max(start, covered_to))
                covered_to = max(covered_to, end)
            span += covered_to - first
        return busy / span if span > 0 else None

    def register(self, actor, node_id: str, device: str) -> None:
        self.actors.append(actor)
        self.placements.add((node_id, device))

    def where(self) -> tuple[list[str], str]:
        """The nodes the encoder actors ran on, and their device(s) ("cpu", "cuda", or "cpu+cuda")."""
        nodes = sorted({node for node, _ in self.placements})
        return nodes, "+".join(sorted({device.split(":")[0] for _, device in self.placements}))

    def count(self) -> int:
        return self.done

    def encoder_actors(self) -> list:
        return list(self.actors)


def tracker_name(model: str, dataset: str) -> str:
    return f"reidray-progress/{model}/{dataset}"


def progress_line(label: str, done: int, total: int, elapsed: float) -> str:
    """``embed m/d: 1,200/12,936 images (9%), 310 images/s, about 38 s left``."""
    done = min(done, total)  # a retried batch counts twice; never show more than all
    rate = done / elapsed if elapsed > 0 else 0.0
    line = f"{label}: {done:,}/{total:,} images ({100 * done / max(total, 1):.0f}%), {rate:.0f} images/s"
    if 0 < done < total and rate > 0:
        line += f", about {_duration((total - done) / rate)} left"
    return line


def finished_line(cell: CellRecord) -> str:
    """A finished cell's pace, and whether decoding held the encoder back."""
    line = (f"embed {cell.model}/{cell.dataset}: {cell.n_images:,} images in {cell.embed_seconds:.1f} s "
            f"({cell.images_per_second:.0f} images/s, {cell.device}")
    if cell.encoder_busy_fraction is None:
        return line + ")"
    line += f", encoder busy {cell.encoder_busy_fraction:.0%})"
    if cell.device == "cuda" and cell.encoder_busy_fraction < STARVED:
        line += "; the GPUs waited on decoding: give the GPU nodes more CPUs or raise embed.decode_batch_size"
    return line


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 90:
        return f"{seconds} s"
    if seconds < 5400:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def watch(tracker, label: str, total: int, is_done: Callable[[], bool], say: Callable[[str], None],
          every: float) -> None:
    """Print a progress line every ``every`` seconds until ``is_done()``."""
    start = time.perf_counter()
    last = start
    while not is_done():
        time.sleep(0.2)
        now = time.perf_counter()
        if now - last >= every:
            last = now
            say(progress_line(label, ray.get(tracker.count.remote()), total, now - start))
