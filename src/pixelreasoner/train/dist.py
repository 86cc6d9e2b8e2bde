"""Distributed plumbing, in one place: accelerate decides DDP / FSDP / DeepSpeed from its config.

Stage code asks this module for an :class:`~accelerate.Accelerator`, sums counts across
processes, and never looks at ranks otherwise. Launch multi-process runs with
``accelerate launch`` (or ``torchrun``); on CPU the backend is gloo.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

UNSUPPORTED = {
    DistributedType.DEEPSPEED: (
        "DeepSpeed is not supported yet: the training loops accumulate micro-batches and step the "
        "optimizer themselves, while DeepSpeed's engine steps on every backward, needs a "
        "DataLoader in prepare() for its batch size, and (ZeRO-3) gathers parameters in every "
        "forward, which the per-process rollouts would call a different number of times"
    ),
    DistributedType.FSDP: (
        "FSDP is not supported yet: rollouts call the unwrapped model, whose parameters FSDP has "
        "sharded, and the final save gathers the state dict on one process only"
    ),
}


def make_accelerator(mixed_precision: str = "no", cpu: bool | None = None) -> Accelerator:
    """An Accelerator; ``cpu`` forces CPU (default: CPU when no GPU is visible)."""
    use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    if use_cpu and mixed_precision == "fp16":
        raise ValueError("fp16 mixed precision needs a GPU; use bf16 or no on CPU")
    # accelerate keeps one process-wide state; a single process may run several stages one after
    # another (the quickstart does) with different precision, so start each from a clean state.
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Accelerator(mixed_precision=mixed_precision, cpu=use_cpu)
    check_supported(accelerator)
    return accelerator


def check_supported(accelerator: Accelerator) -> None:
    """Refuse distributed set-ups the training loops do not handle (found by reading; no GPU here).

    Supported: one process, or DDP over GPUs or CPU processes (``accelerate launch`` with
    ``multi_gpu``/``multi_cpu``, or ``torchrun``).
    """
    reason = UNSUPPORTED.get(accelerator.distributed_type)
    if reason is not None:
        raise NotImplementedError(
            f"{reason}. Launch with DDP instead (accelerate's multi_gpu, or torchrun); see the "
            "README's 'Reproducing the paper on GPUs'."
        )


def seed_everything(seed: int, rank: int = 0) -> None:
    """Seed Python, NumPy and torch; ``rank`` offsets the seed so processes sample differently."""
    value = seed + rank
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)


def sum_across(accelerator: Accelerator, value: float | int) -> float:
    """Sum a number over all processes."""
    tensor = torch.tensor([float(value)], device=accelerator.device)
    return float(accelerator.reduce(tensor, reduction="sum").item())


def max_across(accelerator: Accelerator, value: int) -> int:
    """The largest of a whole number over all processes."""
    tensor = torch.tensor([value], device=accelerator.device)
    return int(accelerator.reduce(tensor, reduction="max").item())
