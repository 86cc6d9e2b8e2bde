"""Rollout speed: batching, KV-cache continuation, HTTP concurrency — ratios measured in one run.

    python bench/rollout_speed.py [--model DIR] [--batch 32]

1. batched: ``--batch`` trajectories in one lockstep rollout vs the same trajectories one at a
   time (same model, greedy, same outputs);
2. cache: the same batched rollouts with KV-cache continuation vs re-encoding every turn (a
   model that makes tool calls shows the difference; ``--model`` should be an SFT checkpoint);
3. http: ``--http`` requests through the OpenAI-compatible backend against a local server that
   answers after a fixed delay, with concurrency 8 vs 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TypeVar

import torch

from pixelreasoner.data.items import TaskItem
from pixelreasoner.models.loading import load_model
from pixelreasoner.models.tiny import save_tiny_model
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.rollout.http import OpenAIBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.trajectory import Trajectory
from pixelreasoner.vision.budget import tiny

T = TypeVar("T")


def timed(fn: Callable[[], T]) -> tuple[T, float]:
    began = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - began


class _SlowChat(BaseHTTPRequestHandler):
    delay = 0.2

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        time.sleep(self.delay)
        body = json.dumps(
            {
                "choices": [{"message": {"content": "It is \\boxed{A}."}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 500, "completion_tokens": 8},
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", help="checkpoint directory (default: a fresh tiny-1m)")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=96, help="max new tokens per turn")
    parser.add_argument("--http", type=int, default=16, help="requests for the HTTP comparison")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    budget = tiny()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(args.model) if args.model else save_tiny_model(Path(tmp) / "m")
        model, processor = load_model(model_dir, dtype=torch.float32)
        items = generate_dataset(
            [make_family("needle")], args.batch, Path(tmp) / "d", seed=5, progress=False
        ).items
        params = SamplingParams(temperature=0.0, max_new_tokens=args.tokens)

        def rollout(batch: list[TaskItem], cache: bool = True) -> list[Trajectory]:
            engine = RolloutEngine(
                TransformersBackend(model, processor, budget, cache=cache), budget, first=params
            )
            return engine.run([Query.from_item(i, budget) for i in batch])

        rollout(items[:2])  # warm-up
        batched, t_batched = timed(lambda: rollout(items))
        single, t_single = timed(lambda: [rollout([i])[0] for i in items])
        same = all(
            [t.token_ids for t in a.conversation.model_turns]
            == [t.token_ids for t in b.conversation.model_turns]
            for a, b in zip(batched, single, strict=True)
        )
        turns = sum(t.n_turns for t in batched) / len(batched)
        tokens = sum(t.generated_tokens for t in batched)
        print(
            f"batched vs one at a time ({args.batch} trajectories, {turns:.2f} turns each, {tokens} tokens): "
            f"{t_batched:.2f} s vs {t_single:.2f} s -> {t_single / t_batched:.1f}x (same tokens: {same})"
        )
        recoded, t_recode = timed(lambda: rollout(items, cache=False))
        same = all(
            [t.token_ids for t in a.conversation.model_turns]
            == [t.token_ids for t in b.conversation.model_turns]
            for a, b in zip(batched, recoded, strict=True)
        )
        print(
            f"cache continuation vs re-encoding each turn: {t_batched:.2f} s vs {t_recode:.2f} s -> "
            f"{t_recode / t_batched:.2f}x (same tokens: {same})"
        )
        server = ThreadingHTTPServer(("127.0.0.1", 0), _SlowChat)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_port}/v1"
            queries = lambda: [Query.from_item(items[i % len(items)], budget) for i in range(args.http)]  # noqa: E731
            with OpenAIBackend(url, "bench", max_concurrency=8, budget=budget) as backend:
                engine = RolloutEngine(backend, budget, first=params)
                _, t_conc = timed(lambda: asyncio.run(engine.run_async(queries(), concurrency=8)))
                _, t_seq = timed(lambda: asyncio.run(engine.run_async(queries(), concurrency=1)))
            print(
                f"http, {args.http} requests of {_SlowChat.delay:.1f} s: concurrency 8 vs 1: "
                f"{t_conc:.2f} s vs {t_seq:.2f} s -> {t_seq / t_conc:.1f}x"
            )
        finally:
            server.shutdown()
            server.server_close()


if __name__ == "__main__":
    main()
