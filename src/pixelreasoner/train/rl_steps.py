"""The steps of one RL phase, as functions that the loop (:mod:`pixelreasoner.train.rl`), the
tests and ``bench/gpu_step.py`` call as they are:

roll out → :func:`score_groups` (pure: no model, no collective) → :func:`select_batch` (filter,
replay) → :func:`compute_old_logprobs` → :func:`ppo_update`.

The steps never log and never checkpoint. ``dist`` is the run's distribution object (today an
accelerate ``Accelerator``: ``backward``, ``no_sync``, ``clip_grad_norm_``, ``reduce``); the
only collectives are in :func:`ppo_update`, where every process runs the same number of
forward passes (see :func:`lockstep_chunks`).
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.scoring import extract_boxed
from pixelreasoner.eval.tasks import task_for
from pixelreasoner.render import RenderedSequence, Renderer
from pixelreasoner.rl.algorithm import (
    ReplayBuffer,
    group_advantages,
    is_uniform,
    ppo_token_loss,
    token_entropy,
)
from pixelreasoner.rl.reward import RewardConfig, RewardParts, RolloutFacts, group_rewards, rapr
from pixelreasoner.train.common import lockstep_chunks
from pixelreasoner.train.dist import sum_across
from pixelreasoner.train.tokens import selected_logits
from pixelreasoner.trajectory import Conversation, ImagePart, Trajectory, Turn, VideoPart
from pixelreasoner.vision.budget import PixelBudget

if TYPE_CHECKING:
    from pixelreasoner.train.rl import RLConfig


@dataclass
class Sample:
    """One trajectory ready for the update: its conversation, advantage and old log-probs."""

    trajectory: Trajectory
    advantage: float
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    rendered: RenderedSequence | None = None
    """Rendered once, then reused by the old, reference and update passes (images encoded once)."""


class Scorer:
    """Log-probs of the model's own tokens for a batch of samples (one padded forward pass)."""

    def __init__(self, renderer: Renderer, share_prefix: bool = False) -> None:
        self.renderer = renderer
        self.share_prefix = share_prefix

    def inputs(self, samples: list[Sample], device: torch.device) -> Any:
        for sample in samples:
            if sample.rendered is None:
                sample.rendered = self.renderer.render(sample.trajectory.conversation)
        rendered = [s.rendered for s in samples if s.rendered is not None]
        return self.renderer.collate(rendered, padding_side="right").to(device)

    def logprobs(
        self, model: Any, samples: list[Sample], device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """Token log-probs ``[N]`` (all samples concatenated), their entropies ``[N]``, tokens per sample."""
        batch = self.inputs(samples, device)
        logits, targets = selected_logits(model, batch, batch.loss_mask, self.share_prefix)
        logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)
        counts = batch.loss_mask[:, 1:].sum(dim=1).tolist()
        return logprobs, token_entropy(logits.detach()), [int(c) for c in counts]


# ------------------------------------------------------------------------------- scoring
def rollout_facts(trajectory: Trajectory, item: TaskItem) -> RolloutFacts:
    answer = extract_boxed(trajectory.final_text) if trajectory.n_turns else None
    return RolloutFacts(
        score=task_for(item).score(trajectory, item),
        has_answer=bool(answer),
        n_ops=trajectory.n_calls,
        final_error=trajectory.final_error,
        is_video=item.is_video,
    )


@dataclass
class GroupScores:
    """What scoring one phase's groups gave: trainable samples and what to report."""

    fresh: list[Sample] = field(default_factory=list)
    """Samples of the groups that carry signal (all groups with ``filter: none``)."""
    parts: list[RewardParts] = field(default_factory=list)
    trajectories: list[Trajectory] = field(default_factory=list)
    """The scored rollouts (bad-input queries left out), aligned with ``parts``."""
    uniform_groups: int = 0
    groups: int = 0
    tool_use: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    """Per task: 1.0 / 0.0 for each rollout that did / did not use an operation."""
    bad_inputs: list[str] = field(default_factory=list)
    """Queries whose input could not be loaded, with the reason (skipped)."""


