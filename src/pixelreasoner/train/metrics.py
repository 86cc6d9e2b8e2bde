"""One metrics path for every stage: stdout, JSON Lines, and TensorBoard / W&B when installed.

Only the main process writes. Values are plain floats; each record carries the step and wall
time, so ``metrics.jsonl`` alone is enough to plot a run.
"""

from __future__ import annotations

import json
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any


class MetricsLogger:
    """Log scalar metrics to several backends: ``stdout``, ``jsonl``, ``tensorboard``, ``wandb``."""

    def __init__(
        self,
        out_dir: str | Path,
        backends: Sequence[str] = ("stdout", "jsonl"),
        config: Mapping[str, Any] | None = None,
        enabled: bool = True,
        run_name: str | None = None,
    ) -> None:
        self.enabled = enabled
        self.backends = tuple(backends)
        unknown = set(self.backends) - {"stdout", "jsonl", "tensorboard", "wandb"}
        if unknown:
            raise ValueError(f"unknown metrics backend(s): {', '.join(sorted(unknown))}")
        self.path = Path(out_dir) / "metrics.jsonl"
        self._started = time.time()
        self._tb: Any = None
        self._wandb: Any = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if "tensorboard" in self.backends:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(out_dir) / "tensorboard"))
            except ImportError:
                warnings.warn("tensorboard is not installed; skipping that backend", stacklevel=2)
        if "wandb" in self.backends:
            try:
                import wandb

                self._wandb = wandb.init(name=run_name, config=dict(config or {}), dir=str(out_dir))
            except ImportError:
                warnings.warn("wandb is not installed; skipping that backend", stacklevel=2)

    def log(self, step: int, metrics: Mapping[str, float], prefix: str = "train") -> None:
        if not self.enabled:
            return
        values = {f"{prefix}/{k}": float(v) for k, v in metrics.items()}
        record = {"step": step, "time": round(time.time() - self._started, 3), **values}
        if "jsonl" in self.backends:
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")
        if "stdout" in self.backends:
            shown = "  ".join(f"{k.split('/', 1)[1]}={v:.4g}" for k, v in values.items())
            print(f"[{prefix} step {step}] {shown}", flush=True)
        if self._tb is not None:
            for key, value in values.items():
                self._tb.add_scalar(key, value, step)
        if self._wandb is not None:
            self._wandb.log(values, step=step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The records of a ``metrics.jsonl`` file."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]
