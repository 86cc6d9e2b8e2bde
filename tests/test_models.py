"""Tiny Qwen2.5-VL models (built from config, random init) and the checkpoint loader. CPU, offline."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers import (
    AutoModelForImageTextToText,
    AutoTokenizer,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)

from pixelreasoner.models.loading import VLProcessor, load_model
from pixelreasoner.models.tiny import (
    ADDED_TOKENS,
    PRESETS,
    SPECIAL_TOKENS,
    build_tiny_model,
    build_tokenizer,
    count_parameters,
    save_tiny_model,
    tiny_image_processor,
    train_tokenizer,
)

# Exact sizes at transformers 5.24 (tied embeddings counted once). A change here is a change of
# architecture or preset, not noise.
EXPECTED_PARAMETERS = {"tiny-1m": 930_752, "tiny-4m": 4_093_568}


@pytest.fixture(scope="module")
def tiny() -> tuple[torch.nn.Module, VLProcessor]:
    return build_tiny_model("tiny-1m", seed=0)


@pytest.fixture(scope="module")
def saved_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "tiny-1m", "tiny-1m", seed=0)


def _image(height: int = 100, width: int = 140) -> Image.Image:
    pixels = (np.arange(height * width * 3) * 37 % 251).astype(np.uint8).reshape(height, width, 3)
    return Image.fromarray(pixels)


def _image_inputs(processor: VLProcessor) -> dict[str, torch.Tensor]:
    """One image prompt built by hand: one <|image_pad|> per merged 2x2 patch group."""
    vision = processor.image_processor(images=[_image()], return_tensors="pt")
    grid = vision["image_grid_thw"]  # [1, 3] = (t, h, w) in patches
    n_pads = int(grid.prod()) // 4
    tok = processor.tokenizer
    ids = (
        tok.encode("<|im_start|>user\n<|vision_start|>")
        + [processor.image_token_id] * n_pads
        + tok.encode("<|vision_end|>hi<|im_end|>")
    )
    input_ids = torch.tensor([ids])  # [1, T]
    return {
        "input_ids": input_ids,
        "attention_mask": torch.ones_like(input_ids),
        # Without it transformers silently falls back to 1-D positions (see TOOLCHAIN traps).
        "mm_token_type_ids": (input_ids == processor.image_token_id).long(),
        "pixel_values": vision["pixel_values"],
        "image_grid_thw": grid,
    }


# ------------------------------------------------------------------------------------- tokenizer


@pytest.mark.parametrize("token", [*SPECIAL_TOKENS, *ADDED_TOKENS])
def test_special_and_tool_tokens_are_single_ids(tiny, token: str) -> None:
    tok = tiny[1].tokenizer
    assert tok.encode(token) == [tok.convert_tokens_to_ids(token)]
    assert tok.encode(f"a{token}b")[1:-1] == [tok.convert_tokens_to_ids(token)]


def test_processor_ids_and_special_flags(tiny) -> None:
    _, processor = tiny
    tok = processor.tokenizer
    ids = {
        processor.im_start_id,
        processor.im_end_id,
        processor.image_token_id,
        processor.video_token_id,
        processor.vision_start_token_id,
        processor.vision_end_token_id,
        processor.pad_token_id,
    }
    assert len(ids) == 7
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # As in Qwen2.5: control tokens are special, tool-call tags are not (they survive skipping).
    text = "<|im_start|>assistant\n<tool_call>\n{}\n</tool_call><|im_end|>"
    assert (
        tok.decode(tok.encode(text), skip_special_tokens=True) == "assistant\n<tool_call>\n{}\n</tool_call>"
    )


@pytest.mark.parametrize(
    "text",
    [
        "",
        " ",
        "\n\n\t  \r\n",
        "Hello, world!",
        "  leading and trailing spaces  ",
        "emoji 😀👍🏽 and family 👨‍👩‍👧",
        "中文, русский, العربية, ελληνικά, 日本語のテキスト",
        '{"name": "crop_image_normalized",'
        ' "arguments": {"bbox_2d": [0.25, 0.5, 0.75, 1.0], "target_image": 1}}\n'
        '{"name": "select_frames", "arguments": {"target_frames": [1, 5, 9]}}',
        "\\boxed{(A)} 3.14159 1e-5 -0.0",
        "\x00\x01\x7f zero-width\u200b joiner\u200d",
    ],
)
def test_roundtrip_examples(tiny, text: str) -> None:
    tok = tiny[1].tokenizer
    assert tok.decode(tok.encode(text)) == text


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=60))
def test_roundtrip_any_unicode(text: str) -> None:
    tok = _shared_tokenizer()
    # Like Qwen's own tokenizer, text is NFC-normalised before encoding; NFC text round-trips.
    assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


_TOKENIZER_CACHE: list = []


def _shared_tokenizer():
    # Hypothesis tests cannot take function-scoped fixtures; build the tokenizer once per module.
    if not _TOKENIZER_CACHE:
        _TOKENIZER_CACHE.append(build_tokenizer(vocab_size=1024))
    return _TOKENIZER_CACHE[0]


def test_tokenizer_is_deterministic_and_fills_the_vocab() -> None:
    a = build_tokenizer(["a task string about stripes"], vocab_size=1024)
    b = build_tokenizer(["a task string about stripes"], vocab_size=1024)
    assert a.get_vocab() == b.get_vocab()
    assert a.backend_tokenizer.to_str() == b.backend_tokenizer.to_str()
    assert len(a) == 1024
    assert len(build_tokenizer(vocab_size=2048)) == 2048


def test_extra_corpus_shapes_the_vocab() -> None:
    word = "zqxjvkwpfy"
    base = build_tokenizer(vocab_size=1024)
    tuned = build_tokenizer([f"{word} {word}"] * 50, vocab_size=1024)
    assert len(tuned.encode(f" {word}")) == 1 < len(base.encode(f" {word}"))


def test_train_tokenizer_rejects_tiny_vocab() -> None:
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["abc"], vocab_size=100)


def test_chat_template_renders_qwen_format(tiny) -> None:
    system, question = "You are a helpful assistant.\n\n# Tools", "What is in the top left?\n(A) red"
    messages = [
        {"role": "system", "content": system},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
    ]
    rendered = tiny[1].tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert rendered == (
        "<|im_start|>system\n" + system + "<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>" + question + "<|im_end|>\n<|im_start|>assistant\n"
    )


# ----------------------------------------------------------------------------------------- models


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_presets_build_with_expected_sizes(preset: str) -> None:
    model, processor = build_tiny_model(preset)
    n = count_parameters(model)
    low, high = {"tiny-1m": (0.7e6, 1.5e6), "tiny-4m": (3e6, 6e6)}[preset]
    assert low <= n <= high
    assert n == EXPECTED_PARAMETERS[preset]
    config = model.config
    assert len(processor.tokenizer) == config.text_config.vocab_size == PRESETS[preset].vocab_size
    assert config.image_token_id == processor.image_token_id
    assert config.video_token_id == processor.video_token_id
    assert config.vision_start_token_id == processor.vision_start_token_id
    assert config.vision_end_token_id == processor.vision_end_token_id
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    head_dim = config.text_config.hidden_size // config.text_config.num_attention_heads
    assert 2 * sum(config.text_config.rope_parameters["mrope_section"]) == head_dim
    assert model.generation_config.eos_token_id == [processor.im_end_id, processor.token_id("<|endoftext|>")]
    assert model.generation_config.pad_token_id == processor.pad_token_id
    assert not model.training


@pytest.mark.parametrize(
    ("shape", "published", "tied"),
    # Parameter counts the released checkpoints report (3.75B and 8.29B).
    [("qwen2.5-vl-3b", 3_754_622_976, True), ("qwen2.5-vl-7b", 8_292_166_656, False)],
)
def test_full_shapes_have_the_published_parameter_counts(shape: str, published: int, tied: bool) -> None:
    model, processor = build_tiny_model(shape, device="meta", dtype=torch.bfloat16)
    assert count_parameters(model) == published
    assert {p.device.type for p in model.parameters()} == {"meta"}
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert torch.get_default_dtype() == torch.float32  # restored
    text = model.config.text_config
    assert text.tie_word_embeddings is tied
    assert 2 * sum(text.rope_parameters["mrope_section"]) == text.hidden_size // text.num_attention_heads
    assert model.config.vision_config.out_hidden_size == text.hidden_size
    assert model.config.image_token_id == processor.image_token_id


def test_unknown_preset_is_rejected() -> None:
    with pytest.raises(ValueError, match="tiny-1m"):
        build_tiny_model("tiny-1g")


def test_build_is_deterministic_by_seed() -> None:
    rng_before = torch.get_rng_state()
    a, pa = build_tiny_model("tiny-1m", seed=3)
    b, pb = build_tiny_model("tiny-1m", seed=3)
    c, _ = build_tiny_model("tiny-1m", seed=4)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is left alone
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
    assert pa.tokenizer.get_vocab() == pb.tokenizer.get_vocab()


def test_image_forward_gives_finite_logits(tiny) -> None:
    model, processor = tiny
    inputs = _image_inputs(processor)
    with torch.no_grad():
        logits = model(**inputs).logits
    assert logits.shape == (1, inputs["input_ids"].shape[1], model.config.text_config.vocab_size)
    assert torch.isfinite(logits).all()


def test_generate_text_only(tiny) -> None:
    model, processor = tiny
    prompt = processor.tokenizer(
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt"
    )
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[0] == 1
    assert prompt["input_ids"].shape[1] < out.shape[1] <= prompt["input_ids"].shape[1] + 5


# ---------------------------------------------------------------------------------------- loading


def test_save_then_load_model_gives_identical_logits(tiny, saved_dir: Path) -> None:
    model, processor = tiny  # same preset and seed as saved_dir
    loaded, loaded_processor = load_model(saved_dir)
    assert not loaded.training
    assert loaded.dtype == torch.float32
    assert loaded_processor.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    assert loaded_processor.tokenizer.chat_template == processor.tokenizer.chat_template
    assert loaded_processor.image_processor.to_dict() == processor.image_processor.to_dict()
    assert loaded.generation_config.eos_token_id == [processor.im_end_id, processor.pad_token_id]
    inputs = _image_inputs(processor)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, loaded(**inputs).logits)


def test_saved_dir_loads_with_plain_transformers(tiny, saved_dir: Path) -> None:
    model, processor = tiny
    plain = AutoModelForImageTextToText.from_pretrained(saved_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(saved_dir)
    text = "<|im_start|>user\n<tool_call>\nhello 😀<|im_end|>"
    assert tokenizer.encode(text) == processor.tokenizer.encode(text)
    assert tokenizer.chat_template == processor.tokenizer.chat_template
    assert (saved_dir / "preprocessor_config.json").is_file()
    inputs = _image_inputs(processor)
    with torch.no_grad():
        assert torch.equal(model(**inputs).logits, plain(**inputs).logits)


def test_load_model_casts_dtype(saved_dir: Path) -> None:
    model, _ = load_model(saved_dir, dtype="bfloat16")
    assert model.dtype == torch.bfloat16


def test_processor_loads_a_real_qwen_preprocessor_config(tmp_path: Path) -> None:
    """Real Qwen2.5-VL repos name the torchvision class and give min/max pixels, not `size`; the
    chat template may sit in chat_template.json instead of the tokenizer files."""
    tokenizer = build_tokenizer(vocab_size=1024)
    tokenizer.chat_template = None
    tokenizer.save_pretrained(tmp_path)
    (tmp_path / "chat_template.json").write_text(json.dumps({"chat_template": "{{ 'T' }}"}))
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "min_pixels": 3136,
                "max_pixels": 12845056,
                "patch_size": 14,
                "temporal_patch_size": 2,
                "merge_size": 2,
                "image_mean": [0.48145466, 0.4578275, 0.40821073],
                "image_std": [0.26862954, 0.26130258, 0.27577711],
                "image_processor_type": "Qwen2VLImageProcessor",
                "processor_class": "Qwen2_5_VLProcessor",
            }
        )
    )
    loaded = VLProcessor.from_pretrained(tmp_path)
    assert loaded.image_processor.size.shortest_edge == 3136
    assert loaded.image_processor.size.longest_edge == 12845056
    assert loaded.image_processor.merge_size == 2
    assert loaded.tokenizer.chat_template == "{{ 'T' }}"
    grid = loaded.image_processor(images=[_image(280, 560)], return_tensors="pt")["image_grid_thw"]
    assert grid.tolist() == [[1, 20, 40]]


def test_load_model_accepts_qwen2_vl(tmp_path: Path) -> None:
    _, processor = build_tiny_model("tiny-1m")
    tok = processor.tokenizer
    config = Qwen2VLConfig(
        text_config={
            "vocab_size": len(tok),
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [4, 6, 6]},
        },
        vision_config={"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64},
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        vision_start_token_id=processor.vision_start_token_id,
        vision_end_token_id=processor.vision_end_token_id,
    )
    Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path)  # no generation eos list saved
    processor.save_pretrained(tmp_path)
    model, _ = load_model(tmp_path)
    assert model.config.model_type == "qwen2_vl"
    assert processor.im_end_id in model.generation_config.eos_token_id
    assert processor.pad_token_id in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == processor.pad_token_id


def test_load_model_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-checkpoint"
    with pytest.raises(FileNotFoundError, match="no-such-checkpoint"):
        load_model(missing)
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_model("./does-not-exist/at/all")


def test_load_model_rejects_a_text_only_model(tmp_path: Path) -> None:
    config = Qwen2Config(
        vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    )
    Qwen2ForCausalLM(config).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="'qwen2'"):
        load_model(tmp_path)


def test_load_model_without_processor_files(saved_dir: Path, tmp_path: Path) -> None:
    model, _ = load_model(saved_dir)
    model.save_pretrained(tmp_path)  # weights and config, no tokenizer or preprocessor_config.json
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        load_model(tmp_path)
    build_tokenizer(vocab_size=1024).save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"preprocessor_config\.json"):
        load_model(tmp_path)
    tiny_image_processor(PRESETS["tiny-1m"]).save_pretrained(tmp_path)
    assert load_model(tmp_path)[0].config.model_type == "qwen2_5_vl"


def test_text_is_nfc_normalised_like_qwen(tiny) -> None:
    """Qwen's tokenizer NFC-normalises text, so a decomposed accent decodes composed."""
    tok = tiny[1].tokenizer
    assert tok.decode(tok.encode("cafe\u0301")) == "caf\u00e9"
