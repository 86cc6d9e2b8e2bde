"""In-process generation with transformers: batched, left-padded, KV cache across turns.

All trajectories that start together share one batched KV cache for the whole rollout. After a
tool result, only each row's *new* tokens (the observation, its image, the next
``<|im_start|>assistant``) are encoded and appended to that row's cache; rows that have finished
ride along masked out until the batch is compacted. Rows differ in how many new tokens they
get, so their segments are left-padded within the step: the padding stays in the cache as
masked holes. Qwen's 3-D rope positions are computed per row from its full token sequence
(``get_rope_index``) and passed explicitly, so holes and padding never shift them.

``cache=False`` re-encodes every live conversation from scratch at each turn instead (the
simple path, kept as the reference: both give the same tokens, which the tests check).
Vision tokens are suppressed while sampling; a sampled ``<|image_pad|>`` would corrupt the
next turn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache

from pixelreasoner.render import RenderedSequence, Renderer
from pixelreasoner.rollout.backend import SamplingParams, TurnRequest, TurnResult
from pixelreasoner.vision.budget import PixelBudget


@dataclass
class _Row:
    """One trajectory's state in the shared cache: its real tokens and where it stands."""

    key: int
    ids: list[int] = field(default_factory=list)
    types: list[int] = field(default_factory=list)
    image_grids: list[tuple[int, int, int]] = field(default_factory=list)
    video_grids: list[tuple[int, int, int]] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    next_position: int = 0
    alive: bool = True


