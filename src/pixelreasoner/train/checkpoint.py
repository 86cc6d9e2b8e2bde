"""Checkpoints in named directories, written atomically, resumable.

``OUT/checkpoints/step-000120/`` holds the model and processor in ``save_pretrained`` format
(loadable by ``load_model`` and plain transformers; under ``fsdp`` gathered from the shards),
the strategy's training state in ``training_state/`` (optimizer, scheduler, every process's RNG
states: accelerate's files, or under ``fsdp`` a sharded DCP checkpoint), and
``trainer_state.json`` (step, data position, the stage's own state). Each checkpoint is
written to ``step-000120.tmp`` and renamed when complete, so a run killed mid-save leaves the
previous checkpoint intact; a leftover ``.tmp`` directory is ignored and replaced.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch

_STEP_DIR = re.compile(r"^step-(\d+)$")
STATE_DIR = "training_state"
"""The strategy's own state (accelerate's files, or the sharded DCP checkpoint under fsdp)."""


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first."""
    folder = Path(root)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found) if (p / "trainer_state.json").is_file()]


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoint_dirs(root)
    return found[-1] if found else None


def save_checkpoint(
    root: str | Path,
    step: int,
    accelerator: Any,
    model: Any,
    processor: Any,
    state: dict[str, Any],
    keep: int = 2,
    per_process: dict[str, Any] | None = None,
) -> Path:
    """Save everything needed to resume at ``step``; all processes must call this.

    ``per_process`` is each process's own state (e.g. a sampler's RNG, a replay buffer), saved
    as ``process_{rank}.pt`` inside the same atomic checkpoint.
    """
    final = Path(root) / f"step-{step:06d}"
    tmp = final.with_name(final.name + ".tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    (tmp / STATE_DIR).mkdir(exist_ok=True)
    accelerator.save_state(str(tmp / STATE_DIR))
    if per_process is not None:
        torch.save(per_process, tmp / f"process_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    export_model(accelerator, model, processor, tmp)
    if accelerator.is_main_process:
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def export_model(dist: Any, model: Any, processor: Any, folder: str | Path) -> None:
    """Write the model and processor as an ordinary Hugging Face folder; every process must call
    this (a sharded model's full state dict is gathered collectively, to process 0, which writes)."""
    state_dict = dist.get_state_dict(model)
    if dist.is_main_process:
        dist.unwrap_model(model).save_pretrained(folder, state_dict=state_dict, safe_serialization=True)
        processor.save_pretrained(folder)
    dist.wait_for_everyone()


def export_checkpoint(checkpoint: str | Path, out: str | Path) -> Path:
    """Write a sharded (``strategy: fsdp``) checkpoint's model as an ordinary Hugging Face folder.

    Runs in one process without a process group, whatever number of processes wrote the shards:
    the model is built from the checkpoint's ``config.json``, its weights read from the DCP files,
    then saved with the processor. ``load_model``, ``eval`` and ``chat`` read the result.
    """
    from transformers import AutoConfig, AutoModelForImageTextToText

    from pixelreasoner.models.loading import VLProcessor
    from pixelreasoner.train.fsdp import SHARDED_DIR, export_sharded

    folder, target = Path(checkpoint), Path(out)
    state = folder / STATE_DIR
    if not (state / SHARDED_DIR).is_dir():
        raise ValueError(
            f"{folder} holds no sharded training state ({state / SHARDED_DIR} is missing); only "
            "strategy=fsdp writes one, and a checkpoint's own model files already load with load_model"
        )
    config = AutoConfig.from_pretrained(folder)
    model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    export_sharded(state, model)
    model.save_pretrained(target, safe_serialization=True)
    VLProcessor.from_pretrained(str(folder)).save_pretrained(target)
    return target


def load_process_state(path: str | Path, rank: int) -> dict[str, Any]:
    """A process's own state saved with ``per_process`` (trusted: written by this code)."""
    state: dict[str, Any] = torch.load(
        Path(path) / f"process_{rank}.pt", weights_only=False, map_location="cpu"
    )
    return state


def load_checkpoint(path: str | Path, accelerator: Any) -> dict[str, Any]:
    """Restore accelerate's state (model, optimizer, scheduler, RNG) and return trainer_state."""
    folder = Path(path)
    accelerator.load_state(str(folder / STATE_DIR))
    state: dict[str, Any] = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    return state
