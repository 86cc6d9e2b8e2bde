"""Shared fixtures: the released protocol strings and a small tiny model built once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from pixelreasoner.threads import configure_threads

# Tests must never reach a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# cores / xdist workers threads per worker (1 each for `-n 2` on 2 cores); OMP_NUM_THREADS wins.
configure_threads()


def _find_protocol_dir() -> Path:
    """``shared/protocol`` lives beside the checkout (CI) or inside it (device runs)."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "shared" / "protocol", here.parent / "shared" / "protocol"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError("shared/protocol fixtures not found beside or inside the checkout")


PROTOCOL_DIR = _find_protocol_dir()


def protocol_text(name: str) -> str:
    return (PROTOCOL_DIR / name).read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory):
    """(model, processor) of the tiny-1m preset, saved and reloaded through load_model."""
    from pixelreasoner.models.loading import load_model
    from pixelreasoner.models.tiny import save_tiny_model

    out = save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-1m", preset="tiny-1m", seed=0)
    model, processor = load_model(out, dtype=torch.float32)
    return model, processor


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``gpu`` are skipped, with the reason shown, where torch sees no CUDA GPU."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none visible to torch)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
