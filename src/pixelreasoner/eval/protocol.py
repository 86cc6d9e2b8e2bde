"""The evaluation protocol: every setting a number depends on, recorded beside the number.

An :class:`EvalProtocol` holds the prompt mode, the pixel budget (all of its fields), the
decoding (greedy, or temperature / top-p / top-k with K samples per item and a seed), the
rollout limits and :data:`SCORING_VERSION`. :class:`ModelIdentity` names the model: its path
and a sha256 of its weights (or, served over HTTP, the URL and served name, with no hash).
:func:`protocol_record` joins them with the library versions into the dictionary that
``OUT/protocol.json``, ``summary.json`` and the top of ``summary.md`` carry.

Resuming into an output folder compares the recorded dictionary with the new one
(:func:`differences`) and refuses on any difference (:class:`ProtocolMismatch`), so results of
two protocols are never mixed or compared silently.

Presets (:data:`PRESETS`) are named sets of values. ``released`` is what the authors' evaluation
ran (the eval branch of the release's experience maker, with its eval scripts):

- prompt mode ``vcot`` (the scripts' ``sys=vcot``);
- budget ``released-eval-as-run`` (:func:`released_eval_as_run`): the ``released-eval`` preset
  (inputs 256..8000 tokens, crops 256..5120, selected frames unresized; see
  :func:`pixelreasoner.vision.budget.released_eval`) with two changes that make it what the
  authors' run did: crops are cut from the image the model saw (the release's "raw" image list
  is the resized one), and the processor's range is 512..5120 tokens (its eval scripts export
  ``MIN_PIXELS=512*28*28``, ``MAX_PIXELS=5120*28*28``, which its vLLM engines take as the
  processor's limits, so smaller images and crops are enlarged to 512 tokens). Over HTTP the
  server's processor applies its own limits: serve with the same ``min_pixels``/``max_pixels``.
  Input video frames keep ``released-eval``'s values (not verified against a released run);
- greedy decoding (temperature 0, top-p 1, top-k off), one sample per item (the release forces
  ``nsample = 1`` when evaluating);
- 2048 new tokens per turn (its multi-turn sampler always uses ``max_out_tokens``, default
  2048, whatever ``--generate_max_len`` says);
- limits: a fifth call is cut off (it stops when more than 3 calls were made), at most 16
  images, and ``12 * 1024 - 200 = 12088`` tokens of prompt plus turn (our
  :class:`~pixelreasoner.rollout.engine.RolloutLimits` default is 12288).

:func:`build_protocol` makes a protocol from a preset (or ``custom``) and the values given on the
command line: with a preset, a given value that differs from the preset's is an error (a number
labelled ``released`` always means the released values; use ``custom`` with flags to change
one); given values equal to the preset's are accepted.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.metadata
import json
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pixelreasoner.protocol.prompts import PromptMode
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import RolloutLimits
from pixelreasoner.vision.budget import PRESETS as BUDGET_PRESETS
from pixelreasoner.vision.budget import TOKEN_PX, PixelBudget, PixelRange, pixel_budget

SCORING_VERSION = "1"
"""Version of the answer-checking rules (``eval/scoring.py`` and the metric choice in
``eval/tasks.py``). **Bump it whenever a change there can change a score**; a resume into a
folder scored under another version is then refused. (The sources' hashes are recorded too, in
``scoring_sources``, for the record only: a change of wording does not refuse a resume.)"""

RELEASED_MAX_TOTAL_TOKENS = 12 * 1024 - 200
"""The release's cut-off on prompt plus turn tokens (``cur_tokens > 12*1024-200``)."""

LIBRARIES = ("pixelreasoner", "torch", "transformers")

NOT_COMPARED = frozenset({"name", "budget_name", "model.path", "model.files", "scoring_sources", "data_root"})
"""Recorded but not compared on resume: labels (the values they stand for are compared), where
the weights lie (their hash is compared; a model without one, served over HTTP, is compared by
URL), and the scoring sources' hashes (see :data:`SCORING_VERSION`)."""


