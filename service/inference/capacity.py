"""How much of the machine a server uses: worker processes, inference threads and decode threads, chosen
from the cores it is given (its CPU affinity, capped by a container's CPU quota) unless set.

One worker a core is the default: each worker's event loop, decoding and batching run beside the others
instead of queueing behind one (one worker left the second of two cores idle while its loop, not the
model, limited a 28-px model to ~650 requests/s), and each worker's runtime gets the cores left to it.
Workers hold their own copy of the model, so the automatic count stops at :data:`MAX_AUTO_WORKERS`.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path

MAX_AUTO_WORKERS = 8
CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_quota(v2: Path = CGROUP_V2, v1: tuple[Path, Path] = CGROUP_V1) -> float | None:
    """The container's CPU limit in cores (``cpu.max`` "200000 100000" = 2.0), or None when unlimited."""
    try:
        quota, _, period = v2.read_text().strip().partition(" ")
        return None if quota == "max" else int(quota) / int(period or 100_000)
    except (OSError, ValueError):
        pass
    try:
        quota_us, period_us = (int(p.read_text()) for p in v1)
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def usable_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a container's CPU quota (rounded up)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cores, math.ceil(quota))) if quota else max(1, cores)


@dataclass(frozen=True)
class Capacity:
    """What a server runs: ``workers`` processes, each with ``threads`` inference threads and
    ``decode_threads`` threads decoding and preprocessing images; ``chosen`` says how. A batch of one image
    (the worker has no other work: the server is lightly loaded) runs on ``lone_threads``."""

    cores: int
    workers: int
    threads: int
    decode_threads: int
    chosen: str
    lone_threads: int

    def describe(self) -> str:
        lone = f", a lone image on {self.lone_threads}" if self.lone_threads > self.threads else ""
        return (f"{self.workers} worker(s) x {self.threads} inference thread(s){lone} and {self.decode_threads} "
                f"decode thread(s) on {self.cores} core(s) ({self.chosen})")  # fmt: skip

    def to_dict(self) -> dict:
        return asdict(self)


def plan(cores: int, workers: int | None = None, threads: int | None = None) -> Capacity:
    """Workers one a core (at most :data:`MAX_AUTO_WORKERS`) unless ``workers`` is given; inference threads
    the worker's share of the cores unless ``threads`` is given, and every core for a lone image (at low load
    one request would otherwise run on one core while the others idle); decode threads as many as inference
    threads, and at least two (one image decodes while the next one's bytes arrive)."""
    chosen = []
    if workers is None:
        workers = max(1, min(cores, MAX_AUTO_WORKERS))
        chosen.append("workers: one a core")
    else:
        chosen.append("workers: IMGCLF_WORKERS")
    if threads is None:
        threads = max(1, cores // workers)
        lone = cores
        chosen.append("threads: cores / workers, a lone image every core")
    else:
        lone = threads
        chosen.append("threads: IMGCLF_THREADS")
    return Capacity(cores, workers, threads, max(2, threads), "; ".join(chosen), lone)
