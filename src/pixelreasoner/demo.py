"""The smallest end-to-end run of the protocol, on the embedded tiny default.

It builds (or reuses) a tiny Qwen2.5-VL, draws a test image, asks a question in the released
``vcot`` format, lets the untrained model generate one turn, executes a zoom-in tool call (the
model's own if it happened to write a valid one, else a scripted one) and renders the two-turn
conversation back into model inputs with its loss mask. Everything is written to one directory:
the model, the images and a JSON record of the conversation.

The model is randomly initialised, so its text is noise; this run shows the plumbing, not
learning (later stages train it).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from pixelreasoner.models.loading import load_model
from pixelreasoner.models.tiny import save_tiny_model
from pixelreasoner.protocol.turns import execute_call, execute_turn, parse_tool_call
from pixelreasoner.render import Renderer
from pixelreasoner.trajectory import Conversation, ImagePart
from pixelreasoner.vision.budget import PixelBudget, tiny
from pixelreasoner.vision.ops import VisualContext

QUESTION = "What digit is written inside the red square?"
SCRIPTED_CALL = (
    "The square is small. I will zoom in to read it.\n\n<tool_call>\n"
    '{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0.5, 0.5, 0.75, 0.75], "target_image": 1}}\n'
    "</tool_call>"
)


def demo_image(size: int = 448) -> Image.Image:
    """A white canvas with a red-framed cell in the lower right that holds a small digit."""
    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    cell = size // 4
    x0, y0 = 2 * cell, 2 * cell
    draw.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), outline=(220, 30, 30), width=6)
    draw.text((x0 + cell // 2 - 3, y0 + cell // 2 - 6), "7", fill="black")
    return image


@dataclass
class DemoReport:
    out_dir: Path
    generated: str
    used_model_call: bool
    observation: str
    tokens: int
    learned_tokens: int
    image_tokens: int
    loss: float
    seconds: float


def run_demo(
    out_dir: Path, preset: str = "tiny-1m", seed: int = 0, budget: PixelBudget | None = None
) -> DemoReport:
    """Run the demo; returns what happened (also written to ``out_dir/conversation.json``)."""
    start = time.perf_counter()
    budget = budget or tiny()
    torch.manual_seed(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_dir = out_dir / "model"
    if not (model_dir / "config.json").exists():
        save_tiny_model(model_dir, preset=preset, seed=seed)
    model, processor = load_model(model_dir, dtype=torch.float32)
    renderer = Renderer(processor, budget)

    image = demo_image()
    image.save(out_dir / "question.png")
    context = VisualContext.for_query([image], budget=budget)
    conversation = Conversation.from_question(QUESTION, [image])

    batch = renderer([conversation], add_generation_prompt=True)
    with torch.no_grad():
        # mypy reads `generate` through nn.Module.__getattr__ (a Tensor); it is GenerationMixin's.
        output = model.generate(  # type: ignore[operator]
            **batch.model_kwargs(),
            max_new_tokens=48,
            do_sample=False,
            suppress_tokens=[
                processor.image_token_id,
                processor.video_token_id,
                processor.vision_start_token_id,
                processor.vision_end_token_id,
            ],
        )
    new_ids = output[0, batch.input_ids.shape[1] :].tolist()
    generated = str(processor.tokenizer.decode(new_ids, skip_special_tokens=False))

    # An untrained model rarely writes a tool call; fall back to a scripted one to show the rest.
    turn_text, observation = generated, execute_turn(generated, context, budget)
    used_model_call = observation is not None
    if observation is None:
        turn_text, observation = SCRIPTED_CALL, execute_call(parse_tool_call(SCRIPTED_CALL), context, budget)
    conversation.add_model_turn(turn_text.removesuffix("<|im_end|>"))
    conversation.add_observation(observation)
    context.add(observation)
    for i, crop in enumerate(observation.images):
        crop.save(out_dir / f"returned_{i + 1}.png")
    conversation.add_model_turn("The digit is 7. \\boxed{7}")

    rendered = renderer.render(conversation)
    inputs = renderer.collate([rendered], padding_side="right")
    with torch.no_grad():
        logits = model(**inputs.model_kwargs()).logits[0, :-1]  # [T-1, V]
    targets = inputs.input_ids[0, 1:]
    learned = inputs.loss_mask[0, 1:].bool()
    loss = torch.nn.functional.cross_entropy(logits[learned], targets[learned]).item()

    report = DemoReport(
        out_dir=out_dir,
        generated=generated,
        used_model_call=used_model_call,
        observation=observation.text,
        tokens=len(rendered),
        learned_tokens=int(sum(rendered.loss_mask)),
        image_tokens=sum(1 for t in rendered.mm_token_type_ids if t == 1),
        loss=loss,
        seconds=time.perf_counter() - start,
    )
    record = {
        "question": QUESTION,
        "turns": [
            {
                "role": t.role,
                "kind": t.kind.value,
                "text": t.text,
                "images": len([p for p in t.parts if isinstance(p, ImagePart)]),
            }
            for t in conversation.turns
        ],
        "generated_by_untrained_model": generated,
        "tokens": report.tokens,
        "learned_tokens": report.learned_tokens,
        "image_tokens": report.image_tokens,
        "loss_on_learned_tokens": loss,
    }
    (out_dir / "conversation.json").write_text(
        json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8"
    )
    return report
