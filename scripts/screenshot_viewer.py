"""Build a demo trajectory page with real crop / frame calls and, if chromium is installed, screenshot it.

    python scripts/screenshot_viewer.py /tmp/viewer_demo.html [--screenshot /tmp/viewer.png]

The page holds four hand-made trajectories whose tool calls are executed by the real operations
(:func:`pixelreasoner.protocol.turns.execute_turn`) under the ``tiny`` pixel budget:

1. needle, recrop: an erroneous crop of the wrong cell, the right crop, a zoom into the returned
   crop (``target_image=3``) and the answer; its prose contains ``<script>`` to show escaping;
2. needle, errors: a crop of a non-existent image and one with a reversed box (two error
   observations), a tiny corner box (padded and clipped), a pixel-coordinate crop and a wrong answer;
3. frames (video): ``select_frames`` of the red frame and a neighbour, then a crop of the
   red frame as returned (``target_image=2``: after a return image 1 is the video itself, 2 the
   first returned image) and the answer;
4. a question whose image file is missing (the placeholder; finish reason ``bad_input``).

With ``chromium`` (or ``chromium-browser``) on PATH it runs
``chromium --headless --no-sandbox --screenshot=OUT.png --window-size=W,H file://PAGE`` and prints
where the PNG is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from pixelreasoner.protocol.turns import execute_turn
from pixelreasoner.tasks.families import make_family
from pixelreasoner.trajectory import Conversation, Trajectory, VideoPart
from pixelreasoner.viewer import write_page
from pixelreasoner.vision.budget import PixelBudget, tiny
from pixelreasoner.vision.ops import CROP_TOOL, FRAMES_TOOL, VisualContext


def _call(prose: str, name: str, arguments: dict[str, object]) -> str:
    payload = json.dumps({"name": name, "arguments": arguments})
    return f"{prose}\n\n<tool_call>\n{payload}\n</tool_call>"


class _Run:
    """A conversation grown turn by turn, its tool calls executed for real (as the rollout engine does)."""

    def __init__(self, trajectory: Trajectory, context: VisualContext, budget: PixelBudget) -> None:
        self.trajectory, self.context, self.budget = trajectory, context, budget

    def turn(self, text: str, *, erroneous: bool = False) -> None:
        traj = self.trajectory
        traj.conversation.add_model_turn(text, erroneous=erroneous)
        observation = execute_turn(text, self.context, self.budget)
        if observation is None:
            traj.finish_reason = "answer"
            return
        traj.n_calls += 1
        traj.n_failed += observation.error is not None
        traj.final_error = observation.error is not None
        traj.conversation.add_observation(observation)
        self.context.add(observation)


def needle_recrop(budget: PixelBudget) -> tuple[Trajectory, str]:
    sample = make_family("needle").sample(0)
    image = sample.images[0]
    row, col = sample.meta["cell"]
    cue = sample.cue_bbox or [0.0, 0.0, 1.0, 1.0]
    wrong_col = (col + 2) % 5
    wrong = [round(wrong_col / 5, 3), cue[1], round((wrong_col + 1) / 5, 3), cue[3]]
    run = _Run(
        Trajectory(Conversation.from_question(sample.question, [image]), qid="needle-0-recrop"),
        VisualContext.for_query([image], budget=budget),
        budget,
    )
    run.turn(
        _call(
            f"The red cell should be in row {row + 1}. Let me zoom in on column {wrong_col + 1}.",
            CROP_TOOL,
            {"bbox_2d": wrong, "target_image": 1},
        ),
        erroneous=True,
    )
    run.turn(
        _call(
            f"That crop has no red cell, I looked at the wrong column. The red cell is in row {row + 1}, "
            f"column {col + 1} (not <script>alert('x')</script> & co).",
            CROP_TOOL,
            {"bbox_2d": cue, "target_image": 1},
        )
    )
    run.turn(
        _call(
            "Zooming further into the centre of the returned crop (image 3).",
            CROP_TOOL,
            {"bbox_2d": [0.25, 0.25, 0.75, 0.75], "target_image": 3},
        )
    )
    finding = sample.meta["answer_text"]
    run.turn(f"Now I can see it: the red cell is filled with {finding}. \\boxed{{{sample.answer}}}")
    return run.trajectory, sample.answer


def needle_errors(budget: PixelBudget) -> tuple[Trajectory, str]:
    sample = make_family("needle").sample(3)
    image = sample.images[0]
    cue = sample.cue_bbox or [0.0, 0.0, 1.0, 1.0]
    context = VisualContext.for_query([image], budget=budget)
    run = _Run(
        Trajectory(Conversation.from_question(sample.question, [image]), qid="needle-3-errors"),
        context,
        budget,
    )
    run.turn(_call("Let me look at the second image.", CROP_TOOL, {"bbox_2d": cue, "target_image": 2}))
    run.turn(
        _call(
            "There is one image only. The red cell is at the bottom left:",
            CROP_TOOL,
            {"bbox_2d": [cue[2], cue[3], cue[0], cue[1]], "target_image": 1},
        )
    )
    run.turn(
        _call(
            "A tiny box at the very corner (padding and clipping make it 0.11 wide):",
            CROP_TOOL,
            {"bbox_2d": [0.0, 0.0, 0.01, 0.01], "target_image": 1},
        )
    )
    view_w, view_h = context.view_size(0)
    pixels = [round(cue[0] * view_w), round(cue[1] * view_h), round(cue[2] * view_w), round(cue[3] * view_h)]
    run.turn(
        _call(
            f"The model sees the image at {view_w}x{view_h}; a box in those pixels:",
            CROP_TOOL,
            {"bbox_2d": pixels, "target_image": 1},
        )
    )
    wrong = "A" if sample.answer != "A" else "B"
    run.turn(f"I think it is option {wrong}. \\boxed{{{wrong}}}")
    return run.trajectory, sample.answer


def frames_select(budget: PixelBudget) -> tuple[Trajectory, str]:
    sample = make_family("frames").sample(0)
    frames = sample.images
    marked = sample.meta["frame"]
    neighbour = marked + 1 if marked < len(frames) else marked - 1
    run = _Run(
        Trajectory(
            Conversation.from_question(sample.question, video=VideoPart(frames=tuple(frames))),
            qid="frames-0",
        ),
        VisualContext.for_query(video=frames, budget=budget),
        budget,
    )
    run.turn(
        _call(
            f"Frame {marked} has a red background. Let me look at it and frame {neighbour}.",
            FRAMES_TOOL,
            {"target_frames": [marked, neighbour]},
        )
    )
    run.turn(
        _call(
            "Zooming into the middle of the red frame (returned image 2).",
            CROP_TOOL,
            {"bbox_2d": [0.3, 0.3, 0.7, 0.7], "target_image": 2},
        )
    )
    run.turn(f"The red frame shows {sample.meta['answer_text']}. \\boxed{{{sample.answer}}}")
    return run.trajectory, sample.answer


def missing_image() -> tuple[Trajectory, str]:
    path = "/nonexistent/missing-image.png"
    conversation = Conversation.from_question("What is in this image? <b>not bold</b>", [path])
    traj = Trajectory(
        conversation,
        qid="missing-image",
        finish_reason="bad_input",
        error=f"ImageLoadError: {path}: file not found",
    )
    return traj, "cat"


def build_page(path: Path) -> Path:
    budget = tiny()
    items = [needle_recrop(budget), needle_errors(budget), frames_select(budget), missing_image()]
    trajectories = [t for t, _ in items]
    golds = [g for _, g in items]
    correct = [t.final_text.rstrip().endswith(f"\\boxed{{{g}}}") for t, g in items]
    return write_page(path, trajectories, "Pixel Reasoner trajectories (demo)", golds, correct, budget=budget)


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def screenshot(page: Path, out: Path, window: str = "1400,2400", timeout: float = 120.0) -> Path:
    """Headless screenshot of ``page`` with chromium; raises if chromium fails or writes nothing."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("chromium is not on PATH")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        command = [
            browser,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--screenshot={out}",
            f"--window-size={window}",
            page.resolve().as_uri(),
        ]
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    if not out.exists():
        raise RuntimeError(
            f"chromium wrote no screenshot (exit {result.returncode}):\n{result.stderr[-2000:]}"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("page", type=Path, help="where to write the HTML page")
    parser.add_argument("--screenshot", type=Path, default=None, help="PNG path (default: PAGE with .png)")
    parser.add_argument("--window-size", default="1400,2400", help="chromium window size W,H")
    args = parser.parse_args(argv)

    page = build_page(args.page)
    print(f"page: {page}")
    if find_chromium() is None:
        print("chromium not found on PATH: no screenshot taken")
        return 0
    shot = screenshot(page, args.screenshot or page.with_suffix(".png"), args.window_size)
    print(f"screenshot: {shot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
