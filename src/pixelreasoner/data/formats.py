"""Reading and writing the released data formats (SPEC §3 and §5), without ever aborting on one bad row.

**Query sets** (evaluation and RL) are parquet files with the released columns ``question``,
``answer``, ``image`` (list of paths; the frames when ``is_video``), ``is_video`` and ``qid``,
plus our nullable extras ``choices``, ``cue_bbox``, ``cue_frames``, ``meta`` (a JSON string) and
``answer_is_list``. :func:`write_items` / :func:`read_items`.

The ``answer`` convention. We write ``answer`` as a **string column** (so the released loaders,
which expect strings, still read our files) and a list of accepted answers as the JSON text of
that list, with a bool column ``answer_is_list`` saying which rows hold a list: a string answer
that merely looks like a list (``"[1, 2]"``) therefore round-trips as a string. When reading, per
row: a list value (a ``list<string>`` column) is a list of accepted answers; a string is a list
if ``answer_is_list`` says so, and, in files without that column, if it parses as a non-empty
JSON (or Python-literal) array whose items are all strings, e.g. ``'["4", "four"]'``; any other
string is the answer itself. An integer answer (count datasets) is read as its decimal string.

**SFT traces** are JSON lists (or JSON Lines) of ``{"message_list": [...], "qid"?: ...}`` records
in Qwen's message format with relative paths. :func:`conversation_to_record` /
:func:`record_to_conversation`, :func:`write_traces` / :func:`read_traces`. Our additions, all
optional, so released files read unchanged:

- ``"erroneous": true|false`` on assistant messages. Its *presence* is the marker: our writer puts
  it on every assistant message, so a trace without a wrong operation still says "marked".
  Released files have none; their assistant turns are all ``MODEL`` and the reader reports
  ``has_markers=False`` so the SFT trainer can apply the released rule (train the last two
  assistant turns only).
- ``"kind": "prompt"|"observation"`` on a user message, written only where the reader's inference
  (first user turn = prompt, later ones = tool observations) would be wrong.
- ``"error"`` on an observation message (the failed operation's message), ``"fps"`` on a video.

Not stored: sampled token ids and log-probs (SFT traces are text).

Problems with single rows/records (missing file, wrong type, bad cue) become :class:`LoadProblem`
s and the row is skipped; only an unusable file (unreadable, missing a required column, not a
JSON list) raises.
"""

from __future__ import annotations

import ast
import contextlib
import json
import math
import os
import stat
import tempfile
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, cast

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from pixelreasoner.data.items import TaskItem
from pixelreasoner.protocol.tools import system_message
from pixelreasoner.trajectory import Conversation, ImagePart, Part, Role, Text, Turn, TurnKind, VideoPart
from pixelreasoner.vision.images import DECODE_ERRORS, DEFAULT_MAX_PIXELS

ITEMS_FILENAME = "items.parquet"
"""The file :func:`read_items` looks for when given a directory."""

REQUIRED_COLUMNS = ("question", "answer", "image", "is_video", "qid")
"""The released parquet columns; a file without one of them cannot be read."""

MAX_LISTED_PROBLEMS = 10
"""How many problems ``summary()`` spells out before "and N more"."""

_ITEMS_SCHEMA = pa.schema(
    [
        ("qid", pa.string()),
        ("question", pa.string()),
        ("answer", pa.string()),
        ("answer_is_list", pa.bool_()),
        ("image", pa.list_(pa.string())),
        ("is_video", pa.bool_()),
        ("choices", pa.list_(pa.string())),
        ("cue_bbox", pa.list_(pa.float64())),
        ("cue_frames", pa.list_(pa.int64())),
        ("meta", pa.string()),
    ]
)

# What Pillow may raise on a malformed header (it does not wrap struct/zlib failures); caught
# only around the Pillow calls of the header check.
_PIL_ERRORS = DECODE_ERRORS
_NEW_FILE_MODE = 0o644
_PNG_MODES = frozenset({"1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"})


