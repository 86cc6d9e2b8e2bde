"""Distributed plumbing, in one place: the strategy object the training loops and steps use.

:func:`make_distribution` gives, from a stage's ``strategy`` option:

- ``auto`` / ``single`` / ``ddp``: accelerate's ``Accelerator`` (one process, or DDP over GPUs
  or CPU processes when launched with ``accelerate launch``/``torchrun``), as :class:`Replicated`;
- ``fsdp``: :class:`~pixelreasoner.train.fsdp.FSDPTraining`, sharded data parallel on FSDP2.

Both offer the same interface (``prepare``, ``backward``, ``no_sync``, ``clip_grad_norm_``,
``reduce``, ``gathered``, ``save_state``/``load_state``, ``get_state_dict``, ...), so stage code
never branches on the strategy; it sums counts across processes with :func:`sum_across` and
never looks at ranks otherwise. On CPU the backend is gloo.
"""

from __future__ import annotations

import contextlib
import functools
import random
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType

UNSUPPORTED = {
    DistributedType.DEEPSPEED: (
        "DeepSpeed is not supported: the training loops accumulate micro-batches and step the "
        "optimizer themselves, while DeepSpeed's engine steps on every backward and needs a "
        "DataLoader in prepare(); and ZeRO-3 gathers parameters inside every forward, so "
        "processes that generate different amounts in their rollouts hang (measured: DeepSpeed "
        "0.19.8, 2 CPU processes). Use strategy=fsdp for sharded training"
    ),
    DistributedType.FSDP: (
        "accelerate's FSDP plugin is not used (on CPU it silently falls back to DDP, and its "
        "state saving breaks when forced); set strategy=fsdp, which shards with FSDP2 directly"
    ),
}


class Replicated(Accelerator):
    """One process or DDP (accelerate), with the interface the ``fsdp`` strategy also has."""

    shares_prefix = True
    """The shared-prefix forward (``train.tokens``) is tested here, in one process and under DDP."""

    def prepare(self, *args: Any, **kwargs: Any) -> Any:
        """accelerate's prepare (model first), plus autocast around the vision tower under mixed
        precision: accelerate puts autocast around the model's ``forward`` only, and the training
        forward calls the vision tower directly (``train.tokens.encode_visuals``), which then ran
        in fp32."""
        prepared = super().prepare(*args, **kwargs)
        model = prepared[0] if isinstance(prepared, tuple) else prepared
        visual = getattr(getattr(self.unwrap_model(model), "model", None), "visual", None)
        if visual is not None and self.mixed_precision != "no":
            visual.forward = _in_context(visual.forward, self.autocast)
        return prepared

    @contextlib.contextmanager
    def gathered(self, model: Any) -> Iterator[Any]:
        """The model to roll out with: already whole on every process."""
        yield self.unwrap_model(model)

    def end(self) -> None:
        """Nothing to release (accelerate keeps its process group for the program's lifetime)."""


def _in_context(function: Any, context: Any) -> Any:
    @functools.wraps(function)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with context():
            return function(*args, **kwargs)

    return wrapped


def make_distribution(options: Any) -> Any:
    """The strategy object for a stage's :class:`~pixelreasoner.train.options.RunOptions`."""
    if options.strategy == "fsdp":
        from pixelreasoner.train.fsdp import FSDPTraining

        return FSDPTraining(options.mixed_precision, options.fsdp)
    accelerator = make_accelerator(options.mixed_precision)
    if options.strategy == "single" and accelerator.num_processes > 1:
        raise ValueError(f"strategy=single, but {accelerator.num_processes} processes were launched")
    return accelerator


def make_accelerator(mixed_precision: str = "no", cpu: bool | None = None) -> Replicated:
    """An Accelerator; ``cpu`` forces CPU (default: CPU when no GPU is visible)."""
    use_cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    if use_cpu and mixed_precision == "fp16":
        raise ValueError("fp16 mixed precision needs a GPU; use bf16 or no on CPU")
    # accelerate keeps one process-wide state; a single process may run several stages one after
    # another (the quickstart does) with different precision, so start each from a clean state.
    if AcceleratorState._shared_state and PartialState().num_processes == 1:
        AcceleratorState._reset_state(reset_partial_state=True)
    accelerator = Replicated(mixed_precision=mixed_precision, cpu=use_cpu)
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
            f"{reason}. Launch with torchrun (or accelerate's multi_gpu/multi_cpu) and strategy=ddp "
            "or strategy=fsdp; see the README's 'Reproducing the paper on GPUs'."
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
