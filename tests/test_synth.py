"""Trace synthesis: variants, executed operations, masks, bad data, and the teacher endpoint."""

from __future__ import annotations

import copy
import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pixelreasoner.data.formats import read_items, read_traces, write_items, write_traces
from pixelreasoner.protocol.tools import system_message
from pixelreasoner.render import Renderer
from pixelreasoner.synth.teacher import OpenAITeacher, valid_step_text
from pixelreasoner.synth.templates import Facts
from pixelreasoner.synth.traces import CROP_PADDING, TraceMix, TraceSynthesizer, wide_box, wrong_boxes
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.trajectory import TurnKind
from pixelreasoner.vision.budget import tiny
from pixelreasoner.vision.images import load_image
from pixelreasoner.vision.ops import pixel_box

BUDGET = tiny()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    out = tmp_path_factory.mktemp("tasks")
    families = [make_family(n) for n in ("needle", "count", "read", "frames")]
    generate_dataset(families, 6, out, seed=1, progress=False)
    return out, read_items(out).items


def kinds(conversation) -> list[str]:  # type: ignore[no-untyped-def]
    return [t.kind.value for t in conversation.turns]


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("single", ["prompt", "prompt", "model", "observation", "model"]),
        ("recrop_once", ["prompt", "prompt", "erroneous", "observation", "model", "observation", "model"]),
        (
            "recrop_twice",
            [
                "prompt",
                "prompt",
                "erroneous",
                "observation",
                "erroneous",
                "observation",
                "model",
                "observation",
                "model",
            ],
        ),
        ("zoom_further", ["prompt", "prompt", "erroneous", "observation", "model", "observation", "model"]),
    ],
)
def test_image_variants(dataset, variant: str, expected: list[str]) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    item = next(i for i in items if i.benchmark == "needle")
    conversation, made = TraceSynthesizer(BUDGET).synthesize(item, variant=variant)  # type: ignore[arg-type]
    assert made == variant and kinds(conversation) == expected
    observations = [t for t in conversation.turns if t.kind is TurnKind.OBSERVATION]
    assert all(t.error is None and len(t.images) == 1 for t in observations)
    assert conversation.turns[-1].text.endswith(f"\\boxed{{{item.answer}}}.")
    # the last crop is the cue, cut from the original at native resolution
    original = load_image(item.images[0])
    box = pixel_box(item.cue_bbox, original.width, original.height)
    last = observations[-1].images[0].image
    assert last is not None and last.tobytes() == original.crop(box).tobytes()


def test_video_variants(dataset) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    item = next(i for i in items if i.is_video)
    synth = TraceSynthesizer(BUDGET)
    single, _ = synth.synthesize(item, variant="single")
    assert kinds(single) == ["prompt", "prompt", "model", "observation", "model"]
    assert f'"target_frames": {item.cue_frames}' in single.turns[2].text
    again, _ = synth.synthesize(item, variant="reselect")
    assert kinds(again) == ["prompt", "prompt", "erroneous", "observation", "model", "observation", "model"]
    wrong = json.loads(again.turns[2].text.split("<tool_call>")[1].split("</tool_call>")[0])
    assert not set(wrong["arguments"]["target_frames"]) & set(item.cue_frames or [])


def test_wrong_and_wide_boxes() -> None:
    cue = [0.4, 0.2, 0.6, 0.4]
    for box in wrong_boxes(cue):
        padded = [box[0] - CROP_PADDING, box[1] - CROP_PADDING, box[2] + CROP_PADDING, box[3] + CROP_PADDING]
        assert padded[2] <= cue[0] or padded[0] >= cue[2] or padded[3] <= cue[1] or padded[1] >= cue[3]
        assert box[2] - box[0] == pytest.approx(0.2) and box[0] >= 0 and box[2] <= 1
    assert len(wrong_boxes(cue)) > 5 and wrong_boxes([0.0, 0.0, 1.0, 1.0]) == []
    assert wide_box(cue) == [0.2, 0.0, 0.8, 0.6]


