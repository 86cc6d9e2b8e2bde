"""Trajectories as a self-contained HTML page, so a person can see what the model did.

The page needs nothing else: the style sheet is inline, every image is embedded as a PNG data
URL and no JavaScript is used. For each trajectory it shows

- a header: qid, finish reason, turns, calls, failed calls, the unrepaired final error, the final
  ``\\boxed{}`` answer and, when given, the gold answer and whether the answer was right;
- the question with its images (a video as a numbered strip of frame thumbnails);
- every later turn in order: model turns as monospace text with the ``<tool_call>`` highlighted,
  erroneous turns greyed and labelled "erroneous (not learned)", tool observations with their
  returned images, and error observations in red with the error message;
- for every executed crop call, a copy of the image it was cut from with the *requested* box
  (dashed, :data:`REQUESTED_COLOR`) and the region actually cut (padded by 0.1 and clipped, solid,
  :data:`CUT_COLOR`), next to the returned crop.

Which image a crop targeted is found by replaying the trajectory through
:class:`pixelreasoner.vision.ops.VisualContext` itself (its ``crop_targets``, ``first_target`` and
``image_count``), so the page numbers images as the operations do (the released numbering):

- an image query counts the question's images, then each observation's returned images;
- a video query counts the video's frames (1..F) until an observation returns images. From then on
  the list is ``[video, returned_1, returned_2, ...]`` counted from 1; the video cannot be
  cropped, so the first returned image is ``target_image=2``.

Image captions use the same numbers, so ``target_image`` can be read off the page. (The text of a
``select_frames`` observation, "Numbered a to b", is the tool's own and reads one lower than the
returned frames' numbers here; the off-by-one is the release's, see :mod:`pixelreasoner.vision.ops`.)

Pixel (not normalized) boxes refer to the size at which the model saw a question image; pass the
run's ``budget`` to get it (``budget.inputs``), otherwise the image's own size is assumed.

All model and tool text is HTML-escaped; a broken or missing image becomes a visible placeholder
with the reason and never raises.
"""

from __future__ import annotations

import html
import math
import os
import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

from pixelreasoner.protocol.turns import ToolCall, parse_turn
from pixelreasoner.synth.teacher import image_data_url
from pixelreasoner.trajectory import ImagePart, Trajectory, Turn, TurnKind, VideoPart
from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.images import load_image
from pixelreasoner.vision.ops import CROP_TOOL, FRAMES_TOOL, VisualContext, normalized_box, pixel_box

DISPLAY_MAX_WIDTH = 512
"""Images wider than this are downscaled for display (boxes are drawn in scaled coordinates)."""

DISPLAY_MAX_HEIGHT = 640
DISPLAY_MIN_WIDTH = 192
"""Smaller images are enlarged (nearest neighbour, so pixels stay visible)."""

OVERLAY_MAX_WIDTH = 384
"""Display width limit of an image with a crop box drawn on it (shown beside the returned crop)."""

THUMB_WIDTH = 96
"""Width of a video frame thumbnail."""

REQUESTED_COLOR = (0, 90, 255)
"""The box as the model requested it (dashed)."""

CUT_COLOR = (0, 185, 70)
"""The region actually cut: the requested box padded by 0.1 on every side and clipped (solid)."""

LINE_WIDTH = 3
"""Width of the drawn boxes, in display pixels, inside the box edges."""

_TOOL_CALL = re.compile(r"<tool_call>.*?</tool_call>", re.DOTALL)


# ------------------------------------------------------------------------------------ images
@dataclass(frozen=True)
class _Visual:
    """An image as the page shows it: the decoded image, or why it could not be had."""

    image: Image.Image | None
    error: str | None = None
    view: tuple[int, int] | None = None  # size the model saw it at (pixel boxes refer to it)


def _load(source: Image.Image | str) -> _Visual:
    try:
        image = source if isinstance(source, Image.Image) else load_image(source)
        if image.mode != "RGB":
            image = image.convert("RGB")
        image.load()
    except Exception as exc:  # a viewer shows the failure instead of stopping
        return _Visual(None, f"{type(exc).__name__}: {exc}")
    return _Visual(image)


def _load_part(part: ImagePart) -> _Visual:
    return _load(part.image if part.image is not None else str(part.path))


