"""Visual operations: crop geometry, image numbering, frame selection and their error texts."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pixelreasoner.vision.budget import (
    TOKEN_PX,
    PixelRange,
    pixel_budget,
    released_eval,
    released_train,
    smart_resize,
)
from pixelreasoner.vision.ops import (
    VisualContext,
    crop_image_normalized,
    crop_text,
    error_text,
    frames_text,
    normalized_box,
    pixel_box,
    select_frames,
)

BUDGET = released_train()


def coded_image(width: int, height: int, seed: int = 0) -> Image.Image:
    """An image whose every pixel is distinct enough to tell crops apart."""
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def crop_of(context: VisualContext, bbox: object, target: object = 1):
    return crop_image_normalized(context, bbox, target, BUDGET)


# ---------------------------------------------------------------- geometry (pure functions)
@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        # centre box: [0.42-0.1, 0.31-0.1, 0.58+0.1, 0.47+0.1] = [0.32, 0.21, 0.68, 0.57]
        # x 640: 204.8 -> 205, 435.2 -> 435; y 480: 100.8 -> 101, 273.6 -> 274
        ([0.42, 0.31, 0.58, 0.47], (205, 101, 435, 274)),
        # top-left border: padding clipped at 0 -> [0, 0, 0.3, 0.3] -> (0, 0, 192, 144)
        ([0.0, 0.0, 0.2, 0.2], (0, 0, 192, 144)),
        # box touching 1.0 is normalized (the release read it as pixels): [0.4, 0.4, 1, 1]
        ([0.5, 0.5, 1.0, 1.0], (256, 192, 640, 480)),
        # the whole image stays the whole image
        ([0.0, 0.0, 1.0, 1.0], (0, 0, 640, 480)),
        # negative values are normalized and clipped: [-0.6, -0.6, 0.4, 0.4] -> [0, 0, 0.4, 0.4]
        ([-0.5, -0.5, 0.3, 0.3], (0, 0, 256, 192)),
        # pixels: x 100/640 = 0.15625 - 0.1 = 0.05625 -> 36; y 50/480 = 0.10417 - 0.1 -> 2.0 -> 2
        # x2 300/640 = 0.46875 + 0.1 = 0.56875 -> 364; y2 250/480 = 0.52083 + 0.1 -> 298
        ([100, 50, 300, 250], (36, 2, 364, 298)),
        # pixels past the border clip to it
        ([600, 400, 900, 900], (536, 352, 640, 480)),
        # a point grows to a 0.2 x 0.2 box through the padding: [0.4, 0.4, 0.6, 0.6]
        ([0.5, 0.5, 0.5, 0.5], (256, 192, 384, 288)),
    ],
    ids=["centre", "border", "one-point-zero", "whole", "negative", "pixels", "pixels-past-border", "point"],
)
def test_pixel_box(bbox: list[float], expected: tuple[int, int, int, int]) -> None:
    assert pixel_box(bbox, 640, 480) == expected


def test_pixel_box_matches_pil_rounding() -> None:
    image = coded_image(640, 480)
    bbox = [0.123, 0.456, 0.789, 0.9]
    ours = image.crop(pixel_box(bbox, 640, 480))
    x1, y1, x2, y2 = normalized_box(bbox, 640, 480)
    pil = image.crop((x1 * 640, y1 * 480, x2 * 640, y2 * 480))  # PIL rounds float boxes itself
    assert ours.size == pil.size and ours.tobytes() == pil.tobytes()


# ---------------------------------------------------------------- crop_image_normalized
def test_crop_returns_resized_region_and_exact_text() -> None:
    image = coded_image(640, 480)
    result = crop_of(VisualContext(images=[image]), [0.42, 0.31, 0.58, 0.47])
    assert result.ok and result.error is None and len(result.images) == 1
    # the region is 230x173 px; smart_resize into 4..1000 tokens rounds to multiples of 28
    h, w = smart_resize(173, 230, 28, 4 * TOKEN_PX, 1000 * TOKEN_PX)
    assert result.images[0].size == (w, h) == (224, 168)
    assert result.text == "\nHere is the cropped image (Image Size: 224x168):" == crop_text(224, 168)
    expected = image.crop((205, 101, 435, 274)).resize((224, 168), Image.Resampling.BICUBIC)
    assert result.images[0].tobytes() == expected.tobytes()


def test_eval_budget_upscales_small_crops() -> None:
    result = crop_image_normalized(
        VisualContext(images=[coded_image(640, 480)]), [0.42, 0.31, 0.58, 0.47], 1, released_eval()
    )
    w, h = result.images[0].size
    assert w * h >= 256 * TOKEN_PX and w % 28 == 0 and h % 28 == 0


@pytest.mark.parametrize(
    ("bbox", "message"),
    [
        ([0.6, 0.6, 0.4, 0.4], "x1 <= x2 and y1 <= y2"),
        ([0.1, 0.6, 0.4, 0.4], "x1 <= x2 and y1 <= y2"),
        ([0.1, 0.2, 0.3], "list of four numbers"),
        ("0.1, 0.2, 0.3, 0.4", "list of four numbers"),
        ([0.1, "0.2", 0.3, 0.4], "must be a number"),
        ([0.1, True, 0.3, 0.4], "must be a number"),
        ([0.1, None, 0.3, 0.4], "must be a number"),
        ([0.1, float("nan"), 0.3, 0.4], "finite"),
        ([0.1, 0.2, float("inf"), 0.4], "finite"),
        ([0.1, 0.2, 10**400, 0.4], "out of range"),
    ],
    ids=[
        "inverted",
        "inverted-x",
        "three",
        "string",
        "string-value",
        "bool",
        "null",
        "nan",
        "inf",
        "huge-int",
    ],
)
def test_bad_boxes_are_error_observations(bbox: object, message: str) -> None:
    result = crop_of(VisualContext(images=[coded_image(640, 480)]), bbox)
    assert not result.ok and result.images == ()
    assert message in (result.error or "")
    assert result.text == error_text(result.error or "") and result.text.startswith("\nExecution error:\n")


def test_too_small_crop_reports_its_size() -> None:
    # 100x100 image, [0.45, 0.45, 0.5, 0.5] padded -> [0.35, 0.35, 0.6, 0.6] -> 35..60 = 25 px
    result = crop_of(VisualContext(images=[coded_image(100, 100)]), [0.45, 0.45, 0.5, 0.5])
    assert result.error is not None and "too small: 25x25" in result.error


def test_crop_just_above_28_pixels_is_allowed() -> None:
    # 290 px wide: [0.45, 0.45, 0.45, 0.45] -> [0.35, 0.55] -> 101.5 -> 102 (banker's: 102), 159.5 -> 160
    result = crop_of(VisualContext(images=[coded_image(290, 290)]), [0.45, 0.45, 0.45, 0.45])
    assert result.ok


def test_elongated_crop_is_refused_by_smart_resize() -> None:
    # 6100x30 whole-image crop has aspect ratio 203 > 200
    result = crop_of(VisualContext(images=[coded_image(6100, 30)]), [0, 0, 1, 1])
    assert result.error is not None and "elongated" in result.error


@pytest.mark.parametrize(
    ("target", "message"),
    [
        (0, "numbered from 1 to 1"),
        (-1, "numbered from 1 to 1"),
        (2, "numbered from 1 to 1"),
        (1.5, "whole number"),
        ("1", "must be a number"),
        (True, "must be a number"),
        ([1], "must be a number"),
    ],
    ids=["zero", "negative", "past-end", "fraction", "string", "bool", "list"],
)
def test_target_image_out_of_range(target: object, message: str) -> None:
    result = crop_of(VisualContext(images=[coded_image(640, 480)]), [0.2, 0.2, 0.6, 0.6], target)
    assert result.error is not None and message in result.error


def test_integral_float_target_is_accepted() -> None:
    assert crop_of(VisualContext(images=[coded_image(640, 480)]), [0.2, 0.2, 0.6, 0.6], 1.0).ok


def test_text_only_query_has_nothing_to_crop() -> None:
    result = crop_of(VisualContext(), [0.2, 0.2, 0.6, 0.6])
    assert result.error == "There is no image to crop."


def test_multi_image_target_selects_the_right_original() -> None:
    first, second = coded_image(400, 300, seed=1), coded_image(400, 300, seed=2)
    result = crop_of(VisualContext(images=[first, second]), [0.0, 0.0, 1.0, 1.0], 2)
    size = result.images[0].size
    assert result.images[0].tobytes() == second.resize(size, Image.Resampling.BICUBIC).tobytes()


def test_crop_of_crop_targets_the_returned_image() -> None:
    original = coded_image(640, 480)
    context = VisualContext(images=[original])
    first = crop_of(context, [0.3, 0.3, 0.7, 0.7])
    context.add(first)
    assert len(context.crop_targets()) == 2
    second = crop_of(context, [0.0, 0.0, 1.0, 1.0], 2)
    returned = first.images[0]
    assert second.ok
    expected = BUDGET.crops.resize(returned)
    assert second.images[0].tobytes() == expected.tobytes()
    # target 3 does not exist yet
    assert "numbered from 1 to 2" in (crop_of(context, [0, 0, 1, 1], 3).error or "")


# ---------------------------------------------------------------- select_frames and video numbering
def video_context(frames: int = 16) -> VisualContext:
    return VisualContext(video=[coded_image(320, 240, seed=i) for i in range(frames)])


def test_select_frames_text_and_numbering_follow_the_release() -> None:
    context = video_context()
    first = select_frames(context, [3, 4], BUDGET)
    assert BUDGET.frames is not None
    w, h = BUDGET.frames.target_size(320, 240)
    # the release counts the video as one item: the first selection is "Numbered 1 to 2"
    assert (
        first.text
        == frames_text(w, h, 1, 2)
        == f"\nHere are the selected frames (Frame Size: {w}x{h}, Numbered 1 to 2):"
    )
    assert [im.size for im in first.images] == [(w, h)] * 2
    assert first.images[1].tobytes() == BUDGET.frames.resize(context.video[3]).tobytes()  # type: ignore[index]
    context.add(first)
    second = select_frames(context, [16], BUDGET)
    # still counted as the release counts (the video as one item), although these two frames
    # are target_image 2 and 3 and the new one is 4
    assert second.text.endswith("Numbered 3 to 3):")


def test_video_crop_targets_the_frames_before_anything_was_returned() -> None:
    context = video_context()
    # before anything is returned, target_image counts the video's frames
    on_frame = crop_of(context, [0, 0, 1, 1], 16)
    assert on_frame.ok
    assert on_frame.images[0].tobytes() == BUDGET.crops.resize(context.video[15]).tobytes()  # type: ignore[index]
    assert "the video's frames are numbered from 1 to 16" in (crop_of(context, [0, 0, 1, 1], 17).error or "")


def test_video_crop_after_a_selection_counts_the_video_as_image_1() -> None:
    """Broke: after ``select_frames``, ``target_image=1`` cropped the first returned frame.

    The release numbers ``[video, returned_1, returned_2, ...]`` from 1 and refuses 1 once
    something was returned, so a released checkpoint's ``target_image=2`` (the first returned
    frame) cropped the second frame or failed.
    """
    context = video_context()
    selection = select_frames(context, [5, 6], BUDGET)
    context.add(selection)
    first, second = selection.images
    assert crop_of(context, [0, 0, 1, 1], 2).images[0].tobytes() == BUDGET.crops.resize(first).tobytes()
    assert crop_of(context, [0, 0, 1, 1], 3).images[0].tobytes() == BUDGET.crops.resize(second).tobytes()
    for bad in (1, 4, 0):
        refused = crop_of(context, [0, 0, 1, 1], bad)
        assert refused.error is not None and refused.images == ()
        assert "numbered from 2 to 3" in refused.error, refused.error
    assert "1 is the video" in (crop_of(context, [0, 0, 1, 1], 1).error or "")


def test_video_crop_of_a_crop_targets_image_2() -> None:
    """Broke: a crop of a video frame became image 1, so ``target_image=2`` (the release's
    number for it) was out of range and ``target_image=1`` re-cropped the crop."""
    context = video_context()
    zoom = crop_of(context, [0.0, 0.0, 0.5, 0.5], 7)
    context.add(zoom)
    again = crop_of(context, [0, 0, 1, 1], 2)
    assert again.ok and again.images[0].tobytes() == BUDGET.crops.resize(zoom.images[0]).tobytes()
    assert "numbered from 2 to 2" in (crop_of(context, [0, 0, 1, 1], 1).error or "")
    # the numbering keeps counting after more images come back
    context.add(again)
    assert crop_of(context, [0, 0, 1, 1], 3).ok
    assert "numbered from 2 to 3" in (crop_of(context, [0, 0, 1, 1], 4).error or "")


def test_released_eval_returns_selected_frames_unresized() -> None:
    """Broke: ``released-eval`` upscaled selected frames into 256..5120 tokens (56x56 came back
    448x448); the release's eval returns them as they are and reports that size."""
    frames = [coded_image(56, 56, seed=i) for i in range(4)]
    result = select_frames(VisualContext(video=frames), [2, 3], released_eval())
    assert result.ok and [im.size for im in result.images] == [(56, 56)] * 2
    assert result.images[0].tobytes() == frames[1].tobytes()
    assert result.text == frames_text(56, 56, 1, 2)
    # not a multiple of 28 either: the text reports the frame's own size
    odd = select_frames(VisualContext(video=[coded_image(100, 75)]), [1], released_eval())
    assert odd.images[0].size == (100, 75) and "Frame Size: 100x75," in odd.text


