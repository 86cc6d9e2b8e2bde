"""Memory plan of a training run: bytes per device, before anything is allocated.

A :class:`Plan` adds up, per process (one GPU), what a run will hold: the parameters, their
gradients and AdamW's state (the *state*, counted in every phase; a loop that sets gradients to
``None`` after each step frees them during rollouts), then the largest of three phases
that never overlap: **rollout** (RL only: the weights the sampler runs on, the KV cache of one
rollout batch, the prefill's working set), **update** (one micro-batch's forward and backward:
FSDP's gathered units and reduce buffers or autocast's weight copy, activations, the logits of
the selected tokens; FSDP's closing reduce-scatter of the root's gradients; the unsharded
gradients of accumulation without sync) and the **optimizer step** (AdamW's temporaries). The
numbers come from the model's real parameter counts and shapes (:func:`model_facts`, which
works on a model built on the meta device, so 7B costs nothing) and the run's settings
(:func:`plan_memory`, or :func:`recipe_shape` to read them from an SFT/RL config).
:func:`require_fit` refuses a run whose plan exceeds the device, with the plan as the message.

**Exact and estimated terms.** Exact (up to FSDP's padding of each tensor's shard, 0.004 % at
7B, and the allocator's rounding): parameters, gradients, optimizer state (torch AdamW:
``exp_avg`` and ``exp_avg_sq`` like the parameter, plus a 4-byte ``step`` per tensor), FSDP's
gathered rollout weights, the unsharded gradients FSDP keeps while accumulating without sync,
and the KV cache for the given batch and length (an upper bound of a real rollout, whose rows
are shorter). Estimated (formulas below, fitted to measurements and rounded up): activations,
the logits' working set, the prefill's working set, FSDP's per-unit gathers and reduce buffers,
autocast's bf16 weight copy, AdamW's step temporaries, and the runtime allowance (CUDA context,
NCCL buffers, allocator fragmentation), a flat guess.

Per-token formulas, with ``h``/``i`` the hidden and MLP sizes, ``L`` the layers, ``cb`` the
compute dtype's bytes (matmul outputs) and ``rb`` the residual stream's (``cb``, except under
autocast with fp32 weights, where the residual stream, RMSNorm and the rotated keys are fp32):

- activations, no checkpointing: ``L·(rb+cb)·(6h+2i) + (rb+cb)·(2h+2i)``; with activation
  checkpointing: ``L·h·rb`` (each layer's saved input) ``+ (rb+cb)·(8h+4i)`` (one layer
  recomputed and its backward). The vision tower, when it trains, adds its saved part with its
  own sizes per patch (4 patches per merged image token); of the two working sets (one layer,
  one vision block) only the larger counts, as the tower's backward runs after the LM's.
- logits: ``10`` bytes per selected token and vocabulary entry (fp32 logits and log-softmax,
  plus the bf16 logits under autocast).
- prefill (no gradient): ``(rb+cb)·(h+2i)`` per token of the batch's longest prefill, or the
  vision tower's ``(rb+cb)·(h_v+2i_v)`` per patch, whichever is larger.
- KV cache: ``L·kv_heads·head_dim·(rb+cb)`` (keys in ``rb``: under autocast rope returns fp32
  keys; values in ``cb``), 57,344 B per token at 7B in bf16.

Calibration (every tensor storage counted, as ``torch.distributed._tools.MemTracker`` does, on
CPU; torch 2.13, transformers 5.24, sdpa attention; ``tests/test_memory_plan.py`` repeats
them). Qwen2.5-VL-7B's real graph under ``FakeTensorMode`` (shapes, no memory), bf16, 8192
tokens, gradients already allocated: without checkpointing 6.47 MB per token at the backward's
peak (formula 6.83 MB); with checkpointing 509.6 KB (formula 618.5 KB); a no-grad prefill
142.9 KB per token beyond its KV cache (formula 165.9 KB). FSDP2 at 7B over a fake 8-process
group: shards and gathered weights as planned to 0.004 %; a checkpointed micro-batch of 4096
tokens added 7.33 GB to the state (planned 9.41 GB). Tiny models with real tensors (fp32, bf16
and bf16 autocast over fp32 weights; ``h`` 256-512, ``i`` 512-1536, with an image): the
formulas bound every measurement, 1.05-1.6x above. Logits: 8 bytes per entry measured in fp32,
9.8 under autocast. On a GPU, attention that falls back to the math kernel (a padding mask it
cannot fuse) adds ``heads·T²`` scores per layer, not modelled; flash and memory-efficient
attention are linear in ``T``, as assumed. Nothing here has been checked on a GPU.

**Strategies** (``single``, ``ddp``, ``fsdp``):

- ``single``/``ddp``: every process holds the whole model. Under autocast (``compute_dtype``
  narrower than ``param_dtype``) autocast caches a bf16 copy of every trainable weight it casts
  until the forward ends, in training and in each generation step: counted as the weights term
  of both phases (an estimate: frozen weights are cast per use, not cached). DDP's reducer
  keeps flat gradient buckets as large as the gradients (``gradient_as_bucket_view=False``,
  accelerate's default; PyTorch's documentation of that flag says so): DDP's gradient term is
  doubled unless ``ddp_bucket_view``.
- ``fsdp`` (FSDP2 ``fully_shard`` on each decoder layer and vision block, then the root, as
  ``train.fsdp.shard_model`` does): parameters, gradients and optimizer state are ``1/world``
  each (gradients in the parameters' dtype, whatever ``reduce_dtype``). Rollouts gather the
  whole model in the compute dtype. The update holds the root's unsharded parameters (embedding
  and LM head: FSDP keeps the root gathered through forward and backward) and two blocks in
  flight (all blocks when ``reshard_after_forward`` is off), plus unsharded gradients before
  each reduce-scatter and their ``reduce_dtype`` copy. Accumulating micro-batches with
  ``set_requires_gradient_sync(False)`` (``accumulate_unsharded``) keeps every unit's
  unsharded gradient in ``reduce_dtype`` until the synced micro-batch: ``trainable ·
  reduce bytes`` per process, not sharded (33 GB at 7B with fp32 reduction; read from FSDP2's
  ``FSDPParam.to_accumulated_grad_if_needed``).
- ``offload`` (FSDP's ``CPUOffloadPolicy``): sharded parameters, gradients and optimizer state
  live on the host (reported as ``host``), 0 on the device; the optimizer steps there.

Pure arithmetic: nothing here touches ``torch.distributed`` or the file system.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch

__all__ = [
    "DEFAULT_OVERHEAD_BYTES",
    "LOGIT_BYTES_PER_ENTRY",
    "PROMPT_TEXT_TOKENS",
    "MemoryInputs",
    "MemoryPlanError",
    "Plan",
    "check_memory",
    "device_memory",
    "dtype_bytes",
    "model_facts",
    "plan_for_config",
    "plan_memory",
    "recipe_shape",
    "require_fit",
]

GiB = 2**30

DEFAULT_OVERHEAD_BYTES = 2 * GiB
"""Runtime allowance per device (estimate): CUDA context, NCCL buffers, allocator fragmentation."""

LOGIT_BYTES_PER_ENTRY = 10
"""Working set of the selected tokens' logits, per token and vocabulary entry (estimate): the fp32
logits and their log-softmax kept for the backward (4 + 4 bytes) and the bf16 logits under
autocast (2). Measured on CPU: 8.0 (fp32) and 9.8 (autocast)."""

PROMPT_TEXT_TOKENS = 512
"""Text tokens of a first prompt besides its images (the released system prompt is 351)."""

_DTYPE_BYTES = {
    "fp32": 4,
    "float32": 4,
    "no": 4,
    "bf16": 2,
    "bfloat16": 2,
    "fp16": 2,
    "float16": 2,
}
STRATEGIES = ("single", "ddp", "fsdp")


def dtype_bytes(dtype: str | torch.dtype) -> int:
    """Bytes per element of ``fp32``/``bf16``/``fp16`` (or the ``torch.dtype``)."""
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    try:
        return _DTYPE_BYTES[dtype.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPE_BYTES)}") from None


# ----------------------------------------------------------------------------------------------
# Model facts
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MemoryInputs:
    """What the plan needs from a model: parameter counts and the language model's shapes.

    Counts are of distinct parameters (tied embeddings once). ``trainable_tensors`` counts the
    trainable parameter tensors (AdamW keeps a ``step`` scalar for each). The *blocks* are the
    repeated layers FSDP shards one at a time (decoder layers, vision blocks); the *root* is
    every parameter outside them (embeddings, LM head, final norm, vision patch embedding and
    merger). The vision fields are 0 for a text-only model; ``vision_trainable`` says whether
    the vision tower's blocks (or what lies before them) train, so that their activations are
    kept for the backward.
    """

    total_params: int
    trainable_params: int
    frozen_params: int
    trainable_tensors: int
    root_params: int
    root_trainable_params: int
    largest_block_params: int
    largest_block_trainable_params: int
    num_hidden_layers: int
    num_key_value_heads: int
    head_dim: int
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    vision_depth: int = 0
    vision_hidden_size: int = 0
    vision_intermediate_size: int = 0
    vision_merge: int = 1
    vision_trainable: bool = False

    def __post_init__(self) -> None:
        if self.trainable_params + self.frozen_params != self.total_params:
            raise ValueError("trainable_params + frozen_params must equal total_params")
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, bool) and value < 0:
                raise ValueError(f"{f.name} must be >= 0, got {value}")

    @property
    def kv_elements_per_token(self) -> int:
        """Keys and values cached per token: layers x 2 x KV heads x head_dim."""
        return self.num_hidden_layers * 2 * self.num_key_value_heads * self.head_dim


def _text_config(config: Any) -> Any:
    return getattr(config, "text_config", None) or config


def _meta_model(config: Any) -> torch.nn.Module:
    """The model a config describes, built on the meta device (no memory)."""
    import transformers

    last: Exception | None = None
    for name in ("AutoModelForImageTextToText", "AutoModelForCausalLM"):
        auto = getattr(transformers, name)
        try:
            with torch.device("meta"):
                model: torch.nn.Module = auto.from_config(config)
            return model
        except ValueError as exc:  # not a model of this auto class
            last = exc
    raise ValueError(f"no model class for config {type(config).__name__}") from last


def model_facts(
    model_or_config: Any, trainable_filter: Callable[[str, torch.nn.Parameter], bool] | None = None
) -> MemoryInputs:
    """Counts and shapes of a ``torch.nn.Module`` (meta device fine) or of a transformers config.

    A config is built into its model on the meta device first. Trainable parameters are those
    with ``requires_grad`` (apply the run's freezing first), or those ``trainable_filter(name,
    param)`` accepts. Shapes are read from ``config.text_config`` (Qwen2.5-VL in transformers 5)
    or ``config``; the vision tower's from ``config.vision_config`` when there is one.
    """
    is_model = isinstance(model_or_config, torch.nn.Module)
    model = model_or_config if is_model else _meta_model(model_or_config)
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("the model has no .config to read its shapes from")

    def trains(name: str, param: torch.nn.Parameter) -> bool:
        return trainable_filter(name, param) if trainable_filter is not None else param.requires_grad

    named = list(model.named_parameters())  # distinct parameters: tied weights once
    trainable = {id(p) for n, p in named if trains(n, p)}
    total = sum(p.numel() for _, p in named)
    n_trainable = sum(p.numel() for _, p in named if id(p) in trainable)

    # Repeated blocks: the entries of every ModuleList of layers (decoder layers, vision blocks).
    block_params: list[tuple[int, int]] = []
    in_blocks: set[int] = set()
    for module in model.modules():
        if not isinstance(module, torch.nn.ModuleList):
            continue
        for block in module:
            params = [p for p in block.parameters() if id(p) not in in_blocks]
            if not params:
                continue
            in_blocks.update(id(p) for p in params)
            block_params.append(
                (sum(p.numel() for p in params), sum(p.numel() for p in params if id(p) in trainable))
            )
    root = [p for _, p in named if id(p) not in in_blocks]

    text = _text_config(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    vision = getattr(config, "vision_config", None)
    vision_trains = any(
        id(p) in trainable for n, p in named if "visual." in f".{n}" and ".merger." not in f".{n}"
    )
    return MemoryInputs(
        total_params=total,
        trainable_params=n_trainable,
        frozen_params=total - n_trainable,
        trainable_tensors=len(trainable),
        root_params=sum(p.numel() for p in root),
        root_trainable_params=sum(p.numel() for p in root if id(p) in trainable),
        largest_block_params=max((b for b, _ in block_params), default=0),
        largest_block_trainable_params=max((t for _, t in block_params), default=0),
        num_hidden_layers=text.num_hidden_layers,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        hidden_size=text.hidden_size,
        intermediate_size=text.intermediate_size,
        vocab_size=text.vocab_size,
        vision_depth=getattr(vision, "depth", 0) if vision is not None else 0,
        vision_hidden_size=getattr(vision, "hidden_size", 0) if vision is not None else 0,
        vision_intermediate_size=getattr(vision, "intermediate_size", 0) if vision is not None else 0,
        vision_merge=getattr(vision, "spatial_merge_size", 1) if vision is not None else 1,
        vision_trainable=vision is not None and vision_trains,
    )


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------

_TERMS = (
    "parameters",
    "gradients",
    "optimizer",
    "rollout_weights",
    "kv_cache",
    "rollout_forward",
    "update_weights",
    "accumulated_gradients",
    "activations",
    "logits",
    "update_tail",
    "optimizer_step",
    "overhead",
)


class MemoryPlanError(RuntimeError):
    """A run's memory plan does not fit its device; the message is the rendered plan."""

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        super().__init__(plan.render())