class FormatError(ValueError):
    """One row or record is malformed; ``path`` names the offending file, if a file is to blame."""

    def __init__(self, reason: str, path: str | None = None) -> None:
        super().__init__(f"{path}: {reason}" if path else reason)
        self.reason = reason
        self.path = path


@dataclass
class LoadProblem:
    """A skipped row (0-based index in the file; for JSON Lines the 0-based line index)."""

    row: int
    qid: str | None
    path: str | None
    reason: str

    def __str__(self) -> str:
        where = f"row {self.row}" + (f" ({self.qid})" if self.qid else "")
        return f"{where}: {self.path}: {self.reason}" if self.path else f"{where}: {self.reason}"


def _summary(loaded: int, problems: Sequence[LoadProblem], source: Path | None, noun: str) -> str:
    total = loaded + len(problems)  # every skipped row has exactly one problem
    head = f"loaded {loaded} of {total} {noun}" + (f" from {source}" if source else "")
    if not problems:
        return f"{head}; no problems"
    listed = "; ".join(str(p) for p in problems[:MAX_LISTED_PROBLEMS])
    more = len(problems) - MAX_LISTED_PROBLEMS
    tail = f"; and {more} more" if more > 0 else ""
    return f"{head}; {len(problems)} problem{'s' if len(problems) != 1 else ''}: {listed}{tail}"


@dataclass
class LoadedItems:
    """What :func:`read_items` got: the good items (image paths absolute), the skipped rows, the root."""

    items: list[TaskItem]
    problems: list[LoadProblem]
    root: Path
    source: Path | None = None

    def summary(self) -> str:
        return _summary(len(self.items), self.problems, self.source, "rows")


@dataclass
class LoadedTraces:
    """What :func:`read_traces` got. ``marked[i]`` says whether record ``i`` had erroneous markers;
    ``has_markers`` is true when every loaded record had them (otherwise apply the released rule)."""

    conversations: list[Conversation]
    qids: list[str | None]
    has_markers: bool
    problems: list[LoadProblem]
    marked: list[bool] = field(default_factory=list)
    source: Path | None = None

    def summary(self) -> str:
        return _summary(len(self.conversations), self.problems, self.source, "records")


# --------------------------------------------------------------------------------------------
# Files and paths


def _atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write`` on a temp file beside ``path``, then rename it over ``path``.

    A crash or a full disk leaves the old file (or none), never half a file that a later run
    would read as a truncated dataset. The temp file sits in the same directory so ``os.replace``
    is a rename within one file system, which is atomic.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        # mkstemp makes the file private (0600); give the result the mode a plain open() would
        # (or the replaced file's), so jobs running as other users can still read the data.
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if path.exists() else _NEW_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return path


def _write_text(path: Path, text: str) -> Path:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    return _atomic_write(path, write)


def _resolve(ref: str, root: str) -> str:
    """An absolute, normalised path for a file reference relative to ``root``."""
    if ref.startswith("file://"):
        ref = ref[len("file://") :]
    elif "://" in ref:
        raise FormatError("remote files are not supported (no network); give a local path", ref)
    return os.path.normpath(os.path.join(root, ref))


def _reference(path: str, root: Path) -> str:
    """``path`` relative to ``root`` (POSIX separators) when inside it, else absolute.

    A relative ``path`` is taken relative to the current directory, as opening it would.
    """
    absolute = Path(os.path.abspath(path))
    root_abs = Path(os.path.abspath(root))
    return (absolute.relative_to(root_abs) if absolute.is_relative_to(root_abs) else absolute).as_posix()


