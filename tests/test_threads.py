"""Each process of ours takes cores / processes CPU threads, unless OMP_NUM_THREADS is set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pixelreasoner.threads import (
    cgroup_cpu_limit,
    configure_threads,
    processes_sharing_cores,
    threads_per_process,
)

TESTS = Path(__file__).resolve().parent


@pytest.mark.parametrize(
    ("cores", "processes", "env", "expected"),
    [
        (2, 1, {}, 2),  # alone: every core
        (2, 2, {}, 1),  # `pytest -n 2` on 2 cores: one thread per worker
        (16, 8, {}, 2),  # 8 DDP ranks on 16 cores
        (16, 3, {}, 5),  # 3 x 5 = 15 <= 16, rounded down
        (2, 4, {}, 1),  # more processes than cores: still one thread each
        (4, 0, {}, 4),  # no count given: one process
        (8, 2, {"OMP_NUM_THREADS": "3"}, None),  # the user's count wins
        (8, 2, {"OMP_NUM_THREADS": "1"}, None),  # torchrun's default for its children wins too
        (8, 2, {"OMP_NUM_THREADS": " "}, 4),  # empty: not set
    ],
)
def test_threads_per_process(cores: int, processes: int, env: dict[str, str], expected: int | None) -> None:
    assert threads_per_process(cores, processes, env) == expected


def test_threads_times_processes_never_exceeds_the_cores() -> None:
    for cores in range(1, 33):
        for processes in range(1, cores + 1):
            threads = threads_per_process(cores, processes, {})
            assert threads is not None and threads >= 1 and processes * threads <= cores
            assert processes * (threads + 1) > cores  # and no core is left idle that could be used


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, 1),
        ({"LOCAL_WORLD_SIZE": "2"}, 2),  # torchrun / accelerate launch
        ({"PYTEST_XDIST_WORKER_COUNT": "2"}, 2),  # an xdist worker
        ({"LOCAL_WORLD_SIZE": "2", "PYTEST_XDIST_WORKER_COUNT": "2"}, 4),  # torchrun inside a worker
        ({"LOCAL_WORLD_SIZE": "x", "PYTEST_XDIST_WORKER_COUNT": "0"}, 1),  # unusable values: ignored
        ({"WORLD_SIZE": "16"}, 1),  # ranks on other nodes do not share our cores
    ],
)
def test_processes_sharing_cores(env: dict[str, str], expected: int) -> None:
    assert processes_sharing_cores(env) == expected


@pytest.mark.parametrize(
    ("cpu_max", "expected"),
    [("max 100000\n", None), ("200000 100000\n", 2), ("150000 100000", 1), ("50000 100000", 1), ("", None)],
)
def test_cgroup_cpu_limit(cpu_max: str, expected: int | None) -> None:
    assert cgroup_cpu_limit(cpu_max) == expected


def test_configure_threads_sets_torch_and_respects_the_override() -> None:
    before = torch.get_num_threads()
    try:
        # the inter-op pool is already in use in this process: configure_threads must not raise
        assert configure_threads(env={"LOCAL_WORLD_SIZE": "2"}, cores=4) == 2
        assert torch.get_num_threads() == 2
        assert configure_threads(env={"OMP_NUM_THREADS": "7", "LOCAL_WORLD_SIZE": "2"}, cores=4) == 2
        assert torch.get_num_threads() == 2  # left as torch set it from OMP_NUM_THREADS
    finally:
        torch.set_num_threads(before)


def _threads_in_child(code: str, **env: str) -> int:
    """torch's intra-op thread count after ``code`` runs in a fresh interpreter with ``env`` added."""
    names = ("OMP_NUM_THREADS", "LOCAL_WORLD_SIZE", "PYTEST_XDIST_WORKER_COUNT")
    base = {k: v for k, v in os.environ.items() if k not in names}
    done = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport torch; print(torch.get_num_threads())"],
        capture_output=True,
        text=True,
        env={**base, **env},
        cwd=TESTS,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return int(done.stdout.split()[-1])


# The CLI's own set-up only: the command itself (printing budgets) is replaced by a no-op.
CLI_SET_UP = "from pixelreasoner import cli; cli._cmd_budgets = lambda args: 0"
# As many processes as the machine has cores: one thread each is the only answer.
SIDE_BY_SIDE = str(os.cpu_count() or 1)


@pytest.mark.parametrize(
    ("code", "launcher"),
    [
        ("import conftest", "PYTEST_XDIST_WORKER_COUNT"),  # what an xdist worker runs first
        (f"{CLI_SET_UP}; cli.main(['budgets'])", "LOCAL_WORLD_SIZE"),  # a DDP rank
    ],
    ids=["xdist-worker", "cli-under-a-launcher"],
)
def test_side_by_side_processes_take_one_thread_each_on_as_many_cores(code: str, launcher: str) -> None:
    """Regression: processes were oversubscribing the cores.

    Every test worker took torch's default thread count (conftest capped it at 2, which is every
    core of the 2-core machine), and the CLI stages never chose one, so two such processes ran
    4 threads on 2 cores: `pytest -m "not slow and not gpu" -n 2` took 433 s instead of 85 s with
    one thread each, and an SFT step beside another process 18-24 s instead of 1.4-2.6 s.
    """
    assert _threads_in_child(code, **{launcher: SIDE_BY_SIDE}) == 1


def test_omp_num_threads_overrides_the_default_in_a_process_of_ours() -> None:
    # alone, the default would be every core (torch caps OMP_NUM_THREADS at the cores, so 1 it is)
    threads = _threads_in_child("import conftest", OMP_NUM_THREADS="1", PYTEST_XDIST_WORKER_COUNT="1")
    assert threads == 1
