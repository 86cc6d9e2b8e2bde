"""The pixel budget: smart_resize equals Qwen's, presets carry the released values."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as qwen_smart_resize

from pixelreasoner.vision.budget import (
    TOKEN_PX,
    AspectRatioError,
    PixelRange,
    frames_as_crops,
    pixel_budget,
    released_eval,
    released_train,
    smart_resize,
)


@settings(max_examples=2000, deadline=None)
@given(
    height=st.integers(1, 6000),
    width=st.integers(1, 6000),
    low=st.integers(1, 300),
    span=st.integers(0, 6000),
)
def test_smart_resize_equals_qwens(height: int, width: int, low: int, span: int) -> None:
    min_pixels, max_pixels = low * TOKEN_PX, (low + span) * TOKEN_PX
    try:
        expected = qwen_smart_resize(height, width, 28, min_pixels, max_pixels)
    except ValueError:
        with pytest.raises(AspectRatioError):
            smart_resize(height, width, 28, min_pixels, max_pixels)
        return
    assert smart_resize(height, width, 28, min_pixels, max_pixels) == expected


def test_released_values() -> None:
    train, evaluation = released_train(), released_eval()
    assert (train.inputs.min_pixels, train.inputs.max_pixels) == (4 * 784, 2000 * 784)
    assert (train.crops.min_pixels, train.crops.max_pixels) == (4 * 784, 1000 * 784)
    assert evaluation.inputs.max_pixels == 8000 * 784
    assert (evaluation.crops.min_pixels, evaluation.crops.max_pixels) == (256 * 784, 5120 * 784)
    assert (train.processor.min_pixels, train.processor.max_pixels) == (256 * 784, 5120 * 784)
    assert pixel_budget("released-train") == train
    assert pixel_budget("released-eval") == evaluation
    with pytest.raises(ValueError, match="unknown pixel budget"):
        pixel_budget("huge")


def test_released_frame_sizes() -> None:
    """Broke: selected frames used the crop range in both presets. The release's training
    resizes them into 4..400 tokens (``select_maxsize``); its eval does not resize them."""
    train, evaluation = released_train(), released_eval()
    assert train.frames is not None
    assert (train.frames.min_pixels, train.frames.max_pixels) == (4 * 784, 400 * 784)
    assert evaluation.frames is None


@pytest.mark.parametrize("name", ["released-train", "released-eval"])
def test_frames_as_crops_variants(name: str) -> None:
    """Our earlier choice stays selectable by name: the release's values, frames resized like crops."""
    base, variant = pixel_budget(name), pixel_budget(f"{name}-frames-as-crops")
    assert variant == frames_as_crops(base) == base.replace(frames=base.crops)
    assert variant.replace(frames=base.frames) == base


def test_resize_is_idempotent_and_keeps_sized_images() -> None:
    rng = PixelRange(4 * TOKEN_PX, 144 * TOKEN_PX)
    image = Image.new("RGB", (1000, 700))
    once = rng.resize(image)
    assert once.size == rng.target_size(1000, 700) and once.width % 28 == 0 and once.height % 28 == 0
    assert rng.resize(once) is once
    assert once.width * once.height <= 144 * TOKEN_PX


def test_refuses_non_positive_sizes() -> None:
    with pytest.raises(ValueError, match="positive"):
        smart_resize(0, 10)
