"""Checkpoints in named directories, written atomically, resumable.

``OUT/checkpoints/step-000120/`` holds the model and processor in ``save_pretrained`` format
(loadable by ``load_model`` and plain transformers), accelerate's training state (optimizer,
scheduler, every process's RNG states, as accelerate saves them), and
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
    accelerator.save_state(str(tmp / "accelerate"))
    if per_process is not None:
        torch.save(per_process, tmp / f"process_{accelerator.process_index}.pt")
    accelerator.wait_for_everyone()
    unwrapped = accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        unwrapped.save_pretrained(tmp, state_dict=accelerator.get_state_dict(model), safe_serialization=True)
        processor.save_pretrained(tmp)
        (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2), encoding="utf-8")
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        for old in checkpoint_dirs(root)[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_process_state(path: str | Path, rank: int) -> dict[str, Any]:
    """A process's own state saved with ``per_process`` (trusted: written by this code)."""
    state: dict[str, Any] = torch.load(
        Path(path) / f"process_{rank}.pt", weights_only=False, map_location="cpu"
    )
    return state


def load_checkpoint(path: str | Path, accelerator: Any) -> dict[str, Any]:
    """Restore accelerate's state (model, optimizer, scheduler, RNG) and return trainer_state."""
    folder = Path(path)
    accelerator.load_state(str(folder / "accelerate"))
    state: dict[str, Any] = json.loads((folder / "trainer_state.json").read_text(encoding="utf-8"))
    return state