def test_released_train_caps_selected_frames_at_400_tokens() -> None:
    """Broke: ``released-train`` resized selected frames into the crop range (up to 1000 tokens);
    the release's training resizes them to 4..400 tokens (``select_maxsize``)."""
    result = select_frames(VisualContext(video=[coded_image(1280, 960)]), [1], released_train())
    h, w = smart_resize(960, 1280, 28, 4 * TOKEN_PX, 400 * TOKEN_PX)
    assert result.images[0].size == (w, h) and w * h <= 400 * TOKEN_PX
    assert result.text == frames_text(w, h, 1, 1)


def test_frames_as_crops_presets_keep_resizing_frames_like_crops() -> None:
    small = VisualContext(video=[coded_image(56, 56)])
    result = select_frames(small, [1], pixel_budget("released-eval-frames-as-crops"))
    assert result.images[0].size == (448, 448)  # 256 tokens, the eval crop minimum
    big = VisualContext(video=[coded_image(1280, 960)])
    result = select_frames(big, [1], pixel_budget("released-train-frames-as-crops"))
    assert result.images[0].size == released_train().crops.target_size(1280, 960)


def test_unresized_frames_still_refuse_extreme_aspect_ratios() -> None:
    # the processor would refuse to encode a 6100x30 frame; the call fails instead of the render
    result = select_frames(VisualContext(video=[coded_image(6100, 30)]), [1], released_eval())
    assert result.error is not None and "elongated" in result.error


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        ([], "empty"),
        (list(range(1, 10)), "no more than 8"),
        ([0], "numbered from 1 to 16"),
        ([-1], "numbered from 1 to 16"),
        ([17], "numbered from 1 to 16"),
        ([2.5], "whole number"),
        (["3"], "must be a number"),
        (3, "must be a list"),
        (None, "must be a list"),
    ],
    ids=["empty", "nine", "zero", "negative", "past-end", "fraction", "string", "scalar", "null"],
)
def test_bad_frame_selections(frames: object, message: str) -> None:
    result = select_frames(video_context(), frames, BUDGET)
    assert result.error is not None and message in result.error and result.images == ()


def test_select_frames_on_an_image_query() -> None:
    result = select_frames(VisualContext(images=[coded_image(64, 64)]), [1], BUDGET)
    assert result.error is not None and "no video" in result.error


def test_context_rejects_images_and_video_together() -> None:
    with pytest.raises(ValueError, match="either images or one video"):
        VisualContext(images=[coded_image(64, 64)], video=[coded_image(64, 64)])


def test_pixel_range_validation() -> None:
    with pytest.raises(ValueError):
        PixelRange(10, 5)
