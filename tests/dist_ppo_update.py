"""One PPO update over a fixed global batch, run by tests/test_rl.py under ``torch.distributed.run``.

Usage: ``python -m torch.distributed.run --nproc_per_node N tests/dist_ppo_update.py MODEL DATA OUT NORM``.
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
from pixelreasoner.train.dist import make_accelerator
from pixelreasoner.train.rl import RLConfig
from pixelreasoner.train.rl_steps import Sample, Scorer, compute_old_logprobs, ppo_update
from pixelreasoner.vision.budget import tiny

GLOBAL_BATCH = 8


def main(model_dir: str, data: str, out: str, loss_norm: str) -> None:
    accelerator = make_accelerator()
    rank, world = accelerator.process_index, accelerator.num_processes
    budget = tiny()
    model, processor = load_model(model_dir, dtype=torch.float32)
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
    compute_old_logprobs(model, None, samples, scorer, 4, "recompute", accelerator.device)
    config = RLConfig(
        train_batch_size=GLOBAL_BATCH // world, micro_batch=2, max_grad_norm=1e9, loss_norm=loss_norm
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=50.0)
    wrapped, optimizer = accelerator.prepare(model, optimizer)
    ppo_update(
        wrapped, optimizer, trainable, samples, samples[0], scorer, accelerator, config, shuffle_seed=0
    )
    if accelerator.is_main_process:
        torch.save({k: v.detach().clone() for k, v in model.state_dict().items()}, out)
    accelerator.wait_for_everyone()
    if world > 1:
        torch.distributed.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # gloo can abort at interpreter exit after the group is destroyed


if __name__ == "__main__":
    main(*sys.argv[1:5])