def _load_video(part: VideoPart) -> list[_Visual]:
    return [_load(f) for f in part.frames] if part.frames else [_load(p) for p in part.paths]


def _fit(
    image: Image.Image,
    max_width: int = DISPLAY_MAX_WIDTH,
    max_height: int = DISPLAY_MAX_HEIGHT,
    min_width: int = 0,
) -> Image.Image:
    """A display copy: shrunk to fit ``max_width`` x ``max_height``, or enlarged to ``min_width``."""
    w, h = image.size
    scale = min(1.0, max_width / w, max_height / h)
    if scale == 1.0 and w < min_width:
        scale = min(min_width / w, max_height / h)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    if size == image.size:
        return image.convert("RGB").copy()
    method = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST
    return image.convert("RGB").resize(size, method)


def _requested_box(bbox: Sequence[float], view: tuple[int, int]) -> tuple[float, float, float, float]:
    """The requested box in [0, 1] coordinates, before padding (same reading as ``normalized_box``)."""
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(v <= 1 for v in (x1, y1, x2, y2)):
        x1, x2, y1, y2 = x1 / view[0], x2 / view[0], y1 / view[1], y2 / view[1]
    return x1, y1, x2, y2


def _dashed_rectangle(
    draw: ImageDraw.ImageDraw,
    box: tuple[int, int, int, int],
    color: tuple[int, int, int],
    width: int,
    dash: int = 10,
    gap: int = 6,
) -> None:
    """A dashed outline inside ``box`` (inclusive corners); every corner is drawn."""
    x0, y0, x1, y1 = box

    def runs(start: int, stop: int) -> Iterator[tuple[int, int]]:
        s = start
        while s <= stop:
            yield s, min(s + dash - 1, stop)
            s += dash + gap
        yield max(stop - dash + 1, start), stop

    top, bottom = (y0, min(y0 + width - 1, y1)), (max(y1 - width + 1, y0), y1)
    left, right = (x0, min(x0 + width - 1, x1)), (max(x1 - width + 1, x0), x1)
    for a, b in runs(x0, x1):
        draw.rectangle((a, top[0], b, top[1]), fill=color)
        draw.rectangle((a, bottom[0], b, bottom[1]), fill=color)
    for a, b in runs(y0, y1):
        draw.rectangle((left[0], a, left[1], b), fill=color)
        draw.rectangle((right[0], a, right[1], b), fill=color)


def crop_overlay(
    image: Image.Image,
    bbox: Sequence[float],
    view: tuple[int, int] | None = None,
    *,
    max_width: int = OVERLAY_MAX_WIDTH,
    min_width: int = 256,
) -> Image.Image:
    """A display copy of ``image`` with the crop of ``bbox`` drawn on it.

    The requested box is dashed in :data:`REQUESTED_COLOR`; the region actually cut (padded by
    0.1, clipped; the pixels of :func:`~pixelreasoner.vision.ops.pixel_box`) is solid in
    :data:`CUT_COLOR`. Both are drawn :data:`LINE_WIDTH` px wide *inside* their edges, so the
    outermost coloured pixels are the region's own border pixels. ``view`` is the size pixel
    boxes refer to (the image's own size by default). The copy is scaled to at most
    ``max_width`` (and at least ``min_width``) wide; boxes are scaled with it.
    """
    w, h = image.size
    view = view or (w, h)
    shown = _fit(image, max_width=max_width, min_width=min_width)
    sw, sh = shown.size
    sx, sy = sw / w, sh / h
    draw = ImageDraw.Draw(shown)

    left, top, right, bottom = pixel_box(bbox, w, h, view)
    cut = (round(left * sx), round(top * sy), round(right * sx) - 1, round(bottom * sy) - 1)
    if cut[2] >= cut[0] and cut[3] >= cut[1]:
        draw.rectangle(cut, outline=CUT_COLOR, width=LINE_WIDTH)

    x1, y1, x2, y2 = _requested_box(bbox, view)
    req = (
        max(0, round(x1 * sw)),
        max(0, round(y1 * sh)),
        min(sw - 1, max(round(x1 * sw), round(x2 * sw) - 1)),
        min(sh - 1, max(round(y1 * sh), round(y2 * sh) - 1)),
    )
    if req[2] >= req[0] and req[3] >= req[1]:
        _dashed_rectangle(draw, req, REQUESTED_COLOR, LINE_WIDTH)
    return shown


