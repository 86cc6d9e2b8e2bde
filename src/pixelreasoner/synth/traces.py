"""Warm-start trace synthesis: template-based multi-turn traces around each item's cue.

Free distillation from a teacher produced traces that bypass the operations (paper §3), so a
trace here is a fixed skeleton around the annotated cue and only its prose comes from a writer
(templates, or a teacher model). Every operation in a trace is executed by our operations code
under the training pixel budget, so the returned images are exactly what the model would get.

Variants (SPEC §3), chosen per item by its own random draw:

- images: ``single`` (zoom on the cue, answer), ``recrop_once`` (a box disjoint from the cue,
  then the right one), ``recrop_twice`` (two wrong boxes), ``zoom_further`` (an over-large box
  containing the cue, then the tight one); default mix 30/20/20/30;
- videos: ``single`` (select the cue frames) 90%, ``reselect`` (frames outside the cue first) 10%;
- ``text_only``: a question about the global view answered without operations (a share of all
  traces, 25% by default, like the paper's ~2k of ~7.5k);
- ``direct``: the item's own question answered at once, without an operation (a share of the
  items, 0 by default). The paper's text traces are such answers, rejection-sampled from the
  base model; here they give the warm start a direct path that competes with zooming (the
  learning-trap experiment, with an answer prior from the ``favour_a`` task knob).

Wrong and over-large operations are turns of kind ``ERRONEOUS`` (kept as context, never
learned); the turn that notices the mistake and redoes the operation is learned.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from PIL import Image
from tqdm import tqdm

from pixelreasoner.data.items import TaskItem
from pixelreasoner.protocol.turns import execute_turn
from pixelreasoner.synth.templates import Facts
from pixelreasoner.trajectory import Conversation, ImagePart, VideoPart
from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.images import ImageLoadError, load_frames, load_image
from pixelreasoner.vision.ops import CROP_PADDING, CROP_TOOL, FRAMES_TOOL, Observation, VisualContext

Variant = Literal[
    "single", "recrop_once", "recrop_twice", "zoom_further", "reselect", "text_only", "notool", "direct"
]


class Writer(Protocol):
    fallbacks: int
    calls: int

    def write(self, step: str, facts: Facts, choice: int, images: list[Image.Image] | None = None) -> str: ...


@dataclass(frozen=True)
class TraceMix:
    """Proportions of trace variants (paper defaults)."""

    single: float = 0.3
    recrop_once: float = 0.2
    recrop_twice: float = 0.2
    zoom_further: float = 0.3
    video_single: float = 0.9
    video_reselect: float = 0.1
    text_only: float = 0.25
    direct: float = 0.0
    """Share of items whose trace answers their own question directly instead of through an operation."""

    def __post_init__(self) -> None:
        image = self.single + self.recrop_once + self.recrop_twice + self.zoom_further
        video = self.video_single + self.video_reselect
        values = (
            self.single,
            self.recrop_once,
            self.recrop_twice,
            self.zoom_further,
            self.video_single,
            self.video_reselect,
            self.text_only,
            self.direct,
        )
        if (
            min(values) < 0
            or abs(image - 1) > 1e-6
            or abs(video - 1) > 1e-6
            or self.text_only >= 1
            or self.direct > 1
        ):
            raise ValueError(
                f"image shares must sum to 1 (got {image:.3f}), video shares to 1 (got {video:.3f}), "
                f"0 <= text_only < 1 (got {self.text_only}) and 0 <= direct <= 1 (got {self.direct})"
            )

    @classmethod
    def single_pass(
        cls, self_correction: float = 0.0, text_only: float = 0.0, direct: float = 0.0
    ) -> TraceMix:
        """Mostly single-pass traces: ``self_correction`` is shared evenly by the three image
        self-correction variants and video re-selection (the shares within each kind keep the
        paper's ratios). Single-pass traces are shorter and each teaches the right zoom, so small
        models learn where to look fastest from them."""
        image = 1.0 - self_correction
        return cls(
            single=image,
            recrop_once=self_correction * 0.2 / 0.7,
            recrop_twice=self_correction * 0.2 / 0.7,
            zoom_further=self_correction * 0.3 / 0.7,
            video_single=image,
            video_reselect=self_correction,
            text_only=text_only,
            direct=direct,
        )

    def image_variant(self, rng: np.random.Generator) -> Variant:
        names: tuple[Variant, ...] = ("single", "recrop_once", "recrop_twice", "zoom_further")
        shares = (self.single, self.recrop_once, self.recrop_twice, self.zoom_further)
        return names[int(rng.choice(4, p=np.asarray(shares) / sum(shares)))]

    def video_variant(self, rng: np.random.Generator) -> Variant:
        return "reselect" if rng.random() < self.video_reselect else "single"


# ---------------------------------------------------------------------------------- facts
_THING = {"needle": "red cell", "count": "red cell", "read": "red panel", "frames": "red frame"}
_DETAIL = {"needle": "pattern", "count": "squares", "read": "number", "frames": "pattern"}


def _boxed_answer(item: TaskItem) -> str:
    return item.answers[0]


def _describe_box(box: Sequence[float], grid: int | None) -> str:
    if grid:
        row, col = round(box[1] * grid), round(box[0] * grid)
        return f"row {row + 1}, column {col + 1}"
    return "the area [" + ", ".join(f"{v:.2f}" for v in box) + "]"


def _describe_frames(frames: Sequence[int]) -> str:
    if len(frames) == 1:
        return f"frame {frames[0]}"
    return "frames " + ", ".join(map(str, frames[:-1])) + f" and {frames[-1]}"


def item_facts(item: TaskItem) -> Facts:
    """What templates may say about an item: ours carry family facts, any other item gets generic ones."""
    family = str(item.meta.get("family", ""))
    grid = item.meta.get("grid")
    answer = _boxed_answer(item)
    if item.cue_frames:
        where = _describe_frames(item.cue_frames)
    elif item.cue_bbox:
        where = _describe_box(item.cue_bbox, grid if isinstance(grid, int) else None)
    else:
        where = "the whole image"
    answer_text = str(item.meta.get("answer_text", ""))
    if not answer_text and item.choices and answer in "ABCDEFGH" and len(answer) == 1:
        answer_text = item.choices["ABCDEFGH".index(answer)]
    findings = {
        "needle": f"the red cell is filled with {answer_text}",
        "count": f"there {'is' if answer == '1' else 'are'} {answer} square{'' if answer == '1' else 's'} "
        "of coarse checkerboard in the red cell",
        "read": f"the red panel shows the number {answer}",
        "frames": f"{where} shows {answer_text}",
    }
    finding = (
        str(item.meta.get("finding", ""))
        or findings.get(family)
        or (f"it shows {answer_text}" if answer_text else f"the answer is {answer}")
    )
    return Facts(
        thing=_THING.get(family, "region of interest"),
        where=where,
        detail=_DETAIL.get(family, "details"),
        answer=answer,
        finding=finding,
    )


# ---------------------------------------------------------------------------------- geometry
def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def wrong_boxes(cue: Sequence[float]) -> list[list[float]]:
    """Boxes of the cue's size, shifted by whole box sizes, whose padded crop misses the cue."""
    w, h = cue[2] - cue[0], cue[3] - cue[1]
    if w <= 0 or h <= 0:
        return []
    found = []
    for dy in range(-int(1 / h) - 1, int(1 / h) + 2):
        for dx in range(-int(1 / w) - 1, int(1 / w) + 2):
            box = [cue[0] + dx * w, cue[1] + dy * h, cue[2] + dx * w, cue[3] + dy * h]
            if box[0] < -1e-9 or box[1] < -1e-9 or box[2] > 1 + 1e-9 or box[3] > 1 + 1e-9:
                continue
            padded = [
                box[0] - CROP_PADDING,
                box[1] - CROP_PADDING,
                box[2] + CROP_PADDING,
                box[3] + CROP_PADDING,
            ]
            if not _overlaps(padded, cue):
                found.append([round(v, 3) for v in box])
    return found


def wide_box(cue: Sequence[float]) -> list[float]:
    """An over-large box containing the cue: the cue grown by its own size on every side."""
    w, h = cue[2] - cue[0], cue[3] - cue[1]
    box = [max(0.0, cue[0] - w), max(0.0, cue[1] - h), min(1.0, cue[2] + w), min(1.0, cue[3] + h)]
    return [round(v, 3) for v in box]


def call_text(prose: str, name: str, arguments: dict[str, object]) -> str:
    """A model turn that ends in a tool call, formatted as the released traces are."""
    payload = json.dumps({"name": name, "arguments": arguments})
    return f"{prose}\n\n<tool_call>\n{payload}\n</tool_call>"


# ---------------------------------------------------------------------------------- synthesis
@dataclass
class SynthesisReport:
    variants: Counter[str] = field(default_factory=Counter)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    writer_calls: int = 0
    writer_fallbacks: int = 0

    def summary(self) -> str:
        made = sum(self.variants.values())
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.variants.items()))
        text = f"synthesized {made} traces ({parts})"
        if self.writer_fallbacks:
            text += f"; teacher fell back to templates {self.writer_fallbacks} of {self.writer_calls} times"
        if self.skipped:
            shown = "; ".join(f"{qid}: {why}" for qid, why in self.skipped[:10])
            more = f" and {len(self.skipped) - 10} more" if len(self.skipped) > 10 else ""
            text += f"; skipped {len(self.skipped)} items ({shown}{more})"
        return text


