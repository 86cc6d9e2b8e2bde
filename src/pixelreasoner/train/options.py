"""Run bookkeeping shared by the training stages: seeding, logging, checkpoints, resuming."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from pixelreasoner.train.fsdp import FSDPOptions


@dataclass
class RunOptions:
    """Fields every training stage has (the stage's own config adds the rest)."""

    strategy: Literal["auto", "single", "ddp", "fsdp"] = "auto"
    """How processes share the work. auto/ddp: every process holds the whole model (one process,
    or DDP under ``accelerate launch``/``torchrun``); single: refuse several processes; fsdp:
    parameters, gradients and optimizer state sharded over the processes (FSDP2), needed for 7B."""
    fsdp: FSDPOptions = field(default_factory=FSDPOptions)
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """Compute precision. Under fsdp, bf16 means bf16 parameters for compute with fp32 master
    weights and fp32 gradient reduction; fp16 is not supported there."""
    seed: int = 0
    log_every: int = 10
    save_every: int = 0
    """Save a resumable checkpoint every N steps (0: only at the end)."""
    keep_checkpoints: int = 2
    resume: bool = True
    """Continue from the latest checkpoint in ``out_dir`` if there is one."""
    stop_after_steps: int = 0
    """Save and stop once this many steps are done (0: run to the end), e.g. to fit a job's time limit."""
    share_prefix: bool = True
    """Run the prefix common to a batch's sequences (the system prompt) once per forward pass;
    same result, fewer tokens (see ``pixelreasoner.train.tokens``). Tested in one process and
    under DDP, not under DeepSpeed or FSDP; the GPU recipes turn it off."""
    metrics: tuple[str, ...] = ("stdout", "jsonl")
    """Metrics backends: stdout, jsonl, tensorboard, wandb."""
    progress: bool = True
