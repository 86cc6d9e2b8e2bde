"""What one SFT step costs on the tiny model, and what the shared prefix and length grouping save.

Builds one batch of synthesized traces (all four families, the quickstart's trace mix), then
times forward + backward of the same sequences four ways, best of ``--repeats``:

- full forward, one micro-batch (the baseline);
- shared-prefix forward (the system prompt run once), one micro-batch;
- shared-prefix forward, ``--micro`` micro-batches in random order;
- shared-prefix forward, ``--micro`` micro-batches grouped by length (what ``train_sft`` does).

Prints seconds, padding and the ratio against the baseline, all measured in this run:

    python bench/sft_step_speed.py --batch 32 --micro 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from pixelreasoner.models.tiny import build_tiny_model
from pixelreasoner.render import RenderedSequence, Renderer
from pixelreasoner.synth.traces import TraceMix, TraceSynthesizer
from pixelreasoner.tasks.families import FAMILIES, make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train.tokens import nll_sum
from pixelreasoner.vision.budget import tiny


def step_seconds(
    model: torch.nn.Module, renderer: Renderer, chunks: Sequence[Sequence[RenderedSequence]], share: bool
) -> tuple[float, float]:
    """Seconds for forward + backward over ``chunks``, and the share of padded positions."""
    model.zero_grad(set_to_none=True)
    padded = real = 0
    began = time.perf_counter()
    for chunk in chunks:
        batch = renderer.collate(chunk, padding_side="right")
        padded += batch.input_ids.numel()
        real += int(batch.attention_mask.sum())
        nll, _ = nll_sum(model, batch, batch.loss_mask, share_prefix=share)
        nll.backward()
    return time.perf_counter() - began, 1 - real / padded


def sft_batch(batch: int, preset: str) -> tuple[torch.nn.Module, Renderer, list[RenderedSequence]]:
    """A tiny model in train mode, its renderer, and ``batch`` rendered traces of all four families."""
    budget = tiny()
    with tempfile.TemporaryDirectory() as tmp:
        per_family = -(-batch // len(FAMILIES))
        items = generate_dataset(
            [make_family(f) for f in FAMILIES], per_family, Path(tmp), seed=0, progress=False
        ).items
        mix = TraceMix.single_pass(self_correction=0.15, text_only=0.1)
        conversations, _, _ = TraceSynthesizer(budget, mix=mix, seed=0).run(items, progress=False)
        conversations = conversations[:batch]
        corpus = [t.text for c in conversations for t in c.turns if t.text]
        model, processor = build_tiny_model(preset, seed=0, extra_corpus=corpus)
        renderer = Renderer(processor, budget)
        sequences = [renderer.render(c) for c in conversations]
    model.train()
    return model, renderer, sequences


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--micro", type=int, default=4, help="micro-batches per step")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--preset", default="tiny-1m")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model, renderer, sequences = sft_batch(args.batch, args.preset)
    size = -(-len(sequences) // args.micro)
    shuffled = [sequences[k : k + size] for k in range(0, len(sequences), size)]
    ordered = sorted(sequences, key=len)
    grouped = [ordered[k : k + size] for k in range(0, len(ordered), size)]
    ways = {
        "full forward, 1 micro-batch": ([sequences], False),
        "shared prefix, 1 micro-batch": ([sequences], True),
        f"shared prefix, {args.micro} micro-batches, random order": (shuffled, True),
        f"shared prefix, {args.micro} micro-batches by length": (grouped, True),
    }
    print(f"{len(sequences)} sequences, {sum(len(s) for s in sequences)} real tokens, preset {args.preset}")
    baseline = None
    for name, (chunks, share) in ways.items():
        timings = [step_seconds(model, renderer, chunks, share) for _ in range(args.repeats)]
        seconds, pad = min(t for t, _ in timings), timings[0][1]
        baseline = baseline or seconds
        print(f"{name:<48} {seconds:6.2f} s  padding {pad:5.1%}  speed-up {baseline / seconds:4.2f}x")


if __name__ == "__main__":
    main()
