"""How many CPU threads each of our processes uses: the cores divided by the processes sharing them.

torch starts as many intra-op threads as the machine has cores, in every process. Two such
processes on the same cores (two pytest-xdist workers, two DDP ranks, a training run beside a test
run) each spin that many threads, and the threads then mostly wait on one another: on 2 cores the
test suite under 2 xdist workers took 433 s instead of 85 s with one thread each, and an SFT step
beside another process 18-24 s instead of 1.4-2.6 s (``bench/thread_contention.py`` measures it).
So every process of ours takes ``cores // processes`` threads (at least one), where ``processes``
is what its launcher says will run side by side; a set ``OMP_NUM_THREADS`` wins over this.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from pathlib import Path

OVERRIDE = "OMP_NUM_THREADS"
# Processes started side by side by a launcher, each of which sees the count in its environment:
# torchrun and ``accelerate launch`` (processes on this node), pytest-xdist (test workers), and the
# quickstart's worker pool (RL runs side by side).
# A process started under several (a torchrun started by a test in an xdist worker) shares the
# cores with the product of them.
PROCESS_COUNTS = ("LOCAL_WORLD_SIZE", "PYTEST_XDIST_WORKER_COUNT", "PIXELREASONER_WORKERS")
CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else 0
    except ValueError:
        return None
    return value if value > 0 else None


def processes_sharing_cores(env: Mapping[str, str]) -> int:
    """How many processes of ours run side by side on these cores, from the launchers' variables."""
    processes = 1
    for name in PROCESS_COUNTS:
        processes *= _positive_int(env.get(name)) or 1
    return processes


def threads_per_process(cores: int, processes: int, env: Mapping[str, str]) -> int | None:
    """Threads for one of ``processes`` processes on ``cores`` cores; None where ``OMP_NUM_THREADS`` is set.

    ``processes x threads <= cores`` whenever there are at least as many cores as processes;
    otherwise each process still gets one thread.
    """
    if env.get(OVERRIDE, "").strip():
        return None
    return max(1, cores // max(1, processes))


def cgroup_cpu_limit(cpu_max: str) -> int | None:
    """Whole cores allowed by a cgroup v2 ``cpu.max`` line (``"max 100000"``: no limit -> None)."""
    parts = cpu_max.split()
    if len(parts) != 2 or parts[0] == "max":
        return None
    quota, period = _positive_int(parts[0]), _positive_int(parts[1])
    if quota is None or period is None:
        return None
    return max(1, quota // period)


def available_cores() -> int:
    """Cores this process may run on: its CPU affinity, capped by a cgroup v2 CPU quota if any."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    try:
        limit = cgroup_cpu_limit(CGROUP_CPU_MAX.read_text())
    except OSError:
        limit = None
    return max(1, min(cores, limit or cores))


def configure_threads(env: Mapping[str, str] | None = None, cores: int | None = None) -> int:
    """Set torch's thread counts for this process (see the module docstring); returns the intra-op count.

    Call it once, early, before any parallel work: torch refuses to change the inter-op pool after
    its first use, and then only the intra-op count is set.
    """
    import torch

    env = os.environ if env is None else env
    cores = available_cores() if cores is None else cores
    threads = threads_per_process(cores, processes_sharing_cores(env), env)
    if threads is None:  # OMP_NUM_THREADS is set, and torch has read it
        return torch.get_num_threads()
    torch.set_num_threads(threads)
    # torch refuses once inter-op work has run or the count was set before: then it stays as it is
    with contextlib.suppress(RuntimeError):
        torch.set_num_interop_threads(threads)
    return threads
