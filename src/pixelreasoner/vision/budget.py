"""The one place that owns every pixel limit.

The released Pixel Reasoner code set image sizes in several places (environment variables,
per-call constants, the processor's own limits), and the sampler and the learner ended up
seeing different images. Here a single :class:`PixelBudget` is passed to rollout, training and
evaluation alike; :func:`pixel_budget` gives the named presets (:data:`PRESETS`).

Sizes are counted in pixels of the resized image; ``28 * 28`` px is one merged vision token of
Qwen2.5-VL (14 px patches merged 2x2), so ``n * 28 * 28`` means "about n tokens".
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from PIL import Image

from pixelreasoner.vision.images import DEFAULT_MAX_PIXELS

TOKEN_PX = 28 * 28
"""Pixels per merged vision token (14 px patch, 2x2 spatial merge)."""


class AspectRatioError(ValueError):
    """Raised by :func:`smart_resize` for images more than 200 times longer than wide."""


def smart_resize(
    height: int,
    width: int,
    factor: int = 28,
    min_pixels: int = 56 * 56,
    max_pixels: int = 14 * 14 * 4 * 1280,
) -> tuple[int, int]:
    """Target (height, width) for an image, with Qwen2-VL's resizing rule.

    Both sides become multiples of ``factor``, the area lands within ``[min_pixels,
    max_pixels]`` and the aspect ratio is kept as closely as the rounding allows. Images with an
    aspect ratio above 200 are refused (:class:`AspectRatioError`), as in Qwen's processor.

    >>> smart_resize(480, 640, min_pixels=4 * 784, max_pixels=1000 * 784)
    (476, 644)
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {width}x{height}")
    if max(height, width) / min(height, width) > 200:
        raise AspectRatioError(
            f"absolute aspect ratio must be smaller than 200, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


@dataclass(frozen=True)
class PixelRange:
    """A [min, max] pixel-count range for one kind of image."""

    min_pixels: int
    max_pixels: int

    def __post_init__(self) -> None:
        if not (0 < self.min_pixels <= self.max_pixels):
            raise ValueError(f"need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")

    def target_size(self, width: int, height: int, factor: int = 28) -> tuple[int, int]:
        """(width, height) after :func:`smart_resize` into this range."""
        h, w = smart_resize(height, width, factor, self.min_pixels, self.max_pixels)
        return w, h

    def resize(self, image: Image.Image, factor: int = 28) -> Image.Image:
        """Resize ``image`` into this range (bicubic, as Qwen's processor and the release do)."""
        size = self.target_size(image.width, image.height, factor)
        if size == image.size:
            return image
        return image.resize(size, Image.Resampling.BICUBIC)


def _px(tokens: int) -> int:
    return tokens * TOKEN_PX


@dataclass(frozen=True)
class PixelBudget:
    """Every pixel limit of one stage (training or evaluation), in one object.

    - ``inputs``: the query's own images, resized once when the query is loaded.
    - ``crops``: the image returned by ``crop_image_normalized``.
    - ``frames``: frames returned by ``select_frames``; ``None`` returns them unresized, as the
      query holds them (the processor's limits still apply when they are encoded).
    - ``video``: frames of an input video (shown to the model as video tokens).
    - ``processor``: the model processor's own limits, applied when an image is encoded (an
      image already inside them passes unchanged).
    - ``max_decode_pixels``: images larger than this are refused before decoding (bounds memory
      and stops decompression bombs).
    - ``crop_from_original``: cut crops from the decoded original instead of the downscaled
      image the model saw. The release cut from the downscaled image, so a crop held no detail
      the global view lacked, only more tokens. Pixel boxes refer to the model's view either way.
    """

    inputs: PixelRange
    crops: PixelRange
    frames: PixelRange | None
    video: PixelRange
    processor: PixelRange
    factor: int = 28
    max_decode_pixels: int = DEFAULT_MAX_PIXELS
    crop_from_original: bool = True

    def replace(self, **changes: object) -> PixelBudget:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def released_train() -> PixelBudget:
    """The release's training (RL rollout) values (with crops from originals; see ``crop_from_original``).

    Inputs ≤ 2000 tokens and crops 4..1000 tokens (SPEC §2). Selected frames 4..400 tokens (the
    release's ``select_maxsize = 400``, applied with ``resize_cropped`` in training only). Input
    video frames use qwen-vl-utils' defaults (128..768 tokens per frame), which the release
    inherited; not verified against a released run.
    """
    return PixelBudget(
        inputs=PixelRange(_px(4), _px(2000)),
        crops=PixelRange(_px(4), _px(1000)),
        frames=PixelRange(_px(4), _px(400)),
        video=PixelRange(_px(128), _px(768)),
        processor=PixelRange(_px(256), _px(5120)),
    )


def released_eval() -> PixelBudget:
    """The release's evaluation values: inputs ≤ 8000 tokens, crops 256..5120.

    Selected frames are returned unresized (``frames=None``): the release's eval adds them as
    they are and reports their own size as the Frame Size. (Its frames were its video input's,
    which qwen-vl-utils had resized to 4..512 tokens; ours are the decoded frames, so the two
    differ for frames that resize would change.)
    """
    return PixelBudget(
        inputs=PixelRange(_px(256), _px(8000)),
        crops=PixelRange(_px(256), _px(5120)),
        frames=None,
        video=PixelRange(_px(128), _px(768)),
        processor=PixelRange(_px(256), _px(5120)),
    )


def tiny() -> PixelBudget:
    """The CPU default, sized for the synthetic task families (:mod:`pixelreasoner.tasks`).

    A 560 px canvas becomes a 140 px global view (25 merged tokens, 1.25 per side of a 140 px
    cell of the default 4x4 lattice: too coarse for the fine patterns); a padded one-cell crop
    (196..252 px) fits the crop range unresized, so patch-aligned patterns stay intact. Video
    frames of 112 px are shown at 28 px in the video (the same 4x reduction) and come back at
    112 px when selected.
    """
    return PixelBudget(
        inputs=PixelRange(_px(4), _px(25)),
        crops=PixelRange(_px(4), _px(144)),
        frames=PixelRange(_px(4), _px(64)),
        video=PixelRange(_px(1), _px(1)),
        processor=PixelRange(_px(1), _px(1024)),
    )


def frames_as_crops(budget: PixelBudget) -> PixelBudget:
    """``budget`` with selected frames resized like crops (into ``budget.crops``).

    This project's earlier choice, kept as the ``*-frames-as-crops`` presets: a selected frame
    then costs and shows as much as a zoom (e.g. a 56x56 frame comes back at 448x448 in eval),
    where the release caps frames at 400 tokens in training and leaves them unresized in eval.
    """
    return budget.replace(frames=budget.crops)


def released_train_frames_as_crops() -> PixelBudget:
    """:func:`released_train` with selected frames in the crop range (4..1000 tokens)."""
    return frames_as_crops(released_train())


def released_eval_frames_as_crops() -> PixelBudget:
    """:func:`released_eval` with selected frames in the crop range (256..5120 tokens)."""
    return frames_as_crops(released_eval())


PRESETS = {
    "released-train": released_train,
    "released-eval": released_eval,
    "released-train-frames-as-crops": released_train_frames_as_crops,
    "released-eval-frames-as-crops": released_eval_frames_as_crops,
    "tiny": tiny,
}
"""Budgets by the name configs and ``--budget`` use."""


def pixel_budget(name: str) -> PixelBudget:
    """A named preset (a key of :data:`PRESETS`), e.g. ``released-train``, ``released-eval``, ``tiny``.

    The ``released-*-frames-as-crops`` variants differ from their base only in ``frames``
    (see :func:`frames_as_crops`).
    """
    try:
        return PRESETS[name]()
    except KeyError:
        raise ValueError(f"unknown pixel budget {name!r}; choose one of {sorted(PRESETS)}") from None