def test_mix_proportions_and_text_only_share(dataset) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    images = [copy.deepcopy(i) for i in items if not i.is_video for _ in range(40)]  # new qids below
    for n, item in enumerate(images):
        item.qid = f"{item.benchmark}-{n:05d}"
    synth = TraceSynthesizer(BUDGET, mix=TraceMix(text_only=0.0))
    counts = Counter(synth.synthesize(item)[1] for item in images[:400])
    for variant, share in (
        ("single", 0.3),
        ("recrop_once", 0.2),
        ("recrop_twice", 0.2),
        ("zoom_further", 0.3),
    ):
        assert abs(counts[variant] / 400 - share) < 0.07, counts
    conversations, _, report = TraceSynthesizer(BUDGET).run(items, progress=False)
    assert report.variants["text_only"] == round(len(items) * 0.25 / 0.75)
    assert len(conversations) == len(items) + report.variants["text_only"]
    with pytest.raises(ValueError, match="sum to 1"):
        TraceMix(single=0.5)


def test_text_only_and_notool_traces(dataset) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    item = items[0]
    synth = TraceSynthesizer(BUDGET)
    text_only = synth.text_only(item)
    assert kinds(text_only) == ["prompt", "prompt", "model"]
    assert text_only.turns[-1].text.endswith(f"\\boxed{{{item.meta['global_answer']}}}.")
    notool = synth.notool(item)
    assert notool.turns[0].text == system_message(with_tools=False)
    assert "Please think step by step" in notool.turns[1].text and "<tool_call>" not in notool.turns[-1].text