def score_groups(
    items: Sequence[TaskItem],
    trajectories: Sequence[Trajectory],
    group_size: int,
    reward: RewardConfig,
    filter: str,
    scale_by_std: bool = False,
) -> GroupScores:
    """Rewards and advantages of each query's group; uniform groups are dropped unless ``filter``
    is ``none``. A query whose input could not be loaded (every rollout ``bad_input``) is reported
    in ``bad_inputs`` and left out of the rewards, the metrics and the batch."""
    scores = GroupScores()
    groups = [list(trajectories[q * group_size : (q + 1) * group_size]) for q in range(len(items))]
    bad = [all(t.finish_reason == "bad_input" for t in group) for group in groups]
    batch_rapr = rapr([t.uses_tools for g, b in zip(groups, bad, strict=True) if not b for t in g])  # R_B
    for item, group, is_bad in zip(items, groups, bad, strict=True):
        if is_bad:
            scores.bad_inputs.append(f"{item.qid}: {group[0].error}")
            continue
        parts = group_rewards([rollout_facts(t, item) for t in group], reward, batch_rapr)
        scores.groups += 1
        scores.parts += parts
        scores.trajectories += group
        scores.tool_use[task_for(item).name] += [float(t.uses_tools) for t in group]
        rewards = [p.total for p in parts]
        uniform = is_uniform(rewards)
        scores.uniform_groups += uniform
        if uniform and filter != "none":
            continue
        advantages = group_advantages(rewards, scale_by_std)
        scores.fresh += [Sample(t, a) for t, a in zip(group, advantages, strict=True) if t.n_turns > 0]
    return scores


# ------------------------------------------------------------------------------- the batch
def for_replay(sample: Sample, budget: PixelBudget) -> Sample:
    """The sample as the replay buffer keeps it: the query's images as the model saw them.

    A rollout holds the decoded originals (crops are cut from them), which at V* sizes are tens
    of MB per image; rendering only ever uses them resized into ``budget.inputs`` (video frames
    into ``budget.video``), and resizing is idempotent, so the resized views render to the same
    pixels. Returned crops and frames are already budget-sized and stay as they are.
    """
    turns = [_shrink_turn(turn, budget) for turn in sample.trajectory.conversation.turns]
    trajectory = replace(sample.trajectory, conversation=Conversation(turns))
    return replace(sample, trajectory=trajectory, rendered=None)


def _shrink_turn(turn: Turn, budget: PixelBudget) -> Turn:
    parts = []
    for part in turn.parts:
        if isinstance(part, ImagePart) and part.image is not None and not part.returned:
            part = ImagePart(image=budget.inputs.resize(part.image, budget.factor))
        elif isinstance(part, VideoPart) and part.frames:
            frames = tuple(budget.video.resize(f, budget.factor) for f in part.frames)
            part = VideoPart(frames=frames, fps=part.fps)
        parts.append(part)
    return replace(turn, parts=parts)


def sample_bytes(sample: Sample) -> int:
    """Memory a kept sample holds: its images' pixels and its log-prob tensors."""
    total = 0
    for turn in sample.trajectory.conversation.turns:
        for part in turn.parts:
            if isinstance(part, ImagePart) and part.image is not None:
                total += _image_bytes(part.image)
            elif isinstance(part, VideoPart):
                total += sum(_image_bytes(f) for f in part.frames)
    for tensor in (sample.old_logprobs, sample.ref_logprobs):
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
    return total


def _image_bytes(image: Any) -> int:
    return int(image.width * image.height * len(image.getbands()))