def _filter_logits(logits: torch.Tensor, top_k: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Per-row top-k (0 = off) and top-p filtering of ``[B, V]`` logits (already temperature-scaled)."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    ranks = torch.arange(logits.shape[-1], device=logits.device)[None, :]
    drop = (top_k[:, None] > 0) & (ranks >= top_k[:, None])
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # keep the smallest prefix whose mass reaches top_p (the first token always stays)
    drop |= (probs.cumsum(-1) - probs) >= top_p[:, None]
    sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(-1, order, sorted_logits)


class TransformersBackend:
    """A Qwen2.5-VL in this process as a rollout backend (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        processor: Any,
        budget: PixelBudget,
        cache: bool = True,
        seed: int = 0,
        compact_below: float = 0.5,
    ) -> None:
        self.model = model
        self.processor = processor
        self.renderer = Renderer(processor, budget)
        self.use_cache = cache
        self.compact_below = compact_below
        self.device = next(model.parameters()).device
        self.generator = torch.Generator(device="cpu").manual_seed(seed)
        self.stop_ids = {processor.im_end_id, processor.endoftext_id}
        self.suppress = [
            processor.image_token_id,
            processor.video_token_id,
            processor.vision_start_token_id,
            processor.vision_end_token_id,
        ]
        self.rows: list[_Row] = []
        self.cache: DynamicCache | None = None
        self.mask: torch.Tensor | None = None  # [B, L] which cached positions are real

    # ------------------------------------------------------------------ bookkeeping
    def reset(self) -> None:
        """Drop every row and the KV cache (call after a rollout, before training on the GPU)."""
        self.rows, self.cache, self.mask = [], None, None

    def release(self, key: int) -> None:
        for row in self.rows:
            if row.key == key:
                row.alive = False

    def _positions(self, row: _Row, count: int) -> torch.Tensor:
        """3-D rope positions ``[3, count]`` of the last ``count`` real tokens of ``row``."""
        ids = torch.tensor([row.ids], dtype=torch.long)
        types = torch.tensor([row.types], dtype=torch.long)
        images = torch.tensor(row.image_grids, dtype=torch.long) if row.image_grids else None
        videos = torch.tensor(row.video_grids, dtype=torch.long) if row.video_grids else None
        seconds = torch.tensor(row.seconds, dtype=torch.float32) if row.seconds else None
        if images is None and videos is None:
            positions = torch.arange(len(row.ids))[None, :].expand(3, -1)
        else:
            core = self.model.model
            positions, _ = core.get_rope_index(
                ids, types, image_grid_thw=images, video_grid_thw=videos, second_per_grid_ts=seconds
            )
            positions = positions[:, 0]
        row.next_position = int(positions.max()) + 1
        return positions[:, len(row.ids) - count :]

    def _compact(self) -> None:
        """Drop finished rows from the batch once they are the majority."""
        alive = [i for i, r in enumerate(self.rows) if r.alive]
        if self.cache is None or self.mask is None or len(alive) >= self.compact_below * len(self.rows):
            return
        index = torch.tensor(alive, device=self.device)
        self.cache.batch_select_indices(index)
        self.mask = self.mask[index]
        self.rows = [self.rows[i] for i in alive]

    # ------------------------------------------------------------------ generation
    def generate(self, requests: Sequence[TurnRequest]) -> list[TurnResult]:
        if not requests:
            return []
        keys = [r.key for r in requests]
        known = {row.key: row for row in self.rows}
        continuing = self.use_cache and self.cache is not None and all(k in known for k in keys)
        if continuing:
            for row in self.rows:
                row.alive = row.key in set(keys)
            self._compact()
        else:
            self.rows = [_Row(key=k) for k in keys]
            self.cache, self.mask = None, None
        by_key = {row.key: row for row in self.rows}
        rendered = [self.renderer.render(r.conversation, add_generation_prompt=True) for r in requests]
        segments = [self._new_segment(by_key[r.key], seq) for r, seq in zip(requests, rendered, strict=True)]
        with torch.no_grad():
            logits = self._prefill(requests, segments)
            return self._decode(requests, logits)

    def _new_segment(self, row: _Row, seq: RenderedSequence) -> dict[str, Any]:
        """The tokens of ``seq`` not yet in ``row``'s cache, with their new images."""
        done = len(row.ids)
        if seq.input_ids[:done] != row.ids:
            raise RuntimeError(f"trajectory {row.key}: the rendered prefix differs from the cached tokens")
        old_images, old_videos = len(row.image_grids), len(row.video_grids)
        skip = sum(t * h * w for t, h, w in seq.image_grid_thw[:old_images])
        row.ids = list(seq.input_ids)
        row.types = list(seq.mm_token_type_ids)
        row.image_grids = list(seq.image_grid_thw)
        row.video_grids = list(seq.video_grid_thw)
        row.seconds = list(seq.second_per_grid_ts)
        count = len(row.ids) - done
        return {
            "ids": row.ids[done:],
            "positions": self._positions(row, count),
            "pixels": None
            if seq.pixel_values is None or len(seq.image_grid_thw) == old_images
            else seq.pixel_values[skip:],
            "grids": seq.image_grid_thw[old_images:],
            "video_pixels": seq.pixel_values_videos if old_videos == 0 and seq.video_grid_thw else None,
            "video_grids": seq.video_grid_thw[old_videos:],
            "seconds": seq.second_per_grid_ts[old_videos:],
        }

    def _prefill(self, requests: Sequence[TurnRequest], segments: list[dict[str, Any]]) -> torch.Tensor:
        """Append every row's new segment (left-padded to one length); return last-token logits ``[B, V]``."""
        batch = len(self.rows)
        width = max(len(s["ids"]) for s in segments)
        slot = {row.key: i for i, row in enumerate(self.rows)}
        ids = torch.full((batch, width), self.processor.pad_token_id, dtype=torch.long)
        new_mask = torch.zeros((batch, width), dtype=torch.long)
        positions = torch.zeros((3, batch, width), dtype=torch.long)
        pixels, grids, video_pixels, video_grids, seconds = [], [], [], [], []
        for request, segment in zip(requests, segments, strict=True):
            i, n = slot[request.key], len(segment["ids"])
            ids[i, width - n :] = torch.tensor(segment["ids"])
            new_mask[i, width - n :] = 1
            positions[:, i, width - n :] = segment["positions"]
        # vision inputs in batch-row order, as the model scatters them in row-major order
        for _request, segment in sorted(zip(requests, segments, strict=True), key=lambda p: slot[p[0].key]):
            if segment["pixels"] is not None:
                pixels.append(segment["pixels"])
                grids += segment["grids"]
            if segment["video_pixels"] is not None:
                video_pixels.append(segment["video_pixels"])
                video_grids += segment["video_grids"]
                seconds += segment["seconds"]
        new_mask = new_mask.to(self.device)  # the cached mask lives on the model's device
        mask = new_mask if self.mask is None else torch.cat([self.mask, new_mask], dim=1)
        kwargs: dict[str, Any] = {}
        if pixels:
            kwargs["pixel_values"] = torch.from_numpy(np.concatenate(pixels)).to(
                self.device, self.model.dtype
            )
            kwargs["image_grid_thw"] = torch.tensor(grids, dtype=torch.long, device=self.device)
        if video_pixels:
            kwargs["pixel_values_videos"] = torch.from_numpy(np.concatenate(video_pixels)).to(
                self.device, self.model.dtype
            )
            kwargs["video_grid_thw"] = torch.tensor(video_grids, dtype=torch.long, device=self.device)
            kwargs["second_per_grid_ts"] = torch.tensor(seconds, dtype=torch.float32, device=self.device)
        self.cache = self.cache if self.cache is not None else DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            cache=self.cache,
            use_cache=True,
            logits_to_keep=1,
            **kwargs,
        )
        self.mask = mask
        return out.logits[:, -1].float()

    def _sample(
        self, logits: torch.Tensor, params: list[SamplingParams]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Next tokens ``[B]`` and their log-probs.

        The log-probs are those of the model's own distribution (temperature 1, whole
        vocabulary), whatever temperature, top-k and top-p the token was drawn with. That is
        the distribution the learner scores and trains (and the one evaluated greedily and
        saved), so ``old_logprobs: sampler`` and ``recompute`` give the same PPO ratio, 1 at the
        first update, as in the release, whose learner scores at temperature 1 too. Temperature
        and filtering are a sampling device, not part of the policy being optimised; storing the
        tempered log-probs instead made the first ratio exp((1 − 1/T)·logit gap) ≠ 1 after a
        tool result (T = 0.9) and biased the clip. Vision tokens are suppressed for the draw,
        which moves no mass once the model has learned never to emit them.
        """
        temperature = torch.tensor(
            [p.temperature if not p.greedy else 1.0 for p in params], device=logits.device
        )
        logprobs = torch.log_softmax(logits, dim=-1)
        logits = logits.clone()
        logits[:, self.suppress] = float("-inf")
        scaled = logits / temperature[:, None]
        if all(p.greedy for p in params):  # evaluation: no sorting, no random draws
            tokens = scaled.argmax(-1)
            return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            scaled_for_draw = _filter_logits(
                scaled,
                torch.tensor([p.top_k for p in params], device=logits.device),
                torch.tensor([p.top_p for p in params], device=logits.device),
            )
        else:
            scaled_for_draw = scaled
        probs = torch.softmax(scaled_for_draw, dim=-1)
        sampled = torch.multinomial(probs.cpu(), 1, generator=self.generator).squeeze(-1).to(logits.device)
        tokens = torch.where(greedy, scaled.argmax(-1), sampled)
        return tokens, logprobs.gather(-1, tokens[:, None]).squeeze(-1)

    def _decode(self, requests: Sequence[TurnRequest], logits: torch.Tensor) -> list[TurnResult]:
        """Sample until every requested row stops; every sampled token also enters the cache."""
        batch = len(self.rows)
        slot = {row.key: i for i, row in enumerate(self.rows)}
        params = [SamplingParams(temperature=0.0)] * batch
        limits = [0] * batch
        running = [False] * batch
        for request in requests:
            i = slot[request.key]
            params[i], limits[i], running[i] = request.params, request.params.max_new_tokens, True
        out_ids: list[list[int]] = [[] for _ in range(batch)]
        out_lp: list[list[float]] = [[] for _ in range(batch)]
        prompt_tokens = [len(row.ids) for row in self.rows]
        while any(running):
            tokens, logprobs = self._sample(logits, params)
            produced = list(running)
            token_list, logprob_list = tokens.tolist(), logprobs.tolist()  # one transfer per step
            for i in range(batch):
                if produced[i]:
                    token = token_list[i]
                    out_ids[i].append(token)
                    out_lp[i].append(logprob_list[i])
                    self.rows[i].ids.append(token)
                    self.rows[i].types.append(0)
                    running[i] = token not in self.stop_ids and len(out_ids[i]) < limits[i]
            step = [
                t if p else self.processor.pad_token_id for t, p in zip(token_list, produced, strict=True)
            ]
            # Even after the last row stops its token must enter the cache, so that the next
            # turn continues from a complete sequence; only re-encoding can skip that pass.
            if any(running) or self.use_cache:
                logits = self._append(torch.tensor(step), produced)
        results = []
        for request in requests:
            i = slot[request.key]
            ids = out_ids[i]
            ended = bool(ids) and ids[-1] in self.stop_ids
            text = self.processor.tokenizer.decode(ids[:-1] if ended else ids, skip_special_tokens=False)
            results.append(
                TurnResult(
                    text=text,
                    finish="stop" if ended else "length",
                    token_ids=ids,
                    logprobs=out_lp[i],
                    prompt_tokens=prompt_tokens[i],
                )
            )
        return results

    def _append(self, step_ids: torch.Tensor, wrote: list[bool]) -> torch.Tensor:
        """Feed one token per row (masked where ``wrote`` is false); return next-token logits."""
        if self.mask is None or self.cache is None:
            raise RuntimeError("decoding before prefill")
        next_positions = []
        for row, written in zip(self.rows, wrote, strict=True):
            next_positions.append(row.next_position if written else 0)
            row.next_position += written
        positions = torch.tensor(next_positions, dtype=torch.long).view(1, -1, 1).expand(3, -1, 1)
        self.mask = torch.cat(
            [self.mask, torch.tensor(wrote, dtype=torch.long, device=self.device)[:, None]], dim=1
        )
        out = self.model(
            input_ids=step_ids[:, None].to(self.device),
            attention_mask=self.mask,
            position_ids=positions.to(self.device),
            cache=self.cache,
            use_cache=True,
        )
        return out.logits[:, -1].float()


__all__ = ["TransformersBackend"]
