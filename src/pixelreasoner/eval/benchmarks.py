r"""Benchmarks in their own release layouts: HR-Bench 4K/8K, MME-RealWorld-Lite and V*, read into TaskItems.

Peers (DeepEyes, Mini-o3, Chain-of-Focus) report these next to V*; :func:`read_benchmark` reads
the files as their authors (or VLMEvalKit) release them, without converting them first. Every
benchmark here is multiple choice: the item's ``answer`` is the option letter, ``choices`` holds
the option texts in letter order and the existing choice scoring applies (a boxed ``B``,
``(B)`` or the option's text all count).

**Layouts** (one row = one question; column names are matched exactly, first alias found wins):

- *Table* (``.tsv`` as VLMEvalKit and HR-Bench ship it, or ``.parquet``): ``index``,
  ``question``, the options in one column per letter ``A``, ``B``, ``C``, ... (empty or null
  past the last option), ``answer`` (a letter), ``category`` and, kept in ``meta``,
  ``cycle_category`` (HR-Bench), ``l2-category`` (MME-RealWorld), ``hint``. ``image`` holds the
  picture inline as base64 (or raw bytes, or a Hugging Face ``{"bytes", "path"}`` struct), a
  path relative to the file, a string list of several, or, as VLMEvalKit does for rows sharing
  a picture, the ``index`` of another row whose image to reuse. ``image_path`` is accepted in
  place of ``image``. Options may also come as one list column (``multi-choice options``,
  ``options``, ``choices``), each entry optionally marked ``(A) ...``.
- *MME-RealWorld JSON* (``MME-RealWorld-Lite.json`` from the release's ``data.zip``): a list of
  ``{"Question_id", "Image", "Text", "Answer choices": ["(A) ...", ...], "Ground truth": "A",
  "Category", "Subtask", "Task"}``; ``Image`` is a file name looked up beside the JSON, then in
  ``imgs/`` and ``images/`` there.
- *V\* JSON Lines* (``test_questions.jsonl`` of ``craigwu/vstar_bench``): ``{"image":
  "direct_attributes/sa_4690.jpg", "text": "question\n(A) ...\n(B) ...\nAnswer with the option's
  letter from the given choices directly.", "category": "direct_attributes", "question_id",
  "label": "A"}``; the options are parsed out of ``text``.

**The prompt.** Options given in columns or a list are written into the question the way V*
writes them (and our synthetic families do)::

    {question}
    (A) {option A}
    (B) {option B}
    ...
    Answer with the option's letter from the given choices directly.

:func:`format_choices` builds it; a question whose text already lists its options (V*) is kept
as released. The prompt mode's suffix (``\boxed{}``) follows as for every task.

**Images given inline** are decoded once and written to a cache directory, by default
``{file stem}_images/`` beside the data file (the user cache directory when that is read-only),
named by a hash of their bytes so rows that share a picture share the file; items hold paths.

**Categories.** ``meta["category"]`` carries the breakdown peers report: V* ``attribute``
(``direct_attributes``) and ``spatial`` (``relative_position``); HR-Bench its ``category``
column (single- and cross-instance perception, FSP/FCP); MME-RealWorld ``Task/Subtask``
("Perception/Remote Sensing"), or ``category/l2-category`` in the table layout.
:func:`category_scores` aggregates per-item evaluation records by it.

A row that cannot be used (no question, an answer that is not one of its options, an image that
is neither a file nor decodable) becomes a :class:`~pixelreasoner.data.formats.LoadProblem`
with its 0-based row number and is skipped; only an unreadable file raises.
"""

from __future__ import annotations

import ast
import base64
import binascii
import contextlib
import csv
import hashlib
import io
import json
import math
import os
import re
import warnings
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError

from pixelreasoner.data.formats import (
    FormatError,
    LoadedItems,
    LoadProblem,
    _atomic_write,
    _ImageChecker,
)
from pixelreasoner.data.items import TaskItem
from pixelreasoner.vision.images import DECODE_ERRORS

MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""The last line of a multiple-choice prompt (V*'s own wording)."""

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"

VSTAR_CATEGORIES = {"direct_attributes": "attribute", "relative_position": "spatial"}
"""V*'s two categories, by the names its release uses, as peers report them."""

QUESTION_KEYS = ("question", "text", "Text")
ANSWER_KEYS = ("answer", "label", "Ground truth")
ID_KEYS = ("index", "question_id", "Question_id", "qid", "id")
IMAGE_KEYS = ("image", "Image", "image_path", "img_path")
OPTION_LIST_KEYS = ("multi-choice options", "Answer choices", "options", "choices")
CATEGORY_KEYS = ("category", "Category")
META_KEYS = {
    "cycle_category": "cycle_category",
    "l2-category": "l2_category",
    "Subtask": "subtask",
    "Task": "task",
    "hint": "hint",
    "Question Type": "question_type",
}
"""Columns kept in ``meta`` (under the names on the right) when a row has them."""

IMAGE_DIRS = ("", "imgs", "images")
"""Where a relative image path is looked for, under the data file's directory, in this order."""

# A VLMEvalKit row that shares another row's picture holds that row's index (short) instead.
_MAX_REFERENCE_CHARS = 64
# Longer strings are never paths (and are not stat-ed).
_MAX_PATH_CHARS = 4096
_OPTION_LINE = re.compile(r"\(([A-Z])\)\s*(.*)")
_MARKED_OPTION = re.compile(r"\s*(?:\(([A-Z])\)|([A-Z])[.:)])\s*(.*)", re.DOTALL)
_LETTER_ANSWER = re.compile(r"\(?([A-Za-z])\)?[.:]?")
_DATA_URI = re.compile(r"data:image/[\w.+-]+;base64,", re.IGNORECASE)
_IDENTIFY_ERRORS: tuple[type[Exception], ...] = (
    UnidentifiedImageError,
    Image.DecompressionBombError,
    *DECODE_ERRORS,
)
_FORMAT_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "GIF": ".gif", "BMP": ".bmp"}


# --------------------------------------------------------------------------------------------
# Prompts


def format_choices(question: str, choices: Sequence[str]) -> str:
    """The question with its options as V* writes them: ``(A) ...`` lines, then the instruction.

    >>> print(format_choices("What colour is the cup?", ["red", "blue"]))
    What colour is the cup?
    (A) red
    (B) blue
    Answer with the option's letter from the given choices directly.
    """
    options = "\n".join(f"({LETTERS[i]}) {text}" for i, text in enumerate(choices))
    return f"{question.rstrip()}\n{options}\n{MC_INSTRUCTION}"


def inline_choices(text: str) -> list[str] | None:
    """The options a question lists itself, one ``(A) ...`` line each from A on; None if fewer than two.

    >>> inline_choices("Which?\\n(A) red\\n(B) blue\\nAnswer with the option's letter.")
    ['red', 'blue']
    """
    choices: list[str] = []
    for line in text.splitlines():
        match = _OPTION_LINE.fullmatch(line.strip())
        if match and match[1] == LETTERS[len(choices)]:
            choices.append(match[2].strip())
        elif choices:
            break
    return choices if len(choices) >= 2 else None


def _unmarked(option: str, index: int) -> str:
    """An option without its own ``(B)``/``B.`` marker when the marker is its position's letter."""
    match = _MARKED_OPTION.fullmatch(option)
    if match and (match[1] or match[2]) == LETTERS[index]:
        return match[3].strip()
    return option.strip()


# --------------------------------------------------------------------------------------------
# Rows


def _missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for key in keys:
        if key in row and not _missing(row[key]):
            return row[key]
    return None


