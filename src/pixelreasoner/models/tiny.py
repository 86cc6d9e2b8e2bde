"""Tiny Qwen2.5-VL models built from a config with random weights, for CPU tests and the offline default.

No model hub is reachable here, so every model the tests and the tiny CPU recipe use is built in
process: a byte-level BPE tokenizer trained with the ``tokenizers`` library the way Qwen2's is
(same pre-tokenizer regex, same 256-byte alphabet, Qwen's special tokens), and a
``Qwen2_5_VLForConditionalGeneration`` with the real architecture at toy sizes. The result is saved
in the same layout as a real Qwen2.5-VL repository, so :func:`pixelreasoner.models.loading.load_model`
and plain transformers load it exactly as they would load ``Qwen/Qwen2.5-VL-7B-Instruct``.

Everything is deterministic: the same preset, seed and corpus give the same tokenizer and weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX, Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from pixelreasoner.models.loading import VLProcessor, single_token_id
from pixelreasoner.protocol.chat_template import CHAT_TEMPLATE
from pixelreasoner.protocol.prompts import question_text
from pixelreasoner.protocol.tools import system_message
from pixelreasoner.vision.ops import crop_text, error_text, frames_text

__all__ = [
    "ADDED_TOKENS",
    "DEFAULT_CORPUS",
    "FULL_SHAPES",
    "PRESETS",
    "SPECIAL_TOKENS",
    "TinyPreset",
    "build_tiny_model",
    "build_tokenizer",
    "count_parameters",
    "save_tiny_model",
    "tiny_config",
    "tiny_image_processor",
    "train_tokenizer",
]

# Qwen2.5's control tokens, in Qwen's id order (they sit after the BPE vocabulary, as in Qwen).
SPECIAL_TOKENS: tuple[str, ...] = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# Single tokens that are *not* special in Qwen2.5: they survive ``skip_special_tokens=True``.
ADDED_TOKENS: tuple[str, ...] = ("<tool_call>", "</tool_call>")


# ----------------------------------------------------------------------------------------------
# Built-in corpus
# ----------------------------------------------------------------------------------------------

_PROSE = """\
You may call one or more functions to assist with the user query.
You are provided with function signatures within <tools></tools> XML tags.
For each function call, return a json object with function name and arguments within \
<tool_call></tool_call> XML tags.
Guidelines: Understand the given visual information and the user query. Determine if it is \
beneficial to employ the given visual operations (tools). For a video, we can look closer by \
`select_frames`. For an image, we can look closer by `crop_image`. Reason with the visual \
information step by step, and put your final answer within \\boxed{}.
Zoom in on the image based on the bounding box coordinates. It is useful when the object or text \
in the image is too small to be seen.
Coordinates for bounding box of the area you want to zoom in. Values should be within [0.0,1.0].
The index of the image to crop. Index from 1 to the number of images. Choose 1 to operate on \
original image.
Select frames from a video. List of frame indices to select from the video (no more than 8 frames \
in total). Frame index from 1 to 16.
Here is the cropped image (Image Size: 476x476):
Here are the selected frames (Frame Size: 448x252):
Answer with the option's letter from the given choices directly.
The answer is small in the image. I will zoom in to look closer.
The text in the corner is hard to read, so I will crop the top right region of the image.
Now I can see it clearly. The sign says the shop is open, so the answer is \\boxed{B}.
After looking at the selected frames, the person picks up the cup and walks to the door.
Let me think step by step. First, I count the objects. There are three red balls and two blue \
boxes, so there are five objects in total. Therefore the answer is \\boxed{5}.
The crop shows a striped pattern with thin vertical lines, while the other cell has a checked \
pattern with dots and diagonal stripes.
Which texture fills the marked cell? Which color is the square in the lower left quarter? \
Where is the target? What is written on the label? How many people are standing near the car?
Error: the bounding box is invalid because its width is zero. Please try again with a valid box.
Error: target_image is out of range. There is only one image.
Error: at most 8 frames can be selected.
I could not find the object in this region, so I will look at another part of the image.
The image shows a kitchen with a table, two chairs, a window and a plant on the shelf.
A man is riding a bicycle along the street while a woman is holding an umbrella.
The chart shows that sales increased from 2019 to 2021 and then decreased slightly in 2022.
The clock on the wall reads ten past seven. The bus number is 42 and it goes to the station.
"""

_WORDS = """\
the of and to in is was for on that with as by at from his her their it this be are were have has
had not but what all when we there can an your which said they one you do each how if will up other
about out many then them these so some would make like him into time look two more write go see
number no way could people my than first water been call who oil its now find long down day did get
come made may part over new sound take only little work know place year live me back give most very
after thing our just name good sentence man think say great where help through much before line right
too mean old any same tell boy follow came want show also around form three small set put end does
another well large must big even such because turn here why ask went men read need land different home
us move try kind hand picture again change off play spell air away animal house point page letter
mother answer found study still learn should world high every near add food between own below country
plant last school father keep tree never start city earth eye light thought head under story saw left
few while along might close something seem next hard open example begin life always those both paper
together got group often run important until children side feet car mile night walk white sea began
grow took river four carry state once book hear stop without second later miss idea enough eat face
watch far really almost let above girl sometimes mountain cut young talk soon list song being leave
family red blue green yellow orange purple pink brown black gray grey color colour shape circle square
triangle rectangle star line dot stripe striped checked checkerboard texture pattern diagonal vertical
horizontal dark bright top bottom middle center centre corner edge border region area cell grid
quarter half whole object person woman child dog cat bird horse cow sheep table chair bed sofa window
door wall floor roof road street sign shop store market bank station train bus truck bicycle boat
plane ball box bag cup bottle glass plate bowl knife fork spoon phone computer screen keyboard clock
watch camera umbrella hat shirt coat shoe dress left right above below inside outside behind front
beside between zoom crop frame frames video image images photo select selected cropped bounding
coordinates index target original option options choice choices letter correct wrong because
therefore however clearly visible tiny hidden detail details closer view global local step reason
reasoning final answer question count counting how many which what where who when why yes no none true
false first second third fourth fifth sixth seventh eighth ninth tenth zero one two three four five
six seven eight nine ten eleven twelve hundred thousand percent degree degrees minute minutes hour
hours second seconds morning evening today tomorrow yesterday sunny cloudy rainy snow wind weather
"""


def _tool_call(name: str, arguments: dict[str, object]) -> str:
    return "<tool_call>\n" + json.dumps({"name": name, "arguments": arguments}) + "\n</tool_call>"


def _default_corpus() -> tuple[str, ...]:
    # The protocol's own strings, so prompts and observations tokenize compactly.
    texts: list[str] = [
        system_message(with_tools=True),
        question_text("", "vcot"),
        question_text("", "notool"),
        crop_text(224, 168),
        frames_text(112, 84, 1, 4),
        error_text("The cropped region is too small."),
        _PROSE,
    ]
    words = _WORDS.split()
    # Each word both at a line start and after a space: byte-level BPE sees " word" and "word" as
    # different pre-tokens, and both occur in real prompts.
    texts += [" ".join(words[i : i + 12]) for i in range(0, len(words), 12)]
    texts += [w.capitalize() + "." for w in words]
    # Boxes on the halves/quarters/eighths grid and a few two-decimal values: the tiny tasks' boxes.
    edges = [i / 8 for i in range(9)] + [0.1, 0.2, 0.3, 0.33, 0.42, 0.58, 0.6, 0.67, 0.7, 0.8, 0.9]
    for k, x0 in enumerate(edges):
        for x1 in edges[k::3]:
            box = [round(x0, 3), round(x0 / 2, 3), round(x1, 3), round((1 + x1) / 2, 3)]
            texts.append(_tool_call("crop_image_normalized", {"bbox_2d": box, "target_image": 1 + k % 3}))
    for start in range(1, 16):
        chosen = list(range(start, min(17, start + 1 + start % 8), 2))
        texts.append(_tool_call("select_frames", {"target_frames": chosen}))
    texts += [f"\\boxed{{{a}}}" for a in ("A", "B", "C", "D", "yes", "no", *map(str, range(20)))]
    texts += [f"({a}) {c}" for a, c in zip("ABCD", ("red", "blue", "green", "yellow"), strict=True)]
    texts += [f"{i} {i / 100:.2f} {i * 7 % 1000}" for i in range(101)]
    texts += ["Hello, world! (1) [2] {3} <4> 'five' \"six\" 7.5% $8 #9 @10 & | ~ ^ * + - = / \\ _ ; : ?"]
    return tuple(texts)


DEFAULT_CORPUS: tuple[str, ...] = _default_corpus()
"""Built-in English-ish corpus: prompt words, tool calls, numbers, boxed answers, options."""


# ----------------------------------------------------------------------------------------------
# Tokenizer
# ----------------------------------------------------------------------------------------------


def _qwen2_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    # Same as Qwen2Tokenizer: isolate pieces with Qwen2's regex, then map bytes to printable chars.
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def train_tokenizer(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """Train a Qwen2-style byte-level BPE on ``corpus``; ``vocab_size`` counts the added tokens too.

    The 256-byte initial alphabet makes every string encodable. Like Qwen's tokenizer, text is NFC
    normalised first, so ``decode(encode(s)) == unicodedata.normalize("NFC", s)`` (equal to ``s``
    for NFC text). If the corpus is too small to reach ``vocab_size``, the vocabulary is smaller.
    """
    added = (*SPECIAL_TOKENS, *ADDED_TOKENS)
    bpe_size = vocab_size - len(added)
    if bpe_size < 256:
        raise ValueError(f"vocab_size must be at least {256 + len(added)} (256 bytes + added tokens)")
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = _qwen2_pre_tokenizer()
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size,
        min_frequency=0,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    backend.train_from_iterator(list(corpus), trainer=trainer)
    model_state = json.loads(backend.to_str())["model"]
    vocab: dict[str, int] = dict(model_state["vocab"])
    merges = [(a, b) for a, b in model_state["merges"]]  # Qwen2Tokenizer rejects "a b" strings
    for token in added:  # after the BPE ids, in Qwen's order
        vocab[token] = len(vocab)

    # Qwen2Tokenizer's annotations say merges are strings and unk_token a string; at runtime it
    # needs (left, right) pairs and Qwen's real tokenizer has no unk token.
    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,  # type: ignore[arg-type]
        unk_token=None,  # type: ignore[arg-type]
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens=[t for t in SPECIAL_TOKENS if t not in ("<|im_end|>", "<|endoftext|>")],
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ADDED_TOKENS])
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.model_max_length = 32768
    for token in added:
        if tokenizer.convert_tokens_to_ids(token) != vocab[token]:
            raise RuntimeError(f"added token {token!r} did not keep its id {vocab[token]}")
    return tokenizer


def build_tokenizer(extra_corpus: Iterable[str] = (), vocab_size: int = 1024) -> PreTrainedTokenizerBase:
    """The tiny models' tokenizer: trained on :data:`DEFAULT_CORPUS` plus ``extra_corpus`` (task strings)."""
    return train_tokenizer([*DEFAULT_CORPUS, *extra_corpus], vocab_size)


