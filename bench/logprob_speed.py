"""Old log-probs for RL: batched passes vs micro-batch 1 (the release's limit), in one run.

    python bench/logprob_speed.py [--model DIR] [--n 64] [--micro 16]

Samples ``--n`` multi-image trajectories, then scores their sampled tokens with the learner's
forward pass (3-D positions, right padding) in micro-batches of ``--micro`` and of 1. Prints the
speed ratio and the largest log-prob difference between the two (fp32).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from pixelreasoner.models.loading import load_model
from pixelreasoner.models.tiny import save_tiny_model
from pixelreasoner.render import Renderer
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train.rl import Sample, Scorer
from pixelreasoner.vision.budget import tiny


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint directory (default: a fresh tiny-1m)")
    parser.add_argument("--n", type=int, default=64)
    parser.add_argument("--micro", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = tiny()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else save_tiny_model(Path(tmp) / "m")
        model, processor = load_model(model_dir, dtype=torch.float32)
        items = generate_dataset(
            [make_family("needle"), make_family("frames")], args.n // 2, Path(tmp) / "d", progress=False
        ).items
        engine = RolloutEngine(
            TransformersBackend(model, processor, budget, seed=1),
            budget,
            first=SamplingParams(temperature=1.0, max_new_tokens=args.tokens),
        )
        trajectories = engine.run([Query.from_item(i, budget) for i in items])
        samples = [Sample(t, 0.0) for t in trajectories]
        scorer = Scorer(Renderer(processor, budget))
        device = torch.device("cpu")

        def score(size: int) -> tuple[torch.Tensor, float]:
            began = time.perf_counter()
            with torch.no_grad():
                parts = [
                    scorer.logprobs(model, samples[k : k + size], device)[0]
                    for k in range(0, len(samples), size)
                ]
            return torch.cat(parts), time.perf_counter() - began

        score(args.micro)  # warm-up
        batched, t_batched = score(args.micro)
        single, t_single = score(1)
        sampler = torch.tensor(
            [lp for t in trajectories for turn in t.conversation.model_turns for lp in (turn.logprobs or [])]
        )
        tokens = batched.numel()
        print(f"{len(samples)} trajectories, {tokens} scored tokens")
        print(
            f"micro-batch {args.micro} vs 1: {t_batched:.2f} s vs {t_single:.2f} s -> "
            f"{t_single / t_batched:.1f}x; "
            f"max |Δ log-prob| batched vs single {(batched - single).abs().max():.2e}, "
            f"batched vs sampler {(batched - sampler).abs().max():.2e}"
        )


if __name__ == "__main__":
    main()