class ProtocolMismatch(RuntimeError):
    """Resuming into a folder whose results were made under another protocol."""


@dataclass(frozen=True)
class Decoding:
    """How trajectories are sampled, and how many per item."""

    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    samples: int = 1
    """Trajectories per item (Avg@k)."""
    seed: int | None = None
    """Seed of sampled runs; ``None`` when greedy."""
    max_new_tokens: int = 2048

    def __post_init__(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if self.greedy and self.samples > 1:
            raise ValueError(
                f"{self.samples} samples per item need sampling (temperature > 0): "
                "greedy samples are identical"
            )
        if self.greedy and (self.top_p != 1.0 or self.top_k != 0 or self.seed is not None):
            raise ValueError("top-p, top-k and a seed only apply when sampling (temperature > 0)")
        self.params()  # checks the ranges

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def params(self, seed: int | None = None) -> SamplingParams:
        """The sampling parameters of every turn (``seed`` overrides :attr:`seed`)."""
        return SamplingParams(
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            seed=self.seed if seed is None else seed,
        )

    def describe(self) -> str:
        if self.greedy:
            head = "greedy"
        else:
            top_k = self.top_k if self.top_k else "off"
            head = (
                f"sampling: temperature {self.temperature:g}, top-p {self.top_p:g}, top-k {top_k}, "
                f"seed {self.seed}"
            )
        per = (
            "1 sample per item"
            if self.samples == 1
            else f"{self.samples} samples per item (Avg@{self.samples})"
        )
        return f"{head}; {per}; up to {self.max_new_tokens} new tokens per turn"


@dataclass(frozen=True)
class EvalProtocol:
    """Everything that decides an evaluation's numbers, apart from the model and the data."""

    name: str = "custom"
    mode: PromptMode = "vcot"
    budget_name: str = "released-eval"
    budget: PixelBudget = dataclasses.field(default_factory=lambda: pixel_budget("released-eval"))
    decoding: Decoding = Decoding()
    limits: RolloutLimits = dataclasses.field(default_factory=RolloutLimits)
    scoring_version: str = SCORING_VERSION

    def __post_init__(self) -> None:
        if self.limits.max_turn_tokens != self.decoding.max_new_tokens:
            raise ValueError(
                f"limits.max_turn_tokens ({self.limits.max_turn_tokens}) must equal "
                f"decoding.max_new_tokens ({self.decoding.max_new_tokens})"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mode": self.mode,
            "budget_name": self.budget_name,
            "budget": _budget_dict(self.budget),
            "decoding": dataclasses.asdict(self.decoding),
            "limits": dataclasses.asdict(self.limits),
            "scoring_version": self.scoring_version,
        }


def _budget_dict(budget: PixelBudget) -> dict[str, Any]:
    """Every field of the budget; a range as ``{"min_pixels", "max_pixels"}``, unresized frames as None."""
    return {
        f.name: dataclasses.asdict(value) if isinstance(value, PixelRange) else value
        for f in dataclasses.fields(budget)
        for value in [getattr(budget, f.name)]
    }


def released_eval_as_run() -> PixelBudget:
    """``released-eval`` as the authors' evaluation ran it: crops from the model's view and a
    512..5120-token processor (see the module docstring)."""
    return pixel_budget("released-eval").replace(
        crop_from_original=False, processor=PixelRange(512 * TOKEN_PX, 5120 * TOKEN_PX)
    )


BUDGETS = {"released-eval-as-run": released_eval_as_run}
"""Budgets named here besides :data:`pixelreasoner.vision.budget.PRESETS`."""


def budget_by_name(name: str) -> PixelBudget:
    """A budget preset of :mod:`pixelreasoner.vision.budget`, or one of :data:`BUDGETS`."""
    if name in BUDGETS:
        return BUDGETS[name]()
    if name not in BUDGET_PRESETS:
        raise ValueError(
            f"unknown pixel budget {name!r}; choose one of {sorted([*BUDGET_PRESETS, *BUDGETS])}"
        )
    return pixel_budget(name)


def released() -> EvalProtocol:
    """The authors' evaluation (see the module docstring for where each value comes from)."""
    return EvalProtocol(
        name="released",
        mode="vcot",
        budget_name="released-eval-as-run",
        budget=released_eval_as_run(),
        decoding=Decoding(temperature=0.0, samples=1, max_new_tokens=2048),
        limits=RolloutLimits(
            max_calls=4, max_images=16, max_total_tokens=RELEASED_MAX_TOTAL_TOKENS, max_turn_tokens=2048
        ),
    )


PRESETS = {"released": released}
"""Named protocols, by the name ``--protocol`` takes (``custom`` is the flags' own values)."""

_DEFAULTS: dict[str, Any] = {
    "mode": "vcot",
    "budget": "released-eval",
    "max_new_tokens": 2048,
    "samples": 1,
    "temperature": 0.0,
    "top_p": 1.0,
    "top_k": 0,
    "seed": None,
    "max_calls": RolloutLimits.max_calls,
    "max_images": RolloutLimits.max_images,
    "max_total_tokens": RolloutLimits.max_total_tokens,
}
"""The ``custom`` protocol's value of every setting not given."""


def _preset_values(protocol: EvalProtocol) -> dict[str, Any]:
    d, lim = protocol.decoding, protocol.limits
    return {
        "mode": protocol.mode,
        "budget": protocol.budget_name,
        "max_new_tokens": d.max_new_tokens,
        "samples": d.samples,
        "temperature": d.temperature,
        "top_p": d.top_p,
        "top_k": d.top_k,
        "seed": d.seed,
        "max_calls": lim.max_calls,
        "max_images": lim.max_images,
        "max_total_tokens": lim.max_total_tokens,
    }


def build_protocol(preset: str = "custom", **given: Any) -> EvalProtocol:
    """A protocol from a preset name (or ``custom``) and the settings given (``None``: not given).

    Settings: ``mode``, ``budget`` (a preset name of :mod:`pixelreasoner.vision.budget`),
    ``max_new_tokens``, ``samples``, ``temperature``, ``top_p``, ``top_k``, ``seed``,
    ``max_calls``, ``max_images``, ``max_total_tokens``. With a preset, a given setting that
    differs from the preset's raises ``ValueError`` naming every such setting. Under ``custom``, a
    sampled run (temperature > 0) without a seed gets seed 0.
    """
    unknown = set(given) - set(_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown protocol settings: {', '.join(sorted(unknown))}")
    given = {k: v for k, v in given.items() if v is not None}
    if preset != "custom":
        if preset not in PRESETS:
            raise ValueError(f"unknown protocol {preset!r}; choose custom or one of {', '.join(PRESETS)}")
        protocol = PRESETS[preset]()
        fixed = _preset_values(protocol)
        clashes = [
            f"--{k.replace('_', '-')} {v} (preset: {fixed[k]})" for k, v in given.items() if v != fixed[k]
        ]
        if clashes:
            raise ValueError(
                f"--protocol {preset} fixes these settings; drop them, or use --protocol custom to "
                f"change them: {'; '.join(clashes)}"
            )
        return protocol
    values = {**_DEFAULTS, **given}
    if values["temperature"] > 0 and values["seed"] is None:
        values["seed"] = 0
    try:
        budget = budget_by_name(values["budget"])
        decoding = Decoding(
            temperature=float(values["temperature"]),
            top_p=float(values["top_p"]),
            top_k=int(values["top_k"]),
            samples=int(values["samples"]),
            seed=values["seed"],
            max_new_tokens=int(values["max_new_tokens"]),
        )
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    limits = RolloutLimits(
        max_calls=int(values["max_calls"]),
        max_images=int(values["max_images"]),
        max_total_tokens=int(values["max_total_tokens"]),
        max_turn_tokens=decoding.max_new_tokens,
    )
    return EvalProtocol("custom", values["mode"], values["budget"], budget, decoding, limits)


# ---------------------------------------------------------------------- the model's identity


@dataclass(frozen=True)
class ModelIdentity:
    """Which model made the numbers."""

    kind: Literal["local", "hub", "in-memory", "http"]
    path: str
    """Directory, hub id, a caller's label (in-memory) or the server's URL (http)."""
    sha256: str | None
    """Hash of the weights; ``None`` when they cannot be seen (served over HTTP)."""
    hashed: str = ""
    """What was hashed: ``safetensors files`` or ``state dict``."""
    served_model_name: str | None = None
    files: dict[str, str] = dataclasses.field(default_factory=dict)
    """Each weights file's own sha256 (what ``sha256sum`` and the hub's LFS pointers show)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def describe(self) -> str:
        if self.sha256 is None:
            name = f", served model name {self.served_model_name}" if self.served_model_name else ""
            return f"{self.path}{name} (no hash: served over HTTP)"
        return f"{self.path} (sha256 {self.sha256} of its {self.hashed})"


def file_sha256(path: str | Path, chunk: int = 1 << 23) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_files(folder: str | Path) -> list[Path]:
    """The ``*.safetensors`` files of a checkpoint folder, sorted by name."""
    return sorted(Path(folder).glob("*.safetensors"))


def files_sha256(files: Iterable[Path]) -> tuple[str, dict[str, str]]:
    """One hash over several files: sha256 of ``"{name} {sha256 of its bytes}\\n"`` lines in name order.

    Returns it and each file's own hash, so a file can be checked with ``sha256sum``.
    """
    each = {f.name: file_sha256(f) for f in sorted(files, key=lambda p: p.name)}
    combined = hashlib.sha256("".join(f"{name} {h}\n" for name, h in each.items()).encode()).hexdigest()
    return combined, each


def state_dict_sha256(model: Any) -> str:
    """sha256 over a model's state dict: each tensor's name, dtype, shape and bytes, by name."""
    import torch

    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name]
        if not isinstance(tensor, torch.Tensor):
            continue
        flat = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}\n".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_identity(path: str, model: Any = None) -> ModelIdentity:
    """The identity of an in-process model: the safetensors files' hash where ``path`` is a folder
    holding some, else the hash of ``model``'s state dict (hub ids, ``.bin`` checkpoints)."""
    folder = Path(path).expanduser()
    files = weights_files(folder) if folder.is_dir() else []
    if files:
        combined, each = files_sha256(files)
        return ModelIdentity("local", str(folder.resolve()), combined, "safetensors files", files=each)
    if model is None:
        raise ValueError(f"{path} holds no *.safetensors files; pass the loaded model to hash its state dict")
    kind: Literal["local", "hub"] = "local" if folder.is_dir() else "hub"
    return ModelIdentity(kind, path, state_dict_sha256(model), "state dict")


def memory_identity(model: Any, label: str = "in-memory model") -> ModelIdentity:
    """The identity of a model that lives only in this process (hash of its state dict)."""
    return ModelIdentity("in-memory", label, state_dict_sha256(model), "state dict")


def http_identity(url: str, served_model_name: str | None) -> ModelIdentity:
    return ModelIdentity("http", url, None, served_model_name=served_model_name)


# ---------------------------------------------------------------------- the record


def library_versions() -> dict[str, str]:
    versions = {}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def scoring_sources() -> dict[str, str]:
    """Short sha256 of the answer-checking sources (recorded, not compared; see SCORING_VERSION)."""
    here = Path(__file__).resolve().parent
    return {
        f"eval/{name}": file_sha256(here / name)[:16]
        for name in ("scoring.py", "tasks.py")
        if (here / name).is_file()
    }


def protocol_record(
    protocol: EvalProtocol, model: ModelIdentity, data_root: str | os.PathLike[str] | None = None
) -> dict[str, Any]:
    """What ``protocol.json`` and ``summary.json`` hold: protocol, model, versions, and where the
    items were read from (``data_root``, absolute; a record, not compared: data may move)."""
    return {
        **protocol.to_dict(),
        "model": model.to_dict(),
        "versions": library_versions(),
        "scoring_sources": scoring_sources(),
        "data_root": os.path.abspath(data_root) if data_root is not None else None,
    }


def compared(record: Mapping[str, Any]) -> dict[str, Any]:
    """The flattened fields of a record that a resume compares (see :data:`NOT_COMPARED`)."""
    flat = flatten(record)
    keep = {k: v for k, v in flat.items() if not _ignored(k)}
    if flat.get("model.sha256") is None:  # no weights to hash: the URL (or path) stands for them
        keep["model.path"] = flat.get("model.path")
    return keep


def protocol_id(record: Mapping[str, Any]) -> str:
    """A short hash of the compared part of a record (stamped on every result line)."""
    return hashlib.sha256(json.dumps(compared(record), sort_keys=True).encode()).hexdigest()[:16]


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` → ``{"a.b": 1}`` (lists, None and empty mappings kept as values)."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _ignored(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in NOT_COMPARED)


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """The compared fields that differ, as ``field: recorded X, now Y`` lines (sorted by field)."""
    old, new = compared(recorded), compared(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in old or key not in new or old[key] != new[key]:
            shown_old = json.dumps(old[key]) if key in old else "(absent)"
            shown_new = json.dumps(new[key]) if key in new else "(absent)"
            lines.append(f"{key}: recorded {shown_old}, now {shown_new}")
    return lines


# ---------------------------------------------------------------------- for people


def _range(r: Mapping[str, Any] | None) -> str:
    if r is None:
        return "unresized"
    lo, hi = int(r["min_pixels"]), int(r["max_pixels"])
    return f"{lo}..{hi} px ({lo / TOKEN_PX:g}..{hi / TOKEN_PX:g} tokens)"


def describe(record: Mapping[str, Any]) -> str:
    """A markdown block for the top of ``summary.md``."""
    budget, lim = record["budget"], record["limits"]
    decoding = Decoding(**record["decoding"])
    versions = ", ".join(f"{k} {v}" for k, v in record["versions"].items())
    model = record["model"]
    identity = ModelIdentity(
        model["kind"], model["path"], model["sha256"], model["hashed"], model["served_model_name"]
    )
    crops_from = "the original" if budget["crop_from_original"] else "the model's view"
    return "\n".join(
        [
            f"## Protocol: {record['name']}",
            "",
            f"- model: {identity.describe()}",
            f"- prompt mode: {record['mode']}",
            f"- decoding: {decoding.describe()}",
            f"- pixel budget `{record['budget_name']}`: inputs {_range(budget['inputs'])}; crops "
            f"{_range(budget['crops'])}; selected frames {_range(budget['frames'])}; video frames "
            f"{_range(budget['video'])}; processor {_range(budget['processor'])}; factor {budget['factor']}; "
            f"images over {budget['max_decode_pixels']} px refused; crops cut from {crops_from}",
            f"- limits: {lim['max_calls']} calls, {lim['max_images']} images, {lim['max_total_tokens']} "
            f"tokens of prompt and turn, {lim['max_turn_tokens']} new tokens per turn",
            f"- answer checking: version {record['scoring_version']}",
            f"- libraries: {versions}",
        ]
    )


__all__ = [
    "PRESETS",
    "SCORING_VERSION",
    "Decoding",
    "EvalProtocol",
    "ModelIdentity",
    "ProtocolMismatch",
    "budget_by_name",
    "build_protocol",
    "describe",
    "differences",
    "http_identity",
    "memory_identity",
    "model_identity",
    "protocol_id",
    "protocol_record",
    "released",
    "released_eval_as_run",
]