def test_erroneous_turns_stay_masked_after_writing_and_reading(dataset, tiny, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, processor = tiny
    _, items = dataset
    item = next(i for i in items if i.benchmark == "count")
    conversation, _ = TraceSynthesizer(BUDGET).synthesize(item, variant="recrop_once")
    path = write_traces([conversation], tmp_path / "traces.json", qids=[item.qid])
    loaded = read_traces(path)
    assert loaded.has_markers and not loaded.problems
    back = loaded.conversations[0]
    assert kinds(back) == kinds(conversation)
    seq = Renderer(processor, BUDGET).render(back)
    for turn, (start, end) in zip(back.turns, seq.turn_spans, strict=True):
        learned = sum(seq.loss_mask[start:end])
        assert (learned > 0) is (turn.kind is TurnKind.MODEL), turn.kind
    learned_text = processor.tokenizer.decode(
        [t for t, m in zip(seq.input_ids, seq.loss_mask, strict=True) if m]
    )
    assert "I will look closer at" not in learned_text  # the wrong call is context only
    assert learned_text.endswith(f"\\boxed{{{item.answer}}}.<|im_end|>")


def test_user_dataset_with_missing_and_broken_images(dataset, tmp_path) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    mine = copy.deepcopy([i for i in items if i.benchmark == "needle"][:3])
    data = tmp_path / "user"
    (data / "img").mkdir(parents=True)
    for n, item in enumerate(mine):
        target = data / "img" / f"{n}.png"
        target.write_bytes(Path(item.images[0]).read_bytes())
        item.images = [str(target)]
    (data / "img" / "1.png").unlink()  # missing
    (data / "img" / "2.png").write_bytes(b"\x89PNG broken")  # corrupt
    write_items(mine, data / "items.parquet", relative_to=data)
    loaded = read_items(data)
    assert len(loaded.items) == 1 and {p.row for p in loaded.problems} == {1, 2}
    # an image that breaks after loading the item list is skipped by the synthesizer, not fatal
    (data / "img" / "0.png").write_bytes(b"")
    conversations, _, report = TraceSynthesizer(BUDGET, mix=TraceMix(text_only=0.0)).run(
        loaded.items, progress=False
    )
    assert conversations == [] and len(report.skipped) == 1 and "0.png" in report.skipped[0][1]
    assert "skipped 1 items" in report.summary()


# ---------------------------------------------------------------------------------- teacher
class _FakeChat(BaseHTTPRequestHandler):
    """A chat-completions endpoint: echoes the box it is told to end with; one request gets a tool call."""

    requests: ClassVar[list[dict[str, Any]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append(body)
        instruction = body["messages"][1]["content"][0]["text"]
        boxed = re.search(r"end with exactly (\\boxed\{[^}]*\})", instruction)
        text = f"Teacher prose. {boxed.group(1)}" if boxed else "Teacher prose."
        if len(type(self).requests) == 1:
            text = '<tool_call>{"name": "x"}</tool_call>'  # must be rejected
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args: object) -> None:
        pass


def test_teacher_writes_prose_through_a_local_endpoint(dataset) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        teacher = OpenAITeacher(base_url=f"http://127.0.0.1:{server.server_port}/v1", model="fake", timeout=5)
        item = next(i for i in items if i.benchmark == "read")
        conversation, _ = TraceSynthesizer(BUDGET, writer=teacher).synthesize(item, variant="single")
    finally:
        server.shutdown()
        server.server_close()
    assert teacher.calls == 2 and teacher.fallbacks == 1  # the tool-call reply fell back to the template
    assert conversation.turns[-1].text == f"Teacher prose. \\boxed{{{item.answer}}}"
    assert "<tool_call>" in conversation.turns[2].text  # the call itself is always ours
    first = _FakeChat.requests[0]
    assert first["model"] == "fake" and first["messages"][1]["content"][1]["type"] == "image_url"


def test_teacher_down_falls_back_to_templates(dataset) -> None:  # type: ignore[no-untyped-def]
    _, items = dataset
    server = HTTPServer(("127.0.0.1", 0), _FakeChat)
    port = server.server_port
    server.server_close()  # nothing listens on this port now
    teacher = OpenAITeacher(base_url=f"http://127.0.0.1:{port}/v1", model="fake", timeout=2)
    conversations, _, report = TraceSynthesizer(BUDGET, writer=teacher).run(items[:2], progress=False)
    assert len(conversations) == 3 and teacher.fallbacks == teacher.calls > 0 and teacher.errors
    assert "fell back to templates" in report.summary()


def test_valid_step_text_rules() -> None:
    facts = Facts(thing="red cell", where="row 1, column 2", detail="pattern", answer="B")
    assert valid_step_text("conclude", "It is coarse. \\boxed{B}.", facts)
    assert not valid_step_text("conclude", "It is coarse. \\boxed{C}.", facts)
    assert not valid_step_text("locate", "Look \\boxed{B}", facts)
    assert not valid_step_text("locate", "", facts)


def test_direct_traces_answer_the_same_question_without_an_operation(dataset) -> None:  # type: ignore[no-untyped-def]
    """The learning trap's warm start: a share of the items answered at once, with the tool prompt."""
    _, items = dataset
    images = [copy.deepcopy(i) for i in items if i.benchmark == "needle" for _ in range(50)]
    for n, item in enumerate(images):
        item.qid = f"needle-{n:05d}"
    mixed = TraceSynthesizer(BUDGET, mix=TraceMix.single_pass(direct=0.5))
    made = [mixed.synthesize(item) for item in images]
    counts = Counter(variant for _, variant in made)
    assert set(counts) == {"single", "direct"} and abs(counts["direct"] / len(images) - 0.5) < 0.12, counts
    conversation, _ = next((c, v) for c, v in made if v == "direct")
    item = images[[v for _, v in made].index("direct")]
    assert kinds(conversation) == ["prompt", "prompt", "model"]
    assert conversation.turns[0].text == system_message(with_tools=True)  # the vcot prompt
    assert item.question in conversation.turns[1].text  # the item's own question, not a global one
    assert "<tool_call>" not in conversation.turns[-1].text
    assert conversation.turns[-1].text.endswith(f"\\boxed{{{item.answer}}}.")
    # the direct draw has its own random stream: the items not answered directly keep the variant
    # the same mix draws without direct traces (so adding the option changed no existing dataset)
    without = TraceSynthesizer(BUDGET, mix=TraceMix.single_pass(self_correction=0.3))
    with_direct = TraceSynthesizer(BUDGET, mix=TraceMix.single_pass(self_correction=0.3, direct=0.5))
    before = [without.synthesize(i)[1] for i in images]
    after = [with_direct.synthesize(i)[1] for i in images]
    assert "direct" not in before and len(set(before)) > 1  # the self-correction variants vary
    kept = [(b, a) for b, a in zip(before, after, strict=True) if a != "direct"]
    assert kept and all(b == a for b, a in kept)
    with pytest.raises(ValueError, match="direct"):
        TraceMix(direct=1.5)
