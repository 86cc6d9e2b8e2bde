"""Conversation → model inputs: the one place where text, images and masks become tensors.

:class:`Renderer` turns a :class:`~pixelreasoner.trajectory.Conversation` into token ids, a
per-token loss mask, the vision inputs and ``mm_token_type_ids`` (without which transformers
silently drops Qwen's 3-D rope positions), and batches several with padding.

How the mask stays exact: the chat text is assembled piece by piece, each piece knowing whether
the model wrote it. Text between vision blocks is tokenized in one call (so ids equal those of
tokenizing the whole prompt, as a server would) and each token takes the mask of the piece its
first character belongs to. Sampled token ids of a model turn are spliced in verbatim. Every
image becomes ``<|vision_start|>`` + one ``<|image_pad|>`` per merged patch + ``<|vision_end|>``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from PIL import Image

from pixelreasoner.protocol.chat_template import IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from pixelreasoner.trajectory import Conversation, ImagePart, Text, Turn, VideoPart
from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.images import load_frames, load_image
from pixelreasoner.vision.video import PatchSpec, encode_video

TEXT, IMAGE, VIDEO = 0, 1, 2
"""Values of ``mm_token_type_ids`` (as transformers' Qwen2.5-VL expects)."""


class ProcessorLike(Protocol):
    """What the renderer needs of a processor (see :class:`pixelreasoner.models.loading.VLProcessor`)."""

    tokenizer: Any
    image_processor: Any

    @property
    def image_token_id(self) -> int: ...
    @property
    def video_token_id(self) -> int: ...
    @property
    def vision_start_token_id(self) -> int: ...
    @property
    def vision_end_token_id(self) -> int: ...
    @property
    def im_end_id(self) -> int: ...
    @property
    def pad_token_id(self) -> int: ...


@dataclass
class RenderedSequence:
    """One conversation, unpadded. Lists are per token; arrays are per patch."""

    input_ids: list[int]
    loss_mask: list[int]
    mm_token_type_ids: list[int]
    pixel_values: np.ndarray | None = None  # [n_image_patches, C*tp*p*p]
    image_grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    pixel_values_videos: np.ndarray | None = None  # [n_video_patches, C*tp*p*p]
    video_grid_thw: list[tuple[int, int, int]] = field(default_factory=list)
    second_per_grid_ts: list[float] = field(default_factory=list)
    turn_spans: list[tuple[int, int]] = field(default_factory=list)
    """[start, end) token range of each turn (the chat frame included)."""

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class ModelInputs:
    """A padded batch. ``loss_mask[b, t] = 1`` where token t was written by the model and is learned."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    loss_mask: torch.Tensor  # [B, T]
    mm_token_type_ids: torch.Tensor  # [B, T]
    pixel_values: torch.Tensor | None = None  # [N_img_patches, D]
    image_grid_thw: torch.Tensor | None = None  # [n_images, 3]
    pixel_values_videos: torch.Tensor | None = None  # [N_vid_patches, D]
    video_grid_thw: torch.Tensor | None = None  # [n_videos, 3]
    second_per_grid_ts: torch.Tensor | None = None  # [n_videos]

    def model_kwargs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the model's ``forward``/``generate`` (no loss mask)."""
        names = (
            "input_ids",
            "attention_mask",
            "mm_token_type_ids",
            "pixel_values",
            "image_grid_thw",
            "pixel_values_videos",
            "video_grid_thw",
            "second_per_grid_ts",
        )
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> ModelInputs:
        """Move to ``device``; ``dtype`` applies to the pixel tensors only."""

        def move(t: torch.Tensor | None, floating: bool = False) -> torch.Tensor | None:
            if t is None:
                return None
            return t.to(device=device, dtype=dtype if floating and dtype is not None else t.dtype)

        return ModelInputs(
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            loss_mask=self.loss_mask.to(device),
            mm_token_type_ids=self.mm_token_type_ids.to(device),
            pixel_values=move(self.pixel_values, True),
            image_grid_thw=move(self.image_grid_thw),
            pixel_values_videos=move(self.pixel_values_videos, True),
            video_grid_thw=move(self.video_grid_thw),
            second_per_grid_ts=move(self.second_per_grid_ts, True),
        )


class _Builder:
    """Accumulates one sequence: text pieces are buffered and tokenized together."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.mask: list[int] = []
        self.types: list[int] = []
        self._pieces: list[tuple[str, int]] = []

    def text(self, text: str, learned: bool = False) -> None:
        if text:
            self._pieces.append((text, int(learned)))

    def ids_(self, ids: Sequence[int], learned: bool = False, kind: int = TEXT) -> None:
        self.flush()
        self.ids.extend(ids)
        self.mask.extend([int(learned)] * len(ids))
        self.types.extend([kind] * len(ids))

    def flush(self) -> None:
        if not self._pieces:
            return
        joined = "".join(p for p, _ in self._pieces)
        encoded = self.tokenizer(joined, add_special_tokens=False, return_offsets_mapping=True)
        # Character ranges of the pieces; a token is learned if its first character is.
        bounds, start = [], 0
        for piece, learned in self._pieces:
            bounds.append((start + len(piece), learned))
            start += len(piece)
        piece_index = 0
        for token_id, (begin, _end) in zip(encoded["input_ids"], encoded["offset_mapping"], strict=True):
            while begin >= bounds[piece_index][0]:
                piece_index += 1
            self.ids.append(token_id)
            self.mask.append(bounds[piece_index][1])
            self.types.append(TEXT)
        self._pieces = []

    def __len__(self) -> int:
        self.flush()
        return len(self.ids)


class Renderer:
    """Renders conversations for one processor under one pixel budget.

    >>> renderer = Renderer(processor, budget)            # doctest: +SKIP
    >>> batch = renderer([conversation], add_generation_prompt=True)  # doctest: +SKIP
    >>> model.generate(**batch.model_kwargs())             # doctest: +SKIP
    """

    def __init__(self, processor: ProcessorLike, budget: PixelBudget, image_cache: int = 4096) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.budget = budget
        # Images referenced by path are decoded and resized once: training renders each trace
        # every epoch, and decoding PNGs was a fifth of an SFT step.
        self._images: OrderedDict[tuple[str, bool], Image.Image] = OrderedDict()
        self._image_cache = image_cache
        self.patch = PatchSpec.from_image_processor(processor.image_processor)
        if self.patch.factor != budget.factor:
            raise ValueError(
                f"the processor's patch factor is {self.patch.factor} but the budget's is {budget.factor}"
            )

    # -- text -------------------------------------------------------------------------------
    @staticmethod
    def text(conversation: Conversation, add_generation_prompt: bool = False) -> str:
        """The chat text with one placeholder per image/video (the protocol fixtures' form)."""
        out = []
        for turn in conversation.turns:
            out.append(f"<|im_start|>{turn.role}\n")
            for part in turn.parts:
                if isinstance(part, Text):
                    out.append(part.text)
                elif isinstance(part, ImagePart):
                    out.append(IMAGE_PLACEHOLDER)
                else:
                    out.append(VIDEO_PLACEHOLDER)
            out.append("<|im_end|>\n")
        if add_generation_prompt:
            out.append("<|im_start|>assistant\n")
        return "".join(out)

    # -- images -----------------------------------------------------------------------------
    def load_image(self, part: ImagePart) -> Image.Image:
        """The image as the model will see it (input budget applied to the query's own images)."""
        if part.image is not None:
            return part.image if part.returned else self.budget.inputs.resize(part.image, self.budget.factor)
        key = (part.path or "", part.returned)
        if key in self._images:
            self._images.move_to_end(key)
            return self._images[key]
        image = load_image(key[0], max_pixels=self.budget.max_decode_pixels)
        if not part.returned:
            image = self.budget.inputs.resize(image, self.budget.factor)
        if self._image_cache > 0:
            self._images[key] = image
            if len(self._images) > self._image_cache:
                self._images.popitem(last=False)
        return image

    def encode_images(self, images: Sequence[Image.Image]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
        rng = self.budget.processor
        out = self.processor.image_processor(
            images=list(images),
            size={"shortest_edge": rng.min_pixels, "longest_edge": rng.max_pixels},
            return_tensors="np",
        )
        grids = [(int(t), int(h), int(w)) for t, h, w in out["image_grid_thw"]]
        return np.asarray(out["pixel_values"], dtype=np.float32), grids

    def encode_video(self, part: VideoPart) -> tuple[np.ndarray, tuple[int, int, int]]:
        frames = (
            list(part.frames)
            if part.frames
            else load_frames(list(part.paths), max_pixels=self.budget.max_decode_pixels)
        )
        return encode_video(frames, self.budget.video, self.patch)

    # -- rendering --------------------------------------------------------------------------
    def _turn(
        self,
        b: _Builder,
        turn: Turn,
        learned: bool,
        images: list[Image.Image],
        videos: list[tuple[np.ndarray, tuple[int, int, int], float]],
    ) -> None:
        merge = self.patch.merge_size**2
        b.text(f"<|im_start|>{turn.role}\n")
        if turn.token_ids is not None:
            # Sampled ids are authoritative: splice them in, learned if the turn is.
            ids = list(turn.token_ids)
            b.ids_(ids, learned=learned)
            if not ids or ids[-1] != self.processor.im_end_id:
                b.ids_([self.processor.im_end_id])  # the turn was cut off: close it, unlearned
            b.text("\n")
            return
        for part in turn.parts:
            if isinstance(part, Text):
                b.text(part.text, learned=learned)
            elif isinstance(part, ImagePart):
                images.append(self.load_image(part))
                b.ids_([self.processor.vision_start_token_id])
                b.ids_([-len(images)], kind=IMAGE)  # placeholder, expanded in render()
                b.ids_([self.processor.vision_end_token_id])
            else:
                patches, grid = self.encode_video(part)
                videos.append((patches, grid, self.patch.temporal_patch_size / part.fps))
                count = grid[0] * grid[1] * grid[2] // merge
                b.ids_([self.processor.vision_start_token_id])
                b.ids_([self.processor.video_token_id] * count, kind=VIDEO)
                b.ids_([self.processor.vision_end_token_id])
        b.text("<|im_end|>", learned=learned)
        b.text("\n")

    def render(
        self,
        conversation: Conversation,
        add_generation_prompt: bool = False,
        learn: Sequence[bool] | None = None,
    ) -> RenderedSequence:
        """Render one conversation (no padding).

        ``learn`` overrides, per turn, whether an assistant turn is learned (default: its kind).
        """
        if learn is not None and len(learn) != len(conversation.turns):
            raise ValueError(f"learn has {len(learn)} flags for {len(conversation.turns)} turns")
        b = _Builder(self.tokenizer)
        images: list[Image.Image] = []
        grids: list[tuple[int, int, int]] = []
        videos: list[tuple[np.ndarray, tuple[int, int, int], float]] = []
        spans: list[tuple[int, int]] = []
        for index, turn in enumerate(conversation.turns):
            start = len(b)
            learned = turn.kind.learned if learn is None else bool(learn[index]) and turn.role == "assistant"
            self._turn(b, turn, learned, images, videos)
            spans.append((start, len(b)))
        if add_generation_prompt:
            b.text("<|im_start|>assistant\n")
        b.flush()

        pixel_values = None
        if images:
            pixel_values, grids = self.encode_images(images)
        # Expand each image placeholder (a negative id) into its pad tokens.
        merge = self.patch.merge_size**2
        ids: list[int] = []
        mask: list[int] = []
        types: list[int] = []
        for tok, m, k in zip(b.ids, b.mask, b.types, strict=True):
            if tok < 0:
                t, h, w = grids[-tok - 1]
                n = t * h * w // merge
                ids.extend([self.processor.image_token_id] * n)
                mask.extend([0] * n)
                types.extend([IMAGE] * n)
            else:
                ids.append(tok)
                mask.append(m)
                types.append(k)
        spans = self._shift_spans(b.ids, spans, grids)
        return RenderedSequence(
            input_ids=ids,
            loss_mask=mask,
            mm_token_type_ids=types,
            pixel_values=pixel_values,
            image_grid_thw=grids if images else [],
            pixel_values_videos=np.concatenate([v[0] for v in videos]) if videos else None,
            video_grid_thw=[v[1] for v in videos],
            second_per_grid_ts=[v[2] for v in videos],
            turn_spans=spans,
        )

    def _shift_spans(
        self, raw_ids: list[int], spans: list[tuple[int, int]], grids: list[tuple[int, int, int]]
    ) -> list[tuple[int, int]]:
        """Turn spans measured before image expansion, moved to expanded positions."""
        merge = self.patch.merge_size**2
        extra = np.zeros(len(raw_ids) + 1, dtype=np.int64)
        for pos, tok in enumerate(raw_ids):
            if tok < 0:
                t, h, w = grids[-tok - 1]
                extra[pos + 1] = t * h * w // merge - 1
        shift = np.cumsum(extra)
        return [(int(s + shift[s]), int(e + shift[e])) for s, e in spans]

    def truncate(self, seq: RenderedSequence, max_length: int) -> RenderedSequence:
        """Cut ``seq`` to at most ``max_length`` tokens without splitting a vision block.

        A cut that falls inside ``<|vision_start|> ... <|vision_end|>`` moves to before that
        block; the pixel inputs of the images and videos cut away are dropped with it.
        """
        if len(seq) <= max_length:
            return seq
        starts = [
            i
            for i, t in enumerate(seq.input_ids[: max_length + 1])
            if t == self.processor.vision_start_token_id
        ]
        cut = max_length
        kept_images = kept_videos = 0
        merge = self.patch.merge_size**2
        image_grids, video_grids = iter(seq.image_grid_thw), iter(seq.video_grid_thw)
        for start in starts:
            kind = seq.mm_token_type_ids[start + 1] if start + 1 < len(seq) else TEXT
            grids = image_grids if kind == IMAGE else video_grids
            t, h, w = next(grids)
            end = start + 1 + t * h * w // merge  # index of <|vision_end|>
            if end >= cut:
                cut = start
                break
            kept_images += kind == IMAGE
            kept_videos += kind == VIDEO
        image_rows = sum(t * h * w for t, h, w in seq.image_grid_thw[:kept_images])
        video_rows = sum(t * h * w for t, h, w in seq.video_grid_thw[:kept_videos])
        return RenderedSequence(
            input_ids=seq.input_ids[:cut],
            loss_mask=seq.loss_mask[:cut],
            mm_token_type_ids=seq.mm_token_type_ids[:cut],
            pixel_values=seq.pixel_values[:image_rows]
            if kept_images and seq.pixel_values is not None
            else None,
            image_grid_thw=seq.image_grid_thw[:kept_images],
            pixel_values_videos=(
                seq.pixel_values_videos[:video_rows]
                if kept_videos and seq.pixel_values_videos is not None
                else None
            ),
            video_grid_thw=seq.video_grid_thw[:kept_videos],
            second_per_grid_ts=seq.second_per_grid_ts[:kept_videos],
            turn_spans=[(s, min(e, cut)) for s, e in seq.turn_spans if s < cut],
        )

    def collate(self, sequences: Sequence[RenderedSequence], padding_side: str = "left") -> ModelInputs:
        """Pad rendered sequences into one batch (left padding by default, as generation needs)."""
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not sequences:
            raise ValueError("cannot collate an empty batch")
        length = max(len(s) for s in sequences)
        batch = len(sequences)
        input_ids = torch.full((batch, length), self.processor.pad_token_id, dtype=torch.long)
        attention = torch.zeros((batch, length), dtype=torch.long)
        loss = torch.zeros((batch, length), dtype=torch.long)
        types = torch.zeros((batch, length), dtype=torch.long)
        for row, seq in enumerate(sequences):
            n = len(seq)
            cols = slice(length - n, length) if padding_side == "left" else slice(0, n)
            input_ids[row, cols] = torch.tensor(seq.input_ids, dtype=torch.long)
            attention[row, cols] = 1
            loss[row, cols] = torch.tensor(seq.loss_mask, dtype=torch.long)
            types[row, cols] = torch.tensor(seq.mm_token_type_ids, dtype=torch.long)

        def cat(arrays: list[np.ndarray | None]) -> torch.Tensor | None:
            present = [a for a in arrays if a is not None]
            return torch.from_numpy(np.concatenate(present)) if present else None

        def grid(rows: list[tuple[int, int, int]]) -> torch.Tensor | None:
            return torch.tensor(rows, dtype=torch.long) if rows else None

        seconds = [s for seq in sequences for s in seq.second_per_grid_ts]
        return ModelInputs(
            input_ids=input_ids,
            attention_mask=attention,
            loss_mask=loss,
            mm_token_type_ids=types,
            pixel_values=cat([s.pixel_values for s in sequences]),
            image_grid_thw=grid([g for s in sequences for g in s.image_grid_thw]),
            pixel_values_videos=cat([s.pixel_values_videos for s in sequences]),
            video_grid_thw=grid([g for s in sequences for g in s.video_grid_thw]),
            second_per_grid_ts=torch.tensor(seconds, dtype=torch.float32) if seconds else None,
        )

    def __call__(
        self,
        conversations: Sequence[Conversation],
        add_generation_prompt: bool = False,
        padding_side: str = "left",
    ) -> ModelInputs:
        """Render and collate a batch of conversations."""
        return self.collate([self.render(c, add_generation_prompt) for c in conversations], padding_side)
