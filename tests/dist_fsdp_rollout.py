"""Rollouts on an FSDP2-sharded model, run by tests/test_rl.py under ``torch.distributed.run``.

Usage: ``python -m torch.distributed.run --nproc_per_node 2 tests/dist_fsdp_rollout.py MODEL DATA OUT``.
Process r rolls out 1 + 2r queries (unequal work): a scripted crop through the real decode
loop, then the model's own turn continuing the KV cache after the crop. Inside
``FSDPTraining.gathered`` the token ids and log-probs must equal an unsharded copy's, with no
hang; afterwards the sharded model must still train (a forward and backward with collectives).
Each process writes ``OUT/ok-{rank}`` when all of that held.
"""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path

import torch

from pixelreasoner.data.formats import read_items
from pixelreasoner.models.loading import load_model
from pixelreasoner.render import Renderer
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.train.dist import make_distribution
from pixelreasoner.train.rl import RLConfig
from pixelreasoner.train.rl_steps import Sample, Scorer
from pixelreasoner.vision.budget import tiny


def roll(model, processor, items, script):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(Path(__file__).parent))
    from test_rollout import CropThenModel  # the scripted-crop backend of the rollout tests

    budget = tiny()
    backend = CropThenModel(model, processor, budget, cache=True, seed=5, script=script)
    first = SamplingParams(temperature=1.0, max_new_tokens=len(script) + 4)
    later = SamplingParams(temperature=0.9, top_p=0.95, top_k=40, max_new_tokens=12)
    return RolloutEngine(backend, budget, first=first, later=later).run(
        [Query.from_item(i, budget) for i in items]
    )


def main(model_dir: str, data: str, out: str) -> None:
    parallel = make_distribution(RLConfig(strategy="fsdp"))
    rank = parallel.process_index
    model, processor = load_model(model_dir, dtype=torch.float32)
    plain = copy.deepcopy(model)
    sys.path.insert(0, str(Path(__file__).parent))
    from test_rollout import GOOD

    script = processor.tokenizer(GOOD, add_special_tokens=False)["input_ids"] + [processor.im_end_id]
    mine = read_items(data).items[: 1 + 2 * rank]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = parallel.prepare(model, optimizer)

    with parallel.gathered(model) as policy:
        sharded = roll(policy, processor, mine, script)
    expected = roll(plain, processor, mine, script)
    assert all(t.n_turns == 2 and t.n_calls == 1 for t in sharded), [t.finish_reason for t in sharded]
    for a, b in zip(sharded, expected, strict=True):
        for x, y in zip(a.conversation.model_turns, b.conversation.model_turns, strict=True):
            assert x.token_ids == y.token_ids
            assert max(abs(p - q) for p, q in zip(x.logprobs or [], y.logprobs or [], strict=True)) < 1e-5

    # resharded: an update with collectives still runs on every process
    scorer = Scorer(Renderer(processor, tiny()))
    logprobs, _, _ = scorer.logprobs(model, [Sample(sharded[0], 1.0)], parallel.device)
    parallel.backward(-logprobs.sum())
    parallel.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], 1.0)
    optimizer.step()
    parallel.wait_for_everyone()
    Path(out, f"ok-{rank}").write_text("ok")
    torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo can abort at interpreter exit after the group is destroyed


if __name__ == "__main__":
    main(*sys.argv[1:4])
