"""The visual operations: ``crop_image_normalized`` and ``select_frames``.

Both take arguments exactly as a model wrote them (any JSON value) and never raise on them:
every failure becomes an :class:`Observation` whose ``error`` is set and whose ``text`` is the
error observation the model will read. Semantics follow the released Pixel Reasoner code
(SPEC §2), with its wrap-around and boundary defects fixed; each deviation is noted where it is
made.

Image numbering (``target_image``), as the released code does it (its ``execute_tool``):

- image query: 1..n are the query's images, then the images returned so far, in order;
- video query before anything was returned: 1..F are the video's frames;
- video query after images were returned: the list is ``[video, returned_1, ..., returned_k]``
  numbered from 1, and the video itself cannot be cropped, so the valid numbers are 2..k+1
  (``target_image=2`` is the first returned image; 1 is a range error).

The frames observation's "Numbered a to b" counts the same list (a is the number of images so
far, the video counting as one), so the first selection reads "Numbered 1 to k" although its
frames are targets 2..k+1. That off-by-one is the release's, and the released checkpoints were
trained on both the text and the numbering, so both are kept.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from PIL import Image

from pixelreasoner.vision.budget import AspectRatioError, PixelBudget

CROP_PADDING = 0.1
"""Normalized padding added on every side of a requested box (released value)."""

MIN_CROP_SIDE = 28
"""A crop must be larger than this many pixels on both sides (released rule)."""

MAX_SELECTED_FRAMES = 8
"""At most this many frames per ``select_frames`` call."""

CROP_TOOL = "crop_image_normalized"
FRAMES_TOOL = "select_frames"


def error_text(message: str) -> str:
    """The observation a model reads after a failed operation."""
    return f"\nExecution error:\n{message}\n"


def crop_text(width: int, height: int) -> str:
    return f"\nHere is the cropped image (Image Size: {width}x{height}):"


def frames_text(width: int, height: int, first: int, last: int) -> str:
    return f"\nHere are the selected frames (Frame Size: {width}x{height}, Numbered {first} to {last}):"


@dataclass(frozen=True)
class Observation:
    """What a tool call produced: the text the model reads next, the returned images, or an error.

    ``tool`` and ``arguments`` are the call as parsed (``None`` where the call could not be read).
    """

    text: str
    images: tuple[Image.Image, ...] = ()
    error: str | None = None
    tool: str | None = None
    arguments: dict[str, object] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failure(cls, message: str, tool: str | None = None) -> Observation:
        return cls(text=error_text(message), error=message, tool=tool)


class OperationError(Exception):
    """Raised inside this module for a bad argument; turned into an error observation."""


@dataclass
class VisualContext:
    """The images one trajectory can operate on.

    - ``images``: the query's images that crops are cut from;
    - ``view_sizes``: the (width, height) at which the model sees each of them. Pixel boxes
      refer to this size, since it is the image the model looked at. ``None`` means the images'
      own sizes;
    - ``video``: a video query's frames as decoded;
    - ``returned``: grows with every image an operation returned.

    Build it with :meth:`for_query`, which follows ``budget.crop_from_original``.
    :meth:`crop_targets` and :attr:`first_target` give the numbering (see the module docstring).
    """

    images: list[Image.Image] = field(default_factory=list)
    video: list[Image.Image] | None = None
    returned: list[Image.Image] = field(default_factory=list)
    view_sizes: list[tuple[int, int]] | None = None

    def __post_init__(self) -> None:
        if self.video is not None and self.images:
            raise ValueError("a query has either images or one video, not both")
        if self.video is not None and not self.video:
            raise ValueError("a video needs at least one frame")
        if self.view_sizes is not None and len(self.view_sizes) != len(self.images):
            raise ValueError("view_sizes needs one (width, height) per image")

    @classmethod
    def for_query(
        cls,
        images: Sequence[Image.Image] = (),
        video: Sequence[Image.Image] | None = None,
        *,
        budget: PixelBudget,
    ) -> VisualContext:
        """The context of a fresh query. ``images`` are the decoded originals.

        With ``budget.crop_from_original`` (the default), crops are cut from the originals, so
        zooming recovers detail that the downscaled global view lost; otherwise from the images
        as the model sees them (the released behaviour).
        """
        views = [budget.inputs.target_size(im.width, im.height, budget.factor) for im in images]
        if budget.crop_from_original:
            return cls(images=list(images), video=None if video is None else list(video), view_sizes=views)
        resized = [budget.inputs.resize(im, budget.factor) for im in images]
        return cls(images=resized, video=None if video is None else list(video))

    def view_size(self, index: int) -> tuple[int, int]:
        """(width, height) the model sees ``crop_targets()[index]`` at (``index`` is 0-based)."""
        target = self.crop_targets()[index]
        if self.view_sizes is not None and self.video is None and index < len(self.images):
            return self.view_sizes[index]
        return target.size

    @property
    def is_video(self) -> bool:
        return self.video is not None

    @property
    def first_target(self) -> int:
        """The ``target_image`` of ``crop_targets()[0]``: 2 for a video query once images were
        returned (1 is then the video, which cannot be cropped), 1 otherwise."""
        return 2 if self.video is not None and self.returned else 1

    def crop_targets(self) -> list[Image.Image]:
        """The images ``target_image`` can name, in order, in the release's numbering.

        ``target_image`` = :attr:`first_target` + position in this list, so the valid values are
        ``first_target .. first_target + len - 1``; for a video query after a return that is
        ``2 .. image_count``.
        """
        if self.video is not None:
            return list(self.returned) if self.returned else list(self.video)
        return [*self.images, *self.returned]

    def add(self, result: Observation) -> None:
        """Record the images an operation returned, so later calls can target them."""
        self.returned.extend(result.images)

    @property
    def image_count(self) -> int:
        """Images in the conversation so far, counting a video as one (the release's count)."""
        return (1 if self.video is not None else len(self.images)) + len(self.returned)


def _number(value: object, name: str) -> float:
    """A finite JSON number, or an OperationError explaining what was wrong."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise OperationError(f"`{name}` must be a number, got {_show(value)}.")
    if isinstance(value, int) and abs(value) > 2**53:
        raise OperationError(f"`{name}` is out of range: {_show(value)}.")
    result = float(value)
    if not math.isfinite(result):
        raise OperationError(f"`{name}` must be a finite number, got {_show(value)}.")
    return result


def _index(value: object, name: str, count: int, what: str, first: int = 1, note: str = "") -> int:
    """A number in ``first .. first + count - 1``; no Python wrap-around (0 and negatives are errors).

    ``note`` is appended to the range error (e.g. why the range does not start at 1).
    """
    number = _number(value, name)
    if number != int(number):
        raise OperationError(f"`{name}` must be a whole number, got {_show(value)}.")
    index = int(number)
    last = first + count - 1
    if not first <= index <= last:
        raise OperationError(f"`{name}` is {index}, but {what} are numbered from {first} to {last}.{note}")
    return index


def _show(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def normalized_box(bbox: Sequence[float], width: int, height: int) -> tuple[float, float, float, float]:
    """The requested box in [0, 1] coordinates, padded and clipped.

    A box whose values are all ≤ 1 is already normalized (the release tested ``< 1`` and so
    read a normalized box touching the border, e.g. ``[0.5, 0.5, 1.0, 1.0]``, as pixels);
    otherwise it is in pixels of a ``width`` x ``height`` image (the one the model saw).
    """
    x1, y1, x2, y2 = bbox
    if not all(v <= 1 for v in bbox):
        x1, x2 = x1 / width, x2 / width
        y1, y2 = y1 / height, y2 / height
    box = (x1 - CROP_PADDING, y1 - CROP_PADDING, x2 + CROP_PADDING, y2 + CROP_PADDING)
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in box)
    return x1, y1, x2, y2


def pixel_box(
    bbox: Sequence[float], width: int, height: int, view: tuple[int, int] | None = None
) -> tuple[int, int, int, int]:
    """The integer box cut from a ``width`` x ``height`` image, rounded as PIL rounds float boxes.

    ``view`` is the (width, height) pixel boxes refer to, when the model saw the image at
    another size than the one cut from.
    """
    vw, vh = view or (width, height)
    x1, y1, x2, y2 = normalized_box(bbox, vw, vh)
    return round(x1 * width), round(y1 * height), round(x2 * width), round(y2 * height)


def _bbox(value: object) -> tuple[float, float, float, float]:
    if not isinstance(value, list | tuple) or len(value) != 4:
        raise OperationError(
            f"`bbox_2d` must be a list of four numbers [x1, y1, x2, y2], got {_show(value)}."
        )
    x1, y1, x2, y2 = (_number(v, "bbox_2d") for v in value)
    if x1 > x2 or y1 > y2:
        raise OperationError(
            f"`bbox_2d` must be [x1, y1, x2, y2] with x1 <= x2 and y1 <= y2, got {_show(list(value))}."
        )
    return x1, y1, x2, y2


def crop_image_normalized(
    context: VisualContext, bbox_2d: object, target_image: object, budget: PixelBudget
) -> Observation:
    """Zoom in: cut ``bbox_2d`` (padded by 0.1) out of image ``target_image`` and resize it.

    The crop must be larger than 28x28 px; the result is resized into ``budget.crops``.
    """
    try:
        targets = context.crop_targets()
        if not targets:
            raise OperationError("There is no image to crop.")
        first = context.first_target
        if not context.is_video:
            what, note = "the images", ""
        elif first == 1:
            what, note = "the video's frames", ""
        else:
            what = "the images that can be cropped"
            note = " Image 1 is the video itself; 2 and up are the images returned after it."
        index = _index(target_image, "target_image", len(targets), what, first, note)
        box = _bbox(bbox_2d)
        position = index - first
        source = targets[position]
        left, top, right, bottom = pixel_box(box, source.width, source.height, context.view_size(position))
        w, h = right - left, bottom - top
        if w <= MIN_CROP_SIDE or h <= MIN_CROP_SIDE:
            raise OperationError(
                f"The cropped region is too small: {max(w, 0)}x{max(h, 0)} pixels of a "
                f"{source.width}x{source.height} image (it must be larger than "
                f"{MIN_CROP_SIDE}x{MIN_CROP_SIDE}). Choose a larger box."
            )
        crop = budget.crops.resize(source.crop((left, top, right, bottom)), budget.factor)
    except OperationError as exc:
        return Observation.failure(str(exc), CROP_TOOL)
    except AspectRatioError:
        return Observation.failure(
            f"The cropped region is too elongated ({w}x{h}); choose a squarer box.", CROP_TOOL
        )
    return Observation(text=crop_text(crop.width, crop.height), images=(crop,), tool=CROP_TOOL)


def select_frames(context: VisualContext, target_frames: object, budget: PixelBudget) -> Observation:
    """Return the video frames ``target_frames`` (1-based, at most 8), resized into ``budget.frames``.

    With ``budget.frames`` None the frames come back as the context holds them (unresized, as the
    release's eval returns them) and the observation reports that size; the processor's limits
    (``budget.processor``) still apply when they are encoded, and a frame it would refuse (aspect
    ratio above 200) is an error observation here.
    """
    try:
        if context.video is None:
            raise OperationError("`select_frames` works on a video, but this query has no video.")
        count = len(context.video)
        if not isinstance(target_frames, list | tuple):
            raise OperationError(
                f"`target_frames` must be a list of frame numbers, got {_show(target_frames)}."
            )
        if not target_frames:
            raise OperationError("`target_frames` is empty; select at least one frame.")
        if len(target_frames) > MAX_SELECTED_FRAMES:
            raise OperationError(
                f"You selected {len(target_frames)} frames; select no more than {MAX_SELECTED_FRAMES}."
            )
        indices = [_index(v, "target_frames", count, "the video's frames") for v in target_frames]
        chosen = [context.video[i - 1] for i in indices]
        if budget.frames is None:
            for frame in chosen:  # what the processor will do when encoding; refuses odd shapes
                budget.processor.target_size(frame.width, frame.height, budget.factor)
            frames = tuple(chosen)
        else:
            frames = tuple(budget.frames.resize(frame, budget.factor) for frame in chosen)
    except OperationError as exc:
        return Observation.failure(str(exc), FRAMES_TOOL)
    except AspectRatioError:
        return Observation.failure("The video's frames are too elongated to be shown.", FRAMES_TOOL)
    first = context.image_count
    return Observation(
        text=frames_text(frames[0].width, frames[0].height, first, first + len(frames) - 1),
        images=frames,
        tool=FRAMES_TOOL,
    )
