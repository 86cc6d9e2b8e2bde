"""Conversation → model inputs: token ids, loss masks, vision inputs, batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pixelreasoner.protocol.turns import execute_turn
from pixelreasoner.render import IMAGE, TEXT, VIDEO, Renderer
from pixelreasoner.trajectory import Conversation, ImagePart, TurnKind, VideoPart
from pixelreasoner.vision.budget import tiny
from pixelreasoner.vision.images import ImageLoadError
from pixelreasoner.vision.ops import VisualContext
from pixelreasoner.vision.video import PatchSpec, encode_video, patchify_video

BUDGET = tiny()
WRONG_CALL = (
    'I will check the top left.\n<tool_call>\n{"name": "crop_image_normalized", '
    '"arguments": {"bbox_2d": [0.9, 0.9, 0.1, 0.1], "target_image": 1}}\n</tool_call>'
)
RIGHT_CALL = (
    "That failed; the box was inverted. Zoom on the red cell.\n"
    '<tool_call>\n{"name": "crop_image_normalized", '
    '"arguments": {"bbox_2d": [0.5, 0.5, 0.75, 0.75], "target_image": 1}}\n</tool_call>'
)
ANSWER = "The cell shows stripes, so the answer is \\boxed{B}."


def picture(width: int = 224, height: int = 168, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def self_correction_trace() -> Conversation:
    """Question → wrong crop (erroneous) → error observation → right crop → crop → answer."""
    image = BUDGET.inputs.resize(picture())
    context = VisualContext(images=[image])
    conversation = Conversation.from_question(
        "What texture is in the red cell?\n(A) dots\n(B) stripes", [image]
    )
    conversation.add_model_turn(WRONG_CALL, erroneous=True)
    failed = execute_turn(WRONG_CALL, context, BUDGET)
    assert failed is not None and failed.error is not None
    conversation.add_observation(failed)
    conversation.add_model_turn(RIGHT_CALL)
    crop = execute_turn(RIGHT_CALL, context, BUDGET)
    assert crop is not None and crop.ok
    conversation.add_observation(crop)
    context.add(crop)
    conversation.add_model_turn(ANSWER)
    return conversation


def test_loss_mask_token_by_token_on_a_self_correction_trace(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    renderer = Renderer(processor, BUDGET)
    conversation = self_correction_trace()
    seq = renderer.render(conversation)
    tok = processor.tokenizer
    kinds = [t.kind for t in conversation.turns]
    assert kinds == [
        TurnKind.PROMPT,
        TurnKind.PROMPT,
        TurnKind.ERRONEOUS,
        TurnKind.OBSERVATION,
        TurnKind.MODEL,
        TurnKind.OBSERVATION,
        TurnKind.MODEL,
    ]
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for turn, (start, end) in zip(conversation.turns, seq.turn_spans, strict=True):
        ids, mask = seq.input_ids[start:end], seq.loss_mask[start:end]
        if turn.kind is not TurnKind.MODEL:
            assert sum(mask) == 0, turn.kind
            continue
        # "<|im_start|>assistant\n" unlearned, then content + <|im_end|> learned, then "\n" unlearned
        assert ids[: len(header)] == header and mask[: len(header)] == [0] * len(header)
        assert mask[len(header) : -1] == [1] * (end - start - len(header) - 1)
        assert ids[-2] == processor.im_end_id and mask[-1] == 0
        assert tok.decode([i for i, m in zip(ids, mask, strict=True) if m]) == turn.text + "<|im_end|>"
    learned = tok.decode([i for i, m in zip(seq.input_ids, seq.loss_mask, strict=True) if m])
    assert learned == RIGHT_CALL + "<|im_end|>" + ANSWER + "<|im_end|>"
    # the erroneous call and the error observation are in the input, just not learned
    assert "Execution error" in tok.decode(seq.input_ids) and "[0.9, 0.9, 0.1, 0.1]" in tok.decode(
        seq.input_ids
    )


def test_ids_equal_whole_string_tokenization(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    renderer = Renderer(processor, BUDGET)
    conversation = self_correction_trace()
    seq = renderer.render(conversation, add_generation_prompt=True)
    text = Renderer.text(conversation, add_generation_prompt=True)
    pads = iter(t * h * w // 4 for t, h, w in seq.image_grid_thw)
    parts = text.split("<|image_pad|>")
    expanded = parts[0] + "".join("<|image_pad|>" * next(pads) + p for p in parts[1:])
    assert seq.input_ids == processor.tokenizer(expanded, add_special_tokens=False)["input_ids"]


def test_chat_template_agrees_with_renderer(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    conversation = self_correction_trace()
    via_jinja = processor.tokenizer.apply_chat_template(
        conversation.to_messages(), tokenize=False, add_generation_prompt=True
    )
    assert via_jinja == Renderer.text(conversation, add_generation_prompt=True)


def test_vision_inputs_match_tokens(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    seq = Renderer(processor, BUDGET).render(self_correction_trace())
    ids = np.array(seq.input_ids)
    types = np.array(seq.mm_token_type_ids)
    assert len(seq.image_grid_thw) == 2  # the question's image and the returned crop
    assert ((ids == processor.image_token_id) == (types == IMAGE)).all()
    assert (types == IMAGE).sum() == sum(t * h * w // 4 for t, h, w in seq.image_grid_thw)
    assert seq.pixel_values is not None
    assert seq.pixel_values.shape[0] == sum(t * h * w for t, h, w in seq.image_grid_thw)
    # the question image was resized into the tiny input budget
    width, height = BUDGET.inputs.target_size(224, 168)
    assert seq.image_grid_thw[0] == (1, height // 14, width // 14)


def test_sampled_token_ids_are_spliced_verbatim(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    renderer = Renderer(processor, BUDGET)
    tok = processor.tokenizer
    conversation = Conversation.from_question("Q?")
    # ids a sampler could produce that differ from re-tokenizing their text ("a" "b" instead of "ab")
    sampled = (
        tok("a", add_special_tokens=False)["input_ids"] + tok("b", add_special_tokens=False)["input_ids"]
    )
    conversation.add_model_turn("ab", token_ids=[*sampled, processor.im_end_id])
    seq = renderer.render(conversation)
    start, end = seq.turn_spans[-1]
    header = len(tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"])
    assert seq.input_ids[start + header : end - 1] == [*sampled, processor.im_end_id]
    assert seq.loss_mask[start + header : end - 1] == [1] * (len(sampled) + 1)
    # a turn cut off by the token limit gets an end-of-turn token that is not learned
    cut = Conversation.from_question("Q?")
    cut.add_model_turn("ab", token_ids=sampled)
    seq = renderer.render(cut)
    start, end = seq.turn_spans[-1]
    assert seq.input_ids[end - 2] == processor.im_end_id and seq.loss_mask[end - 2] == 0


def test_left_padded_batch_matches_single_sequences(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    renderer = Renderer(processor, BUDGET)
    convs = [
        self_correction_trace(),
        Conversation.from_question("Two pictures?", [picture(112, 112, 1), picture(168, 84, 2)]),
        Conversation.from_question("Only text?"),
    ]
    batch = renderer(convs, add_generation_prompt=True)
    assert (batch.attention_mask.sum(1) == torch.tensor([len(renderer.render(c, True)) for c in convs])).all()
    assert batch.attention_mask[:, -1].all() and not batch.attention_mask[2, 0]  # left padding
    with torch.no_grad():
        batched = model(**batch.model_kwargs()).logits
        for row, conv in enumerate(convs):
            single = renderer([conv], add_generation_prompt=True)
            logits = model(**single.model_kwargs()).logits[0]
            n = logits.shape[0]
            torch.testing.assert_close(batched[row, -n:], logits, atol=1e-4, rtol=1e-4)


def test_mm_token_type_ids_carry_the_3d_positions(tiny) -> None:  # type: ignore[no-untyped-def]
    """Regression guard for the silent trap: without mm_token_type_ids, transformers falls back to
    1-D positions and the logits move with no error. Our inputs always carry it."""
    model, processor = tiny
    batch = Renderer(processor, BUDGET)([self_correction_trace()])
    kwargs = batch.model_kwargs()
    assert "mm_token_type_ids" in kwargs
    with torch.no_grad():
        with_types = model(**kwargs).logits
        kwargs.pop("mm_token_type_ids")
        model.model.rope_deltas = None
        without = model(**kwargs).logits
    assert (with_types - without).abs().max() > 1e-4


def test_video_rendering(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    frames = tuple(picture(140, 112, seed=i) for i in range(5))
    conversation = Conversation.from_question("What happens?", video=VideoPart(frames=frames, fps=1.0))
    batch = Renderer(processor, BUDGET)([conversation])
    assert batch.video_grid_thw is not None and batch.pixel_values_videos is not None
    t, h, w = batch.video_grid_thw[0].tolist()
    assert t == 3  # 5 frames padded to 6, in temporal pairs
    types = batch.mm_token_type_ids[0]
    assert int((types == VIDEO).sum()) == t * h * w // 4
    assert ((batch.input_ids[0] == processor.video_token_id) == (types == VIDEO)).all()
    assert batch.second_per_grid_ts is not None and batch.second_per_grid_ts.tolist() == [2.0]  # tp / fps
    with torch.no_grad():
        assert torch.isfinite(model(**batch.model_kwargs()).logits).all()


def test_video_patches_match_the_image_processor_layout(tiny) -> None:  # type: ignore[no-untyped-def]
    """An image is a video of two identical frames: our patches must equal the processor's."""
    _, processor = tiny
    image = picture(196, 84, seed=3)
    spec = PatchSpec.from_image_processor(processor.image_processor)
    reference = processor.image_processor(images=[image], return_tensors="np")
    patches, grid = encode_video([image, image], BUDGET.processor, spec)
    assert grid == tuple(int(v) for v in reference["image_grid_thw"][0])
    np.testing.assert_allclose(patches, reference["pixel_values"], atol=1e-5)


