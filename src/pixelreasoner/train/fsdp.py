"""Sharded data parallel training with PyTorch FSDP2 (``torch.distributed.fsdp.fully_shard``).

:class:`FSDPTraining` is the ``fsdp`` strategy. It offers the same interface the training
loops and steps use from accelerate's ``Accelerator`` (``prepare``, ``backward``, ``no_sync``,
``clip_grad_norm_``, ``reduce``, ``save_state``/``load_state``, ``get_state_dict``, ...), so
the loops never branch on the strategy. What differs lives here:

- **Sharding.** Each vision block, the vision tower, each decoder layer, then the root are
  sharded over all processes (gloo on CPU, NCCL on GPU), with parameters in ``param_dtype``
  for compute and gradients reduced in fp32 (``MixedPrecisionPolicy``), optionally offloaded
  to the CPU with the optimizer state (``CPUOffloadPolicy``). Per-parameter fp32 master
  weights, gradients and AdamW state are 16 bytes per trained parameter, / world per process.
- **Rollouts.** :meth:`gathered` gathers the full parameters on every process once, then runs
  no collective at all: processes may generate different numbers of turns and tokens (which
  ZeRO-3-style gathering inside each forward cannot allow), and the KV-cache continuation
  works as on a plain model. The gathered copies are freed on exit, before the update.
- **Checkpoints.** :meth:`save_state` writes a ``torch.distributed.checkpoint`` (DCP) of the
  sharded model and optimizer plus each process's scheduler and RNG states; :meth:`load_state`
  restores them exactly. :meth:`get_state_dict` gathers the full state dict to process 0 for an
  ordinary Hugging Face export (``save_pretrained``); :func:`export_sharded` turns a DCP
  checkpoint into one on a single process, without a process group.

Measured facts this relies on (2 CPU processes, torch 2.13) are in ``shared/TOOLCHAIN.md``,
"Sharded training". The GPU path (NCCL, pinned offload, bf16 at 7B) has not run here.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)
from torch.distributed.tensor import DTensor

# FSDP2 warns that the root returns a view (the logits at the kept positions) because an in-place
# op on it would skip its pre-backward hook. Our code never modifies the logits in place (the
# sharded update is tested equal to one process's), so the warning is noise in every step.
warnings.filterwarnings("ignore", message=r"FSDP2-wrapped module .* returned a view tensor")

SHARDED_DIR = "sharded"
"""Sub-folder of a checkpoint's training state holding the DCP files."""


@dataclass
class FSDPOptions:
    """Options of the ``fsdp`` strategy (used only when ``strategy: fsdp``)."""

    offload: bool = False
    """Keep parameters, gradients and optimizer state on the CPU between uses (``CPUOffloadPolicy``;
    pinned memory on GPUs). Saves device memory at the cost of host transfers."""
    reshard_after_forward: bool = True
    """Free each layer's gathered parameters after its forward and gather again for the backward
    (ZeRO-3-like, least memory); False keeps them through the backward (ZeRO-2-like, fewer
    all-gathers)."""


def _init_process_group() -> None:
    """Join the launcher's process group, or make a one-process group when run without one."""
    if dist.is_initialized():
        return
    if "WORLD_SIZE" not in os.environ:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
    dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")


def shard_model(
    model: torch.nn.Module,
    mesh: Any,
    param_dtype: torch.dtype | None,
    options: FSDPOptions,
    pin_memory: bool,
) -> None:
    """``fully_shard`` each vision block, the vision tower, each decoder layer, then the root.

    The vision tower is a unit of its own because the training forward calls it directly
    (``train.tokens.encode_visuals``), before the root's forward.
    """
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=pin_memory) if options.offload else OffloadPolicy()
    kwargs: dict[str, Any] = {
        "mesh": mesh,
        "mp_policy": policy,
        "offload_policy": offload,
        "reshard_after_forward": options.reshard_after_forward,
    }
    inner: Any = getattr(model, "model", model)
    visual = getattr(inner, "visual", None)
    if visual is not None:
        for block in visual.blocks:
            fully_shard(block, **kwargs)
        fully_shard(visual, **kwargs)
    language: Any = getattr(inner, "language_model", inner)
    for layer in language.layers:
        fully_shard(layer, **kwargs)
    fully_shard(model, **kwargs)


def _init_root(model: FSDPModule) -> None:
    """Initialise the root's FSDP state without a forward pass.

    transformers calls the vision tower (and our training forward calls it) before the root's
    own forward, which FSDP2 refuses until the root has run once. The only way to set it up
    beforehand is a private method; it is wrapped here, in one place, and tested.
    """
    model._get_fsdp_state()._lazy_init()