def select_batch(
    fresh: list[Sample],
    replay: ReplayBuffer[Sample],
    rng: np.random.Generator,
    filter: str,
    train_batch_size: int,
) -> list[Sample]:
    """The samples to train on: the fresh ones, and with ``ssr`` as many replays (at least half a
    train batch, so training goes on when every group was uniform, as in the learning trap).
    Fresh samples enter the buffer later, with their old log-probs (:func:`add_to_replay`)."""
    batch = list(fresh)
    if filter == "ssr":
        batch += replay.draw(max(len(fresh), train_batch_size // 2), rng)
    return batch


def add_to_replay(fresh: list[Sample], replay: ReplayBuffer[Sample], budget: PixelBudget) -> None:
    """Fresh samples (with their old log-probs) enter the buffer in their compact form."""
    replay.add([for_replay(s, budget) for s in fresh], [s.advantage for s in fresh])


# ------------------------------------------------------------------------------- log-probs
def compute_old_logprobs(
    policy: Any,
    reference: Any | None,
    samples: list[Sample],
    scorer: Scorer,
    micro_batch: int,
    source: str,
    device: torch.device,
) -> None:
    """Set each fresh sample's old (and reference) log-probs, kept on the CPU.

    ``policy`` is the unwrapped model: no gradient, no collective. ``source``: ``recompute`` or
    ``sampler`` (the in-process sampler's, which are the same temperature-1 values). Replayed
    samples keep the log-probs of the policy that generated them, so PPO's clip bounds how far
    repeated replays move them.
    """
    with torch.no_grad():
        for start in range(0, len(samples), micro_batch):
            chunk = samples[start : start + micro_batch]
            if source == "sampler":
                for sample in chunk:
                    sample.old_logprobs = _sampler_logprobs(sample)
            else:
                logprobs, _, counts = scorer.logprobs(policy, chunk, device)
                for sample, piece in zip(chunk, torch.split(logprobs.cpu(), counts), strict=True):
                    sample.old_logprobs = piece
            if reference is not None:
                reference_lp, _, counts = scorer.logprobs(reference, chunk, device)
                for sample, piece in zip(chunk, torch.split(reference_lp.cpu(), counts), strict=True):
                    sample.ref_logprobs = piece


def _sampler_logprobs(sample: Sample) -> torch.Tensor:
    values = [lp for t in sample.trajectory.conversation.model_turns for lp in (t.logprobs or [])]
    return torch.tensor(values, dtype=torch.float32)


# ------------------------------------------------------------------------------- update
def loss_normalizer(config: RLConfig, samples: int, tokens: int, world: int) -> float:
    """What each process divides its summed token loss by, given the minibatch's global sample
    and token counts, so that the update does not depend on how many processes share it.

    Gradients are averaged over the ``world`` processes, so each process's divisor is the global
    one divided by ``world``:

    - ``constant`` (released): each micro-batch's summed token loss / ``loss_constant``, averaged
      over the minibatch's micro-batches, counted as ``samples / loss_micro_batch`` (default
      ``micro_batch``; as DeepSpeed's accumulation and data-parallel averaging do in the
      release);
    - ``tokens``: the summed loss over all the minibatch's tokens / their count.

    >>> from pixelreasoner.train.rl import RLConfig
    >>> loss_normalizer(RLConfig(loss_constant=200.0, micro_batch=4), samples=16, tokens=900, world=2)
    400.0
    """
    if config.loss_norm == "constant":
        per_group = config.loss_micro_batch or config.micro_batch
        return config.loss_constant * max(samples / per_group, 1.0) / world
    return max(tokens, 1) / world


def ppo_update(
    model: Any,
    optimizer: torch.optim.Optimizer,
    trainable: list[torch.nn.Parameter],
    samples: list[Sample],
    fallback: Sample,
    scorer: Scorer,
    dist: Any,
    config: RLConfig,
    shuffle_seed: int,
) -> dict[str, list[float]]:
    """Token-level PPO over ``samples`` in minibatches of ``train_batch_size``, ``ppo_epochs`` times.

    ``fallback`` (any sample) is run at zero weight where this process has no samples left, so
    every process takes part in every collective. Returns per-minibatch statistics.
    """
    world = dist.num_processes
    stats: dict[str, list[float]] = defaultdict(list)
    for _ in range(config.ppo_epochs):
        random.Random(shuffle_seed).shuffle(samples)
        for minibatch in lockstep_chunks(dist, samples, config.train_batch_size):
            count = sum_across(dist, len(minibatch))
            tokens = sum_across(dist, sum(_old(s).numel() for s in minibatch))
            norm = loss_normalizer(config, int(count), int(tokens), world)
            chunks = lockstep_chunks(dist, minibatch, config.micro_batch)
            for k, chunk in enumerate(chunks):
                used = chunk or [fallback]
                sync = contextlib.nullcontext() if k == len(chunks) - 1 else dist.no_sync(model)
                with sync:
                    logprobs, entropy, counts = scorer.logprobs(model, used, dist.device)
                    per_token = [torch.full((c,), s.advantage) for s, c in zip(used, counts, strict=True)]
                    ref = None
                    if config.kl_coef > 0 and chunk:
                        ref = _cat([s.ref_logprobs for s in used], counts, logprobs.device)
                    result = ppo_token_loss(
                        logprobs,
                        _cat([s.old_logprobs for s in used], counts, logprobs.device),
                        torch.cat(per_token).to(logprobs.device),
                        config.clip_low,
                        config.clip_high,
                        normalizer=norm,
                        ref_logprobs=ref,
                        kl_coef=config.kl_coef,
                    )
                    dist.backward(result.loss * (1.0 if chunk else 0.0))
                if chunk:
                    stats["clip_fraction"].append(result.clip_fraction)
                    stats["entropy"].append(float(entropy.mean()))
                    stats["kl"].append(result.kl)
            grad = dist.clip_grad_norm_(trainable, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            stats["grad_norm"].append(float(grad))
    return stats


def _old(sample: Sample) -> torch.Tensor:
    return sample.old_logprobs if sample.old_logprobs is not None else torch.zeros(0)


def _cat(values: list[torch.Tensor | None], counts: list[int], device: torch.device) -> torch.Tensor:
    """Per-sample tensors concatenated (zeros where a sample has none, e.g. the fallback)."""
    return torch.cat(
        [v if v is not None else torch.zeros(c) for v, c in zip(values, counts, strict=True)]
    ).to(device)


def warn_bad_inputs(bad_inputs: list[str]) -> None:
    for line in bad_inputs:
        warnings.warn(f"skipping query {line}", stacklevel=2)


__all__ = [
    "GroupScores",
    "Sample",
    "Scorer",
    "add_to_replay",
    "compute_old_logprobs",
    "for_replay",
    "loss_normalizer",
    "ppo_update",
    "rollout_facts",
    "sample_bytes",
    "score_groups",
    "select_batch",
]