def _text(value: Any) -> str:
    """A cell as text: integers of a parquet ``index`` as their digits, floats like 3.0 as 3."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _options(row: Mapping[str, Any], question: str) -> tuple[list[str], bool]:
    """The option texts and whether the question already lists them itself."""
    lettered = [k for k in LETTERS if k in row]
    if lettered:
        choices: list[str] = []
        for letter in LETTERS:
            value = row.get(letter)
            if _missing(value):
                later = [k for k in LETTERS[LETTERS.index(letter) + 1 :] if not _missing(row.get(k))]
                if later:
                    raise FormatError(f"option {letter} is empty but option {later[0]} is given")
                break
            choices.append(_text(value))
        if len(choices) >= 2:
            return choices, inline_choices(question) is not None
    listed = _first(row, OPTION_LIST_KEYS)
    if isinstance(listed, str):
        with contextlib.suppress(ValueError, SyntaxError):
            listed = ast.literal_eval(listed) if len(listed) < 100_000 else listed
    if isinstance(listed, (list, tuple)):
        if not all(isinstance(o, (str, int, float)) for o in listed):
            raise FormatError(f"options must be texts, not {listed!r}")
        choices = [_unmarked(_text(o), i) for i, o in enumerate(listed)]
        if len(choices) >= 2 and all(choices):
            return choices, inline_choices(question) is not None
        raise FormatError(f"need at least two non-empty options, got {listed!r}")
    inline = inline_choices(question)
    if inline is not None:
        return inline, True
    raise FormatError("no options: expected columns A, B, ..., an options list, or (A) lines in the question")


def _answer_letter(value: Any, choices: Sequence[str]) -> str:
    if _missing(value):
        raise FormatError("answer is missing")
    text = _text(value)
    match = _LETTER_ANSWER.fullmatch(text)
    if match:
        letter = match[1].upper()
        if LETTERS.index(letter) < len(choices):
            return letter
        raise FormatError(f"answer {text!r} is not one of the options A-{LETTERS[len(choices) - 1]}")
    folded = [c.casefold() for c in choices]
    if folded.count(text.casefold()) == 1:
        return LETTERS[folded.index(text.casefold())]
    raise FormatError(f"answer {text!r} is neither an option letter nor one option's text")


def _category(benchmark: str, row: Mapping[str, Any], images: Sequence[str]) -> str | None:
    raw = _first(row, CATEGORY_KEYS)
    if benchmark == "mme_realworld_lite":
        task, subtask = row.get("Task"), row.get("Subtask")
        if not _missing(task) and not _missing(subtask):
            return f"{_text(task)}/{_text(subtask)}"
        level2 = row.get("l2-category")
        if not _missing(raw) and not _missing(level2):
            return f"{_text(raw)}/{_text(level2)}"
    if benchmark == "vstar":
        return vstar_category(_text(raw) if not _missing(raw) else None, images)
    return _text(raw) if not _missing(raw) else None


def vstar_category(raw: str | None, names: Iterable[str] = ()) -> str | None:
    """``attribute`` or ``spatial`` from V*'s category name, else from a path or qid naming its folder."""
    if raw is not None:
        return VSTAR_CATEGORIES.get(raw, raw)
    for name in names:
        for folder, category in VSTAR_CATEGORIES.items():
            if folder in name:
                return category
    return None


def item_category(benchmark: str, item: TaskItem) -> str | None:
    """The category of an item read from the released parquet layout (``meta["category"]`` if set).

    V* items without one get it from their image paths or qid (``direct_attributes`` /
    ``relative_position``), as the released files name their images after V*'s folders.
    """
    raw = item.meta.get("category")
    if benchmark == "vstar":
        return vstar_category(raw if isinstance(raw, str) else None, [*item.images, item.qid])
    return raw if isinstance(raw, str) else None


# --------------------------------------------------------------------------------------------
# Images


def default_cache_dir(path: Path) -> Path:
    """Where decoded images of ``path`` go: ``{stem}_images/`` beside it, or the user cache if read-only."""
    beside = path.parent / f"{path.stem}_images"
    if (beside.is_dir() and os.access(beside, os.W_OK)) or os.access(path.parent, os.W_OK):
        return beside
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    key = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:16]
    return base / "pixelreasoner" / "images" / f"{path.stem}-{key}"