def fsdp_modules(model: torch.nn.Module) -> list[FSDPModule]:
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class FSDPTraining:
    """The ``fsdp`` strategy: the interface of accelerate's ``Accelerator`` that our loops use."""

    shares_prefix = False
    """The shared-prefix forward is turned off under fsdp: it runs one extra root forward when a
    batch's rows share a long enough prefix and not otherwise, so processes whose batches differ
    would run different numbers of forwards, pair different all-gathers and hang."""

    def __init__(self, mixed_precision: str = "no", options: FSDPOptions | None = None) -> None:
        if mixed_precision == "fp16":
            raise ValueError("fsdp supports mixed_precision no (fp32) or bf16, not fp16")
        _init_process_group()
        self.options = options or FSDPOptions()
        self.param_dtype = torch.bfloat16 if mixed_precision == "bf16" else None
        self.process_index = dist.get_rank()
        self.num_processes = dist.get_world_size()
        self.is_main_process = self.process_index == 0
        if torch.cuda.is_available():
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
            self.device = torch.device("cuda", local)
        else:
            self.device = torch.device("cpu")
        self.mesh = init_device_mesh(self.device.type, (self.num_processes,))
        self._model: Any = None
        self._optimizer: torch.optim.Optimizer | None = None
        self._stateful: list[Any] = []

    # -- set-up ----------------------------------------------------------------------------
    def prepare(self, model: Any, optimizer: torch.optim.Optimizer | None = None) -> Any:
        """Shard ``model`` in place and point ``optimizer`` at the sharded parameters.

        Returns ``(model, optimizer)``, or the model alone when no optimizer is given (then
        build one over ``model.parameters()`` afterwards). The optimizer must be new (no state
        yet); schedulers built on it stay valid, since the same optimizer object is kept and only
        its parameter lists are replaced.
        """
        if optimizer is not None and optimizer.state:
            raise ValueError("prepare the optimizer before its first step")
        names = {id(p): n for n, p in model.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups] if optimizer else []
        model.to(self.device)
        shard_model(model, self.mesh, self.param_dtype, self.options, pin_memory=self.device.type == "cuda")
        sharded = dict(model.named_parameters())
        if optimizer is not None:
            for group, group_names in zip(optimizer.param_groups, groups, strict=True):
                group["params"] = [sharded[n] for n in group_names]
        _init_root(model)
        self._model, self._optimizer = model, optimizer
        return model if optimizer is None else (model, optimizer)

    def register_for_checkpointing(self, obj: Any) -> None:
        """Objects with ``state_dict``/``load_state_dict`` (a scheduler) saved with the state."""
        self._stateful.append(obj)

    def unwrap_model(self, model: Any) -> Any:
        return model  # FSDP2 shards the module in place

    # -- steps -----------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    @contextlib.contextmanager
    def no_sync(self, model: Any) -> Iterator[None]:
        """Nothing: under fsdp every micro-batch's gradients are reduce-scattered at once.

        Skipping the sync (``set_requires_gradient_sync(False)``) would make FSDP2 keep every
        unit's unsharded fp32 gradient until the last micro-batch: 4 bytes per trained parameter,
        33 GB per GPU at 7B (``train.memory``), which breaks the 7B recipes' memory plan. The
        sharded gradients accumulate across micro-batches all the same; the price is one
        reduce-scatter per micro-batch instead of per step.
        """
        yield

    def clip_grad_norm_(self, parameters: Any, max_norm: float) -> torch.Tensor:
        """The global gradient norm (over every process's shards); clips when ``max_norm`` > 0."""
        params = [p for p in parameters if p.grad is not None]
        norm = torch.nn.utils.get_total_norm([p.grad for p in params])
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        if max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
        return norm

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        op = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[reduction]
        out = tensor.clone()
        dist.all_reduce(out, op=op)
        return out

    def wait_for_everyone(self) -> None:
        dist.barrier()

    @contextlib.contextmanager
    def gathered(self, model: Any) -> Iterator[Any]:
        """The full model on every process, for rollouts and old log-probs (no gradient).

        Every FSDP unit is gathered once on entry (the only collectives) and kept through each
        forward, so inside no collective runs and processes may do unequal work. On exit the
        gathered copies are freed.
        """
        modules = fsdp_modules(model)
        inner = [m for m in modules if m is not model]  # the root never reshards after forward
        for module in inner:
            module.set_reshard_after_forward(False, recurse=False)
        for module in modules:
            module.unshard()
        try:
            yield model
        finally:
            for module in modules:
                module.reshard()
            for module in inner:
                module.set_reshard_after_forward(self.options.reshard_after_forward, recurse=False)

    # -- state -----------------------------------------------------------------------------
    def get_state_dict(self, model: Any) -> dict[str, Any]:
        """The full state dict on process 0 (CPU tensors), empty elsewhere; every process must call it."""
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(model, options=options)

    def save_state(self, folder: str) -> None:
        """Sharded model and optimizer (DCP), and this process's scheduler and RNG states."""
        if self._model is None or self._optimizer is None:
            raise RuntimeError("save_state needs a model and optimizer given to prepare")
        model_state, optim_state = get_state_dict(self._model, self._optimizer)
        dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=Path(folder) / SHARDED_DIR)
        extra = {"stateful": [obj.state_dict() for obj in self._stateful], "rng": _rng_state()}
        torch.save(extra, Path(folder) / f"process_{self.process_index}.pt")
        dist.barrier()

    def load_state(self, folder: str) -> None:
        if self._model is None or self._optimizer is None:
            raise RuntimeError("load_state needs a model and optimizer given to prepare")
        model_state, optim_state = get_state_dict(self._model, self._optimizer)
        dcp.load({"model": model_state, "optimizer": optim_state}, checkpoint_id=Path(folder) / SHARDED_DIR)
        set_state_dict(
            self._model, self._optimizer, model_state_dict=model_state, optim_state_dict=optim_state
        )
        extra = torch.load(Path(folder) / f"process_{self.process_index}.pt", weights_only=False)
        for obj, saved in zip(self._stateful, extra["stateful"], strict=True):
            obj.load_state_dict(saved)
        _set_rng_state(extra["rng"])

    def end(self) -> None:
        """Leave the process group (call once, at the end of the program)."""
        if dist.is_initialized():
            dist.destroy_process_group()


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def export_sharded(state_dir: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    """Load a DCP checkpoint's model weights into ``model`` (built whole, e.g. from its config) in
    one process, without a process group; returns the model, ready for ``save_pretrained``."""
    state = {"model": model.state_dict()}
    dcp.load(state, checkpoint_id=Path(state_dir) / SHARDED_DIR, no_dist=True)
    model.load_state_dict(state["model"])
    return model


__all__ = ["FSDPOptions", "FSDPTraining", "export_sharded", "fsdp_modules", "shard_model"]
