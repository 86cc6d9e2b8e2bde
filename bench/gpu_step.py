"""SFT steps and one RL phase of a randomly initialised Qwen2.5-VL at its published shape.

For a GPU machine: it measures what training at real size costs with this repository's code
(rendering, the forward over selected tokens, the in-process rollout backend, the PPO update).
It runs the training loops' own steps (``train.sft_steps.sft_step``; a rollout through
``RolloutEngine``, ``train.rl_steps.compute_old_logprobs`` and ``ppo_update``), in one process
set up as the loops set it up (an accelerate ``Accelerator``), and times them:

    python bench/gpu_step.py --shape qwen2.5-vl-3b --json gpu-3b.json         # one GPU, amp
    python bench/gpu_step.py --shape qwen2.5-vl-7b --precision bf16 --json gpu-7b.json
    python bench/gpu_step.py --shape tiny-1m --device cpu                     # CPU smoke run

What it does, on synthetic needle items rendered at the released training pixel budget
(``--knob grid=10`` by default: a 1400 px canvas, shown at the 2000-token input limit):

- **SFT**: ``--sft-steps`` optimizer steps over ``--sft-batch`` synthesized traces each
  (forward + backward in micro-batches of ``--micro`` grouped by length, the shared-prefix
  forward where it applies, clipping at 1, then AdamW), vision tower frozen as in
  the SFT recipe. Step time, tokens/s (real tokens, padding excluded), gradient norm and peak
  memory; the first step includes warm-up and is reported apart from the best later one.
- **RL**: one phase with the vision tower trained, as in the RL recipe (``--rl-freeze-vision``
  freezes it): ``--queries`` x ``--group`` rollouts with the in-process backend (sampling as
  the recipe: temperature 1, top-p 0.95, top-k 40, up to ``--turn-tokens`` per turn), the old
  log-probs of every rollout, and one PPO update over them in micro-batches of ``--micro``
  (the recipe's clip range, loss normalisation and gradient clipping; no KL term).
  Time of each part, generated tokens/s (prefill and vision encoding included), peak memory.

Precision (``--precision``). ``amp`` (the default on CUDA) keeps fp32 weights and runs the
forward under bf16 autocast: ``mixed_precision=bf16``, as in the recipes, 16 bytes per
trained parameter, so 3B fits one 80 GB GPU and 7B needs ZeRO across several, as released.
``bf16`` keeps weights, gradients and AdamW's moments in bf16 (8 bytes per trained parameter),
which lets 7B run on one GPU, but **for timing and memory only**: at lr 1e-6 most bf16 weights
round the update away, so it would not train. ``fp32`` is for CPU. Activation checkpointing is
on for the published shapes (``--checkpointing off`` turns it off).

Honest limits: the weights are random, so rollouts are random text that runs to
``--turn-tokens`` without a tool call, every reward is 0, and no rollout has a second turn or a
crop; the update therefore uses alternating +1/-1 advantages, which time the same computation.
The defaults are far below the recipe's rollout scale (512 rollouts of up to 2048 tokens per
turn on each GPU per phase): raise ``--queries`` and ``--turn-tokens`` to see that cost. The
tokenizer is the tiny one trained on the protocol's strings, so text takes somewhat more tokens
than with Qwen's (image tokens, most of each sequence, are exact). Nothing here was run on a
GPU by the sessions that wrote it (none was lent); bench/RESULTS.md says what was measured where.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from pixelreasoner.models.tiny import FULL_SHAPES, PRESETS, build_tiny_model
from pixelreasoner.render import Renderer
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import Query, RolloutEngine, RolloutLimits
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.synth.traces import TraceMix, TraceSynthesizer
from pixelreasoner.tasks.families import make_family, parse_knobs
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train.common import apply_freezing, enable_checkpointing
from pixelreasoner.train.dist import make_distribution
from pixelreasoner.train.fsdp import FSDPOptions
from pixelreasoner.train.options import RunOptions
from pixelreasoner.train.rl import RLConfig
from pixelreasoner.train.rl_steps import Sample, Scorer, compute_old_logprobs, ppo_update
from pixelreasoner.train.sft_steps import SFTStepStats, sft_step
from pixelreasoner.vision.budget import pixel_budget

T = TypeVar("T")
DTYPES = {"bf16": torch.bfloat16, "amp": torch.float32, "fp32": torch.float32}


class Meter:
    """Wall time and peak memory of a block, synchronising the GPU around it."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.cuda = device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], T]) -> tuple[T, float, dict[str, float]]:
        """``fn()``, its seconds, and peak memory in GiB while it ran: ``allocated`` and
        ``reserved`` on CUDA (reserved is what runs out), ``resident`` on CPU (the process's
        peak so far)."""
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        self.sync()
        began = time.perf_counter()
        result = fn()
        self.sync()
        seconds = time.perf_counter() - began
        if self.cuda:
            peak = {
                "allocated": torch.cuda.max_memory_allocated(self.device) / 2**30,
                "reserved": torch.cuda.max_memory_reserved(self.device) / 2**30,
            }
        else:  # ru_maxrss is KiB on Linux
            peak = {"resident": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
        return result, seconds, peak


def highest(peaks: Sequence[dict[str, float]]) -> dict[str, float]:
    return {key: max(p[key] for p in peaks) for key in peaks[0]}


def make_optimizer(args: argparse.Namespace, params: list[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW as the recipes (betas 0.9/0.95, no weight decay; fused on CUDA), or plain SGD."""
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr)
    fused = params[0].device.type == "cuda"
    return torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0, fused=fused)


def trained(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    shapes = sorted(FULL_SHAPES) + sorted(PRESETS)
    parser.add_argument("--shape", default="qwen2.5-vl-3b", choices=shapes, help="model size (random init)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--precision", choices=sorted(DTYPES), help="default: amp on CUDA, fp32 on CPU")
    parser.add_argument("--budget", default="released-train", help="pixel budget preset")
    parser.add_argument("--family", default="needle")
    parser.add_argument(
        "--knob", action="append", default=None, help="family knob KEY=VALUE (default: grid=10)"
    )
    parser.add_argument("--sft-batch", type=int, default=16, help="traces per SFT step (the recipe's 16)")
    parser.add_argument("--sft-steps", type=int, default=3, help="the first is warm-up (reported apart)")
    parser.add_argument("--micro", type=int, default=4, help="sequences per forward pass")
    parser.add_argument("--queries", type=int, default=4)
    parser.add_argument("--group", type=int, default=8, help="rollouts per query (the recipe's 8)")
    parser.add_argument("--turn-tokens", type=int, default=512, help="max new tokens per turn")
    parser.add_argument("--lr", type=float, default=1e-6)
    parser.add_argument(
        "--optimizer",
        choices=("adamw", "sgd"),
        default="adamw",
        help="sgd keeps no state: to check that a shape runs where AdamW's moments do not fit",
    )
    parser.add_argument("--rl-freeze-vision", action="store_true", help="freeze the vision tower in RL too")
    parser.add_argument(
        "--checkpointing",
        choices=("auto", "on", "off"),
        default="auto",
        help="activation checkpointing (auto: on for the published shapes)",
    )
    parser.add_argument(
        "--strategy",
        default="auto",
        choices=["auto", "fsdp"],
        help="auto: one process as the loops set it up; fsdp: FSDP2 (under torchrun, over its processes)",
    )
    parser.add_argument(
        "--offload", action="store_true", help="fsdp: parameters and optimizer state on the CPU"
    )
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    args.precision = args.precision or ("amp" if args.device.startswith("cuda") else "fp32")
    if args.sft_steps < 1 or args.micro < 1 or args.queries < 1 or args.group < 1:
        parser.error("--sft-steps, --micro, --queries and --group must be at least 1")
    args.knob = args.knob if args.knob is not None else ["grid=10"]
    return args


def build_data(args: argparse.Namespace, tmp: Path) -> tuple[list[Any], list[Any]]:
    """Task items (for RL) and synthesized single-pass traces of them (for SFT)."""
    budget = pixel_budget(args.budget)
    family = make_family(args.family, **parse_knobs(args.family, args.knob))
    count = max(args.sft_batch, args.queries)
    items = generate_dataset([family], count, tmp / "tasks", seed=0, progress=False).items
    synthesizer = TraceSynthesizer(budget, mix=TraceMix.single_pass(), seed=0)
    conversations, _, _ = synthesizer.run(items, progress=False)
    return items, conversations


def run(args: argparse.Namespace) -> dict[str, Any]:
    device = torch.device(args.device)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            sys.exit("--device cuda, but torch sees no CUDA GPU (--device cpu --shape tiny-1m: a smoke run)")
        if device.index is not None:  # a bare 'cuda' means the current device
            torch.cuda.set_device(device)
    # One process, as the training loops set it up: amp is accelerate's bf16 autocast around the
    # prepared model's forward, which the steps, the rollouts and the log-prob passes all call.
    options = RunOptions(
        strategy=args.strategy,
        mixed_precision="bf16" if args.precision == "amp" else "no",
        fsdp=FSDPOptions(offload=args.offload),
    )
    dist = make_distribution(options)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = pixel_budget(args.budget)
    meter = Meter(device)
    with tempfile.TemporaryDirectory() as tmp:
        items, conversations = build_data(args, Path(tmp))
        corpus = [t.text for c in conversations for t in c.turns if t.text]
        (model, processor), build_s, _ = meter.measure(
            lambda: build_tiny_model(
                args.shape, seed=0, extra_corpus=corpus, dtype=DTYPES[args.precision], device=device
            )
        )
        renderer = Renderer(processor, budget)
        traces = [renderer.render(c) for c in conversations[: args.sft_batch]]
        queries = [Query.from_item(item, budget) for item in items[: args.queries] for _ in range(args.group)]

    checkpointing = args.checkpointing == "on" or (args.checkpointing == "auto" and args.shape in FULL_SHAPES)
    if checkpointing:
        enable_checkpointing(model)
    model = dist.prepare(model)
    figures: dict[str, Any] = {
        "shape": args.shape,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": args.precision,
        "optimizer": args.optimizer,
        "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9,
        "checkpointing": checkpointing,
        "strategy": args.strategy,
        "build_s": build_s,
    }

    # SFT: vision tower frozen (the SFT recipe) ---------------------------------------------------
    apply_freezing(model, freeze_vision=True, freeze_projector=False)
    params = trained(model)
    optimizer = make_optimizer(args, params)

    def sft() -> SFTStepStats:
        model.train()
        stats = sft_step(
            model,
            optimizer,
            params,
            traces,
            traces[0],
            renderer,
            dist,
            args.micro,
            max_grad_norm=1.0,
            share_prefix=dist.shares_prefix,
        )
        if stats is None:
            raise RuntimeError("the synthesized traces have no learned tokens")
        return stats

    steps = [meter.measure(sft) for _ in range(args.sft_steps)]
    tokens = steps[0][0].real
    later = [s for _, s, _ in steps[1:]] or [steps[0][1]]
    figures["sft"] = {
        "trained_parameters_b": sum(p.numel() for p in params) / 1e9,
        "sequences": len(traces),
        "tokens_per_step": tokens,
        "mean_sequence_tokens": tokens / len(traces),
        "first_step_s": steps[0][1],
        "step_s": min(later),
        "median_step_s": statistics.median(later),
        "tokens_per_s": tokens / min(later),
        "peak_gib": highest([peak for _, _, peak in steps]),
        "loss_by_step": [round(stats.loss, 4) for stats, _, _ in steps],  # ~ln(vocab) at random init
        "grad_norm_by_step": [round(stats.grad_norm or 0.0, 4) for stats, _, _ in steps],
    }
    print_block("SFT", figures["sft"])
    del optimizer  # RL is a run of its own: its optimizer starts empty
    for p in params:
        p.grad = None

    # RL: vision tower trained (the RL recipe) ----------------------------------------------------
    # the recipe's clipping and loss normalisation; one update over all rollouts, no KL term
    rl = RLConfig(micro_batch=args.micro, train_batch_size=len(queries), ppo_epochs=1, kl_coef=0.0)
    apply_freezing(model, freeze_vision=args.rl_freeze_vision, freeze_projector=False)
    params = trained(model)
    optimizer = make_optimizer(args, params)
    sampling = SamplingParams(rl.temperature_first, rl.top_p, rl.top_k, args.turn_tokens)
    later_sampling = SamplingParams(rl.temperature_later, rl.top_p, rl.top_k, args.turn_tokens)
    limits = RolloutLimits(rl.max_calls, rl.max_images, rl.max_total_tokens, args.turn_tokens)
    scorer = Scorer(renderer, share_prefix=dist.shares_prefix)  # off by itself under checkpointing

    def rollout() -> list[Any]:
        model.eval()
        with dist.gathered(model) as policy, torch.no_grad():  # fsdp: the full weights, gathered once
            backend = TransformersBackend(policy, processor, budget, seed=0)
            engine = RolloutEngine(backend, budget, limits, sampling, later_sampling)
            return engine.run(queries)

    trajectories, rollout_s, rollout_peak = meter.measure(rollout)
    samples = [Sample(t, 1.0 if k % 2 else -1.0) for k, t in enumerate(trajectories) if t.n_turns]

    def old_logprobs() -> None:
        with dist.gathered(model) as policy:
            compute_old_logprobs(policy, None, samples, scorer, args.micro, "recompute", dist.device)

    def update() -> float:
        model.train()
        fallback = Sample(trajectories[0], 0.0)
        stats = ppo_update(model, optimizer, params, samples, fallback, scorer, dist, rl, shuffle_seed=0)
        return stats["grad_norm"][0] if stats["grad_norm"] else 0.0

    _, logprob_s, logprob_peak = meter.measure(old_logprobs)
    grad_norm, update_s, update_peak = meter.measure(update)
    generated = sum(t.generated_tokens for t in trajectories)
    scored = sum(int(s.old_logprobs.numel()) for s in samples if s.old_logprobs is not None)
    figures["rl"] = {
        "trained_parameters_b": sum(p.numel() for p in params) / 1e9,
        "rollouts": len(trajectories),
        "generated_tokens": generated,
        "rollout_s": rollout_s,
        "generated_tokens_per_s": generated / rollout_s,
        "logprob_s": logprob_s,
        "update_s": update_s,
        "phase_s": rollout_s + logprob_s + update_s,
        "trained_tokens": scored,
        "update_tokens_per_s": scored / update_s,
        "grad_norm": grad_norm,
        "peak_gib": highest([rollout_peak, logprob_peak, update_peak]),
    }
    print_block("RL", figures["rl"])
    return figures


def _lines(block: dict[str, Any]) -> Iterator[str]:
    for key, value in block.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k} {v:.2f}" for k, v in value.items())
        yield f"  {key:<24} {value:.3f}" if isinstance(value, float) else f"  {key:<24} {value}"


def print_block(title: str, block: dict[str, Any]) -> None:
    print(title)
    print("\n".join(_lines(block)), flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    figures = run(args)
    head = {k: v for k, v in figures.items() if k not in ("sft", "rl")}
    print_block("model", head)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