def _image_problem(path: str, check_header: bool) -> str | None:
    """Why the image file at ``path`` is unusable, or None.

    Always: it exists, is a regular file and is not empty. With ``check_header``: Pillow can
    identify it and read its size, ``verify()`` passes (PNG chunk CRCs; structure checks for
    other formats) and its size is within :data:`DEFAULT_MAX_PIXELS`. No pixel is decoded, so
    this stays cheap for large sets; a file corrupt deep in its compressed data is still caught
    later, by ``load_image``, with its name.
    """
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return "file not found"
    except OSError as exc:
        return f"cannot access file ({exc.strerror or exc})"
    if stat.S_ISDIR(info.st_mode):
        return "is a directory, not an image file"
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_size == 0:
        return "file is empty (0 bytes)"
    if not check_header:
        return None
    try:
        file = open(path, "rb")  # noqa: SIM115 - closed by the `with` below
    except OSError as exc:
        return f"cannot open file ({exc.strerror or exc})"
    with file, warnings.catch_warnings():
        # The size limit that counts is ours (checked below), not Pillow's warning threshold.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as image:
                width, height = image.size
                image.verify()
        except Image.DecompressionBombError:
            return f"image is above the limit of {DEFAULT_MAX_PIXELS} pixels"
        except UnidentifiedImageError:
            return "not a recognised image format"
        except _PIL_ERRORS:
            return "truncated or corrupt image data"
    if width <= 0 or height <= 0:
        return "image has zero size"
    if width * height > DEFAULT_MAX_PIXELS:
        return (
            f"image is {width} x {height} = {width * height} pixels, above the limit of {DEFAULT_MAX_PIXELS}"
        )
    return None


class _ImageChecker:
    """:func:`_image_problem` with a cache: rows of a query set often share images or frames."""

    def __init__(self, check_header: bool) -> None:
        self.check_header = check_header
        self._seen: dict[str, str | None] = {}

    def __call__(self, path: str, shown: str) -> None:
        if path not in self._seen:
            self._seen[path] = _image_problem(path, self.check_header)
        reason = self._seen[path]
        if reason is not None:
            raise FormatError(reason, shown)


# --------------------------------------------------------------------------------------------
# A. Query sets (parquet)


def _answer_to_column(answer: str | list[str]) -> tuple[str, bool]:
    if isinstance(answer, list):
        return json.dumps(answer, ensure_ascii=False), True
    return answer, False


def write_items(
    items: Sequence[TaskItem], path: str | Path, *, relative_to: str | Path | None = None
) -> Path:
    """Write ``items`` as a parquet query set (released columns plus ours); returns the path.

    Image paths are written as given, except that with ``relative_to`` the ones inside that
    directory are written relative to it (so the set can be moved with its images).
    """
    rows: dict[str, list[Any]] = {name: [] for name in _ITEMS_SCHEMA.names}
    for item in items:
        answer, is_list = _answer_to_column(item.answer)
        try:
            meta = json.dumps(item.meta, ensure_ascii=False) if item.meta else None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"item {item.qid}: meta is not JSON-serialisable ({exc})") from exc
        images = [_reference(p, Path(relative_to)) for p in item.images] if relative_to else list(item.images)
        rows["qid"].append(item.qid)
        rows["question"].append(item.question)
        rows["answer"].append(answer)
        rows["answer_is_list"].append(is_list)
        rows["image"].append(images)
        rows["is_video"].append(bool(item.is_video))
        rows["choices"].append(item.choices)
        rows["cue_bbox"].append(item.cue_bbox)
        rows["cue_frames"].append(item.cue_frames)
        rows["meta"].append(meta)
    table = pa.Table.from_pydict(rows, schema=_ITEMS_SCHEMA)
    return _atomic_write(Path(path), lambda tmp: pq.write_table(table, tmp))


def _string_list(value: Any) -> list[str] | None:
    """``value`` as a list of strings if it is a non-empty JSON/Python array of strings, else None."""
    text = value.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        parsed = json.loads(text)
    except ValueError:
        try:
            parsed = ast.literal_eval(text)  # lists written with Python's repr: ['a', 'b']
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return None
    if isinstance(parsed, list) and parsed and all(isinstance(a, str) for a in parsed):
        return parsed
    return None


def _parse_answer(value: Any, is_list: Any) -> str | list[str]:
    if value is None:
        raise FormatError("answer is missing")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, list):
        if not value or not all(isinstance(a, str) and a for a in value):
            raise FormatError("answer list must hold one or more non-empty strings")
        return value
    if not isinstance(value, str):
        raise FormatError(f"answer must be a string or a list of strings, not {type(value).__name__}")
    if is_list is True:
        answers = _string_list(value)
        if answers is None:
            raise FormatError("answer_is_list is set but answer is not a JSON list of strings")
        return _parse_answer(answers, None)
    if is_list is None:  # released file: a list may hide in a string
        answers = _string_list(value)
        if answers is not None:
            return _parse_answer(answers, None)
    if not value.strip():
        raise FormatError("answer is empty")
    return value


