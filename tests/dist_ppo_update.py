"""One PPO update over a fixed global batch, run by tests/test_rl.py under ``torch.distributed.run``.

Usage: ``python -m torch.distributed.run --nproc_per_node N tests/dist_ppo_update.py MODEL DATA OUT NORM
STRATEGY CHECKPOINTING`` (STRATEGY: auto or fsdp; CHECKPOINTING: 0 or 1).
Eight scripted trajectories (a crop, then an answer) with fixed advantages form the global batch;
process r trains on samples r, r + N, ...; SGD, so the parameters show the gradient's scale
directly (Adam's first step would normalise it away). Process 0 saves the parameters to OUT.
"""

from __future__ import annotations

import json
import os
import sys

import torch

from pixelreasoner.data.formats import read_items
from pixelreasoner.models.loading import load_model
from pixelreasoner.render import Renderer
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.rollout.scripted import ScriptedBackend
from pixelreasoner.train.common import enable_checkpointing
from pixelreasoner.train.dist import make_distribution
from pixelreasoner.train.rl import RLConfig
from pixelreasoner.train.rl_steps import Sample, Scorer, compute_old_logprobs, ppo_update
from pixelreasoner.vision.budget import tiny

GLOBAL_BATCH = 8


def main(model_dir: str, data: str, out: str, loss_norm: str, strategy: str, checkpointing: str) -> None:
    config = RLConfig(micro_batch=2, max_grad_norm=1e9, loss_norm=loss_norm, strategy=strategy)
    parallel = make_distribution(config)
    rank, world = parallel.process_index, parallel.num_processes
    config.train_batch_size = GLOBAL_BATCH // world
    budget = tiny()
    model, processor = load_model(model_dir, dtype=torch.float32)
    if checkpointing == "1":
        enable_checkpointing(model)
    items = read_items(data).items[:4]
    call = {
        "name": "crop_image_normalized",
        "arguments": {"bbox_2d": [0.2, 0.2, 0.7, 0.7], "target_image": 1},
    }
    script = [f"Look.\n<tool_call>\n{json.dumps(call)}\n</tool_call>", "It is \\boxed{A}."]
    queries = [Query.from_item(items[k % len(items)], budget) for k in range(GLOBAL_BATCH)]
    trajectories = RolloutEngine(ScriptedBackend(script), budget).run(queries)
    samples = [Sample(t, advantage=(k % 3) - 1.0 + 0.25) for k, t in enumerate(trajectories)][rank::world]
    scorer = Scorer(Renderer(processor, budget))
    compute_old_logprobs(model, None, samples, scorer, 4, "recompute", parallel.device)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=50.0)
    wrapped, optimizer = parallel.prepare(model, optimizer)
    trainable = [p for group in optimizer.param_groups for p in group["params"]]
    ppo_update(wrapped, optimizer, trainable, samples, samples[0], scorer, parallel, config, 0)
    state = parallel.get_state_dict(wrapped)  # every process: fsdp gathers to process 0
    if parallel.is_main_process:
        torch.save({k: v.detach().clone() for k, v in state.items()}, out)
    parallel.wait_for_everyone()
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo can abort at interpreter exit after the group is destroyed


if __name__ == "__main__":
    main(*sys.argv[1:7])
