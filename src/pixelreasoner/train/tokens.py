"""Scoring the tokens a model should predict, without materialising logits elsewhere.

Position t predicts token t+1. Only positions whose next token is selected are projected
through the LM head (transformers' boolean ``logits_to_keep``), which matters at a 152k
vocabulary; the call goes through the model's own ``forward`` so DDP hooks still run.

**Shared prefix.** Every trace of a batch starts with the same system prompt (351 tokens in
the released protocol, half of a short tiny-model trace). With ``share_prefix=True`` that
common prefix is run once, its keys and values are repeated over the batch, and the rest of
every row continues from them with its own 3-D rope positions. Logits and gradients equal the
full forward's (tested to 1e-5); the prefix's gradient arrives summed over rows, as it would
through separate copies. It needs a Qwen2-VL-style model (``model.model.get_rope_index``)
and no gradient checkpointing; otherwise, or when the rows share fewer than
``MIN_SHARED_PREFIX`` tokens, the full forward runs. The prefix pass calls the unwrapped
module (one DDP-wrapped forward per backward); it is tested in one process and under
2-process gloo DDP, not under FSDP or DeepSpeed, so the GPU recipes leave it off.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

from pixelreasoner.render import ModelInputs

MIN_SHARED_PREFIX = 16
"""Below this many common tokens the two-pass forward is not worth its overhead."""


def predicting_positions(token_mask: torch.Tensor) -> torch.Tensor:
    """Bool ``[B, T]``: positions whose *next* token is selected by ``token_mask`` ``[B, T]``."""
    keep = torch.zeros_like(token_mask, dtype=torch.bool)
    keep[:, :-1] = token_mask[:, 1:].bool()
    return keep


def shared_prefix_length(inputs: ModelInputs, token_mask: torch.Tensor) -> int:
    """How many leading tokens every row has in common, are text, and predict nothing selected."""
    ids = inputs.input_ids
    if ids.shape[0] < 2:
        return 0
    same = (
        (ids == ids[:1]).all(0) & (inputs.attention_mask == 1).all(0) & (inputs.mm_token_type_ids == 0).all(0)
    )
    length = int(same.long().cumprod(0).sum())
    selected = token_mask.bool().any(0).nonzero()
    if len(selected):
        # position n-1, the prefix's last, predicts token n: that token must not be selected
        length = min(length, int(selected[0]) - 1)
    return length if length >= MIN_SHARED_PREFIX else 0


def _can_share(base: Any) -> bool:
    inner = getattr(base, "model", None)
    checkpointing = getattr(base, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers before 5.x named it differently
        checkpointing = getattr(base, "is_gradient_checkpointing", False)
    return hasattr(inner, "get_rope_index") and not checkpointing


def _forward_shared(
    model: torch.nn.Module,
    base: Any,
    inputs: ModelInputs,
    kwargs: dict[str, Any],
    keep: torch.Tensor,
    prefix: int,
) -> torch.Tensor:
    """The forward of :func:`selected_logits` with the first ``prefix`` tokens run once."""
    positions, _ = base.model.get_rope_index(
        inputs.input_ids,
        inputs.mm_token_type_ids,
        image_grid_thw=kwargs.get("image_grid_thw"),
        video_grid_thw=kwargs.get("video_grid_thw"),
        second_per_grid_ts=kwargs.get("second_per_grid_ts"),
        attention_mask=inputs.attention_mask,
    )  # [3, B, T]
    cache = DynamicCache(config=base.config)
    base(
        input_ids=inputs.input_ids[:1, :prefix],
        attention_mask=inputs.attention_mask[:1, :prefix],
        position_ids=positions[:, :1, :prefix],
        cache=cache,
        use_cache=True,
        logits_to_keep=1,
    )
    cache.batch_repeat_interleave(inputs.input_ids.shape[0])
    kwargs.update(
        input_ids=inputs.input_ids[:, prefix:],
        mm_token_type_ids=inputs.mm_token_type_ids[:, prefix:],
        position_ids=positions[:, :, prefix:],
    )
    output = model(**kwargs, cache=cache, use_cache=True, logits_to_keep=keep[:, prefix:])
    return output.logits


def selected_logits(
    model: torch.nn.Module, inputs: ModelInputs, token_mask: torch.Tensor, share_prefix: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``[N, V]`` (fp32) predicting the N selected tokens, and those tokens ``[N]``.

    Tokens are taken in row-major order of ``token_mask``. ``share_prefix`` runs the rows'
    common prefix once (see the module's docstring).
    """
    keep = predicting_positions(token_mask)
    base = getattr(model, "module", model)
    prefix = shared_prefix_length(inputs, token_mask) if share_prefix and _can_share(base) else 0
    kwargs, blank = encode_visuals(base, inputs)
    if prefix:
        logits = _forward_shared(model, base, inputs, kwargs, keep, prefix)
    else:
        logits = model(**kwargs, logits_to_keep=keep, use_cache=False).logits
    targets = inputs.input_ids[:, 1:][token_mask[:, 1:].bool()]  # [N]
    if blank is not None:
        logits = logits + blank
    return logits.float(), targets  # logits [N, V]