@dataclass(frozen=True)
class Plan:
    """Bytes per device of one training run, by term (see the module's docstring).

    ``labels`` describes each term for :meth:`render` and ``kinds`` says whether it is
    ``exact``, an ``estimate`` or an ``allowance``. ``host`` is what CPU offload keeps in host
    memory per process (not counted in :attr:`total`). ``device_bytes`` is the capacity
    (``None``: unknown, the plan always fits).
    """

    strategy: str
    world: int
    parameters: int
    gradients: int
    optimizer: int
    rollout_weights: int
    kv_cache: int
    rollout_forward: int
    update_weights: int
    accumulated_gradients: int
    activations: int
    logits: int
    update_tail: int
    optimizer_step: int
    overhead: int
    host: int
    device_bytes: int | None
    labels: tuple[tuple[str, str], ...] = ()
    kinds: tuple[tuple[str, str], ...] = ()
    heading: str = ""

    @property
    def state(self) -> int:
        """Parameters, gradients and optimizer state: held throughout the run."""
        return self.parameters + self.gradients + self.optimizer

    @property
    def rollout_peak(self) -> int:
        """Rollout phase (RL): sampler weights, KV cache and the prefill's working set."""
        return self.rollout_weights + self.kv_cache + self.rollout_forward

    @property
    def update_peak(self) -> int:
        """Update phase: accumulated gradients, then the larger of the forward/backward (FSDP
        gathers and buffers or autocast's copy, activations, logits) and FSDP's closing
        reduce-scatter of the root's gradients (when the activations are gone)."""
        during = self.update_weights + self.activations + self.logits
        return self.accumulated_gradients + max(during, self.update_tail)

    @property
    def total(self) -> int:
        """Peak bytes per device: the state, the largest phase (rollout, update, optimizer
        step), and the runtime allowance."""
        phases = max(self.rollout_peak, self.update_peak, self.optimizer_step)
        return self.state + phases + self.overhead

    @property
    def fits(self) -> bool:
        return self.device_bytes is None or self.total <= self.device_bytes

    @property
    def spare(self) -> int | None:
        """Device bytes left at the peak (negative when it does not fit); None if unknown."""
        return None if self.device_bytes is None else self.device_bytes - self.total

    def as_dict(self) -> dict[str, int]:
        """Every term, the phase totals and the total, in bytes."""
        out = {name: int(getattr(self, name)) for name in _TERMS}
        out.update(
            state=self.state,
            rollout_peak=self.rollout_peak,
            update_peak=self.update_peak,
            total=self.total,
            host=self.host,
        )
        return out

    def render(self) -> str:
        """A table in GiB: each term, which are estimates, the total, the device, the verdict."""
        labels, kinds = dict(self.labels), dict(self.kinds)

        def row(name: str, indent: int = 2) -> str:
            label = " " * indent + labels.get(name, name)
            return f"{label:<66}{getattr(self, name) / GiB:>9.2f}  {kinds.get(name, '')}"

        lines = [self.heading or f"Memory plan per device ({self.strategy}, {self.world} processes)"]
        lines.append(f"{'':<66}{'GiB':>9}")
        lines += [row("parameters"), row("gradients"), row("optimizer")]
        if self.rollout_peak:
            lines.append(f"  rollout phase{'':<51}{self.rollout_peak / GiB:>9.2f}")
            lines += [row(n, 4) for n in ("rollout_weights", "kv_cache", "rollout_forward")]
        lines.append(f"  update phase{'':<52}{self.update_peak / GiB:>9.2f}")
        lines += [
            row(n, 4)
            for n in ("update_weights", "accumulated_gradients", "activations", "logits", "update_tail")
            if getattr(self, n) or n in ("activations", "logits")
        ]
        if self.optimizer_step:
            lines.append(f"  optimizer step{'':<50}{self.optimizer_step / GiB:>9.2f}")
            lines.append(row("optimizer_step", 4))
        lines.append(row("overhead"))
        lines.append(f"{'  total: state + largest phase + allowance':<66}{self.total / GiB:>9.2f}")
        if self.host:
            lines.append(f"{'  host memory per process (CPU offload)':<66}{self.host / GiB:>9.2f}")
        if self.device_bytes is None:
            lines.append("  device capacity unknown: not checked")
        else:
            lines.append(f"{'  device capacity':<66}{self.device_bytes / GiB:>9.2f}")
            spare = self.spare or 0
            verdict = (
                f"fits: {spare / GiB:.2f} GiB to spare"
                if self.fits
                else f"DOES NOT FIT: {-spare / GiB:.2f} GiB over"
            )
            lines.append(f"  {verdict}")
        lines.append(
            "  exact: counts from the model's shapes; estimate: fitted formulas, rounded up "
            "(pixelreasoner.train.memory)"
        )
        return "\n".join(lines)


