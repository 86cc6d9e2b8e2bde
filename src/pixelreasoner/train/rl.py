"""Curiosity-driven RL (SPEC §4): GRPO-style groups, curiosity bonus, efficiency penalty, replay.

One step (a "rollout phase"):

1. **rollout**: each process takes its share of ``queries_per_step`` queries and samples
   ``group_size`` trajectories of each with the rollout engine (temperature 1.0 on the first
   turn, 0.9 after, top-p 0.95, top-k 40, vision tokens suppressed);
2. **reward**: the task's scorer, the curiosity bonus from the group's RaPR, the efficiency
   penalty; advantage = reward − group mean;
3. **filter**: groups with uniform rewards carry no signal: ``drop`` them, or ``ssr`` —
   Selective Sample Replay: non-uniform samples enter a buffer and half of each batch is
   replayed from it with probability ∝ |A|;
4. **old log-probs** of the kept samples, recomputed in batched passes with the 3-D positions
   (or the sampler's, which the tests show are identical in fp32), never by re-tokenizing text;
5. **update**: token-level PPO with the asymmetric clip, in minibatches of
   ``train_batch_size``, ``ppo_epochs`` times; the loss sums over the model's own tokens and is
   divided by a constant (released 200) or the token count.

Reward, advantage, replay and loss are the pure functions of :mod:`pixelreasoner.rl`; this file
is the loop. Run: ``pixelreasoner rl configs/rl_tiny.yaml [key=value ...]``.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from tqdm import tqdm

from pixelreasoner.config import save_config, to_dict
from pixelreasoner.data.formats import read_items
from pixelreasoner.eval.tasks import task_for
from pixelreasoner.models.loading import load_model
from pixelreasoner.render import Renderer
from pixelreasoner.rl.algorithm import ReplayBuffer
from pixelreasoner.rl.reward import RewardConfig
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import Query, RolloutEngine, RolloutLimits
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.train.checkpoint import (
    export_model,
    latest_checkpoint,
    load_checkpoint,
    load_process_state,
    save_checkpoint,
)
from pixelreasoner.train.common import EpochOrder, apply_freezing, cosine_schedule, enable_checkpointing
from pixelreasoner.train.dist import make_distribution, seed_everything, sum_across
from pixelreasoner.train.memory import check_memory
from pixelreasoner.train.metrics import MetricsLogger
from pixelreasoner.train.options import RunOptions
from pixelreasoner.train.rl_steps import (
    Sample,
    Scorer,
    add_to_replay,
    compute_old_logprobs,
    ppo_update,
    rollout_facts,
    sample_bytes,
    score_groups,
    select_batch,
    warn_bad_inputs,
)
from pixelreasoner.vision.budget import pixel_budget


@dataclass
class RLConfig(RunOptions):
    """Curiosity-driven RL. Defaults run the tiny CPU job; ``configs/rl_qwen25vl_7b.yaml`` is the release."""

    data: str = "runs/quickstart/tasks/train"
    """Query set: a dataset directory or parquet in the released layout."""
    model: str = "runs/quickstart/sft/final"
    """The warm-start checkpoint (released: the end of SFT epoch 1)."""
    out_dir: str = "runs/rl"
    budget: str = "tiny"
    mode: Literal["vcot", "notool"] = "vcot"
    """Prompt with the operations (vcot), or the text-only baseline's prompt (notool)."""

    steps: int = 20
    """Rollout phases (released: ~3 episodes over ~15k queries at 512 per phase)."""
    queries_per_step: int = 16
    """Queries per phase over all processes (released: 512)."""
    group_size: int = 8
    """Rollouts per query, G (released: 8)."""
    temperature_first: float = 1.0
    temperature_later: float = 0.9
    top_p: float = 0.95
    top_k: int = 40
    max_turn_tokens: int = 160
    """Tokens per generated turn (released: 2048; the tiny tasks need far fewer)."""
    max_total_tokens: int = 12288
    max_calls: int = 4
    max_images: int = 16
    rollout_batch: int = 0
    """Trajectories rolled out together on each process (0: all of the phase's at once). Bounds
    the in-process backend's KV cache, which at 7B takes 57 KB per token (28 layers x 2 x 4 KV
    heads x 128 x 2 bytes): 512 trajectories of 5k tokens would need ~140 GB."""

    reward: RewardConfig = field(default_factory=RewardConfig)
    filter: Literal["none", "drop", "ssr"] = "ssr"
    """Uniform groups: keep (none), drop, or drop and replay from a buffer (ssr, the paper's)."""
    replay_capacity: int = 2048
    """Samples the replay buffer keeps per process (the most recent)."""
    replay_max_mb: float = 2048.0
    """Memory the replay buffer may hold per process (its samples' images and log-probs), in MiB;
    the oldest samples go first. Replayed samples keep the query's images as the model saw them,
    not the decoded originals (``rl_steps.for_replay``); ``replay_mb`` in the metrics."""
    scale_advantage_by_std: bool = False

    train_batch_size: int = 64
    """Samples per gradient step per process (released: 256 in total, 16 steps per phase)."""
    ppo_epochs: int = 1
    clip_low: float = 0.2
    clip_high: float = 0.35
    loss_norm: Literal["constant", "tokens"] = "constant"
    loss_constant: float = 200.0
    """Released: the summed token loss is divided by 200."""
    loss_micro_batch: int = 0
    """With ``loss_norm: constant``, the micro-batch size the release's average over micro-batches
    is counted in (its ``micro_train_batch_size``: 4); 0 means ``micro_batch``. Setting it lets
    ``micro_batch`` change for memory without changing the update."""
    kl_coef: float = 0.0
    """KL (k3) to the starting policy; 0 as released (no reference model is loaded then)."""
    old_logprobs: Literal["recompute", "sampler"] = "recompute"
    """PPO's old log-probs: recomputed by the learner, or the in-process sampler's. Both are the
    model's temperature-1 log-probs of the sampled ids (the policy being trained), equal in fp32."""
    micro_batch: int = 16
    """Sequences per forward pass in the log-prob and update passes (the release was limited to 1)."""

    lr: float = 5e-4
    """Released 7B: 1e-6; the tiny model needs more."""
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.5
    adam_betas: tuple[float, ...] = (0.9, 0.95)
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    freeze_vision: bool = False
    """The release trains the vision tower in RL."""
    gradient_checkpointing: bool = False
    """Recompute activations in the update's backward pass (rollouts, in eval mode, are unaffected);
    the shared-prefix forward turns itself off under it."""
    log_every: int = 1