def test_patchify_puts_the_temporal_pair_inside_each_patch() -> None:
    spec = PatchSpec()
    frames = np.zeros((2, 3, 28, 28), dtype=np.float32)
    frames[1] = 1.0  # second frame all ones
    patches, grid = patchify_video(frames, spec)
    assert grid == (1, 2, 2) and patches.shape == (4, 3 * 2 * 14 * 14)
    per_channel = patches.reshape(4, 3, 2, 14 * 14)  # [patch, C, tp, p*p]
    assert (per_channel[:, :, 0] == 0).all() and (per_channel[:, :, 1] == 1).all()


def test_images_by_path_and_broken_files(tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    renderer = Renderer(processor, BUDGET)
    good = tmp_path / "good.png"
    picture().save(good)
    seq = renderer.render(Conversation.from_question("Q", [ImagePart(path=str(good))]))
    width, height = BUDGET.inputs.target_size(224, 168)
    assert seq.image_grid_thw == [(1, height // 14, width // 14)]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(ImageLoadError, match=r"broken\.png"):
        renderer.render(Conversation.from_question("Q", [ImagePart(path=str(broken))]))


def test_text_types_are_zero_outside_vision_blocks(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    seq = Renderer(processor, BUDGET).render(Conversation.from_question("Only text"))
    assert set(seq.mm_token_type_ids) == {TEXT} and seq.pixel_values is None


def test_truncation_never_splits_an_image(tiny) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    renderer = Renderer(processor, BUDGET)
    seq = renderer.render(self_correction_trace())
    starts = [i for i, t in enumerate(seq.input_ids) if t == processor.vision_start_token_id]
    second = starts[1]  # the returned crop's block: <|vision_start|>, n pads, <|vision_end|>
    t, h, w = seq.image_grid_thw[1]
    for cut in range(second + 1, second + t * h * w // 4 + 2):  # every cut inside that block
        short = renderer.truncate(seq, cut)
        assert len(short) == second and short.input_ids == seq.input_ids[:second]
        assert len(short.image_grid_thw) == 1  # only the question's image is left
        t, h, w = short.image_grid_thw[0]
        assert short.pixel_values is not None and short.pixel_values.shape[0] == t * h * w
    assert renderer.truncate(seq, len(seq)) is seq
    whole = renderer.truncate(seq, starts[0] + 2)  # inside the first image: nothing of it stays
    assert len(whole) == starts[0] and whole.pixel_values is None and whole.image_grid_thw == []
