"""What the SFT and RL stages share: the resumable data order, which parameters train, activation
checkpointing and the learning-rate schedule. Stages import these from here, never from each other.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from pixelreasoner.train.dist import max_across


class EpochOrder:
    """A seeded permutation per epoch; ``(epoch, offset)`` is the resumable data position."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed = size, seed

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.size)

    def batches(self, batch: int, epoch: int, offset: int) -> Iterator[tuple[int, int, list[int]]]:
        """Yield (epoch, next_offset, indices) forever, dropping each epoch's incomplete tail."""
        while True:
            order = self.permutation(epoch)
            while offset + batch <= self.size:
                yield epoch, offset + batch, [int(i) for i in order[offset : offset + batch]]
                offset += batch
            epoch, offset = epoch + 1, 0


def apply_freezing(model: torch.nn.Module, freeze_vision: bool, freeze_projector: bool) -> None:
    """Set which vision parameters of a Qwen2.5-VL train: the blocks unless ``freeze_vision``, the
    projector (``visual.merger``) unless ``freeze_projector``. Both ways, so a model can be frozen
    for one stage and unfrozen for the next; the language model's parameters are left as they are."""
    for name, param in model.named_parameters():
        if ".visual." not in f".{name}":
            continue
        frozen = freeze_projector if ".merger." in name else freeze_vision
        param.requires_grad_(not frozen)


def enable_checkpointing(model: Any) -> None:
    """Activation checkpointing (transformers 5 renamed the method; the old name warns)."""
    enable = getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable
    enable()


def cosine_schedule(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine from 1 to ``min_ratio``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lockstep_chunks(dist: Any, values: list[Any], size: int) -> list[list[Any]]:
    """``values`` in chunks of ``size``, padded with empty chunks to the largest count on any
    process: every process then runs the same number of forward/backward passes (an empty chunk
    runs a zero-weight pass), which DDP's and FSDP's collectives need."""
    chunks = [values[i : i + size] for i in range(0, len(values), size)]
    count = max_across(dist, len(chunks))
    return chunks + [[] for _ in range(count - len(chunks))]


__all__ = ["EpochOrder", "apply_freezing", "cosine_schedule", "enable_checkpointing", "lockstep_chunks"]
