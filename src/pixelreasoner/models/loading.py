"""Load Qwen2.5-VL (or Qwen2-VL) checkpoints and their processor, without torchvision.

transformers' ``Qwen2_5_VLProcessor`` insists on a video processor, and the video processor needs
torchvision, which cannot be installed on our CPU machines. :class:`VLProcessor` therefore holds
just the tokenizer and the PIL image processor; video patches are computed by our own code. It
reads real Qwen2.5-VL repositories (their ``preprocessor_config.json`` names the torchvision class
``Qwen2VLImageProcessor``; its values load into the PIL class unchanged) and the tiny models of
:mod:`pixelreasoner.models.tiny`, which are saved in the same layout.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoModelForImageTextToText,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

__all__ = ["SUPPORTED_MODEL_TYPES", "VLProcessor", "load_model", "single_token_id"]

SUPPORTED_MODEL_TYPES = ("qwen2_5_vl", "qwen2_vl")

# "owner/name" as on the hub; anything else that does not exist locally is a missing path.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
_IMAGE_PROCESSOR_FILE = "preprocessor_config.json"


@dataclass
class VLProcessor:
    """Tokenizer + PIL image processor of a Qwen2.5-VL model (no video processor: video patches are
    computed by our own code)."""

    tokenizer: PreTrainedTokenizerBase
    image_processor: Qwen2VLImageProcessorPil

    def token_id(self, token: str) -> int:
        """The id of a single-token string; ``KeyError`` if the tokenizer does not have it as one token."""
        return single_token_id(self.tokenizer, token)

    @property
    def image_token_id(self) -> int:
        return self.token_id("<|image_pad|>")

    @property
    def video_token_id(self) -> int:
        return self.token_id("<|video_pad|>")

    @property
    def vision_start_token_id(self) -> int:
        return self.token_id("<|vision_start|>")

    @property
    def vision_end_token_id(self) -> int:
        return self.token_id("<|vision_end|>")

    @property
    def im_start_id(self) -> int:
        return self.token_id("<|im_start|>")

    @property
    def im_end_id(self) -> int:
        return self.token_id("<|im_end|>")

    @property
    def endoftext_id(self) -> int:
        return self.token_id("<|endoftext|>")

    @property
    def pad_token_id(self) -> int:
        # Qwen pads with <|endoftext|>; fall back to it where a tokenizer leaves pad unset.
        pad = self.tokenizer.pad_token_id
        return int(pad) if isinstance(pad, int) else self.endoftext_id

    @classmethod
    def from_pretrained(cls, path_or_id: str | os.PathLike[str], **kwargs: Any) -> VLProcessor:
        """Load tokenizer and image processor from a local directory or a hub id (``kwargs`` go to both)."""
        source = _resolve_source(path_or_id)
        if os.path.isdir(source):
            if not any(os.path.isfile(os.path.join(source, f)) for f in _TOKENIZER_FILES):
                raise FileNotFoundError(f"{source} has no tokenizer ({' or '.join(_TOKENIZER_FILES)})")
            if not os.path.isfile(os.path.join(source, _IMAGE_PROCESSOR_FILE)):
                raise FileNotFoundError(
                    f"{source} has no {_IMAGE_PROCESSOR_FILE}: not a vision-language processor directory"
                )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
            image_processor = Qwen2VLImageProcessorPil.from_pretrained(source, **kwargs)
        except OSError as err:
            raise OSError(f"could not load the Qwen2.5-VL processor from {source!r}: {err}") from err
        if tokenizer.chat_template is None:
            tokenizer.chat_template = _processor_chat_template(source)
        return cls(tokenizer=tokenizer, image_processor=image_processor)

    def save_pretrained(self, path: str | os.PathLike[str]) -> None:
        """Write tokenizer files, chat template and ``preprocessor_config.json`` like a Qwen2.5-VL repo."""
        os.makedirs(path, exist_ok=True)
        self.tokenizer.save_pretrained(path)  # tokenizer.json, tokenizer_config.json, chat_template.jinja
        self.image_processor.save_pretrained(path)


def single_token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    """The id of ``token`` in ``tokenizer``; ``KeyError`` where it is not a single token of its vocabulary."""
    tid = tokenizer.convert_tokens_to_ids(token)
    if not isinstance(tid, int) or (tid == tokenizer.unk_token_id and token != tokenizer.unk_token):
        raise KeyError(f"the tokenizer has no single token {token!r}")
    return tid


def _resolve_source(path_or_id: str | os.PathLike[str]) -> str:
    """An existing local directory, or a string that looks like a hub id; else ``FileNotFoundError``."""
    text = os.fspath(path_or_id)
    path = Path(text).expanduser()
    if path.exists():
        if not path.is_dir():
            raise NotADirectoryError(f"model path {text!r} is a file, expected a checkpoint directory")
        return str(path)
    if isinstance(path_or_id, str) and _HUB_ID.match(text) and ".." not in text:
        return text
    raise FileNotFoundError(
        f"model path {text!r} does not exist (and is not a hub id such as 'Qwen/Qwen2.5-VL-7B-Instruct')"
    )


def _processor_chat_template(source: str) -> str | None:
    """The chat template some repos keep beside the tokenizer (``chat_template.json``), if local."""
    candidate = os.path.join(source, "chat_template.json")
    if os.path.isfile(candidate):
        with open(candidate, encoding="utf-8") as f:
            template = json.load(f).get("chat_template")
        return template if isinstance(template, str) else None
    return None


def _model_type(source: str) -> str:
    if os.path.isdir(source) and not os.path.isfile(os.path.join(source, "config.json")):
        raise FileNotFoundError(f"{source} has no config.json: not a model checkpoint directory")
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(source)
    except OSError as err:
        raise OSError(f"could not read the model config of {source!r}: {err}") from err
    return str(config_dict.get("model_type"))


def _as_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype) or dtype == "auto":
        return dtype
    resolved = getattr(torch, dtype, None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto', a torch dtype or its name ('bfloat16')")
    return resolved


def _fix_generation_config(model: PreTrainedModel, processor: VLProcessor) -> None:
    """Stop at <|im_end|> and <|endoftext|>, and pad with the tokenizer's pad id, as Qwen's repos do."""
    generation_config = model.generation_config
    eos = generation_config.eos_token_id
    eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    for tid in (processor.im_end_id, processor.endoftext_id):
        if tid not in eos_ids:
            eos_ids.append(tid)
    generation_config.eos_token_id = eos_ids
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = processor.pad_token_id


def load_model(
    path_or_id: str | os.PathLike[str],
    *,
    dtype: torch.dtype | str = "auto",
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
) -> tuple[PreTrainedModel, VLProcessor]:
    """Load a Qwen2.5-VL (or Qwen2-VL) checkpoint and its processor from a local directory or a hub
    id (hub only where reachable). The model is returned in eval mode on ``device``."""
    source = _resolve_source(path_or_id)
    model_type = _model_type(source)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(
            f"{source} holds a {model_type!r} model; expected one of {', '.join(SUPPORTED_MODEL_TYPES)}"
        )
    processor = VLProcessor.from_pretrained(source)
    kwargs: dict[str, Any] = {"dtype": _as_dtype(dtype)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForImageTextToText.from_pretrained(source, **kwargs)
    model.to(device)  # type: ignore[arg-type]  # transformers' wrapper of .to hides nn.Module's signature
    model.eval()
    _fix_generation_config(model, processor)
    return model, processor
