"""The trajectory viewer: page contents and escaping, box geometry, numbering replay, placeholders."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pixelreasoner.protocol.turns import execute_turn
from pixelreasoner.trajectory import Conversation, Trajectory, TurnKind, VideoPart
from pixelreasoner.viewer import (
    CUT_COLOR,
    LINE_WIDTH,
    REQUESTED_COLOR,
    boxed_answer,
    crop_overlay,
    render_page,
    render_trajectory_html,
    write_page,
)
from pixelreasoner.vision.budget import tiny
from pixelreasoner.vision.ops import CROP_TOOL, FRAMES_TOOL, Observation, VisualContext, pixel_box

ROOT = Path(__file__).resolve().parent.parent
WHITE = (255, 255, 255)
OVERLAY_SRC = re.compile(r'<img class="overlay" src="data:image/png;base64,([^"]+)"')


def call(prose: str, name: str, **arguments: object) -> str:
    return f"{prose}\n<tool_call>\n{json.dumps({'name': name, 'arguments': arguments})}\n</tool_call>"


def run(traj: Trajectory, context: VisualContext, text: str, *, erroneous: bool = False) -> None:
    """Append a model turn and, for a tool call, execute it and append the observation (as the engine)."""
    traj.conversation.add_model_turn(text, erroneous=erroneous)
    obs = execute_turn(text, context, tiny())
    if obs is None:
        return
    traj.n_calls += 1
    traj.n_failed += obs.error is not None
    traj.final_error = obs.error is not None
    traj.conversation.add_observation(obs)
    context.add(obs)


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB")


def overlays(page: str) -> list[Image.Image]:
    return [decode(m) for m in OVERLAY_SRC.findall(page)]


def band(shape: tuple[int, int], box: tuple[int, int, int, int], width: int = LINE_WIDTH) -> np.ndarray:
    """Mask of the ``width``-px band inside the inclusive box ``(x0, y0, x1, y1)``."""
    x0, y0, x1, y1 = box
    mask = np.zeros(shape, dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = True
    mask[y0 + width : y1 - width + 1, x0 + width : x1 - width + 1] = False
    return mask


def demo_trajectory() -> Trajectory:
    """A 200x200 image: an erroneous crop, a good crop, a crop of the returned image, a bad index,
    a too-small crop (an error drawn on the image) and an answer with hostile text."""
    image = Image.new("RGB", (200, 200), (230, 230, 230))
    traj = Trajectory(Conversation.from_question("Which <b>pattern</b> & why?", [image]), qid="q-1")
    ctx = VisualContext.for_query([image], budget=tiny())
    run(
        traj,
        ctx,
        call("Wrong place first.", CROP_TOOL, bbox_2d=[0.0, 0.0, 0.3, 0.3], target_image=1),
        erroneous=True,
    )
    run(traj, ctx, call("Look at the right side.", CROP_TOOL, bbox_2d=[0.5, 0.2, 0.9, 0.8], target_image=1))
    run(traj, ctx, call("Closer, inside image 3.", CROP_TOOL, bbox_2d=[0.2, 0.2, 0.8, 0.8], target_image=3))
    run(traj, ctx, call("Image 9?", CROP_TOOL, bbox_2d=[0.1, 0.1, 0.5, 0.5], target_image=9))
    run(traj, ctx, call("A tiny corner.", CROP_TOOL, bbox_2d=[0.0, 0.0, 0.01, 0.01], target_image=1))
    run(traj, ctx, "It is <script>alert('x')</script> & more: \\boxed{B}")
    return traj


# ------------------------------------------------------------------------------------ contents
def test_page_contains_turns_images_errors_and_counts() -> None:
    traj = demo_trajectory()
    assert (traj.n_calls, traj.n_failed, traj.final_error) == (5, 2, True)
    page = render_page([traj], "demo <title>", golds=["B"], correct=[True])
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")

    flat = page.replace('<span class="toolcall">', "").replace("</span>", "")
    for turn in traj.conversation.turns:
        assert html.escape(turn.text, quote=True) in flat, turn.text[:40]
    assert page.count('<span class="toolcall">') == 5

    # one <img> per image (question 1 + returned 3) plus one overlay per crop drawn (3 ok + the
    # too-small one; the bad index has no image to draw on)
    returned = sum(len(t.images) for t in traj.conversation.turns if t.kind is TurnKind.OBSERVATION)
    assert returned == 3
    assert page.count('<img class="overlay"') == 4
    assert page.count("<img") == 1 + returned + 4

    errors = [t.error for t in traj.conversation.turns if t.error]
    assert len(errors) == 2
    for message in errors:
        assert f"✘ error: {html.escape(message, quote=True)}" in page
    assert page.count('class="turn observation error"') == 2
    assert "erroneous (not learned)" in page and page.count('class="turn erroneous"') == 1
    assert "the call failed: nothing was returned" in page  # the too-small crop, drawn

    for key, value in [("qid", "q-1"), ("n_calls", 5), ("n_failed", 2), ("final_error", True)]:
        assert f'<span class="k">{key}</span><span class="v">{value}</span>' in page
    assert '<span class="k">answer</span><span class="v">B</span>' in page
    assert '<span class="k">gold</span><span class="v">B</span>' in page
    assert '<span class="k">correct</span><span class="v">✔</span>' in page
    assert '<a href="#t1">q-1</a>' in page and 'id="t1"' in page


def test_model_text_is_escaped_never_raw() -> None:
    page = render_page([demo_trajectory()], "<script>t</script>")
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "<script" not in page.lower()
    assert "&lt;b&gt;pattern&lt;/b&gt; &amp; why?" in page
    assert "http://" not in page and "https://" not in page  # no external assets


def test_section_and_answer_extraction() -> None:
    section = render_trajectory_html(demo_trajectory(), gold="C", correct=False)
    assert section.startswith('<section class="trajectory"') and section.endswith("</section>")
    assert '<span class="k">correct</span><span class="v">✘</span>' in section
    assert boxed_answer("so \\boxed{\\frac{1}{2}} or \\boxed{x^{2}}.") == "x^{2}"
    assert boxed_answer("no box") is None and boxed_answer("\\boxed{open") is None


# ------------------------------------------------------------------------------------ geometry
def test_overlay_box_drawn_at_padded_clipped_region() -> None:
    image = Image.new("RGB", (320, 240), WHITE)
    bbox = [0.6, 0.5, 0.95, 0.8]
    traj = Trajectory(Conversation.from_question("q", [image]))
    ctx = VisualContext.for_query([image], budget=tiny())
    run(traj, ctx, call("zoom", CROP_TOOL, bbox_2d=bbox, target_image=1))
    [shown] = overlays(render_trajectory_html(traj))
    assert shown.size == (320, 240)  # within the display limits: drawn at scale 1
    arr = np.asarray(shown)

    # padded by 0.1 and clipped at the right border: x 0.5..1.0, y 0.4..0.9
    assert pixel_box(bbox, 320, 240) == (160, 96, 320, 216)
    cut = band(arr.shape[:2], (160, 96, 319, 215))
    requested = band(arr.shape[:2], (192, 120, 303, 191))
    assert (arr[cut] == CUT_COLOR).all()
    assert {tuple(p) for p in arr[requested]} <= {REQUESTED_COLOR, WHITE}
    assert (arr[requested] == REQUESTED_COLOR).all(axis=1).mean() > 0.5  # dashed
    for x, y in [(192, 120), (303, 120), (192, 191), (303, 191)]:  # corners are always drawn
        assert tuple(arr[y, x]) == REQUESTED_COLOR
    assert (arr[~(cut | requested)] == 255).all()  # nothing drawn elsewhere
    assert tuple(arr[95, 250]) == WHITE and tuple(arr[150, 159]) == WHITE and tuple(arr[150, 250]) == WHITE


def test_overlay_scaled_for_display_and_pixel_boxes_use_the_view() -> None:
    image = Image.new("RGB", (800, 400), WHITE)
    # a pixel box in a 400x200 view = normalized [0.2, 0.4, 0.6, 0.8] -> cut [0.1, 0.3, 0.7, 0.9]
    shown = crop_overlay(image, [80, 80, 240, 160], view=(400, 200))
    assert shown.size == (384, 192)  # downscaled to the overlay width limit
    arr = np.asarray(shown)
    assert pixel_box([80, 80, 240, 160], 800, 400, (400, 200)) == (80, 120, 560, 360)
    scale = 384 / 800
    cut = (round(80 * scale), round(120 * scale), round(560 * scale) - 1, round(360 * scale) - 1)
    assert cut == (38, 58, 268, 172)
    req = (round(0.2 * 384), round(0.4 * 192), round(0.6 * 384) - 1, round(0.8 * 192) - 1)
    cut_mask, req_mask = band(arr.shape[:2], cut), band(arr.shape[:2], req)
    assert (arr[cut_mask] == CUT_COLOR).all()
    assert tuple(arr[req[1], req[0]]) == REQUESTED_COLOR
    assert (arr[~(cut_mask | req_mask)] == 255).all()


def test_crop_target_replays_image_numbering() -> None:
    """target_image=2 after one crop is the returned crop (portrait here), not the question image."""
    image = Image.new("RGB", (400, 300), WHITE)
    traj = Trajectory(Conversation.from_question("q", [image]))
    ctx = VisualContext.for_query([image], budget=tiny())
    run(traj, ctx, call("a", CROP_TOOL, bbox_2d=[0.0, 0.0, 0.3, 0.8], target_image=1))
    run(traj, ctx, call("b", CROP_TOOL, bbox_2d=[0.2, 0.2, 0.8, 0.8], target_image=2))
    page = render_trajectory_html(traj)
    first, second = overlays(page)
    assert first.width > first.height  # the 400x300 question image
    returned = traj.conversation.turns[3].images[0].image
    assert returned is not None and returned.height > returned.width
    assert second.height > second.width  # drawn on the returned portrait crop
    assert "crop of image 1" in page and "crop of image 2" in page
    assert "image 2 (returned)" in page and "image 3 (returned)" in page


def test_video_numbering_counts_returned_images_after_a_selection() -> None:
    """A video query numbers as the operations do: before a return ``target_image`` counts the
    frames; afterwards the list is [video, returned...] from 1, so the first returned frame is
    image 2 (``target_image=2`` crops it, drawn on frame 3, not frame 2) and the crop is image 3;
    ``target_image=1`` (the video) is then an error and gets no overlay."""
    colors = [(255, 0, 0), (0, 160, 0), (0, 0, 255), (250, 200, 0)]
    frames = [Image.new("RGB", (112, 112), c) for c in colors]
    traj = Trajectory(Conversation.from_question("q", video=VideoPart(frames=tuple(frames))))
    ctx = VisualContext.for_query(video=frames, budget=tiny())
    run(traj, ctx, call("f", FRAMES_TOOL, target_frames=[3]))
    run(traj, ctx, call("c", CROP_TOOL, bbox_2d=[0.3, 0.3, 0.7, 0.7], target_image=2))
    assert traj.n_failed == 0
    page = render_trajectory_html(traj)
    assert page.count('class="frame"') == 4 and "<figcaption>4</figcaption>" in page
    assert "image 2 (returned, frame 3)" in page and "image 3 (returned)" in page
    assert "crop of image 2" in page and "crop of frame" not in page
    [shown] = overlays(page)
    assert tuple(np.asarray(shown)[5, shown.width // 2]) == (0, 0, 255)  # frame 3, not frame 2
    assert page.count("<img") == 4 + 2 + 1

    run(traj, ctx, call("v", CROP_TOOL, bbox_2d=[0.3, 0.3, 0.7, 0.7], target_image=1))
    assert traj.n_failed == 1 and "numbered from 2 to 3" in (traj.conversation.turns[-1].error or "")
    assert len(overlays(render_trajectory_html(traj))) == 1  # the failed call on the video has none


# ------------------------------------------------------------------------------------ failures
def test_missing_and_broken_images_render_placeholders(tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    missing = tmp_path / "missing.png"
    conv = Conversation.from_question("q", [missing, broken])
    conv.add_model_turn(call("zoom", CROP_TOOL, bbox_2d=[0.1, 0.1, 0.5, 0.5], target_image=1))
    conv.add_observation(Observation.failure("the image could not be loaded", CROP_TOOL))
    traj = Trajectory(conv, qid="missing", n_calls=1, n_failed=1, final_error=True)

    page = render_page([traj], "t")
    assert page.count("image unavailable") == 3  # two question images and the overlay's target
    assert "missing.png" in page and "broken.png" in page and "file not found" in page
    assert "<img" not in page

    video = Conversation.from_question("q", video=VideoPart(paths=(str(missing), str(broken))))
    page = render_trajectory_html(Trajectory(video))
    assert page.count("image unavailable") == 2 and "<img" not in page


def test_write_page_is_atomic_and_checks_lengths(tmp_path: Path) -> None:
    traj = demo_trajectory()
    out = write_page(
        tmp_path / "sub" / "page.html", [traj, traj], "two", golds=["B", None], correct=[True, None]
    )
    assert out == tmp_path / "sub" / "page.html"
    text = out.read_text(encoding="utf-8")
    assert text.count('<section class="trajectory"') == 2 and 'id="t2"' in text
    assert [p.name for p in out.parent.iterdir()] == ["page.html"]  # no temporary file left
    with pytest.raises(ValueError, match="golds"):
        render_page([traj], "x", golds=["a", "b"])


# ------------------------------------------------------------------------------------ screenshot
@pytest.mark.slow
@pytest.mark.skipif(
    not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="chromium is not installed"
)
def test_screenshot_script(tmp_path: Path) -> None:
    page, png = tmp_path / "demo.html", tmp_path / "demo.png"
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "screenshot_viewer.py"), str(page), "--screenshot", str(png)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"screenshot: {png}" in result.stdout
    assert page.stat().st_size > 10_000 and png.stat().st_size > 10_000
    shot = np.asarray(Image.open(png).convert("RGB"))
    assert shot.shape[:2] == (2400, 1400)
    assert shot.std() > 20 and len(np.unique(shot.reshape(-1, 3), axis=0)) > 100  # not blank
    assert (shot == REQUESTED_COLOR).all(axis=-1).sum() > 50  # a crop box is on screen
