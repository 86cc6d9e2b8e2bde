"""Tests for pixelreasoner.data.formats: the released parquet and SFT-trace formats, and bad rows.

Every file is built in ``tmp_path``: tiny PNGs, parquet tables written with pyarrow directly to
imitate the released files, JSON traces with and without our markers.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixelreasoner.data.formats import (
    LoadProblem,
    conversation_to_record,
    read_items,
    read_traces,
    record_to_conversation,
    write_items,
    write_traces,
)
from pixelreasoner.data.items import TaskItem
from pixelreasoner.protocol.tools import system_message
from pixelreasoner.trajectory import Conversation, ImagePart, Text, Turn, TurnKind, VideoPart
from pixelreasoner.vision.ops import Observation


def _png(path: Path, size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _leftovers(directory: Path) -> list[str]:
    """Temp files an interrupted atomic write would leave behind."""
    return [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


# --------------------------------------------------------------------------------------------
# Query sets (parquet)


@pytest.fixture
def image_set(tmp_path: Path) -> Path:
    for name in ("a.png", "b.png", "f1.png", "f2.png", "f3.png"):
        _png(tmp_path / "images" / name)
    return tmp_path


def _items() -> list[TaskItem]:
    return [
        TaskItem("vstar-1", "What colour is the cup?", "red", ["images/a.png"]),
        TaskItem("tally-7", "How many birds?", ["3", "three"], ["images/a.png", "images/b.png"]),
        TaskItem(
            "vstar-2",
            "Which side is the lamp on?",
            "B",
            ["images/b.png"],
            choices=["left", "right"],
            cue_bbox=[0.1, 0.2, 0.5, 0.6],
            meta={"source": "sa1b", "scores": [1, 2.5], "nested": {"ok": True}},
        ),
        TaskItem(
            "mvbench-3",
            "What happens first?",
            "A",
            ["images/f1.png", "images/f2.png", "images/f3.png"],
            is_video=True,
            choices=["opens door", "sits"],
            cue_frames=[2, 3],
        ),
        # A string answer that looks like a list must stay a string (answer_is_list says so).
        TaskItem("math-1", "Which interval?", '["0", "1"]', ["images/a.png"]),
        TaskItem("nodash", "Question?", "yes", ["images/a.png"]),
    ]


def test_items_round_trip(image_set: Path) -> None:
    items = _items()
    out = write_items(items, image_set / "items.parquet")
    assert _leftovers(image_set) == []
    assert pq.read_schema(out).field("answer").type == pa.string()  # released loaders read strings

    loaded = read_items(image_set)  # a directory means its items.parquet
    assert loaded.problems == []
    assert loaded.root == image_set
    for item in items:
        item.images = [str(image_set / p) for p in item.images]
    assert loaded.items == items
    assert [i.benchmark for i in loaded.items] == ["vstar", "tally", "vstar", "mvbench", "math", "nodash"]
    assert loaded.summary().startswith("loaded 6 of 6 rows from")


def test_write_items_relative_to(image_set: Path) -> None:
    absolute = TaskItem("x-1", "q", "a", [str(image_set / "images" / "a.png")])
    out = write_items([absolute], image_set / "sub" / "set.parquet", relative_to=image_set)
    assert pq.read_table(out).column("image").to_pylist() == [["images/a.png"]]
    assert read_items(out, data_root=image_set).items[0].images == absolute.images


def _released_table(answers: pa.Array) -> pa.Table:
    return pa.table(
        {
            "question": ["What colour?", "How many?", "Which?"],
            "answer": answers,
            "image": [["images/a.png"], ["images/b.png"], ["images/a.png"]],
            "is_video": [False, False, False],
            "qid": ["vstar-0", "tallyqa-12-b", "infovqa"],
        }
    )


def test_read_released_string_answers(image_set: Path) -> None:
    # Plain strings, one of them a JSON list of accepted answers in string form.
    path = image_set / "released.parquet"
    pq.write_table(_released_table(pa.array(["red", '["3", "three"]', "[1, 2]"])), path)
    loaded = read_items(path)
    assert loaded.problems == []
    assert [i.answer for i in loaded.items] == ["red", ["3", "three"], "[1, 2]"]
    assert [i.benchmark for i in loaded.items] == ["vstar", "tallyqa", "infovqa"]
    assert loaded.items[0].images == [str(image_set / "images" / "a.png")]
    assert loaded.items[0].choices is None and loaded.items[0].meta == {}


def test_read_released_list_answers(image_set: Path) -> None:
    path = image_set / "released_lists.parquet"
    answers = pa.array([["red"], ["3", "three"], ["x"]], type=pa.list_(pa.string()))
    pq.write_table(_released_table(answers), path)
    loaded = read_items(path)
    assert loaded.problems == []
    assert [i.answer for i in loaded.items] == [["red"], ["3", "three"], ["x"]]
    assert [i.answers for i in loaded.items][1] == ["3", "three"]


def test_bad_rows_are_reported_and_skipped(image_set: Path) -> None:
    (image_set / "images" / "corrupt.png").write_bytes(b"this is not an image at all")
    items = [
        TaskItem("set-0", "ok?", "yes", ["images/a.png"]),
        TaskItem("set-1", "missing?", "no", ["images/a.png", "images/gone.png"]),
        TaskItem("set-2", "corrupt?", "no", ["images/corrupt.png"]),
        TaskItem("set-3", "bad cue?", "no", ["images/b.png"], cue_bbox=[0.6, 0.1, 0.2, 0.3]),
        TaskItem("set-4", "ok too?", "yes", ["images/b.png"]),
    ]
    path = write_items(items, image_set / "items.parquet")
    loaded = read_items(path)
    assert [i.qid for i in loaded.items] == ["set-0", "set-4"]
    assert [(p.row, p.qid, p.path) for p in loaded.problems] == [
        (1, "set-1", "images/gone.png"),
        (2, "set-2", "images/corrupt.png"),
        (3, "set-3", None),
    ]
    assert loaded.problems[0].reason == "file not found"
    assert loaded.problems[1].reason == "not a recognised image format"
    assert "cue_bbox" in loaded.problems[2].reason
    summary = loaded.summary()
    assert summary.startswith(f"loaded 2 of 5 rows from {path}; 3 problems: ")
    assert "row 1 (set-1): images/gone.png: file not found" in summary
    assert "row 2 (set-2): images/corrupt.png" in summary and "row 3 (set-3)" in summary

    # Without the header check only existence is tested: the corrupt file passes.
    assert [p.row for p in read_items(path, check_images=False).problems] == [1, 3]


def test_more_bad_rows(image_set: Path) -> None:
    table = pa.table(
        {
            "question": ["q", None, "q", "q", "q"],
            "answer": ["a", "a", "", "a", "a"],
            "image": [["images/a.png"], ["images/a.png"], ["images/a.png"], ["images/f1.png"], ["images/"]],
            "is_video": [False, False, False, True, False],
            "qid": ["s-0", "s-1", "s-2", "s-3", "s-4"],
            "cue_frames": [None, None, None, [2], None],
        }
    )
    pq.write_table(table, image_set / "t.parquet")
    loaded = read_items(image_set / "t.parquet")
    assert [i.qid for i in loaded.items] == ["s-0"]
    reasons = [p.reason for p in loaded.problems]
    assert reasons[0] == "question is missing"
    assert reasons[1] == "answer is empty"
    assert "frame numbers run from 1 to 1" in reasons[2]
    assert reasons[3] == "is a directory, not an image file"


def test_problem_list_is_capped() -> None:
    from pixelreasoner.data.formats import LoadedItems

    problems = [LoadProblem(i, f"q-{i}", None, "bad") for i in range(13)]
    summary = LoadedItems([], problems, Path("/data")).summary()
    assert "row 9 (q-9): bad" in summary and "row 10 " not in summary
    assert summary.endswith("; and 3 more")


def test_missing_column_raises(image_set: Path) -> None:
    path = image_set / "noquestion.parquet"
    pq.write_table(_released_table(pa.array(["a", "b", "c"])).drop_columns(["question"]), path)
    with pytest.raises(ValueError, match=r"noquestion\.parquet.*'question'"):
        read_items(path)


# --------------------------------------------------------------------------------------------
# SFT traces (JSON)


def _trace(tmp_path: Path) -> Conversation:
    image = Image.new("RGB", (64, 48), (10, 120, 200))
    conv = Conversation.from_question("What is written on the sign?", [image])
    conv.add_model_turn('<tool_call>{"name": "crop_image_normalized"}</tool_call>', erroneous=True)
    conv.add_observation(
        Observation(text="\nHere is the cropped image (Image Size: 32x32):", images=(image,))
    )
    conv.add_model_turn('<tool_call>{"name": "crop_image_normalized", "again": 1}</tool_call>')
    conv.add_observation(Observation.failure("crop too small"))
    conv.add_model_turn("It says \\boxed{STOP}.")
    return conv


@pytest.mark.parametrize("name", ["traces.json", "traces.jsonl"])
def test_traces_round_trip(tmp_path: Path, name: str) -> None:
    conv = _trace(tmp_path)
    out = write_traces([conv], tmp_path / name, qids=["sa1b-4"])
    assert _leftovers(tmp_path) == []
    loaded = read_traces(out)
    assert loaded.problems == [] and loaded.qids == ["sa1b-4"]
    assert loaded.has_markers and loaded.marked == [True]
    (back,) = loaded.conversations
    assert [t.role for t in back.turns] == [t.role for t in conv.turns]
    assert [t.kind for t in back.turns] == [
        TurnKind.PROMPT,
        TurnKind.PROMPT,
        TurnKind.ERRONEOUS,
        TurnKind.OBSERVATION,
        TurnKind.MODEL,
        TurnKind.OBSERVATION,
        TurnKind.MODEL,
    ]
    assert [t.text for t in back.turns] == [t.text for t in conv.turns]
    assert [len(t.images) for t in back.turns] == [0, 1, 0, 1, 0, 0, 0]
    assert [t.error for t in back.turns] == [t.error for t in conv.turns]
    images = [img for t in back.turns for img in t.images]
    assert [img.returned for img in images] == [False, True]
    for img in images:
        assert img.path is not None and os.path.isabs(img.path) and Path(img.path).is_file()
        assert Image.open(img.path).size == (64, 48)
    # Paths in the file are relative to its directory.
    record = (
        json.loads(out.read_text().splitlines()[0]) if name.endswith("l") else json.loads(out.read_text())[0]
    )
    assert record["message_list"][1]["content"][0]["image"] == "traces_images/traces_000000_0.png"


def test_record_paths_and_videos(tmp_path: Path) -> None:
    inside = _png(tmp_path / "data" / "x.png")
    outside = _png(tmp_path / "elsewhere" / "y.png")
    frames = tuple(Image.new("RGB", (16, 16), (i, i, i)) for i in range(3))
    conv = Conversation(
        [
            Turn("system", TurnKind.PROMPT, [Text("sys")]),
            Turn("user", TurnKind.PROMPT, [ImagePart(path=str(inside)), ImagePart(path=str(outside))]),
            Turn("assistant", TurnKind.MODEL, [Text("a")]),
            Turn("user", TurnKind.PROMPT, [VideoPart(frames=frames, fps=1.5), Text("follow-up")]),
        ]
    )
    root = tmp_path / "data"
    record = conversation_to_record(conv, root / "imgs", root, "r")
    user, _, followup = record["message_list"][1:]
    assert user["content"] == [{"image": "x.png"}, {"image": outside.as_posix()}]
    assert followup["kind"] == "prompt"  # not the inferred observation, so written out
    assert followup["content"][0] == {"video": ["imgs/r_0.png", "imgs/r_1.png", "imgs/r_2.png"], "fps": 1.5}
    back, marked = record_to_conversation(record, root)
    assert marked and [t.kind for t in back.turns] == [t.kind for t in conv.turns]
    video = back.turns[3].parts[0]
    assert isinstance(video, VideoPart) and video.fps == 1.5
    assert video.paths[0] == str(root / "imgs" / "r_0.png")


def test_released_traces_infer_kinds(tmp_path: Path) -> None:
    _png(tmp_path / "imgs" / "q.png")
    _png(tmp_path / "imgs" / "crop.png")
    records = [
        {
            "message_list": [
                {"role": "user", "content": [{"image": "imgs/q.png"}, {"text": "What is it?"}]},
                {"role": "assistant", "content": [{"text": "<tool_call>{}</tool_call>"}]},
                {
                    "role": "user",
                    "content": [{"text": "\nHere is the cropped image:"}, {"image": "imgs/crop.png"}],
                },
                {"role": "assistant", "content": [{"text": "\\boxed{cat}"}]},
            ]
        },
        {
            "message_list": [
                {"role": "user", "content": "Plain string question"},
                {"role": "assistant", "content": "\\boxed{1}"},
            ]
        },
    ]
    (tmp_path / "released.json").write_text(json.dumps(records))
    loaded = read_traces(tmp_path / "released.json")
    assert loaded.problems == [] and not loaded.has_markers and loaded.qids == [None, None]
    first, second = loaded.conversations
    assert first.turns[0].role == "system" and first.turns[0].text == system_message(True)
    assert [t.kind for t in first.turns] == [
        TurnKind.PROMPT,
        TurnKind.PROMPT,
        TurnKind.MODEL,
        TurnKind.OBSERVATION,
        TurnKind.MODEL,
    ]
    assert [img.returned for t in first.turns for img in t.images] == [False, True]
    assert [t.text for t in second.turns[1:]] == ["Plain string question", "\\boxed{1}"]


def test_malformed_traces_are_skipped(tmp_path: Path) -> None:
    good = {"message_list": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    records = [
        good,
        ["not", "a", "dict"],
        {"qid": "x-1", "messages": []},
        {"qid": "x-2", "message_list": [{"role": "robot", "content": "hi"}]},
        {"qid": "x-3", "message_list": [{"role": "user", "content": [{"image": "nowhere.png"}]}]},
        {"message_list": [{"role": "user", "content": 42}]},
        good,
    ]
    path = tmp_path / "t.json"
    path.write_text(json.dumps(records))
    loaded = read_traces(path)
    assert len(loaded.conversations) == 2
    assert [(p.row, p.qid, p.path) for p in loaded.problems] == [
        (1, None, None),
        (2, "x-1", None),
        (3, "x-2", None),
        (4, "x-3", "nowhere.png"),
        (5, None, None),
    ]
    assert "unknown role 'robot'" in loaded.problems[2].reason
    assert loaded.problems[3].reason == "file not found"
    assert "loaded 2 of 7 records" in loaded.summary()

    lines = [json.dumps(good), "{not json", "", json.dumps({"qid": "y-1"}), json.dumps(good)]
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    loaded = read_traces(jsonl)
    assert len(loaded.conversations) == 2
    assert [(p.row, p.qid) for p in loaded.problems] == [(1, None), (3, "y-1")]
    assert loaded.problems[0].reason.startswith("not valid JSON")


def test_unusable_trace_file_raises(tmp_path: Path) -> None:
    (tmp_path / "obj.json").write_text('{"message_list": []}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        read_traces(tmp_path / "obj.json")
    (tmp_path / "broken.json").write_text("[{")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_traces(tmp_path / "broken.json")


def test_written_files_are_not_private(tmp_path: Path) -> None:
    # The temp file of an atomic write is created 0600; the dataset must not stay that way.
    out = write_items([TaskItem("x-1", "q", "a")], tmp_path / "items.parquet")
    assert out.stat().st_mode & 0o044 == 0o044
