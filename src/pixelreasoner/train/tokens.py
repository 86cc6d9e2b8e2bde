"""Scoring the tokens a model should predict, without materialising logits elsewhere.

Position t predicts token t+1. Only positions whose next token is selected are projected
through the LM head (transformers' boolean ``logits_to_keep``), which matters at a 152k
vocabulary; the call goes through the model's own ``forward`` so DDP/FSDP hooks still run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pixelreasoner.render import ModelInputs


def predicting_positions(token_mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, T]``: positions whose *next* token is selected by ``token_mask`` ``[B, T]``."""
    keep = torch.zeros_like(token_mask, dtype=torch.bool)
    keep[:, :-1] = token_mask[:, 1:].bool()
    return keep


def selected_logits(
    model: torch.nn.Module, inputs: ModelInputs, token_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, V]`` (fp32) predicting the N selected tokens, and those tokens ``[N]``.

    Tokens are taken in row-major order of ``token_mask``.
    """
    keep = predicting_positions(token_mask)
    output = model(**inputs.model_kwargs(), logits_to_keep=keep, use_cache=False)
    logits = output.logits.float()  # [N, V]
    targets = inputs.input_ids[:, 1:][token_mask[:, 1:].bool()]  # [N]
    return logits, targets


def token_logprobs(
    model: torch.nn.Module, inputs: ModelInputs, token_mask: torch.Tensor, temperature: float = 1.0
) -> torch.Tensor:
    """log p(token) ``[N]`` of the selected tokens (scaled logits, as the sampler saw them)."""
    logits, targets = selected_logits(model, inputs, token_mask)
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def nll_sum(
    model: torch.nn.Module, inputs: ModelInputs, token_mask: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the selected tokens, and how many there are."""
    logits, targets = selected_logits(model, inputs, token_mask)
    return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())