# ----------------------------------------------------------------------------------------------
# Presets and model
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyPreset:
    """Sizes of a tiny Qwen2.5-VL. Vision geometry (patch 14, merge 2, temporal 2) matches the real one."""

    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    intermediate_size: int
    vision_depth: int
    vision_hidden_size: int
    vision_num_heads: int
    vision_intermediate_size: int
    fullatt_block_indexes: tuple[int, ...]
    mrope_section: tuple[int, int, int]  # temporal, height, width rotary pairs; sums to head_dim / 2
    patch_size: int = 14
    spatial_merge_size: int = 2
    temporal_patch_size: int = 2
    window_size: int = 112  # vision window attention, in pixels (112 / 14 / 2 = 4 merged tokens)
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads or self.num_heads % self.num_kv_heads:
            raise ValueError("hidden_size must divide by num_heads, and num_heads by num_kv_heads")
        if 2 * sum(self.mrope_section) != self.head_dim:
            raise ValueError(
                f"mrope_section {self.mrope_section} must sum to head_dim/2 = {self.head_dim // 2}"
            )
        if self.vision_hidden_size % self.vision_num_heads:
            raise ValueError("vision_hidden_size must divide by vision_num_heads")
        if any(not 0 <= i < self.vision_depth for i in self.fullatt_block_indexes):
            raise ValueError(
                f"fullatt_block_indexes {self.fullatt_block_indexes} must be < {self.vision_depth}"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


PRESETS: dict[str, TinyPreset] = {
    # 930,752 parameters. The MLPs are 4x wide (not 2x) to bring the count near 1M.
    "tiny-1m": TinyPreset(
        vocab_size=1024,
        hidden_size=128,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=512,
        vision_depth=2,
        vision_hidden_size=64,
        vision_num_heads=2,
        vision_intermediate_size=256,
        fullatt_block_indexes=(1,),
        mrope_section=(4, 6, 6),
    ),
    # 4,093,568 parameters.
    "tiny-4m": TinyPreset(
        vocab_size=2048,
        hidden_size=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=4,
        intermediate_size=512,
        vision_depth=4,
        vision_hidden_size=128,
        vision_num_heads=4,
        vision_intermediate_size=256,
        fullatt_block_indexes=(1, 3),
        mrope_section=(4, 6, 6),
    ),
}


# The published Qwen2.5-VL sizes (the checkpoints' config.json), for random-weight runs at real
# shape: benchmarks of memory and speed on a GPU (bench/gpu_step.py), never for learning. The
# vision tower is the same in both. Built with the tiny tokenizer, the vocabulary rows beyond it
# exist (so memory and the LM head's cost are real) but are never indexed.
_QWEN25_VL_VISION = {
    "vision_depth": 32,
    "vision_hidden_size": 1280,
    "vision_num_heads": 16,
    "vision_intermediate_size": 3420,
    "fullatt_block_indexes": (7, 15, 23, 31),
    "mrope_section": (16, 24, 24),
}
FULL_SHAPES: dict[str, TinyPreset] = {
    "qwen2.5-vl-3b": TinyPreset(
        vocab_size=151936,
        hidden_size=2048,
        num_layers=36,
        num_heads=16,
        num_kv_heads=2,
        intermediate_size=11008,
        tie_word_embeddings=True,
        **_QWEN25_VL_VISION,  # type: ignore[arg-type]
    ),
    "qwen2.5-vl-7b": TinyPreset(
        vocab_size=152064,
        hidden_size=3584,
        num_layers=28,
        num_heads=28,
        num_kv_heads=4,
        intermediate_size=18944,
        tie_word_embeddings=False,
        **_QWEN25_VL_VISION,  # type: ignore[arg-type]
    ),
}


def _preset(name: str) -> TinyPreset:
    if name in PRESETS:
        return PRESETS[name]
    if name in FULL_SHAPES:
        return FULL_SHAPES[name]
    raise ValueError(f"unknown model preset {name!r}; choose from {sorted(PRESETS) + sorted(FULL_SHAPES)}")


def tiny_config(preset: TinyPreset, tokenizer: PreTrainedTokenizerBase) -> Qwen2_5_VLConfig:
    """A Qwen2.5-VL config at ``preset`` sizes whose token ids are ``tokenizer``'s."""
    if len(tokenizer) > preset.vocab_size:
        raise ValueError(f"tokenizer has {len(tokenizer)} tokens, more than vocab_size {preset.vocab_size}")

    def tid(token: str) -> int:
        return single_token_id(tokenizer, token)

    text_config = {
        "vocab_size": preset.vocab_size,
        "hidden_size": preset.hidden_size,
        "intermediate_size": preset.intermediate_size,
        "num_hidden_layers": preset.num_layers,
        "num_attention_heads": preset.num_heads,
        "num_key_value_heads": preset.num_kv_heads,
        "max_position_embeddings": preset.max_position_embeddings,
        "rope_parameters": {
            "rope_type": "default",
            "rope_theta": preset.rope_theta,
            "mrope_section": list(preset.mrope_section),
        },
        "bos_token_id": tid("<|endoftext|>"),
        "eos_token_id": tid("<|im_end|>"),
        "pad_token_id": tid("<|endoftext|>"),
        "tie_word_embeddings": preset.tie_word_embeddings,
    }
    vision_config = {
        "depth": preset.vision_depth,
        "hidden_size": preset.vision_hidden_size,
        "num_heads": preset.vision_num_heads,
        "intermediate_size": preset.vision_intermediate_size,
        "out_hidden_size": preset.hidden_size,  # merger output feeds the LM's embedding space
        "fullatt_block_indexes": list(preset.fullatt_block_indexes),
        "patch_size": preset.patch_size,
        "spatial_merge_size": preset.spatial_merge_size,
        "temporal_patch_size": preset.temporal_patch_size,
        "window_size": preset.window_size,
        "tokens_per_second": 2,  # as in the released Qwen2.5-VL configs
    }
    return Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=tid("<|image_pad|>"),
        video_token_id=tid("<|video_pad|>"),
        vision_start_token_id=tid("<|vision_start|>"),
        vision_end_token_id=tid("<|vision_end|>"),
        tie_word_embeddings=preset.tie_word_embeddings,
    )


