"""The SFT step, as functions that the loop (:mod:`pixelreasoner.train.sft`), the tests and
``bench/gpu_step.py`` call as they are: :func:`micro_batch_loss` (forward only) and
:func:`sft_step` (micro-batches, backward, gradient clipping, the optimizer step).

The loss of a step is the mean NLL over all learned tokens of the step, across micro-batches and
processes, so how a step is split into micro-batches (or processes) does not change the update.

The steps never log and never checkpoint; the learning-rate schedule is the loop's. ``dist`` is
the run's distribution object (today an accelerate ``Accelerator``: ``backward``, ``no_sync``,
``clip_grad_norm_``, ``num_processes``, ``device``, and the sums of
:func:`~pixelreasoner.train.dist.sum_across`); every process runs the same number of forward
passes (see :func:`~pixelreasoner.train.rl_steps.lockstep_chunks`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from pixelreasoner.render import ModelInputs, RenderedSequence, Renderer
from pixelreasoner.train.common import lockstep_chunks
from pixelreasoner.train.dist import sum_across
from pixelreasoner.train.tokens import nll_sum


@dataclass(frozen=True)
class SFTStepStats:
    """What one optimizer step saw, summed over all processes."""

    nll: float
    """Summed NLL of the step's learned tokens."""
    learned: float
    """How many learned tokens the step had (what ``nll`` is divided by)."""
    padded: int
    """Tokens run through the model, padding included (zero-weight stand-in passes left out)."""
    real: int
    """Tokens run through the model, padding excluded (zero-weight stand-in passes left out)."""
    grad_norm: float | None
    """Gradient norm before clipping; None when clipping is off."""

    @property
    def loss(self) -> float:
        """Mean NLL per learned token."""
        return self.nll / self.learned


def learned_tokens(sequences: Sequence[RenderedSequence]) -> int:
    """Tokens the sequences learn (each sequence's first token predicts nothing)."""
    return sum(sum(s.loss_mask[1:]) for s in sequences)


def micro_batch_loss(model: Any, batch: ModelInputs, share_prefix: bool = False) -> tuple[torch.Tensor, int]:
    """Forward only: the summed NLL of the batch's learned tokens (``loss_mask``) and their count."""
    return nll_sum(model, batch, batch.loss_mask, share_prefix)


def sft_step(
    model: Any,
    optimizer: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter],
    sequences: Sequence[RenderedSequence],
    fallback: RenderedSequence,
    renderer: Renderer,
    dist: Any,
    micro_batch: int,
    max_grad_norm: float,
    share_prefix: bool = False,
) -> SFTStepStats | None:
    """One optimizer step over this process's ``sequences``, in micro-batches of ``micro_batch``.

    Sequences are grouped by length (less padding; the loss is a sum over all of them, so the
    grouping does not change it). Where this process has fewer micro-batches than another,
    ``fallback`` runs at zero weight. Gradients sync on the last micro-batch only. Returns None,
    having run nothing, when no process has a learned token.
    """
    world = dist.num_processes
    learned_total = sum_across(dist, learned_tokens(sequences))
    if learned_total == 0:
        return None
    ordered = sorted(sequences, key=len)
    chunks = lockstep_chunks(dist, ordered, micro_batch)
    nll_total, padded, real = 0.0, 0, 0
    for k, chunk in enumerate(chunks):
        weight = 1.0 if chunk else 0.0
        batch = renderer.collate(chunk or [fallback], padding_side="right").to(dist.device)
        sync = contextlib.nullcontext() if k == len(chunks) - 1 else dist.no_sync(model)
        with sync:
            nll, _ = micro_batch_loss(model, batch, share_prefix)
            # Gradients are averaged over processes, so scale by their number.
            dist.backward(nll * (weight * world / learned_total))
        if chunk:
            nll_total += float(nll.detach())
            padded += batch.input_ids.numel()
            real += int(batch.attention_mask.sum())
    grad_norm = dist.clip_grad_norm_(trainable, max_grad_norm) if max_grad_norm > 0 else None
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return SFTStepStats(
        nll=sum_across(dist, nll_total),
        learned=learned_total,
        padded=int(sum_across(dist, padded)),
        real=int(sum_across(dist, real)),
        grad_norm=float(grad_norm) if grad_norm is not None else None,
    )


__all__ = ["SFTStepStats", "learned_tokens", "micro_batch_loss", "sft_step"]