@dataclass
class _Images:
    """Turns ``image`` cells into file paths: decodes inline images into the cache once each."""

    base: Path
    cache: Path
    check: _ImageChecker
    by_index: dict[str, list[str]] = field(default_factory=dict)
    _decoded: dict[str, str] = field(default_factory=dict)
    """Decoded file by the hash of its base64 text (the text itself could be megabytes)."""

    def paths(self, value: Any) -> list[str]:
        """The image files of one cell; raises :class:`_Deferred` for a reference not yet seen."""
        if isinstance(value, dict) and ("bytes" in value or "path" in value):
            data = value.get("bytes")
            return [self._store(data)] if data else self.paths(value.get("path"))
        if isinstance(value, (bytes, bytearray, memoryview)):
            return [self._store(bytes(value))]
        if isinstance(value, (list, tuple)):
            if not value:
                raise FormatError("image list is empty")
            return [p for v in value for p in self.paths(v)]
        if _missing(value):
            raise FormatError("image is missing")
        if not isinstance(value, str):
            raise FormatError(f"image must be base64 text, bytes or a path, not {type(value).__name__}")
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            listed = _string_list(text)
            if listed is not None:
                return self.paths(listed)
        if len(text) <= _MAX_REFERENCE_CHARS and text in self.by_index:
            return list(self.by_index[text])
        if len(text) <= _MAX_PATH_CHARS:
            found = self._find(text)
            if found is not None:
                self.check(found, text)
                return [found]
        key = hashlib.sha256(text.encode()).hexdigest()  # rows repeating an image inline decode it once
        if key in self._decoded:
            return [self._decoded[key]]
        data = _base64_image(text)
        if data is not None:
            return [self._store(data, key=key)]
        if len(text) <= _MAX_REFERENCE_CHARS and not re.search(r"[/\\.]", text):
            raise _Deferred(text)  # perhaps the index of a row further down
        if len(text) <= _MAX_PATH_CHARS and not _looks_base64(text):
            raise FormatError("file not found", text)
        raise FormatError("image is neither a file nor base64-encoded image data")

    def _find(self, ref: str) -> str | None:
        if "://" in ref and not ref.startswith("file://"):
            raise FormatError("remote files are not supported (no network); give a local path", ref)
        ref = ref.removeprefix("file://")
        for folder in IMAGE_DIRS:
            candidate = os.path.normpath(os.path.join(self.base, folder, ref))
            if os.path.exists(candidate):
                return candidate
        return None

    def _store(self, data: bytes, key: str | None = None) -> str:
        if not data:
            raise FormatError("image data is empty")
        extension = _image_extension(data)
        target = self.cache / f"{hashlib.sha256(data).hexdigest()[:24]}{extension}"
        if not (target.is_file() and target.stat().st_size == len(data)):
            try:
                _atomic_write(target, lambda tmp: _write_bytes(tmp, data))
            except OSError as exc:
                reason = f"cannot write the decoded image to {target} ({exc.strerror or exc})"
                raise FormatError(reason) from exc
        path = str(target)
        self.check(path, target.name)
        if key is not None:
            self._decoded[key] = path
        return path


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


class _Deferred(Exception):
    """A row whose image names another row (by index) that has not been read yet."""