def tiny_image_processor(preset: TinyPreset) -> Qwen2VLImageProcessorPil:
    """PIL image processor with the preset's patch geometry and a small pixel budget (4 to 1024 tokens)."""
    unit = preset.patch_size * preset.spatial_merge_size  # 28 px: one merged token
    return Qwen2VLImageProcessorPil(
        patch_size=preset.patch_size,
        merge_size=preset.spatial_merge_size,
        temporal_patch_size=preset.temporal_patch_size,
        size={"shortest_edge": 4 * unit * unit, "longest_edge": 1024 * unit * unit},
    )


def build_tiny_model(
    preset: str = "tiny-1m",
    *,
    seed: int = 0,
    extra_corpus: Iterable[str] = (),
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> tuple[PreTrainedModel, VLProcessor]:
    """Build a randomly initialised Qwen2.5-VL and its processor (eval mode; fp32 on CPU by default).

    ``preset`` is a tiny preset (:data:`PRESETS`) or a published shape (:data:`FULL_SHAPES`), whose
    weights are then created directly on ``device`` in ``dtype``. Deterministic on CPU: the same
    ``preset``, ``seed`` and ``extra_corpus`` give identical weights and tokenizer. The CPU RNG
    (and the target GPU's) is left as it was; other GPUs' generators are reseeded.
    """
    sizes = _preset(preset)
    # The tokenizer never needs more than the tiny corpus fills; a published vocabulary size
    # would only make BPE training try for merges the corpus does not have.
    tokenizer = build_tokenizer(extra_corpus, vocab_size=min(sizes.vocab_size, 4096))
    processor = VLProcessor(tokenizer=tokenizer, image_processor=tiny_image_processor(sizes))
    config = tiny_config(sizes, tokenizer)
    target = torch.device(device)
    # The CPU generator and the target GPU's are restored afterwards. Forking every GPU's would
    # open a CUDA context on each (costly under DDP), so other GPUs' generators are reseeded.
    with torch.random.fork_rng(devices=[target] if target.type == "cuda" else []):
        torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with target:
                model = Qwen2_5_VLForConditionalGeneration(config)
        finally:
            torch.set_default_dtype(previous)
    model.generation_config = GenerationConfig(
        bos_token_id=processor.endoftext_id,
        eos_token_id=[processor.im_end_id, processor.endoftext_id],
        pad_token_id=processor.pad_token_id,
    )
    model.eval()
    return model, processor


def save_tiny_model(
    out_dir: str | os.PathLike[str],
    preset: str = "tiny-1m",
    seed: int = 0,
    extra_corpus: Iterable[str] = (),
) -> Path:
    """Build a tiny model; save model + processor to ``out_dir`` in the layout of a real Qwen2.5-VL repo."""
    out = Path(out_dir)
    model, processor = build_tiny_model(preset, seed=seed, extra_corpus=extra_corpus)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())