def _parse_bbox(value: Any) -> list[float] | None:
    if value is None:
        return None
    numbers = isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value
    )
    if not numbers or len(value) != 4:
        raise FormatError(f"bad cue_bbox {value!r}: expected 4 numbers [x1, y1, x2, y2]")
    x1, y1, x2, y2 = (float(v) for v in value)
    if not all(0.0 <= v <= 1.0 for v in (x1, y1, x2, y2)) or x1 > x2 or y1 > y2:
        raise FormatError(f"bad cue_bbox {value!r}: need 0 <= x1 <= x2 <= 1 and 0 <= y1 <= y2 <= 1")
    return [x1, y1, x2, y2]


def _parse_frames(value: Any, is_video: bool, n_frames: int) -> list[int] | None:
    if value is None:
        return None
    if not is_video:
        raise FormatError("cue_frames given for an item that is not a video")
    if not isinstance(value, list) or not value:
        raise FormatError(f"bad cue_frames {value!r}: expected a non-empty list of frame numbers")
    if not all(isinstance(f, int) and not isinstance(f, bool) and 1 <= f <= n_frames for f in value):
        raise FormatError(f"bad cue_frames {value!r}: frame numbers run from 1 to {n_frames}")
    return list(value)


def _parse_meta(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError as exc:
            raise FormatError(f"meta is not valid JSON ({exc})") from exc
    if not isinstance(value, dict):
        raise FormatError(f"meta must be a JSON object, not {type(value).__name__}")
    return value


def _nonempty_str(row: Mapping[str, Any], name: str) -> str:
    value = row.get(name)
    if value is None:
        raise FormatError(f"{name} is missing")
    if not isinstance(value, str):
        raise FormatError(f"{name} must be a string, not {type(value).__name__}")
    if not value.strip():
        raise FormatError(f"{name} is empty")
    return value


def _row_to_item(row: Mapping[str, Any], root: str, check: _ImageChecker) -> TaskItem:
    """One parquet row as a TaskItem, or :class:`FormatError` (first problem found)."""
    qid = _nonempty_str(row, "qid")
    question = _nonempty_str(row, "question")
    answer = _parse_answer(row.get("answer"), row.get("answer_is_list"))
    is_video = row.get("is_video")
    if not isinstance(is_video, bool):
        raise FormatError(f"is_video must be a bool, not {type(is_video).__name__}")
    refs = row.get("image")
    if isinstance(refs, str):
        refs = [refs]  # a lone path where a list was expected: unambiguous, so accepted
    if not isinstance(refs, list) or not all(isinstance(r, str) and r for r in refs):
        raise FormatError(f"image must be a list of paths, not {refs!r}")
    if is_video and not refs:
        raise FormatError("a video item needs its frames in `image`")
    images = [_resolve(r, root) for r in refs]
    choices = row.get("choices")
    if choices is not None and (
        not isinstance(choices, list) or not choices or not all(isinstance(c, str) for c in choices)
    ):
        raise FormatError(f"choices must be a non-empty list of strings, not {choices!r}")
    item = TaskItem(
        qid=qid,
        question=question,
        answer=answer,
        images=images,
        is_video=is_video,
        choices=choices,
        cue_bbox=_parse_bbox(row.get("cue_bbox")),
        cue_frames=_parse_frames(row.get("cue_frames"), is_video, len(images)),
        meta=_parse_meta(row.get("meta")),
    )
    # Files last: the cheap checks above should name a broken row even when its image is fine.
    for ref, resolved in zip(refs, images, strict=True):
        check(resolved, ref)
    return item


def read_items(
    path: str | Path, data_root: str | Path | None = None, check_images: bool = True
) -> LoadedItems:
    """Read a parquet query set (``path`` or ``path/items.parquet``); bad rows are skipped and reported.

    Relative image paths are resolved against ``data_root`` (default: the parquet file's
    directory); the items hold absolute paths. Every image must exist as a non-empty file; with
    ``check_images`` its header is also checked (see :func:`_image_problem`: no decoding).
    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for an unreadable one or a
    missing required column.
    """
    file = Path(path)
    if file.is_dir():
        file = file / ITEMS_FILENAME
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such parquet file")
    try:
        table = pq.read_table(file)
    except (pa.ArrowException, OSError) as exc:
        raise ValueError(f"{file}: cannot read parquet ({exc})") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{file}: missing required column(s) {', '.join(map(repr, missing))}")
    root = Path(os.path.abspath(data_root if data_root is not None else file.parent))
    check = _ImageChecker(check_images)
    items: list[TaskItem] = []
    problems: list[LoadProblem] = []
    for index, row in enumerate(table.to_pylist()):
        try:
            items.append(_row_to_item(row, str(root), check))
        except FormatError as exc:
            qid = row.get("qid") if isinstance(row.get("qid"), str) else None
            problems.append(LoadProblem(index, qid, exc.path, exc.reason))
    return LoadedItems(items, problems, root, source=file)


# --------------------------------------------------------------------------------------------
# B. SFT traces (JSON message_list)


def _save_png(image: Image.Image, path: Path) -> None:
    picture = image if image.mode in _PNG_MODES else image.convert("RGB")
    _atomic_write(path, lambda tmp: picture.save(tmp, format="PNG"))


def conversation_to_record(
    conv: Conversation, image_dir: Path, root: Path, prefix: str, *, qid: str | None = None
) -> dict[str, Any]:
    """A Conversation as a released-style record; in-memory images are saved as PNG files.

    In-memory images and video frames go to ``image_dir/{prefix}_{k}.png`` (``k`` counts them in
    order from 0). Every path is written relative to ``root`` when inside it, else absolute.
    """
    image_dir, root = Path(image_dir), Path(root)
    saved = 0

    def save(image: Image.Image) -> str:
        nonlocal saved
        target = image_dir / f"{prefix}_{saved}.png"
        saved += 1
        _save_png(image, target)
        return _reference(str(target), root)

    messages: list[dict[str, Any]] = []
    seen_user = False
    for turn in conv.turns:
        content: list[dict[str, Any]] = []
        for part in turn.parts:
            if isinstance(part, Text):
                content.append({"text": part.text})
            elif isinstance(part, ImagePart):
                if part.path is not None:
                    content.append({"image": _reference(part.path, root)})
                elif part.image is not None:
                    content.append({"image": save(part.image)})
            else:
                frames = [_reference(p, root) for p in part.paths] or [save(f) for f in part.frames]
                content.append({"video": frames, "fps": part.fps})
        message: dict[str, Any] = {"role": turn.role, "content": content}
        if turn.role == "assistant":
            message["erroneous"] = turn.kind is TurnKind.ERRONEOUS
        elif turn.role == "user":
            inferred = TurnKind.OBSERVATION if seen_user else TurnKind.PROMPT
            if turn.kind is not inferred:
                message["kind"] = turn.kind.value
            if turn.error is not None:
                message["error"] = turn.error
            seen_user = True
        messages.append(message)
    record: dict[str, Any] = {"message_list": messages}
    if qid is not None:
        record["qid"] = qid
    return record


def _parse_part(item: Any, root: str, returned: bool) -> Part:
    if isinstance(item, str):
        return Text(item)
    if not isinstance(item, dict):
        raise FormatError(f"a content item must be an object or a string, not {type(item).__name__}")
    kind = item.get("type")
    if kind is None:
        keys = [k for k in ("text", "image", "video") if k in item]
        if len(keys) != 1:
            raise FormatError(
                f"a content item needs exactly one of text/image/video, got keys {sorted(item)}"
            )
        kind = keys[0]
    if kind not in ("text", "image", "video") or kind not in item:
        raise FormatError(f"unsupported content item {sorted(item)} (type {kind!r})")
    value = item[kind]
    if kind == "text":
        if not isinstance(value, str):
            raise FormatError(f"text must be a string, not {type(value).__name__}")
        return Text(value)
    if kind == "image":
        if not isinstance(value, str) or not value:
            raise FormatError(f"image must be a path, not {value!r}")
        return ImagePart(path=_resolve(value, root), returned=returned)
    if not isinstance(value, list) or not value or not all(isinstance(p, str) and p for p in value):
        raise FormatError("video must be a non-empty list of frame paths")
    fps = item.get("fps", 2.0)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise FormatError(f"bad video fps {fps!r}")
    return VideoPart(paths=tuple(_resolve(p, root) for p in value), fps=float(fps))


def _user_kind(message: Mapping[str, Any], seen_user: bool) -> TurnKind:
    explicit = message.get("kind")
    if explicit is None:
        return TurnKind.OBSERVATION if seen_user else TurnKind.PROMPT
    if explicit not in (TurnKind.PROMPT.value, TurnKind.OBSERVATION.value):
        raise FormatError(f"bad user message kind {explicit!r}")
    return TurnKind(explicit)


def record_to_conversation(record: Mapping[str, Any], root: Path) -> tuple[Conversation, bool]:
    """A trace record as a Conversation, and whether it carried erroneous markers.

    Paths are resolved against ``root`` (files are not opened here). Kinds: system messages are
    prompts; the first user message is the prompt and later ones tool observations (their images
    ``returned``); assistant messages are ``ERRONEOUS`` when marked so, else ``MODEL``. A record
    without a system message gets the ``vcot`` one (with the tools block) prepended, as the
    released SFT data was trained with it. Raises :class:`FormatError` for a malformed record.
    """
    if not isinstance(record, Mapping):
        raise FormatError(f"a record must be an object, not {type(record).__name__}")
    messages = record.get("message_list")
    if not isinstance(messages, list) or not messages:
        raise FormatError("record has no message_list (a non-empty list of messages)")
    turns: list[Turn] = []
    marked = seen_user = False
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise FormatError(f"message {index} is not an object")
        role = message.get("role")
        if role not in ("system", "user", "assistant"):
            raise FormatError(f"message {index} has unknown role {role!r}")
        if role == "system" and index > 0:
            raise FormatError(f"message {index}: a system message must come first")
        if role == "assistant" and not seen_user:
            raise FormatError(f"message {index}: an assistant message before any user message")
        if "erroneous" in message and (role != "assistant" or not isinstance(message["erroneous"], bool)):
            raise FormatError(f"message {index}: `erroneous` must be a bool on an assistant message")
        content = message.get("content")
        if isinstance(content, str):
            content = [content]
        if not isinstance(content, list):
            raise FormatError(
                f"message {index}: content must be a list or a string, not {type(content).__name__}"
            )
        if role == "user":
            kind = _user_kind(message, seen_user)
            seen_user = True
        elif role == "assistant":
            marked = marked or "erroneous" in message
            kind = TurnKind.ERRONEOUS if message.get("erroneous") else TurnKind.MODEL
        else:
            kind = TurnKind.PROMPT
        parts = [_parse_part(item, str(root), kind is TurnKind.OBSERVATION) for item in content]
        error = message.get("error") if isinstance(message.get("error"), str) else None
        turns.append(Turn(cast(Role, role), kind, parts, error=error if role == "user" else None))
    if not seen_user:
        raise FormatError("record has no user message")
    if turns[0].role != "system":
        turns.insert(0, Turn("system", TurnKind.PROMPT, [Text(system_message(True))]))
    return Conversation(turns), marked


def write_traces(
    traces: Iterable[Mapping[str, Any] | Conversation],
    path: str | Path,
    *,
    image_dir: str | Path | None = None,
    root: str | Path | None = None,
    qids: Sequence[str | None] | None = None,
) -> Path:
    """Write records (dicts, as given) and Conversations (via :func:`conversation_to_record`).

    ``.jsonl`` gives JSON Lines, anything else one JSON list; the write is atomic. Paths are
    relative to ``root`` (default: the file's directory, where :func:`read_traces` resolves them);
    in-memory images go to ``image_dir`` (default ``{stem}_images/`` beside the file) named
    ``{stem}_{index:06d}_{k}.png``. ``qids[i]`` is stored with the i-th trace.
    """
    file = Path(path)
    root_dir = Path(root) if root is not None else file.parent
    images = Path(image_dir) if image_dir is not None else file.parent / f"{file.stem}_images"
    records: list[Mapping[str, Any]] = []
    for index, trace in enumerate(traces):
        qid = qids[index] if qids is not None else None
        if isinstance(trace, Conversation):
            records.append(
                conversation_to_record(trace, images, root_dir, f"{file.stem}_{index:06d}", qid=qid)
            )
        elif isinstance(trace, Mapping):
            records.append({**trace, "qid": qid} if qid is not None else trace)
        else:
            raise TypeError(f"trace {index} is a {type(trace).__name__}, not a record or Conversation")
    if _is_jsonl(file):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    else:
        text = json.dumps(records, ensure_ascii=False)
    return _write_text(file, text)


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".ndjson")


