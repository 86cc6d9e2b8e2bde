"""Benchmarks in their own release layouts (HR-Bench, MME-RealWorld-Lite, V*), read through the registry."""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pixelreasoner.data.formats import write_items
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.benchmarks import (
    MC_INSTRUCTION,
    CategoryScore,
    category_scores,
    format_category_table,
    format_choices,
    inline_choices,
    read_benchmark,
)
from pixelreasoner.eval.tasks import get_task
from pixelreasoner.tasks.families import MC_SUFFIX
from pixelreasoner.trajectory import Conversation, Trajectory

KITE = "What is the color of the kite?"
KITE_PROMPT = f"{KITE}\n(A) red\n(B) blue\n(C) green\n(D) white\n{MC_INSTRUCTION}"


def encoded(color: str, kind: str = "JPEG", size: tuple[int, int] = (8, 6)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format=kind)
    return buffer.getvalue()


def b64(color: str, kind: str = "JPEG") -> str:
    return base64.b64encode(encoded(color, kind)).decode()


def save_png(path: Path, color: str = "gray") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (10, 7), color).save(path)
    return path


def write_tsv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    """As VLMEvalKit writes its TSVs (pandas ``to_csv(sep="\\t")``: minimal quoting)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


def boxed(item: TaskItem, answer: str) -> Trajectory:
    conversation = Conversation.from_question(item.question)
    conversation.add_model_turn(f"Looking closer, \\boxed{{{answer}}}")
    return Trajectory(conversation)


HR_HEADER = ["index", "question", "answer", "category", "A", "B", "C", "D", "cycle_category", "image"]


@pytest.fixture
def hrbench_4k(tmp_path: Path) -> Path:
    """``hr_bench_4k.tsv``: inline base64, a row reusing an earlier row's image, a path, a row
    reusing a *later* row's image, and three broken rows."""
    save_png(tmp_path / "imgs" / "cars.png")
    rows = [
        [0, KITE, "B", "single", "red", "blue", "green", "white", "cycle1", b64("red")],
        [1, KITE, "C", "single", "blue", "white", "red", "green", "cycle2", "0"],
        [2, "How many cars are parked?", "A", "cross", "3", "4", "5", "6", "cycle1", "imgs/cars.png"],
        [3, KITE, "E", "single", "red", "blue", "green", "white", "cycle3", "0"],
        [
            4,
            KITE,
            "A",
            "single",
            "red",
            "blue",
            "green",
            "white",
            "cycle4",
            base64.b64encode(bytes(400)).decode(),
        ],
        [5, "Which sign is on the door?", "D", "cross", "exit", "push", "pull", "open", "cycle2", "6"],
        [
            6,
            "Which sign is on the door?",
            "A",
            "cross",
            "open",
            "exit",
            "push",
            "pull",
            "cycle3",
            b64("blue", "PNG"),
        ],
    ]
    path = write_tsv(tmp_path / "hr_bench_4k.tsv", HR_HEADER, rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write("7\tA row cut short\tA\n")  # fewer fields than the header
    return tmp_path


def test_hrbench_tsv_through_the_registry(hrbench_4k: Path) -> None:
    loaded = get_task("hrbench_4k").load(hrbench_4k)
    assert loaded.source == hrbench_4k / "hr_bench_4k.tsv"
    assert [i.qid for i in loaded.items] == [f"hrbench_4k-{n}" for n in (0, 1, 2, 5, 6)]
    kite, cycled, cars, sign, door = loaded.items
    assert kite.question == KITE_PROMPT
    assert kite.choices == ["red", "blue", "green", "white"] and kite.answer == "B"
    assert cycled.question.splitlines()[1:3] == ["(A) blue", "(B) white"] and cycled.answer == "C"
    assert (kite.meta["category"], cars.meta["category"]) == ("single", "cross")
    assert kite.meta["cycle_category"] == "cycle1" and kite.meta["source_id"] == "0"
    # inline images are decoded once into the cache beside the file; rows that share one share the file
    assert kite.images == cycled.images and kite.images[0].endswith(".jpg")
    assert Path(kite.images[0]).parent == hrbench_4k / "hr_bench_4k_images"
    with Image.open(kite.images[0]) as image:
        assert image.size == (8, 6)
    assert cars.images == [str(hrbench_4k / "imgs" / "cars.png")]
    assert sign.images == door.images and sign.images[0].endswith(".png")  # a forward reference
    problems = {p.row: p for p in loaded.problems}
    assert sorted(problems) == [3, 4, 7]
    assert problems[3].qid == "hrbench_4k-3" and "not one of the options A-D" in problems[3].reason
    assert "neither a file nor base64" in problems[4].reason
    assert "fields" in problems[7].reason
    assert "loaded 5 of 8 rows" in loaded.summary()
    # scored with the choice scoring: a letter or the option's text
    task = get_task("hrbench_4k")
    assert task.score(boxed(kite, "B"), kite) == 1.0
    assert task.score(boxed(kite, "blue"), kite) == 1.0
    assert task.score(boxed(kite, "(C)"), kite) == 0.0
    # a second load reuses the cached files
    again = get_task("hrbench_4k").load(hrbench_4k / "hr_bench_4k.tsv")  # the root may be the file
    assert [i.images for i in again.items] == [i.images for i in loaded.items]


def test_hrbench_8k_parquet_with_inline_bytes(tmp_path: Path) -> None:
    folder = tmp_path / "HR-Bench"
    folder.mkdir()
    columns: dict[str, list[Any]] = {name: [] for name in HR_HEADER}
    rows = [
        [10, KITE, "A", "single", "red", "blue", "green", "white", "cycle1", b64("red")],
        [11, KITE, "D", "single", "blue", "green", "white", "red", "cycle2", "10"],
        [12, None, "A", "cross", "1", "2", "3", "4", "cycle1", b64("red")],
    ]
    for row in rows:
        for name, value in zip(HR_HEADER, row, strict=True):
            columns[name].append(value)
    pq.write_table(pa.table(columns), folder / "hr_bench_8k.parquet")
    loaded = get_task("hrbench_8k").load(tmp_path)
    assert [i.qid for i in loaded.items] == ["hrbench_8k-10", "hrbench_8k-11"]
    assert loaded.items[0].question == KITE_PROMPT and loaded.items[1].answer == "D"
    assert loaded.items[0].images == loaded.items[1].images
    assert [(p.row, p.reason) for p in loaded.problems] == [(2, "question is missing")]
    # Hugging Face's image struct (bytes and path) is read too, and a data URI with line breaks
    wrapped = b64("white", "PNG")
    wrapped = "data:image/png;base64," + "\n".join(wrapped[i : i + 76] for i in range(0, len(wrapped), 76))
    table = pa.table(
        {
            "question": [KITE, KITE],
            "A": ["red", "red"],
            "B": ["blue", "blue"],
            "answer": ["b", "blue"],
            "image": [{"bytes": encoded("green", "PNG"), "path": "x.png"}, {"bytes": None, "path": wrapped}],
        }
    )
    pq.write_table(table, tmp_path / "other.parquet")
    struct, uri = read_benchmark(tmp_path / "other.parquet", "hrbench_8k", cache_dir=tmp_path / "cache").items
    assert struct.qid == "hrbench_8k-0" and struct.answer == "B" and uri.answer == "B"
    assert struct.images[0].startswith(str(tmp_path / "cache")) and uri.images[0].endswith(".png")
    with Image.open(uri.images[0]) as image:
        assert image.getpixel((0, 0)) == (255, 255, 255)


def mme_record(qid: str, image: str, answer: str, task: str = "Perception") -> dict[str, Any]:
    return {
        "Question_id": qid,
        "Image": image,
        "Text": "Where is the yellow crane in the picture?",
        "Question Type": "Multiple Choice",
        "Answer choices": [
            "(A) In the upper right area of the picture",
            "(B) In the upper left area of the picture",
            "(C) In the lower right area of the picture",
            "(D) In the lower left area of the picture",
            "(E) This image doesn't feature the position.",
        ],
        "Ground truth": answer,
        "Category": "position",
        "Subtask": "Remote Sensing",
        "Task": task,
    }


def test_mme_realworld_lite_json_with_image_folder(tmp_path: Path) -> None:
    data = tmp_path / "MME-RealWorld-Lite" / "data"
    save_png(data / "imgs" / "dota_P7036.png")
    records = [
        mme_record("perception/remote_sensing/position/2527", "dota_P7036.png", "A"),
        mme_record("reasoning/remote_sensing/position/11", "dota_P7036.png", "E", task="Reasoning"),
        mme_record("perception/remote_sensing/position/12", "missing.png", "B"),
        mme_record("perception/remote_sensing/position/13", "dota_P7036.png", "F"),
        "not an object",
    ]
    (data / "MME-RealWorld-Lite.json").write_text(json.dumps(records), encoding="utf-8")
    loaded = get_task("mme_realworld_lite").load(tmp_path)
    first, second = loaded.items
    assert first.qid == "mme_realworld_lite-perception/remote_sensing/position/2527"
    assert first.benchmark == "mme_realworld_lite" and first.answer == "A" and second.answer == "E"
    assert first.choices is not None and first.choices[0] == "In the upper right area of the picture"
    assert first.question == format_choices("Where is the yellow crane in the picture?", first.choices)
    assert first.question.splitlines()[1] == "(A) In the upper right area of the picture"
    assert first.images == [str(data / "imgs" / "dota_P7036.png")]
    assert (first.meta["category"], second.meta["category"]) == (
        "Perception/Remote Sensing",
        "Reasoning/Remote Sensing",
    )
    assert first.meta["source_category"] == "position" and first.meta["subtask"] == "Remote Sensing"
    problems = {p.row: p for p in loaded.problems}
    assert sorted(problems) == [2, 3, 4]
    assert problems[2].reason == "file not found" and problems[2].path == "missing.png"
    assert "not one of the options A-E" in problems[3].reason and problems[4].reason == "not a JSON object"
    task = get_task("mme_realworld_lite")
    assert task.score(boxed(first, "A"), first) == 1.0 and task.score(boxed(first, "B"), first) == 0.0


def test_mme_realworld_lite_vlmevalkit_tsv(tmp_path: Path) -> None:
    header = ["index", "question", "A", "B", "C", "D", "E", "answer", "category", "l2-category", "image"]
    rows = [
        [
            0,
            "What is the speed limit?",
            "30",
            "40",
            "50",
            "60",
            "",
            "C",
            "Perception",
            "Autonomous_Driving",
            b64("red"),
        ],
        [
            1,
            "Which lane is free?",
            "left",
            "right",
            "",
            "middle",
            "",
            "A",
            "Reasoning",
            "Monitoring",
            b64("red"),
        ],
    ]
    write_tsv(tmp_path / "MME-RealWorld-Lite.tsv", header, rows)
    loaded = get_task("mme_realworld_lite").load(tmp_path)
    (item,) = loaded.items
    assert item.choices == ["30", "40", "50", "60"] and item.answer == "C"
    assert (
        item.meta["category"] == "Perception/Autonomous_Driving"
        and item.meta["l2_category"] == "Autonomous_Driving"
    )
    assert [(p.row, p.reason) for p in loaded.problems] == [(1, "option C is empty but option D is given")]


VSTAR_TEXT = (
    "What is the material of the glove?\n(A) rubber\n(B) cotton\n(C) kevlar\n(D) leather\n" + MC_INSTRUCTION
)


def write_vstar(root: Path) -> Path:
    folder = root / "vstar_bench"
    (folder / "direct_attributes").mkdir(parents=True)
    Image.new("RGB", (12, 9), "white").save(folder / "direct_attributes" / "sa_4690.jpg", format="JPEG")
    save_png(folder / "relative_position" / "sa_1.png")
    spatial = "Is the cup on the left or right side of the plate?\n(A) left\n(B) right\n" + MC_INSTRUCTION
    lines = [
        json.dumps(
            {
                "image": "direct_attributes/sa_4690.jpg",
                "text": VSTAR_TEXT,
                "category": "direct_attributes",
                "question_id": 0,
                "label": "A",
            }
        ),
        json.dumps(
            {
                "image": "relative_position/sa_1.png",
                "text": spatial,
                "category": "relative_position",
                "question_id": 1,
                "label": "B",
            }
        ),
        '{"image": "direct_attributes/sa_4690.jpg", "text": ',
        json.dumps(
            {
                "image": "relative_position/sa_1.png",
                "text": spatial,
                "category": "relative_position",
                "question_id": 3,
                "label": "C",
            }
        ),
    ]
    path = folder / "test_questions.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_vstar_jsonl_keeps_its_prompt_and_categories(tmp_path: Path) -> None:
    write_vstar(tmp_path)
    loaded = get_task("vstar").load(tmp_path)
    attribute, spatial = loaded.items
    assert attribute.qid == "vstar-0" and attribute.question == VSTAR_TEXT  # options already listed
    assert attribute.choices == ["rubber", "cotton", "kevlar", "leather"] and attribute.answer == "A"
    assert (attribute.meta["category"], spatial.meta["category"]) == ("attribute", "spatial")
    assert attribute.meta["source_category"] == "direct_attributes"
    assert attribute.images == [str(tmp_path / "vstar_bench" / "direct_attributes" / "sa_4690.jpg")]
    assert [p.row for p in loaded.problems] == [2, 3]
    assert "not valid JSON" in loaded.problems[0].reason and "A-B" in loaded.problems[1].reason
    assert get_task("vstar").score(boxed(attribute, "rubber"), attribute) == 1.0


def test_vstar_released_parquet_wins_and_gets_categories(tmp_path: Path) -> None:
    write_vstar(tmp_path)
    images = tmp_path / "vstar_bench"
    items = [
        TaskItem("vstar-a", VSTAR_TEXT, "A", [str(images / "direct_attributes" / "sa_4690.jpg")]),
        TaskItem(
            "vstar-b",
            "Left or right?\n(A) left\n(B) right",
            "B",
            [str(images / "relative_position" / "sa_1.png")],
        ),
        TaskItem(
            "vstar-c", "Left?", "A", [str(images / "relative_position" / "sa_1.png")], meta={"category": "x"}
        ),
    ]
    write_items(items, tmp_path / "vstar.parquet", relative_to=tmp_path)
    loaded = get_task("vstar").load(tmp_path)
    assert loaded.source == tmp_path / "vstar.parquet"
    assert [i.meta.get("category") for i in loaded.items] == ["attribute", "spatial", "x"]


def test_foreign_parquet_is_passed_over(tmp_path: Path) -> None:
    """A benchmark's own parquet in the data root does not break tasks that scan for released parquet."""
    columns = {
        "index": [0],
        "question": [KITE],
        "answer": ["A"],
        "A": ["red"],
        "B": ["blue"],
        "category": ["single"],
        "image": [b64("red")],
    }
    pq.write_table(pa.table(columns), tmp_path / "hr_bench_4k.parquet")
    save_png(tmp_path / "img.png")
    write_items(
        [TaskItem("vstar-1", "Which?\n(A) a\n(B) b", "A", [str(tmp_path / "img.png")])],
        tmp_path / "mix.parquet",
    )
    assert [i.qid for i in get_task("vstar").load(tmp_path).items] == ["vstar-1"]
    assert [i.qid for i in get_task("hrbench_4k").load(tmp_path).items] == ["hrbench_4k-0"]
    with pytest.raises(FileNotFoundError, match=r"hr_bench_8k\.tsv"):
        get_task("hrbench_8k").load(tmp_path)


def test_unusable_files_raise(tmp_path: Path) -> None:
    write_tsv(tmp_path / "hr_bench_4k.tsv", ["index", "prompt", "answer"], [[0, "q", "A"]])
    with pytest.raises(ValueError, match="no question column"):
        get_task("hrbench_4k").load(tmp_path)
    write_tsv(
        tmp_path / "hr_bench_4k.tsv", HR_HEADER, [[0, KITE, "Z", "single", "a", "b", "", "", "c", b64("red")]]
    )
    with pytest.raises(FileNotFoundError, match=r"no usable rows.*not one of the options A-B"):
        get_task("hrbench_4k").load(tmp_path)


def test_prompt_helpers() -> None:
    assert MC_INSTRUCTION == MC_SUFFIX  # the synthetic families and the benchmarks prompt alike
    assert format_choices(KITE, ["red", "blue", "green", "white"]) == KITE_PROMPT
    assert inline_choices(KITE_PROMPT) == ["red", "blue", "green", "white"]
    assert inline_choices("Is it (A) or (B)?") is None


def test_category_scores_by_hand() -> None:
    items = [
        TaskItem("vstar-1", "q", "A", meta={"category": "attribute"}),
        TaskItem("vstar-2", "q", "A", meta={"category": "attribute"}),
        TaskItem("vstar-3", "q", "A", meta={"category": "attribute"}),
        TaskItem("vstar-4", "q", "A", meta={"category": "spatial"}),
        TaskItem("vstar-5", "q", "A", meta={"category": "spatial"}),
        TaskItem("vstar-6", "q", "A"),  # no category: left out
    ]
    records = [
        {"qid": "vstar-1", "score": 1.0, "n_calls": 2},
        {"qid": "vstar-2", "score": 1.0, "n_calls": 0},
        {"qid": "vstar-3", "score": 0.0, "n_calls": 1},
        {"qid": "vstar-4", "score": 0.0, "n_calls": 0},
        {"qid": "vstar-5", "score": 1.0, "n_calls": 3},
        {"qid": "vstar-6", "score": 1.0, "n_calls": 0},
        {"qid": "vstar-99", "score": 1.0, "n_calls": 0},  # not among the items: left out
    ]
    scores = category_scores(records, items)
    assert scores == [CategoryScore("attribute", 3, 2 / 3, 2 / 3), CategoryScore("spatial", 2, 0.5, 0.5)]
    assert format_category_table("vstar", scores).splitlines() == [
        "| vstar category | n | score | RaPR |",
        "|---|---|---|---|",
        "| attribute | 3 | 66.7 | 66.7% |",
        "| spatial | 2 | 50.0 | 50.0% |",
    ]
    assert category_scores(records, [TaskItem("vstar-1", "q", "A")]) == []
    assert format_category_table("vstar", []) == ""


def test_vstar_categories_reach_the_summary(tmp_path: Path) -> None:
    """V* is reported overall and by its two categories in summary.json and summary.md: an oracle
    for the attribute question and a wrong answer for the spatial one give 100 and 0."""
    from pixelreasoner.eval.harness import TaskRun, run_evaluation
    from pixelreasoner.eval.protocol import ModelIdentity, build_protocol
    from pixelreasoner.rollout.scripted import ScriptedBackend

    write_vstar(tmp_path / "data")
    task = get_task("vstar")
    items = task.load(tmp_path / "data").items
    backend = ScriptedBackend(["\\boxed{A}"])  # right for the attribute item (A), wrong for spatial (B)
    identity = ModelIdentity("in-memory", "scripted", "0" * 64, "state dict")
    protocol = build_protocol(budget="tiny")
    reports = run_evaluation(
        backend, [TaskRun(task, items)], tmp_path / "out", protocol, identity, progress=False
    )
    by_category = {c["category"]: c["score"] for c in reports[0].categories}
    assert by_category == {"attribute": 1.0, "spatial": 0.0} and reports[0].score == 0.5
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert [c["category"] for c in summary["tasks"][0]["categories"]] == ["attribute", "spatial"]
    assert "| vstar category | n | score | RaPR |" in (tmp_path / "out" / "summary.md").read_text()