def encode_visuals(base: Any, inputs: ModelInputs) -> tuple[dict[str, Any], torch.Tensor | None]:
    """Forward kwargs with the batch's images and videos already encoded, in one vision-tower call.

    The tower runs exactly once per forward pass on every process, over the images and videos
    together (a blank 2x2-patch image when the batch has neither), and its features go into the
    model as ``mm_encoder_outputs``. Two things need this:

    - DDP: every trained parameter must get a gradient in every synced backward. A batch without
      images (a text-only trace, a bad-input query's stand-in pass) left the vision tower out and
      DDP failed at the next step ("Expected to have finished reduction in the prior
      iteration"). The blank pass is tied to the loss with weight 0 (the returned term), so this
      process's tower gradient is exactly 0 and the average is the others' gradient / world.
    - FSDP: every process must gather the same modules in the same order. With the tower run
      inside the model's forward only when there are pixels, processes with and without images
      (or with images and videos: two tower calls) would pair different collectives and hang.

    The features are those the model's own forward computes (the tower attends within each image
    or video, whatever else is in the call). Models without a vision tower get plain kwargs.
    """
    kwargs = inputs.model_kwargs()
    visual = getattr(getattr(base, "model", None), "visual", None)
    if visual is None:
        return kwargs, None
    pixels = [p for p in (inputs.pixel_values, inputs.pixel_values_videos) if p is not None]
    grids = [g for g in (inputs.image_grid_thw, inputs.video_grid_thw) if g is not None]
    blank = not pixels
    if blank:
        merge, patch = visual.spatial_merge_size, visual.patch_embed
        width = patch.in_channels * patch.temporal_patch_size * patch.patch_size**2
        pixels = [torch.zeros(merge * merge, width, device=inputs.input_ids.device)]
        grids = [torch.tensor([[1, merge, merge]], device=inputs.input_ids.device)]
    grid = torch.cat(grids)  # [n_images + n_videos, 3]
    features = visual(torch.cat(pixels).type(visual.dtype), grid_thw=grid).pooler_output  # [tokens, H]
    if blank:
        return kwargs, features.sum() * 0.0
    pieces = torch.split(features, (grid.prod(-1) // visual.spatial_merge_size**2).tolist())
    n_images = 0 if inputs.image_grid_thw is None else len(inputs.image_grid_thw)
    # the model concatenates each modality's per-item features (transformers' own split form)
    encoded: dict[str, Any] = {}
    if n_images:
        encoded["image"] = BaseModelOutputWithPooling(pooler_output=pieces[:n_images])  # type: ignore[arg-type]
    if len(pieces) > n_images:
        encoded["video"] = BaseModelOutputWithPooling(pooler_output=pieces[n_images:])  # type: ignore[arg-type]
    out: dict[str, Any] = {
        k: v for k, v in kwargs.items() if k not in ("pixel_values", "pixel_values_videos")
    }
    out["mm_encoder_outputs"] = encoded
    return out, None


def token_logprobs(
    model: torch.nn.Module,
    inputs: ModelInputs,
    token_mask: torch.Tensor,
    temperature: float = 1.0,
    share_prefix: bool = False,
) -> torch.Tensor:
    """log p(token) ``[N]`` of the selected tokens (scaled logits, as the sampler saw them)."""
    logits, targets = selected_logits(model, inputs, token_mask, share_prefix)
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def nll_sum(
    model: torch.nn.Module, inputs: ModelInputs, token_mask: torch.Tensor, share_prefix: bool = False
) -> tuple[torch.Tensor, int]:
    """Summed negative log-likelihood of the selected tokens, and how many there are."""
    logits, targets = selected_logits(model, inputs, token_mask, share_prefix)
    return F.cross_entropy(logits, targets, reduction="sum"), int(targets.numel())