def _string_list(text: str) -> list[str] | None:
    for parse in (json.loads, ast.literal_eval):
        with contextlib.suppress(ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = parse(text)
            if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                return value
    return None


def _looks_base64(text: str) -> bool:
    return len(text) > 256 and re.fullmatch(r"[A-Za-z0-9+/=\s]+", text[:1024]) is not None


def _base64_image(text: str) -> bytes | None:
    """The bytes of base64 text that decodes to an image Pillow recognises, else None."""
    body = _DATA_URI.sub("", text[:256], count=1) + text[256:] if text.startswith("data:") else text
    if any(space in body for space in " \n\r\t"):
        body = "".join(body.split())
    if len(body) < 16:
        return None
    try:
        data = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        return None
    try:
        _image_extension(data)
    except FormatError:
        return None
    return data


def _image_extension(data: bytes) -> str:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                kind = image.format or ""
        except _IDENTIFY_ERRORS as exc:
            raise FormatError(f"image data is not a recognised image ({type(exc).__name__})") from exc
    return _FORMAT_EXTENSIONS.get(kind, f".{kind.lower() or 'img'}")


# --------------------------------------------------------------------------------------------
# Files


def _table_rows(path: Path) -> Iterator[tuple[int, Mapping[str, Any] | None, str | None]]:
    """(row, record, problem) for each data row of a TSV/CSV, parquet, JSON list or JSON Lines file."""
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv"):
        yield from _csv_rows(path, "\t" if suffix == ".tsv" else ",")
    elif suffix == ".parquet":
        try:
            parquet = pq.ParquetFile(path)
            batches = parquet.iter_batches(batch_size=32)
            index = 0
            for batch in batches:
                for record in batch.to_pylist():
                    yield index, record, None
                    index += 1
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: cannot read parquet ({exc})") from exc
    elif suffix in (".jsonl", ".ndjson"):
        with open(path, encoding="utf-8-sig") as f:
            for index, line in enumerate(f):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    yield index, None, f"not valid JSON ({exc})"
                    continue
                yield _record(index, record)
    elif suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8-sig"))
        except ValueError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
        for index, record in enumerate(data):
            yield _record(index, record)
    else:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (tsv, csv, parquet, json, jsonl)")


def _record(index: int, record: Any) -> tuple[int, Mapping[str, Any] | None, str | None]:
    return (index, record, None) if isinstance(record, dict) else (index, None, "not a JSON object")


def _csv_rows(path: Path, delimiter: str) -> Iterator[tuple[int, Mapping[str, Any] | None, str | None]]:
    previous = csv.field_size_limit()
    csv.field_size_limit(2**31 - 1)  # base64 images are far above the 128 KiB default
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            try:
                header = next(reader)
            except StopIteration:
                return
            index = 0
            while True:
                try:
                    cells = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:
                    yield index, None, f"malformed line ({exc})"
                    index += 1
                    continue
                if not any(c.strip() for c in cells):
                    continue
                if len(cells) != len(header):
                    yield index, None, f"row has {len(cells)} fields, the header {len(header)}"
                else:
                    yield index, dict(zip(header, cells, strict=True)), None
                index += 1
    finally:
        csv.field_size_limit(previous)


def _columns(path: Path) -> list[str] | None:
    """The column names of a table file (None for JSON, whose rows are checked one by one)."""
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        try:
            return list(pq.read_schema(path).names)
        except (pa.ArrowException, OSError) as exc:
            raise ValueError(f"{path}: cannot read parquet ({exc})") from exc
    if suffix in (".tsv", ".csv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            line = f.readline()
        return next(csv.reader([line], delimiter="\t" if suffix == ".tsv" else ","), [])
    return None


def read_benchmark(
    path: str | Path,
    benchmark: str,
    *,
    cache_dir: str | Path | None = None,
    check_images: bool = True,
) -> LoadedItems:
    """Read a multiple-choice benchmark file in its own release layout (see the module docstring).

    ``benchmark`` is the qid prefix (``{benchmark}-{index}``) and selects the category rule
    (``vstar``, ``mme_realworld_lite``; others use the ``category`` column). Inline images are
    decoded into ``cache_dir`` (default :func:`default_cache_dir`). Raises
    ``FileNotFoundError``/``ValueError`` only for a missing or unreadable file or a table
    without a question or answer column; bad rows are reported in ``problems`` and skipped.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such file")
    columns = _columns(file)
    if columns is not None:
        for what, keys in (("question", QUESTION_KEYS), ("answer", ANSWER_KEYS)):
            if not any(k in columns for k in keys):
                raise ValueError(f"{file}: no {what} column (one of {', '.join(keys)}); columns: {columns}")
    root = Path(os.path.abspath(file.parent))
    images = _Images(
        base=root,
        cache=Path(cache_dir) if cache_dir is not None else default_cache_dir(file),
        check=_ImageChecker(check_images),
    )
    items: list[tuple[int, TaskItem]] = []
    problems: list[LoadProblem] = []
    seen: set[str] = set()
    deferred: list[tuple[int, Mapping[str, Any]]] = []

    def take(index: int, row: Mapping[str, Any], last_try: bool) -> None:
        qid = _qid(benchmark, row, index)
        try:
            if qid in seen:
                raise FormatError(f"duplicate question id {qid!r}")
            item = _row_to_item(row, qid, benchmark, images)
        except _Deferred as ref:
            if not last_try:
                deferred.append((index, row))
                return
            problems.append(
                LoadProblem(index, qid, str(ref), "image is neither a file, base64 data nor a row index")
            )
            return
        except FormatError as exc:
            problems.append(LoadProblem(index, qid, exc.path, exc.reason))
            return
        seen.add(qid)
        items.append((index, item))
        row_id = _first(row, ID_KEYS)
        if row_id is not None:
            images.by_index[_text(row_id)] = list(item.images)

    for index, row, problem in _table_rows(file):
        if problem is not None or row is None:
            problems.append(LoadProblem(index, None, None, problem or "not a record"))
            continue
        take(index, row, last_try=False)
    for index, row in deferred:
        take(index, row, last_try=True)
    items.sort(key=lambda pair: pair[0])  # rows taken on a second try go back to their place
    problems.sort(key=lambda p: p.row)
    return LoadedItems([item for _, item in items], problems, root, source=file)


def _qid(benchmark: str, row: Mapping[str, Any], index: int) -> str:
    row_id = _first(row, ID_KEYS)
    return f"{benchmark}-{_text(row_id) if row_id is not None else index}"


def _row_to_item(row: Mapping[str, Any], qid: str, benchmark: str, images: _Images) -> TaskItem:
    question = _first(row, QUESTION_KEYS)
    if not isinstance(question, str):
        raise FormatError("question is missing" if question is None else "question must be text")
    choices, listed = _options(row, question)
    answer = _answer_letter(_first(row, ANSWER_KEYS), choices)
    image_value = _first(row, IMAGE_KEYS)
    if image_value is None:
        raise FormatError("image is missing")
    paths = images.paths(image_value)
    meta: dict[str, Any] = {}
    row_id = _first(row, ID_KEYS)
    if row_id is not None:
        meta["source_id"] = _text(row_id)
    category = _category(benchmark, row, [_text(image_value)] if isinstance(image_value, str) else [])
    if category is not None:
        meta["category"] = category
    raw = _first(row, CATEGORY_KEYS)
    if raw is not None and _text(raw) != category:
        meta["source_category"] = _text(raw)
    for key, name in META_KEYS.items():
        if key in row and not _missing(row[key]):
            meta[name] = _text(row[key])
    return TaskItem(
        qid=qid,
        question=question.strip() if listed else format_choices(question.strip(), choices),
        answer=answer,
        images=paths,
        choices=choices,
        meta=meta,
    )


# --------------------------------------------------------------------------------------------
# Per-category results


@dataclass(frozen=True)
class CategoryScore:
    """One category's share of a task's records: how many, the mean score, and RaPR."""

    category: str
    n: int
    score: float
    rapr: float


def category_scores(records: Sequence[Mapping[str, Any]], items: Iterable[TaskItem]) -> list[CategoryScore]:
    """Per-category mean score and RaPR of evaluation records (``qid``, ``score``, ``n_calls``).

    Categories come from ``item.meta["category"]``; records of items without one (or of qids
    not among ``items``) are left out, so a task without categories gives ``[]``. Sorted by name.
    """
    categories = {
        item.qid: item.meta["category"] for item in items if isinstance(item.meta.get("category"), str)
    }
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for record in records:
        category = categories.get(str(record.get("qid")))
        if category is not None:
            groups[category].append(record)
    return [
        CategoryScore(
            category=name,
            n=len(group),
            score=sum(float(r["score"]) for r in group) / len(group),
            rapr=sum(1 for r in group if int(r.get("n_calls", 0)) > 0) / len(group),
        )
        for name, group in sorted(groups.items())
    ]


def format_category_table(task: str, scores: Sequence[CategoryScore]) -> str:
    """A markdown table of one task's categories (empty string when there are none)."""
    if not scores:
        return ""
    lines = [f"| {task} category | n | score | RaPR |", "|---|---|---|---|"]
    lines += [f"| {s.category} | {s.n} | {100 * s.score:.1f} | {100 * s.rapr:.1f}% |" for s in scores]
    return "\n".join(lines)


__all__ = [
    "MC_INSTRUCTION",
    "VSTAR_CATEGORIES",
    "CategoryScore",
    "category_scores",
    "default_cache_dir",
    "format_category_table",
    "format_choices",
    "inline_choices",
    "item_category",
    "read_benchmark",
    "vstar_category",
]