def _raw_records(file: Path) -> Iterable[tuple[int, Any, str | None]]:
    """(row, record, parse error) for each record; a JSON Lines line that fails is an error row."""
    with open(file, encoding="utf-8") as f:
        if _is_jsonl(file):
            yield from _jsonl_records(f)
            return
        try:
            data = json.load(f)
        except ValueError as exc:
            raise ValueError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(data, list):
        raise ValueError(f"{file}: expected a JSON list of records, got {type(data).__name__}")
    for index, record in enumerate(data):
        yield index, record, None


def _jsonl_records(f: IO[str]) -> Iterable[tuple[int, Any, str | None]]:
    for index, line in enumerate(f):
        if not line.strip():
            continue
        try:
            yield index, json.loads(line), None
        except ValueError as exc:
            yield index, None, f"not valid JSON ({exc})"


def read_traces(
    path: str | Path, root: str | Path | None = None, *, check_images: bool = True
) -> LoadedTraces:
    """Read SFT traces (a JSON list, or JSON Lines for ``.jsonl``); bad records are skipped and reported.

    Paths are resolved against ``root`` (default: the file's directory). Every image and frame
    must exist as a non-empty file, and with ``check_images`` have a readable header (no decode).
    Raises for a missing file, a ``.json`` file that is not valid JSON, or one that is not a list.
    """
    file = Path(path)
    root_dir = Path(os.path.abspath(root if root is not None else file.parent))
    check = _ImageChecker(check_images)
    loaded = LoadedTraces([], [], False, [], source=file)
    for index, record, parse_error in _raw_records(file):
        qid = record.get("qid") if isinstance(record, dict) else None
        qid = qid if isinstance(qid, str) else None
        try:
            if parse_error is not None:
                raise FormatError(parse_error)
            if (
                isinstance(record, dict)
                and "qid" in record
                and not isinstance(record["qid"], (str, type(None)))
            ):
                raise FormatError(f"qid must be a string, not {type(record['qid']).__name__}")
            conv, marked = record_to_conversation(record, root_dir)
            for turn in conv.turns:
                for part in turn.parts:
                    paths = [part.path] if isinstance(part, ImagePart) and part.path else []
                    paths += list(part.paths) if isinstance(part, VideoPart) else []
                    for p in paths:
                        check(p, _reference(p, root_dir))
        except FormatError as exc:
            loaded.problems.append(LoadProblem(index, qid, exc.path, exc.reason))
            continue
        loaded.conversations.append(conv)
        loaded.qids.append(qid)
        loaded.marked.append(marked)
    loaded.has_markers = bool(loaded.marked) and all(loaded.marked)
    return loaded


__all__ = [
    "ITEMS_FILENAME",
    "REQUIRED_COLUMNS",
    "FormatError",
    "LoadProblem",
    "LoadedItems",
    "LoadedTraces",
    "conversation_to_record",
    "read_items",
    "read_traces",
    "record_to_conversation",
    "write_items",
    "write_traces",
]