@dataclass
class RLResult:
    out_dir: Path
    final_dir: Path
    steps: int
    history: list[dict[str, float]] = field(default_factory=list)


# ---------------------------------------------------------------------------------- the loop
def train_rl(config: RLConfig) -> RLResult:
    """Run RL as configured; resumes from ``out_dir``'s latest checkpoint when ``resume``."""
    accelerator = make_distribution(config)
    rank, world = accelerator.process_index, accelerator.num_processes
    seed_everything(config.seed, rank)
    if config.queries_per_step % world:
        raise ValueError(f"queries_per_step {config.queries_per_step} is not divisible by {world} processes")
    out = Path(config.out_dir)
    resume_from = latest_checkpoint(out / "checkpoints") if config.resume else None

    loaded = read_items(config.data)
    if loaded.problems and accelerator.is_main_process:
        warnings.warn(f"query set problems (skipped): {loaded.summary()}", stacklevel=1)
    items = loaded.items
    if len(items) < config.queries_per_step:
        raise ValueError(f"{len(items)} usable queries cannot fill a step of {config.queries_per_step}")
    task_names = sorted({task_for(item).name for item in items})
    budget = pixel_budget(config.budget)
    model, processor = load_model(resume_from or config.model, dtype=torch.float32)
    apply_freezing(model, config.freeze_vision, freeze_projector=False)
    if config.gradient_checkpointing:
        enable_checkpointing(model)
    check_memory(config, model, accelerator)  # prints the plan; refuses a run that cannot fit
    reference = None
    if config.kl_coef > 0:
        reference, _ = load_model(config.model, dtype=torch.float32, device=str(accelerator.device))
        reference.requires_grad_(False)
    optimizer = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        betas=tuple(config.adam_betas),  # type: ignore[arg-type]
        weight_decay=config.weight_decay,
    )
    warmup = int(config.warmup_ratio * config.steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, config.steps, warmup, config.min_lr_ratio)
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    accelerator.register_for_checkpointing(scheduler)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]  # sharded under fsdp

    renderer = Renderer(processor, budget)
    scorer = Scorer(renderer, config.share_prefix and accelerator.shares_prefix)
    backend = TransformersBackend(
        accelerator.unwrap_model(model), processor, budget, seed=config.seed + 7919 * rank
    )
    limits = RolloutLimits(
        config.max_calls, config.max_images, config.max_total_tokens, config.max_turn_tokens
    )
    first = SamplingParams(config.temperature_first, config.top_p, config.top_k, config.max_turn_tokens)
    later = SamplingParams(config.temperature_later, config.top_p, config.top_k, config.max_turn_tokens)
    engine = RolloutEngine(backend, budget, limits, first, later)
    replay: ReplayBuffer[Sample] = ReplayBuffer(
        config.replay_capacity, int(config.replay_max_mb * 2**20), sample_bytes
    )
    replay_rng = np.random.default_rng([config.seed, rank])

    state: dict[str, Any] = {"step": 0, "epoch": 0, "offset": 0, "history": []}
    if resume_from is not None:
        state = load_checkpoint(resume_from, accelerator)
        extra = load_process_state(resume_from, rank)
        backend.generator.set_state(extra["generator"])
        replay, replay_rng = extra["replay"], extra["replay_rng"]
        if accelerator.is_main_process:
            print(f"resuming from {resume_from} at step {state['step']}")
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
    logger = MetricsLogger(out, config.metrics, to_dict(config), enabled=accelerator.is_main_process)

    batches = EpochOrder(len(items), config.seed).batches(
        config.queries_per_step, state["epoch"], state["offset"]
    )
    share = config.queries_per_step // world
    stop_at = min(config.steps, config.stop_after_steps) if config.stop_after_steps else config.steps
    bar = tqdm(
        total=config.steps,
        initial=state["step"],
        desc="rl",
        unit="step",
        disable=not (config.progress and accelerator.is_main_process),
    )

    def checkpoint() -> None:
        mine_state = {"generator": backend.generator.get_state(), "replay": replay, "replay_rng": replay_rng}
        save_checkpoint(
            out / "checkpoints",
            state["step"],
            accelerator,
            model,
            processor,
            state,
            config.keep_checkpoints,
            per_process=mine_state,
        )

    while state["step"] < stop_at:
        epoch, offset, indices = next(batches)
        mine = [items[i] for i in indices[rank * share : (rank + 1) * share]]
        metrics: dict[str, float] = {}

        # Rollouts and old log-probs use the full weights on every process (gathered once under
        # fsdp); no collective runs inside, so processes may generate different amounts.
        with accelerator.gathered(model) as policy:
            # 1. rollout -----------------------------------------------------------------------
            began = time.perf_counter()
            policy.eval()
            queries = [
                Query.from_item(item, budget, config.mode) for item in mine for _ in range(config.group_size)
            ]
            trajectories = engine.run(queries, max_batch=config.rollout_batch)
            backend.reset()  # the last batch's KV cache must not sit in memory through the update
            metrics["time_rollout"] = time.perf_counter() - began

            # 2. reward and advantages, 3. filter (pure: no model, no collective) -----------------
            scores = score_groups(
                mine,
                trajectories,
                config.group_size,
                config.reward,
                config.filter,
                config.scale_advantage_by_std,
            )
            warn_bad_inputs(scores.bad_inputs)
            batch_samples = select_batch(
                scores.fresh, replay, replay_rng, config.filter, config.train_batch_size
            )

            # 4. old log-probs (no gradient) ----------------------------------------------------
            began = time.perf_counter()
            compute_old_logprobs(
                policy,
                reference,
                scores.fresh,
                scorer,
                config.micro_batch,
                config.old_logprobs,
                accelerator.device,
            )
            if config.filter == "ssr":
                add_to_replay(scores.fresh, replay, budget)
            metrics["time_logprob"] = time.perf_counter() - began
        model.train()

        # 5. update ---------------------------------------------------------------------------
        began = time.perf_counter()
        fallback = Sample(trajectories[0], 0.0)  # a zero-weight pass keeps processes in step
        stats = ppo_update(
            model,
            optimizer,
            trainable,
            batch_samples,
            fallback,
            scorer,
            accelerator,
            config,
            shuffle_seed=config.seed + state["step"],
        )
        with warnings.catch_warnings():
            # The schedule advances once per phase, also when every group was uniform and no
            # optimizer step ran; torch warns about that order, which is intended here.
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            scheduler.step()
        metrics["time_update"] = time.perf_counter() - began
        for sample in batch_samples:  # replayed samples must not keep pixel tensors in the buffer
            sample.rendered = None

        # metrics ------------------------------------------------------------------------------
        scored, parts_all = scores.trajectories, scores.parts
        totals = {
            "reward": sum(p.total for p in parts_all),
            "correctness": sum(p.correctness for p in parts_all),
            "curiosity": sum(p.curiosity for p in parts_all),
            "penalty": sum(p.penalty for p in parts_all),
            "accuracy": sum(p.correctness > 0 for p in parts_all),
            "rapr": sum(t.uses_tools for t in scored),
            "correct_tool": sum(
                p.correctness > 0 for p, t in zip(parts_all, scored, strict=True) if t.uses_tools
            ),
            "correct_direct": sum(
                p.correctness > 0 for p, t in zip(parts_all, scored, strict=True) if not t.uses_tools
            ),
            "ops": sum(t.n_calls for t in scored),
            "failed_ops": sum(t.n_failed for t in scored),
            "turns": sum(t.n_turns for t in scored),
            "response_tokens": sum(t.generated_tokens for t in scored),
            "uniform_groups": scores.uniform_groups,
            "groups": scores.groups,
            "bad_inputs": len(scores.bad_inputs),
            "trained_samples": len(batch_samples),
            "rollouts": len(scored),
            "replay_samples": len(replay),
            "replay_bytes": replay.nbytes,
        }
        summed = {k: sum_across(accelerator, v) for k, v in totals.items()}
        rollouts = max(summed["rollouts"], 1)
        for key in (
            "reward",
            "correctness",
            "curiosity",
            "penalty",
            "accuracy",
            "rapr",
            "ops",
            "turns",
            "response_tokens",
        ):
            metrics[key] = summed[key] / rollouts
        # accuracy by path: of the rollouts that called an operation, and of those that did not
        # (absent in a phase where no rollout took that path)
        tool_rollouts = summed["rapr"]
        if tool_rollouts:
            metrics["accuracy_tool"] = summed["correct_tool"] / tool_rollouts
        if summed["rollouts"] - tool_rollouts:
            metrics["accuracy_direct"] = summed["correct_direct"] / (summed["rollouts"] - tool_rollouts)
        metrics["tool_error_rate"] = summed["failed_ops"] / max(summed["ops"], 1)
        metrics["uniform_group_ratio"] = summed["uniform_groups"] / max(summed["groups"], 1)
        for key in ("trained_samples", "bad_inputs", "replay_samples"):
            metrics[key] = summed[key]
        metrics["replay_mb"] = summed["replay_bytes"] / 2**20
        # Every process reduces the same tasks in the same order (all of the query set's), also
        # those it drew none of this phase: a process-local list would pair up different
        # collectives across processes and hang.
        for task in task_names:
            uses = scores.tool_use.get(task, [])
            total = sum_across(accelerator, len(uses))
            if total:
                metrics[f"rapr_{task}"] = sum_across(accelerator, sum(uses)) / total
        for key, values in stats.items():
            metrics[key] = float(np.mean(values)) if values else 0.0
        metrics["lr"] = float(scheduler.get_last_lr()[0])
        state.update(step=state["step"] + 1, epoch=epoch, offset=offset)
        state["history"].append(metrics)
        bar.update()
        bar.set_postfix(reward=f"{metrics['reward']:.3f}", rapr=f"{metrics['rapr']:.2f}")
        if state["step"] % config.log_every == 0 or state["step"] == config.steps:
            logger.log(state["step"], metrics)
        if config.save_every and state["step"] % config.save_every == 0 and state["step"] < stop_at:
            checkpoint()
    bar.close()
    checkpoint()
    final_dir = out / "final"
    if state["step"] >= config.steps:
        export_model(accelerator, model, processor, final_dir)
    logger.close()
    return RLResult(out, final_dir, state["step"], list(state["history"]))


__all__ = ["RLConfig", "RLResult", "Sample", "Scorer", "rollout_facts", "train_rl"]