def _activations_per_token(
    layers: int, hidden: int, inter: int, rb: int, cb: int, checkpointing: bool
) -> tuple[int, int]:
    """(saved, working) activation bytes per token (estimate): what the forward keeps for the
    backward, and one layer's extra working set while it is recomputed and differentiated."""
    if layers == 0:
        return 0, 0
    if checkpointing:
        return layers * hidden * rb, (rb + cb) * (8 * hidden + 4 * inter)
    return layers * (rb + cb) * (6 * hidden + 2 * inter), (rb + cb) * (2 * hidden + 2 * inter)


def plan_memory(
    facts: MemoryInputs,
    *,
    strategy: str = "single",
    world: int = 1,
    param_dtype: str = "fp32",
    compute_dtype: str | None = None,
    reduce_dtype: str | None = None,
    offload: bool = False,
    reshard_after_forward: bool = True,
    accumulate_unsharded: bool = False,
    ddp_bucket_view: bool = False,
    gradient_checkpointing: bool = False,
    micro_batch_tokens: int,
    loss_tokens: int | None = None,
    image_tokens: int = 0,
    rollout_batch: int = 0,
    rollout_tokens: int = 0,
    prefill_tokens: int | None = None,
    prefill_image_tokens: int = 0,
    device_bytes: int | None = None,
    overhead_bytes: int = DEFAULT_OVERHEAD_BYTES,
) -> Plan:
    """The memory plan of one process of a run (bytes per device; see the module's docstring).

    - ``strategy``: ``single``, ``ddp`` or ``fsdp``; ``world``: processes (the shard count).
    - ``param_dtype``: the dtype parameters are stored in (fp32 master weights, or bf16);
      gradients and AdamW's states follow it. ``compute_dtype``: the dtype layers run in
      (``bf16`` under mixed precision; default ``param_dtype``): FSDP's
      ``MixedPrecisionPolicy.param_dtype``, or autocast's under single/DDP. ``reduce_dtype``:
      FSDP's gradient reduction dtype (default ``param_dtype``).
    - ``offload``: FSDP CPU offload. ``reshard_after_forward``: FSDP's (False keeps every layer
      gathered from its forward to its backward). ``accumulate_unsharded``: FSDP micro-batches
      accumulate without sync (``set_requires_gradient_sync(False)``). ``ddp_bucket_view``: DDP
      built with ``gradient_as_bucket_view=True`` (gradients live in its buckets: no second copy).
    - ``micro_batch_tokens``: tokens of one training forward, padding included (sequences x
      padded length); ``loss_tokens``: how many of them carry the loss, i.e. have logits
      formed (default: all); ``image_tokens``: how many are image tokens (vision activations,
      when the tower trains).
    - ``rollout_batch``: trajectories generated together per process (0: no rollouts, SFT);
      ``rollout_tokens``: the longest trajectory (the KV cache is sized for all rows at this
      length); ``prefill_tokens``: tokens of a trajectory's largest single prefill (default
      ``rollout_tokens``), ``prefill_image_tokens``: image tokens in it.
    - ``device_bytes``: the device's capacity (``torch.cuda.get_device_properties().
      total_memory``), ``None`` to skip the check; ``overhead_bytes``: runtime allowance.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {strategy!r}")
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    if strategy == "single" and world != 1:
        raise ValueError("strategy 'single' runs one process: world must be 1")
    if offload and strategy != "fsdp":
        raise ValueError("offload is FSDP's CPUOffloadPolicy: it needs strategy 'fsdp'")
    if accumulate_unsharded and strategy != "fsdp":
        raise ValueError("accumulate_unsharded describes FSDP's accumulation without sync")
    for name, value in (
        ("micro_batch_tokens", micro_batch_tokens),
        ("image_tokens", image_tokens),
        ("rollout_batch", rollout_batch),
        ("rollout_tokens", rollout_tokens),
        ("prefill_image_tokens", prefill_image_tokens),
        ("overhead_bytes", overhead_bytes),
    ):
        if value < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
    loss = micro_batch_tokens if loss_tokens is None else loss_tokens
    if not 0 <= loss <= micro_batch_tokens:
        raise ValueError(f"loss_tokens must be within 0..micro_batch_tokens, got {loss}")
    if image_tokens > micro_batch_tokens:
        raise ValueError("image_tokens cannot exceed micro_batch_tokens")
    prefill = rollout_tokens if prefill_tokens is None else prefill_tokens
    if rollout_batch and not 0 < prefill <= rollout_tokens:
        raise ValueError("prefill_tokens must be within 1..rollout_tokens")

    pb = dtype_bytes(param_dtype)
    cb = dtype_bytes(compute_dtype) if compute_dtype is not None else pb
    rdb = dtype_bytes(reduce_dtype) if reduce_dtype is not None else pb
    fsdp = strategy == "fsdp"
    autocast = not fsdp and cb != pb
    rb = pb if autocast else cb  # residual stream: fp32 under autocast over fp32 weights
    f = facts
    shard = world if fsdp else 1

    def sharded(count: int) -> int:
        return math.ceil(count / shard)

    # State: exact. AdamW: exp_avg and exp_avg_sq like the parameter, a 4-byte step per tensor.
    params = sharded(f.total_params) * pb
    ddp_buckets = strategy == "ddp" and not ddp_bucket_view
    grads = sharded(f.trainable_params) * pb * (2 if ddp_buckets else 1)
    optim = 2 * sharded(f.trainable_params) * pb + 4 * f.trainable_tensors
    host = 0
    if offload:
        host, params, grads, optim = params + grads + optim, 0, 0, 0

    # Rollout phase.
    if rollout_batch:
        weights_rollout = f.total_params * cb if fsdp else (f.trainable_params * cb if autocast else 0)
        kv = rollout_batch * rollout_tokens * f.kv_elements_per_token // 2 * (rb + cb)
        lm_prefill = rollout_batch * prefill * (rb + cb) * (f.hidden_size + 2 * f.intermediate_size)
        vision_prefill = (
            rollout_batch
            * prefill_image_tokens
            * f.vision_merge**2
            * (rb + cb)
            * (f.vision_hidden_size + 2 * f.vision_intermediate_size)
        )
        forward_rollout = max(lm_prefill, vision_prefill)
    else:
        weights_rollout = kv = forward_rollout = 0

    # Update phase.
    if fsdp:
        # The root stays gathered; two blocks in flight, or all of them kept from forward to
        # backward. The root's unsharded gradients (the LM head's first) build up through the
        # backward; one block's gradients meet their reduce_dtype copy at its reduce-scatter.
        blocks = f.total_params - f.root_params
        in_flight = 2 * f.largest_block_params if reshard_after_forward else blocks
        weights_update = (
            (f.root_params + in_flight) * cb
            + f.root_trainable_params * cb
            + f.largest_block_trainable_params * (cb + rdb)
        )
        # At the end of the backward the root's gradients and their reduce_dtype copy, alone.
        tail = f.root_trainable_params * (cb + rdb)
    else:
        weights_update = f.trainable_params * cb if autocast else 0
        tail = 0
    accumulated = f.trainable_params * rdb if accumulate_unsharded else 0
    saved, working = _activations_per_token(
        f.num_hidden_layers, f.hidden_size, f.intermediate_size, rb, cb, gradient_checkpointing
    )
    acts_saved, acts_working = micro_batch_tokens * saved, micro_batch_tokens * working
    if f.vision_trainable and image_tokens:
        # The tower's saved activations live through the language model's backward; its blocks'
        # working set comes after it, so only the larger working set counts.
        patches = image_tokens * f.vision_merge**2
        v_saved, v_working = _activations_per_token(
            f.vision_depth,
            f.vision_hidden_size,
            f.vision_intermediate_size,
            rb,
            cb,
            gradient_checkpointing,
        )
        acts_saved += patches * v_saved
        acts_working = max(acts_working, patches * v_working)
    acts = acts_saved + acts_working
    logits = loss * f.vocab_size * LOGIT_BYTES_PER_ENTRY
    # AdamW's step (foreach, torch's default on GPUs): one temporary copy of the trained
    # parameters (``exp_avg_sq.sqrt()``, read from torch's _multi_tensor_adam); on FSDP's DTensor
    # shards 1.8 copies were measured, planned as 2.
    step = 0 if offload else (2 if fsdp else 1) * sharded(f.trainable_params) * pb

    cname = compute_dtype or param_dtype
    share = f", 1/{world} shard" if fsdp and world > 1 else ""
    labels = {
        "parameters": f"parameters ({f.total_params:,} in {param_dtype}{share})"
        + (" [offloaded]" if offload else ""),
        "gradients": f"gradients ({f.trainable_params:,} trainable{share})"
        + (" + DDP buckets" if ddp_buckets else "")
        + (" [offloaded]" if offload else ""),
        "optimizer": f"AdamW state (m, v{share})" + (" [offloaded]" if offload else ""),
        "rollout_weights": (
            f"gathered weights ({cname}, whole model)"
            if fsdp
            else ("autocast weight copy" if autocast else "weights (already whole: nothing extra)")
        ),
        "kv_cache": f"KV cache ({rollout_batch} x {rollout_tokens:,} tokens)",
        "rollout_forward": f"prefill working set ({rollout_batch} x {prefill:,} tokens)",
        "update_weights": "FSDP gathered units, unsharded gradients, reduce buffers"
        if fsdp
        else "autocast weight copy",
        "update_tail": "or at the backward's end: root gradients, reduce copy",
        "optimizer_step": f"AdamW step temporaries (foreach: {2 if fsdp else 1} cop{'ies' if fsdp else 'y'})",
        "accumulated_gradients": f"unsharded gradients while accumulating ({reduce_dtype or param_dtype})",
        "activations": f"activations ({micro_batch_tokens:,} tokens"
        + (f", {image_tokens:,} image" if f.vision_trainable and image_tokens else "")
        + (", checkpointed)" if gradient_checkpointing else ")"),
        "logits": f"logits ({loss:,} tokens x {f.vocab_size:,})",
        "overhead": "runtime allowance (CUDA context, NCCL, fragmentation)",
    }
    kinds = dict.fromkeys(("parameters", "gradients", "optimizer", "kv_cache"), "exact")
    kinds.update(
        rollout_weights="estimate" if autocast else "exact",
        rollout_forward="estimate",
        update_weights="estimate",
        update_tail="estimate",
        optimizer_step="estimate",
        accumulated_gradients="exact",
        activations="estimate",
        logits="estimate",
        overhead="allowance",
    )
    heading = (
        f"Memory plan per device: {strategy}"
        + (f" over {world} processes" if world > 1 else "")
        + f"; parameters {param_dtype}, compute {cname}"
        + (", offload" if offload else "")
        + (", activation checkpointing" if gradient_checkpointing else "")
    )
    return Plan(
        strategy=strategy,
        world=world,
        parameters=params,
        gradients=grads,
        optimizer=optim,
        rollout_weights=weights_rollout,
        kv_cache=kv,
        rollout_forward=forward_rollout,
        update_weights=weights_update,
        accumulated_gradients=accumulated,
        activations=acts,
        logits=logits,
        update_tail=tail,
        optimizer_step=step,
        overhead=overhead_bytes,
        host=host,
        device_bytes=device_bytes,
        labels=tuple(labels.items()),
        kinds=tuple(kinds.items()),
        heading=heading,
    )


def require_fit(plan: Plan) -> Plan:
    """``plan`` if it fits its device; otherwise :class:`MemoryPlanError` with the rendered plan."""
    if not plan.fits:
        raise MemoryPlanError(plan)
    return plan


# ----------------------------------------------------------------------------------------------
# From a training config
# ----------------------------------------------------------------------------------------------


def recipe_shape(
    config: Any,
    *,
    world: int = 1,
    sequence_tokens: int | None = None,
    loss_tokens_per_sequence: int | None = None,
    image_tokens_per_sequence: int | None = None,
) -> dict[str, Any]:
    """``plan_memory`` keyword arguments read from an SFT or RL config (duck-typed).

    Worst case unless told otherwise: every sequence at the config's length limit
    (``max_length`` for SFT, ``max_total_tokens`` for RL), every token in the loss for SFT and
    every generated token an RL trajectory may have (``(max_calls + 1) · max_turn_tokens``).
    ``sequence_tokens``, ``loss_tokens_per_sequence`` and ``image_tokens_per_sequence`` replace
    those with typical figures for the update (the KV cache stays sized for the longest
    trajectory). Image tokens per sequence default to the pixel budget's largest input image
    plus ``max_calls`` largest crops, within the sequence. Returned keys:
    ``gradient_checkpointing``, ``compute_dtype`` (only under bf16/fp16), ``micro_batch_tokens``,
    ``loss_tokens``, ``image_tokens``, ``reshard_after_forward`` and ``offload`` (from the
    config's ``fsdp`` options, if it has them), ``accumulate_unsharded`` (True when a step has several
    micro-batches: what accumulating under ``no_sync`` costs FSDP; set it False for a loop that
    reduce-scatters every micro-batch), and for RL ``rollout_batch`` (the config's, or a
    phase's trajectories per process when 0), ``rollout_tokens``, ``prefill_tokens`` and
    ``prefill_image_tokens``.
    """
    from pixelreasoner.vision.budget import TOKEN_PX, pixel_budget

    rl = hasattr(config, "rollout_batch")
    limit = int(config.max_total_tokens if rl else config.max_length)
    seq = min(limit, sequence_tokens) if sequence_tokens is not None else limit
    max_calls = int(getattr(config, "max_calls", 4))
    budget = pixel_budget(config.budget)
    input_tokens = budget.inputs.max_pixels // TOKEN_PX
    images_per_seq = min(
        seq,
        input_tokens + max_calls * (budget.crops.max_pixels // TOKEN_PX)
        if image_tokens_per_sequence is None
        else image_tokens_per_sequence,
    )
    if rl:
        sequences = int(config.micro_batch)
        generated = (max_calls + 1) * int(config.max_turn_tokens)
        default_loss = min(seq, generated)
    else:
        if config.batch_size % config.grad_accum:
            raise ValueError("batch_size must divide by grad_accum")
        sequences = int(config.batch_size // config.grad_accum)
        default_loss = seq
    per_seq_loss = default_loss if loss_tokens_per_sequence is None else min(seq, loss_tokens_per_sequence)
    shape: dict[str, Any] = {
        "gradient_checkpointing": bool(getattr(config, "gradient_checkpointing", False)),
        "micro_batch_tokens": sequences * seq,
        "loss_tokens": sequences * per_seq_loss,
        "image_tokens": sequences * images_per_seq,
        # FSDPTraining reduce-scatters every micro-batch (its no_sync is a no-op), so no unsharded
        # gradients accumulate; DDP's locally accumulated gradients are the ``gradients`` term.
        "accumulate_unsharded": False,
    }
    options = getattr(config, "fsdp", None)  # FSDPOptions of the fsdp strategy, when the config has them
    if options is not None:
        shape["reshard_after_forward"] = bool(getattr(options, "reshard_after_forward", True))
        if getattr(options, "offload", False):
            shape["offload"] = True
    precision = getattr(config, "mixed_precision", "no")
    if precision in ("bf16", "fp16"):
        shape["compute_dtype"] = precision
    if rl:
        batch = int(config.rollout_batch) or math.ceil(
            int(config.queries_per_step) * int(config.group_size) / world
        )
        shape.update(
            rollout_batch=batch,
            rollout_tokens=limit,
            prefill_tokens=min(limit, input_tokens + PROMPT_TEXT_TOKENS),
            prefill_image_tokens=min(limit, input_tokens),
        )
    return shape


def plan_for_config(
    config: Any,
    *,
    model: torch.nn.Module | None = None,
    shape: str | None = None,
    world: int = 1,
    device_bytes: int | None = None,
) -> Plan:
    """The plan of one process of an SFT or RL run as configured (worst-case lengths).

    ``model`` is the loaded model with the run's freezing applied. Without it the model is built
    on the meta device (nothing allocated) from ``shape`` (a published shape of
    ``models.tiny.FULL_SHAPES`` or a tiny preset), else from ``config.model`` (a tiny preset, or
    a checkpoint's ``config.json``), and frozen as the config says. ``world`` is the number of
    processes; ``strategy: auto`` plans one process, or DDP when there are several.
    ``device_bytes``: the device's memory (None: no verdict).
    """
    if model is None:
        model = _configured_meta_model(config, shape)
    strategy = config.strategy if config.strategy != "auto" else ("ddp" if world > 1 else "single")
    return plan_memory(
        model_facts(model),
        strategy=strategy,
        world=world,
        param_dtype="fp32",  # the loops load fp32 master weights
        device_bytes=device_bytes,
        **recipe_shape(config, world=world),
    )


def _configured_meta_model(config: Any, shape: str | None) -> torch.nn.Module:
    from transformers import AutoConfig

    from pixelreasoner.models.tiny import FULL_SHAPES, PRESETS, build_tiny_model
    from pixelreasoner.train.common import apply_freezing

    source = shape or str(config.model)
    model: torch.nn.Module
    if source in PRESETS or source in FULL_SHAPES:
        model = build_tiny_model(source, device="meta", dtype=torch.float32)[0]
    else:
        try:
            model = _meta_model(AutoConfig.from_pretrained(source))
        except OSError as exc:
            raise ValueError(
                f"cannot read the config of {source!r} ({exc}); plan on a published shape instead, "
                f"e.g. --shape qwen2.5-vl-7b (one of {', '.join(FULL_SHAPES)})"
            ) from None
    apply_freezing(
        model, bool(getattr(config, "freeze_vision", False)), bool(getattr(config, "freeze_projector", False))
    )
    return model


def device_memory(device: torch.device) -> int | None:
    """Total memory of a CUDA device in bytes; None on the CPU (no verdict there)."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.get_device_properties(device).total_memory)


def check_memory(config: Any, model: torch.nn.Module, dist: Any) -> Plan:
    """Print the run's plan (main process) and refuse the run, on every process, if it cannot fit
    the device. Call with the loaded model, its freezing applied, before training starts."""
    plan = plan_for_config(
        config, model=model, world=dist.num_processes, device_bytes=device_memory(dist.device)
    )
    if dist.is_main_process:
        print(plan.render())
    return require_fit(plan)