class SkipItem(Exception):
    """An item that cannot give a trace (unreadable image, cue operation failing)."""


@dataclass
class _Trace:
    """One trace being built: its conversation, the visual context, and the writer."""

    item: TaskItem
    conversation: Conversation
    context: VisualContext
    facts: Facts
    writer: Writer
    budget: PixelBudget
    rng: np.random.Generator

    def prose(self, step: str, facts: Facts | None = None) -> str:
        images = [*self.context.images, *(self.context.video or [])[:1], *self.context.returned[-1:]]
        return self.writer.write(step, facts or self.facts, int(self.rng.integers(1 << 16)), images)

    def act(self, text: str, erroneous: bool = False, must_succeed: bool = True) -> Observation:
        self.conversation.add_model_turn(text, erroneous=erroneous)
        observation = execute_turn(text, self.context, self.budget)
        if observation is None or (must_succeed and not observation.ok):
            reason = observation.error if observation is not None else "no tool call"
            raise SkipItem(f"operation failed: {reason}")
        self.conversation.add_observation(observation)
        self.context.add(observation)
        return observation

    def answer(self, step: str = "conclude") -> None:
        self.conversation.add_model_turn(self.prose(step))


class TraceSynthesizer:
    """Turns annotated items into SFT conversations (see the module docstring)."""

    def __init__(
        self, budget: PixelBudget, mix: TraceMix | None = None, writer: Writer | None = None, seed: int = 0
    ) -> None:
        from pixelreasoner.synth.teacher import TemplateWriter

        self.budget = budget
        self.mix = mix or TraceMix()
        self.writer: Writer = writer or TemplateWriter()
        self.seed = seed

    def _rng(self, item: TaskItem, salt: str = "") -> np.random.Generator:
        return np.random.default_rng([self.seed, zlib.crc32((item.qid + salt).encode())])

    def _start(
        self, item: TaskItem, question: str, mode: Literal["vcot", "notool"], salt: str = ""
    ) -> _Trace:
        try:
            if item.is_video:
                frames = load_frames(item.images, max_pixels=self.budget.max_decode_pixels)
                context = VisualContext.for_query(video=frames, budget=self.budget)
                conversation = Conversation.from_question(
                    question, video=VideoPart(paths=tuple(item.images)), mode=mode
                )
            else:
                images = [load_image(p, max_pixels=self.budget.max_decode_pixels) for p in item.images]
                context = VisualContext.for_query(images, budget=self.budget)
                parts = [ImagePart(path=p) for p in item.images]
                conversation = Conversation.from_question(question, parts, mode=mode)
        except ImageLoadError as exc:
            raise SkipItem(str(exc)) from exc
        return _Trace(
            item, conversation, context, item_facts(item), self.writer, self.budget, self._rng(item, salt)
        )

    def synthesize(self, item: TaskItem, variant: Variant | None = None) -> tuple[Conversation, Variant]:
        """One pixel-space trace for ``item`` (its variant drawn from the mix unless given)."""
        rng = self._rng(item, "variant")
        if variant is None:
            variant = self.mix.video_variant(rng) if item.is_video else self.mix.image_variant(rng)
            # its own draw, so that mixes without direct traces keep their variants
            if self.mix.direct > 0 and self._rng(item, "direct").random() < self.mix.direct:
                variant = "direct"
        trace = self._start(item, item.question, "vcot")
        if variant == "direct":
            trace.answer("direct")
        elif item.is_video:
            self._video(trace, variant)
        else:
            self._image(trace, variant)
        return trace.conversation, variant

    def _image(self, t: _Trace, variant: Variant) -> None:
        cue = t.item.cue_bbox
        if not cue:
            raise SkipItem("no cue_bbox to zoom on")
        grid = t.item.meta.get("grid")
        grid = grid if isinstance(grid, int) else None
        right = {"bbox_2d": cue, "target_image": 1}
        if variant in ("recrop_once", "recrop_twice"):
            candidates = wrong_boxes(cue)
            wanted = 1 if variant == "recrop_once" else 2
            if len(candidates) < wanted:
                variant = "single"  # the cue is too large for a disjoint box: fall back
            else:
                picks = t.rng.choice(len(candidates), size=wanted, replace=False)
                for n, k in enumerate(picks):
                    box = candidates[int(k)]
                    facts = Facts(**{**t.facts.__dict__, "wrong_where": _describe_box(box, grid)})
                    prose = t.prose("wrong", facts)
                    if n:
                        prose = f"That view does not show the {t.facts.thing}. {prose}"
                    t.act(call_text(prose, CROP_TOOL, {"bbox_2d": box, "target_image": 1}), erroneous=True)
                t.act(call_text(t.prose("recover"), CROP_TOOL, right))
        if variant == "zoom_further":
            wide = wide_box(cue)
            t.act(
                call_text(t.prose("locate"), CROP_TOOL, {"bbox_2d": wide, "target_image": 1}), erroneous=True
            )
            t.act(call_text(t.prose("coarse"), CROP_TOOL, right))
        if variant == "single":
            t.act(call_text(t.prose("locate"), CROP_TOOL, right))
        t.answer()

    def _video(self, t: _Trace, variant: Variant) -> None:
        cue = t.item.cue_frames
        if not cue:
            raise SkipItem("no cue_frames to select")
        if variant == "reselect":
            count = len(t.context.video or [])
            outside = [k for k in range(1, count + 1) if all(abs(k - c) > 1 for c in cue)]
            if len(outside) >= len(cue):
                wrong = sorted(int(k) for k in t.rng.choice(outside, size=len(cue), replace=False))
                facts = Facts(**{**t.facts.__dict__, "wrong_where": _describe_frames(wrong)})
                t.act(
                    call_text(t.prose("wrong", facts), FRAMES_TOOL, {"target_frames": wrong}), erroneous=True
                )
                t.act(call_text(t.prose("recover"), FRAMES_TOOL, {"target_frames": list(cue)}))
                t.answer()
                return
        t.act(call_text(t.prose("locate"), FRAMES_TOOL, {"target_frames": list(cue)}))
        t.answer()

    def text_only(self, item: TaskItem) -> Conversation:
        """A question about the global view (``meta.global_question``) answered without operations."""
        question, answer = item.meta.get("global_question"), item.meta.get("global_answer")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise SkipItem("no global_question/global_answer for a text-only trace")
        trace = self._start(item, question, "vcot", salt="text")
        trace.conversation.add_model_turn(
            trace.prose("direct", Facts(**{**trace.facts.__dict__, "answer": answer}))
        )
        return trace.conversation

    def notool(self, item: TaskItem) -> Conversation:
        """The text-only baseline: the question with the ``notool`` prompt, answered directly."""
        trace = self._start(item, item.question, "notool", salt="notool")
        trace.answer("direct")
        return trace.conversation

    def run(
        self, items: Sequence[TaskItem], mode: Literal["vcot", "notool"] = "vcot", progress: bool = True
    ) -> tuple[list[Conversation], list[str], SynthesisReport]:
        """Traces for ``items``: one pixel trace each plus the text-only share (``vcot``), or one
        direct answer each (``notool``). Items that cannot give a trace are skipped and reported."""
        report = SynthesisReport()
        conversations: list[Conversation] = []
        qids: list[str] = []
        extra = 0
        if mode == "vcot" and self.mix.text_only > 0:
            extra = round(len(items) * self.mix.text_only / (1 - self.mix.text_only))
        order = np.random.default_rng(self.seed).permutation(len(items)) if items else np.array([], dtype=int)
        text_only_items = {int(i) for i in order[:extra]} if extra <= len(items) else set(range(len(items)))
        jobs: list[tuple[int, str]] = [
            (i, "pixel" if mode == "vcot" else "notool") for i in range(len(items))
        ]
        jobs += [(i, "text_only") for i in sorted(text_only_items)]
        for index, job in tqdm(jobs, desc="synthesizing traces", unit="trace", disable=not progress):
            item = items[index]
            try:
                if job == "pixel":
                    conversation, variant = self.synthesize(item)
                elif job == "notool":
                    conversation, variant = self.notool(item), "notool"
                else:
                    conversation, variant = self.text_only(item), "text_only"
            except SkipItem as exc:
                report.skipped.append((item.qid, str(exc)))
                continue
            conversations.append(conversation)
            qids.append(item.qid)
            report.variants[variant] += 1
        report.writer_calls, report.writer_fallbacks = self.writer.calls, self.writer.fallbacks
        return conversations, qids, report
