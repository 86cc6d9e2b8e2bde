"""Run bookkeeping shared by the training stages: seeding, logging, checkpoints, resuming."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class RunOptions:
    """Fields every training stage has (the stage's own config adds the rest)."""

    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
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