# ------------------------------------------------------------------------------------ html bits
def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _img(image: Image.Image, alt: str, css: str = "") -> str:
    cls = f' class="{css}"' if css else ""
    return (
        f'<img{cls} src="{image_data_url(image)}" width="{image.width}" height="{image.height}" '
        f'alt="{_e(alt)}">'
    )


def _placeholder(error: str | None, css: str = "") -> str:
    return f'<div class="placeholder {css}">image unavailable<br>{_e(error or "unknown error")}</div>'


def _figure(
    visual: _Visual, caption: str, *, max_width: int = DISPLAY_MAX_WIDTH, min_width: int = DISPLAY_MIN_WIDTH
) -> str:
    if visual.image is None:
        body = _placeholder(visual.error)
    else:
        try:
            shown = _fit(visual.image, max_width=max_width, min_width=min_width)
            size = f" · {visual.image.width}×{visual.image.height}"
            body = _img(shown, caption)
        except Exception as exc:
            body, size = _placeholder(f"{type(exc).__name__}: {exc}"), ""
        caption += size
    return f"<figure>{body}<figcaption>{_e(caption)}</figcaption></figure>"


def _thumb(visual: _Visual, number: int) -> str:
    if visual.image is None:
        body = _placeholder(visual.error, "thumb")
    else:
        try:
            shown = _fit(
                visual.image, max_width=THUMB_WIDTH, max_height=THUMB_WIDTH * 2, min_width=THUMB_WIDTH
            )
            body = _img(shown, f"frame {number}", "thumb")
        except Exception as exc:
            body = _placeholder(f"{type(exc).__name__}: {exc}", "thumb")
    return f'<figure class="frame">{body}<figcaption>{number}</figcaption></figure>'


def _model_text(text: str) -> str:
    """Escaped text with every ``<tool_call>...</tool_call>`` wrapped in a highlight."""
    out, pos = [], 0
    for match in _TOOL_CALL.finditer(text):
        out.append(_e(text[pos : match.start()]))
        out.append(f'<span class="toolcall">{_e(match.group())}</span>')
        pos = match.end()
    out.append(_e(text[pos:]))
    return "".join(out)


def boxed_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (nested braces allowed), or ``None``."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, begin = 1, start + len("\\boxed{")
    for i in range(begin, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[begin:i]
    return None


def _call_summary(call: ToolCall) -> str:
    if call.error is not None:
        name = f"{call.name} " if call.name else ""
        return f'<div class="callinfo bad">tool call {_e(name)}could not be read: {_e(call.error)}</div>'
    args = ", ".join(f"{k}={v!r}" for k, v in (call.arguments or {}).items())
    return f'<div class="callinfo">call: <b>{_e(call.name)}</b>({_e(args)})</div>'


# ------------------------------------------------------------------------------------ replay
@dataclass
class _Replay:
    """The images ``target_image`` can name, grown as the observations return images.

    The numbering is :class:`~pixelreasoner.vision.ops.VisualContext`'s own: ``context`` holds a
    1x1 stand-in for every image the page shows, and ``shown`` maps a stand-in (by identity) back to
    that image. A fresh stand-in per image keeps them apart even where a trajectory returns the
    very image object it was given, and lets images that failed to load keep their place.
    """

    context: VisualContext = field(default_factory=VisualContext)
    shown: dict[int, _Visual] = field(default_factory=dict)

    def _stand_in(self, visual: _Visual) -> Image.Image:
        stand_in = Image.new("1", (1, 1))
        self.shown[id(stand_in)] = visual  # the context keeps stand_in alive, so its id stays unique
        return stand_in

    def add_image(self, visual: _Visual) -> int:
        """Add a question image; returns its number."""
        self.context.images.append(self._stand_in(visual))
        return len(self.context.images)

    def set_video(self, frames: Sequence[_Visual]) -> None:
        """Set the question's video (the first one counts). Assigned rather than passed to the
        constructor: the page also shows questions that ``VisualContext`` would refuse (images and a
        video together), and then numbers them as it does for a video."""
        if self.context.video is None:
            self.context.video = [self._stand_in(v) for v in frames]

    def add_returned(self, visuals: Sequence[_Visual]) -> None:
        self.context.returned.extend(self._stand_in(v) for v in visuals)

    @property
    def targets_frames(self) -> bool:
        """Whether ``target_image`` counts the video's frames (a video query, nothing returned yet)."""
        return self.context.is_video and not self.context.returned

    def target(self, value: object) -> tuple[int, _Visual] | None:
        """The number ``value`` names and its image, or ``None`` when it names no crop target."""
        targets, first = self.context.crop_targets(), self.context.first_target
        number = _whole(value)
        if number is None or not first <= number < first + len(targets):
            return None
        return number, self.shown[id(targets[number - first])]

    def returned_number(self, offset: int) -> int:
        """The number an image gets when it is returned now (``offset`` within its observation)."""
        return self.context.image_count + offset + 1


def _whole(value: object) -> int | None:
    """``value`` as a whole number, or ``None`` when it is not one (as the tool call may hold anything)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value) if value == int(value) else None


def _box(value: object) -> tuple[float, float, float, float] | None:
    if not isinstance(value, list | tuple) or len(value) != 4:
        return None
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in value):
        return None
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(abs(v) < 1e12 for v in (x1, y1, x2, y2)) or x1 > x2 or y1 > y2:
        return None
    return x1, y1, x2, y2


def _overlay_figure(call: ToolCall, replay: _Replay, failed: bool) -> str:
    """The crop drawn on its target image, or "" when the call names no usable image or box."""
    args = call.arguments or {}
    found, box = replay.target(args.get("target_image")), _box(args.get("bbox_2d"))
    if found is None or box is None:
        return ""
    index, target = found
    word = "frame" if replay.targets_frames else "image"
    caption = f"crop of {word} {index}"
    if target.image is None:
        placeholder = _placeholder(target.error)
        return f'<figure class="overlay">{placeholder}<figcaption>{_e(caption)}</figcaption></figure>'
    try:
        w, h = target.image.size
        view = target.view or (w, h)
        shown = crop_overlay(target.image, box, view)
        px = pixel_box(box, w, h, view)
        nx1, ny1, nx2, ny2 = normalized_box(box, *view)
    except Exception as exc:
        return f'<figure class="overlay">{_placeholder(f"{type(exc).__name__}: {exc}")}</figure>'
    requested = "[" + ", ".join(f"{v:g}" for v in box) + "]"
    detail = (
        f'<span class="sw req"></span>requested {_e(requested)}'
        f'<br><span class="sw cut"></span>cut [{nx1:.3f}, {ny1:.3f}, {nx2:.3f}, {ny2:.3f}]'
        f"<br>= px ({px[0]}, {px[1]}, {px[2]}, {px[3]}) of {w}×{h}"
    )
    if failed:
        detail += '<br><span class="failed">the call failed: nothing was returned</span>'
    return (
        f'<figure class="overlay">{_img(shown, caption, "overlay")}'
        f"<figcaption>{_e(caption)}<br>{detail}</figcaption></figure>"
    )


# ------------------------------------------------------------------------------------ sections
def _header(trajectory: Trajectory, gold: str | None, correct: bool | None) -> str:
    answer = boxed_answer(trajectory.final_text)
    stats: list[tuple[str, object, str]] = [
        ("qid", trajectory.qid if trajectory.qid is not None else "—", ""),
        ("finish", trajectory.finish_reason, "" if trajectory.finish_reason == "answer" else "warn"),
        ("turns", trajectory.n_turns, ""),
        ("n_calls", trajectory.n_calls, ""),
        ("n_failed", trajectory.n_failed, "warn" if trajectory.n_failed else ""),
        ("final_error", trajectory.final_error, "bad" if trajectory.final_error else ""),
        ("answer", answer if answer is not None else "—", ""),
    ]
    if gold is not None:
        stats.append(("gold", gold, ""))
    if correct is not None:
        stats.append(("correct", "✔" if correct else "✘", "good" if correct else "bad"))
    if trajectory.prompt_tokens or trajectory.generated_tokens:
        stats.append(("tokens", f"{trajectory.prompt_tokens} + {trajectory.generated_tokens}", ""))
    items = "".join(
        f'<div class="stat {css}"><span class="k">{_e(k)}</span><span class="v">{_e(v)}</span></div>'
        for k, v, css in stats
    )
    error = f'<div class="errorbox">error: {_e(trajectory.error)}</div>' if trajectory.error else ""
    return f'<div class="stats">{items}</div>{error}'


def _section(
    trajectory: Trajectory,
    anchor: str,
    title: str | None,
    gold: str | None,
    correct: bool | None,
    budget: PixelBudget | None,
) -> str:
    turns = trajectory.conversation.turns
    first_user = next(
        (i for i, t in enumerate(turns) if t.role == "user" and t.kind is TurnKind.PROMPT), None
    )
    heading = title or (f"Trajectory {trajectory.qid}" if trajectory.qid is not None else "Trajectory")
    parts = [f'<section class="trajectory" id="{_e(anchor)}"><h2>{_e(heading)}</h2>']
    parts.append(_header(trajectory, gold, correct))

    # System turns before the question come first, then the question; both are skipped below.
    shown_above = {i for i, t in enumerate(turns[: first_user or 0]) if t.role == "system"}
    for i in sorted(shown_above):
        parts.append(_system(turns[i], i + 1))
    if first_user is not None:
        shown_above.add(first_user)

    replay = _Replay()
    if first_user is not None:
        question = turns[first_user]
        body: list[str] = []
        for part in question.parts:
            if isinstance(part, ImagePart):
                visual = _load_part(part)
                if visual.image is not None and budget is not None:
                    try:
                        view = budget.inputs.target_size(
                            visual.image.width, visual.image.height, budget.factor
                        )
                        visual = _Visual(visual.image, view=view)
                    except ValueError:  # AspectRatioError: the model never saw it anyway
                        pass
                body.append(_figure(visual, f"image {replay.add_image(visual)}"))
            elif isinstance(part, VideoPart):
                frames = _load_video(part)
                replay.set_video(frames)
                thumbs = "".join(_thumb(v, i + 1) for i, v in enumerate(frames))
                body.append(
                    f'<div class="video"><div class="sub">video: {len(frames)} frames at {part.fps:g} fps'
                    f'</div><div class="strip">{thumbs}</div></div>'
                )
        parts.append(
            '<div class="turn question"><div class="label">question</div>'
            f'<div class="figs">{"".join(body)}</div><pre>{_e(question.text)}</pre></div>'
        )

    pending: ToolCall | None = None
    pending_erroneous = False
    for number, turn in enumerate(turns, start=1):
        if number - 1 in shown_above:
            continue
        if turn.role == "system":
            parts.append(_system(turn, number))
        elif turn.role == "assistant":
            pending, pending_erroneous = _assistant(turn, number, parts)
        elif turn.kind is TurnKind.OBSERVATION:
            parts.append(_observation(turn, number, pending, pending_erroneous, replay))
            pending = None
        else:
            figs = "".join(_figure(_load_part(p), "image") for p in turn.images)
            parts.append(
                f'<div class="turn prompt"><div class="label">turn {number} · {_e(turn.role)}</div>'
                f'<div class="figs">{figs}</div><pre>{_e(turn.text)}</pre></div>'
            )
    parts.append("</section>")
    return "".join(parts)


def _system(turn: Turn, number: int) -> str:
    return (
        f'<details class="system"><summary>turn {number} · system prompt (click to show)</summary>'
        f"<pre>{_e(turn.text)}</pre></details>"
    )


def _assistant(turn: Turn, number: int, parts: list[str]) -> tuple[ToolCall | None, bool]:
    erroneous = turn.kind is TurnKind.ERRONEOUS
    parsed = parse_turn(turn.text)
    css = "erroneous" if erroneous else "model"
    label = "erroneous (not learned)" if erroneous else "model"
    if turn.token_ids is not None:
        label += f" · {len(turn.token_ids)} tokens"
    info = ""
    if parsed.call is not None:
        info = _call_summary(parsed.call)
    else:
        answer = boxed_answer(parsed.text)
        if answer is not None:
            info = f'<div class="callinfo answer">answer: <b>{_e(answer)}</b></div>'
    parts.append(
        f'<div class="turn {css}"><div class="label">turn {number} · {_e(label)}</div>'
        f"<pre>{_model_text(turn.text)}</pre>{info}</div>"
    )
    return parsed.call, erroneous


def _observation(
    turn: Turn, number: int, call: ToolCall | None, after_erroneous: bool, replay: _Replay
) -> str:
    failed = turn.error is not None
    figs: list[str] = []
    if call is not None and call.name == CROP_TOOL:
        overlay = _overlay_figure(call, replay, failed)
        if overlay:
            figs.append(overlay)
    returned = [_load_part(p) for p in turn.images]
    frames = (
        (call.arguments or {}).get("target_frames") if call is not None and call.name == FRAMES_TOOL else None
    )
    for offset, visual in enumerate(returned):
        caption = f"image {replay.returned_number(offset)} (returned"
        if isinstance(frames, list) and len(frames) == len(returned):
            caption += f", frame {frames[offset]}"
        figs.append(_figure(visual, caption + ")"))
    replay.add_returned(returned)

    label = "tool observation"
    if call is not None and call.name:
        label += f" · {call.name}"
    if after_erroneous:
        label += " · result of an erroneous call"
    css = "observation error" if failed else "observation"
    error = f'<div class="errormsg">✘ error: {_e(turn.error)}</div>' if failed else ""
    label_html = f'<div class="label">turn {number} · {_e(label)}</div>'
    figs_html = f'<div class="figs">{"".join(figs)}</div>' if figs else ""
    return f'<div class="turn {css}">{label_html}{error}<pre>{_e(turn.text)}</pre>{figs_html}</div>'


# ------------------------------------------------------------------------------------ public API
STYLESHEET = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;
 background:#f4f5f7;color:#1d2330;font-size:14px}
main{max-width:1320px;margin:0 auto;padding:16px 24px}
h1{font-size:22px;margin:8px 0 12px}h2{font-size:18px;margin:0 0 10px}
nav.index{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:8px 16px;margin-bottom:16px}
nav.index ol{margin:4px 0;padding-left:24px}nav.index li{margin:2px 0}
nav.index a{color:#0b57d0;text-decoration:none}nav.index .meta{color:#5f6673}
section.trajectory{background:#fff;border:1px solid #d8dce3;border-radius:8px;padding:14px 18px;
 margin-bottom:22px}
.stats{display:flex;flex-wrap:wrap;gap:6px;margin-bottom:10px}
.stat{border:1px solid #d8dce3;border-radius:6px;overflow:hidden;display:flex}
.stat .k{background:#eef0f4;color:#4a5160;padding:3px 7px}
.stat .v{padding:3px 8px;font-weight:600;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.stat.good .v{background:#e3f6e8;color:#137333}.stat.bad .v{background:#fde7e7;color:#b3261e}
.stat.warn .v{background:#fff4d6;color:#8a5a00}
.turn{border-left:4px solid #c4c9d2;background:#fafbfc;border-radius:4px;padding:6px 10px;margin:8px 0}
.turn .label{font-size:12px;font-weight:600;color:#5f6673;text-transform:none;margin-bottom:4px}
.turn.question{border-left-color:#7b61ff;background:#f6f4ff}
.turn.model{border-left-color:#0b57d0;background:#f2f6fd}
.turn.erroneous{border-left-color:#9aa0a6;background:#eceef0;color:#6b7078}
.turn.erroneous .label{color:#6b7078}
.turn.erroneous pre{opacity:.75}
.turn.observation{border-left-color:#1e8e3e;background:#f3faf5}
.turn.observation.error{border-left-color:#d93025;background:#fdeeed}
.errormsg{color:#b3261e;font-weight:700;margin:2px 0 4px;white-space:pre-wrap}
.errorbox{color:#b3261e;background:#fdeeed;border:1px solid #f3b4ae;border-radius:6px;padding:6px 10px;
 margin-bottom:8px;white-space:pre-wrap}
pre{font-family:ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;font-size:12.5px;
 white-space:pre-wrap;word-break:break-word;margin:2px 0;line-height:1.4}
.toolcall{background:#fff1b8;border:1px solid #e8c95a;border-radius:3px;color:#5c3d00}
.turn.erroneous .toolcall{background:#e2e4e7;border-color:#b9bec5;color:#555b63}
.callinfo{font-size:12px;color:#3b4250;margin-top:3px;font-family:ui-monospace,"DejaVu Sans Mono",monospace}
.callinfo.bad{color:#b3261e}.callinfo.answer{color:#137333}
.figs{display:flex;flex-wrap:wrap;gap:12px;align-items:flex-start;margin:6px 0}
figure{margin:0;display:table}
figure img{display:block;border:1px solid #c4c9d2}
figcaption{display:table-caption;caption-side:bottom;font-size:12px;color:#4a5160;padding-top:3px}
.overlay figcaption{font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:11.5px}
.sw{display:inline-block;width:18px;height:0;border-top:3px solid;vertical-align:middle;margin-right:5px}
.sw.req{border-top-style:dashed;border-color:rgb(0,90,255)}.sw.cut{border-color:rgb(0,185,70)}
.failed{color:#b3261e}
.placeholder{width:200px;min-height:80px;border:2px dashed #d93025;background:#fdeeed;color:#b3261e;
 font-size:12px;padding:8px;box-sizing:border-box;word-break:break-word}
.placeholder.thumb{width:96px;min-height:96px;font-size:10px;padding:4px}
.video .sub{font-size:12px;color:#4a5160;margin-bottom:4px}
.strip{display:flex;flex-wrap:wrap;gap:4px}
.frame figcaption{text-align:center;margin-top:1px}
details.system{margin:6px 0;font-size:12px;color:#5f6673}details.system summary{cursor:pointer}
"""


def render_trajectory_html(
    trajectory: Trajectory,
    title: str | None = None,
    gold: str | None = None,
    correct: bool | None = None,
    *,
    budget: PixelBudget | None = None,
) -> str:
    """One trajectory as an HTML ``<section>`` (a fragment; :func:`render_page` makes a page of it).

    ``budget`` gives the size at which the model saw the question images (for pixel boxes).
    """
    return _section(trajectory, "trajectory", title, gold, correct, budget)


def _per_item(values: Sequence[object] | None, n: int, name: str) -> list[object]:
    if values is None:
        return [None] * n
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} trajectories")
    return list(values)


def render_page(
    trajectories: Sequence[Trajectory],
    title: str,
    golds: Sequence[str | None] | None = None,
    correct: Sequence[bool | None] | None = None,
    *,
    budget: PixelBudget | None = None,
) -> str:
    """A complete, self-contained HTML page: an index, then one section per trajectory."""
    n = len(trajectories)
    gold_list, correct_list = _per_item(golds, n, "golds"), _per_item(correct, n, "correct")
    index, sections = [], []
    for i, (traj, gold, ok) in enumerate(zip(trajectories, gold_list, correct_list, strict=True), start=1):
        anchor = f"t{i}"
        name = traj.qid if traj.qid is not None else f"trajectory {i}"
        mark = "" if ok is None else (" ✔" if ok else " ✘")
        meta = f"{traj.finish_reason} · {traj.n_calls} calls"
        if traj.n_failed:
            meta += f" ({traj.n_failed} failed)"
        index.append(
            f'<li><a href="#{anchor}">{_e(name)}</a> <span class="meta">— {_e(meta)}{_e(mark)}</span></li>'
        )
        sections.append(
            _section(
                traj,
                anchor,
                f"{i}. {name}",
                None if gold is None else str(gold),
                None if ok is None else bool(ok),
                budget,
            )
        )
    nav = f'<nav class="index"><b>{n} trajector{"y" if n == 1 else "ies"}</b><ol>{"".join(index)}</ol></nav>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{_e(title)}</title>'
        f"<style>{STYLESHEET}</style></head><body><main><h1>{_e(title)}</h1>{nav}{''.join(sections)}</main>"
        "</body></html>\n"
    )


def write_page(
    path: str | os.PathLike[str],
    trajectories: Sequence[Trajectory],
    title: str,
    golds: Sequence[str | None] | None = None,
    correct: Sequence[bool | None] | None = None,
    *,
    budget: PixelBudget | None = None,
) -> Path:
    """Write :func:`render_page` to ``path`` atomically (a temporary file, then a rename)."""
    target = Path(path)
    text = render_page(trajectories, title, golds, correct, budget=budget)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
