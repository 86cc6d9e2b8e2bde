"""The tool protocol: byte-exact prompts, turn parsing, and execution that never raises."""

from __future__ import annotations

import json
import re

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from conftest import protocol_text
from pixelreasoner.protocol.prompts import question_text
from pixelreasoner.protocol.tools import system_message
from pixelreasoner.protocol.turns import execute_turn, is_tool_call, parse_turn
from pixelreasoner.render import Renderer
from pixelreasoner.trajectory import Conversation, VideoPart
from pixelreasoner.vision.budget import released_train
from pixelreasoner.vision.ops import Observation, VisualContext, crop_text

UMBRELLA = (
    "What is the color of the umbrella held by the woman?\n(A) red\n(B) blue\n(C) green\n(D) yellow\n"
    "Answer with the option's letter from the given choices directly."
)
DOOR = (
    "What did the person do after opening the door?\n(A) sat down\n(B) took the box\n"
    "(C) closed the window\n(D) left the room"
)
CROP_TURN = (
    "The umbrella is small in the image. I will zoom in to look closer.\n\n<tool_call>\n"
    '{"name": "crop_image_normalized", "arguments": '
    '{"bbox_2d": [0.42, 0.31, 0.58, 0.47], "target_image": 1}}\n'
    "</tool_call>"
)
IMG = Image.new("RGB", (64, 64), "white")


def test_system_messages_are_byte_identical() -> None:
    assert system_message(with_tools=True) == protocol_text("system_with_tools.txt")
    assert system_message(with_tools=False) == protocol_text("system_notool.txt")


@pytest.mark.parametrize(
    ("fixture", "conversation"),
    [
        ("rendered_first_turn_image_vcot.txt", lambda: Conversation.from_question(UMBRELLA, [IMG])),
        (
            "rendered_first_turn_image_notool.txt",
            lambda: Conversation.from_question(UMBRELLA, [IMG], mode="notool"),
        ),
        (
            "rendered_first_turn_multi_image_vcot.txt",
            lambda: Conversation.from_question("Which of the two pictures shows more people?", [IMG, IMG]),
        ),
        (
            "rendered_first_turn_video_vcot.txt",
            lambda: Conversation.from_question(DOOR, video=VideoPart(frames=(IMG,))),
        ),
        ("rendered_first_turn_text_only_vcot.txt", lambda: Conversation.from_question("What is 12 * 7?")),
    ],
    ids=["image-vcot", "image-notool", "multi-image", "video", "text-only"],
)
def test_first_turn_prompts_are_byte_identical(fixture: str, conversation) -> None:  # type: ignore[no-untyped-def]
    assert Renderer.text(conversation(), add_generation_prompt=True) == protocol_text(fixture)


def test_second_turn_after_crop_is_byte_identical() -> None:
    conversation = Conversation.from_question(UMBRELLA, [IMG])
    conversation.add_model_turn(CROP_TURN)
    conversation.add_observation(Observation(text=crop_text(476, 476), images=(IMG,)))
    expected = protocol_text("rendered_second_turn_after_crop.txt")
    assert Renderer.text(conversation, add_generation_prompt=True) == expected


def test_suffix_gaps() -> None:
    assert question_text("Q").startswith("Q\n\n\n\nGuidelines:")
    assert (
        question_text("Q", "notool")
        == "Q\n\nPlease think step by step, and put your final answer within \\boxed{}."
    )
    with pytest.raises(ValueError, match="unknown prompt mode"):
        question_text("Q", "cot")  # type: ignore[arg-type]


# ---------------------------------------------------------------- parsing
CALL = (
    '<tool_call>\n{"name": "crop_image_normalized", '
    '"arguments": {"bbox_2d": [0, 0, 1, 1], "target_image": 1}}\n</tool_call>'
)


@pytest.mark.parametrize(
    ("text", "tool_call", "error"),
    [
        ("Look.\n" + CALL, True, None),
        ("Look.\n" + CALL + "<|im_end|>", True, None),
        ("Look.\n" + CALL + "<|im_end|><|endoftext|>", True, None),
        ("Look.\n" + CALL + "\n", False, None),  # must *end with* </tool_call>
        (CALL + " so the answer is \\boxed{A}", False, None),
        ("\\boxed{B}", False, None),
        ("", False, None),
        ("</tool_call>", True, "no opening"),
        ("<tool_call>{not json}</tool_call>", True, "not valid JSON"),
        ("<tool_call>[1, 2]</tool_call>", True, "must be a JSON object"),
        ('<tool_call>{"arguments": {}}</tool_call>', True, '"name" string'),
        ('<tool_call>{"name": "zoom", "arguments": {}}</tool_call>', True, "Unknown tool 'zoom'"),
        ('<tool_call>{"name": "select_frames", "arguments": [1]}</tool_call>', True, "must be a JSON object"),
        (
            '<tool_call>{"name": "select_frames", "arguments": "{\\"target_frames\\": [1]}"}</tool_call>',
            True,
            None,
        ),
        ("<tool_call>" + "[" * 100_000 + "</tool_call>", True, "not valid JSON"),
        # the last call counts: an earlier broken one is ignored
        ("<tool_call>{broken</tool_call> retry " + CALL, True, None),
    ],
    ids=[
        "plain",
        "im-end",
        "two-end-tokens",
        "trailing-newline",
        "call-then-text",
        "answer",
        "empty",
        "no-opening",
        "bad-json",
        "array",
        "no-name",
        "unknown-tool",
        "args-list",
        "args-string",
        "deep-nesting",
        "last-call-counts",
    ],
)
def test_parse_turn(text: str, tool_call: bool, error: str | None) -> None:
    turn = parse_turn(text)
    assert turn.is_tool_call is tool_call is is_tool_call(text)
    if tool_call:
        assert turn.call is not None
        if error is None:
            assert turn.call.error is None and isinstance(turn.call.arguments, dict)
        else:
            assert turn.call.error is not None and error in turn.call.error


def test_missing_argument_is_an_error_observation() -> None:
    obs = execute_turn(
        '<tool_call>{"name": "crop_image_normalized", "arguments": {"bbox_2d": [0, 0, 1, 1]}}</tool_call>',
        VisualContext(images=[IMG]),
        released_train(),
    )
    assert obs is not None and obs.text == "\nExecution error:\nMissing argument(s): target_image.\n"


def test_final_answer_executes_nothing() -> None:
    assert execute_turn("It is \\boxed{B}.", VisualContext(images=[IMG]), released_train()) is None


# ---------------------------------------------------------------- fuzz: execution never raises
SUCCESS = re.compile(
    r"^\nHere is the cropped image \(Image Size: (\d+)x(\d+)\):$"
    r"|^\nHere are the selected frames \(Frame Size: (\d+)x(\d+), Numbered (\d+) to (\d+)\):$"
)
BUDGET = released_train()
CONTEXTS = {
    "image": lambda: VisualContext(images=[Image.new("RGB", (300, 200), "red"), Image.new("RGB", (90, 600))]),
    "video": lambda: VisualContext(video=[Image.new("RGB", (120, 90), (i, i, i)) for i in range(16)]),
    "text": lambda: VisualContext(),
}

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 2, 16, 17, -1, 0.0, 1.0, 0.5, 1e308, -1e-308]),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=12,
)
arguments = st.fixed_dictionaries(
    {},
    optional={
        "bbox_2d": st.one_of(json_values, st.lists(st.floats(-2, 700), min_size=4, max_size=4)),
        "target_image": st.one_of(json_values, st.integers(-3, 5)),
        "target_frames": st.one_of(json_values, st.lists(st.integers(-2, 20), max_size=10)),
    },
)
call_payloads = st.builds(
    lambda name, args: json.dumps({"name": name, "arguments": args}),
    st.sampled_from(["crop_image_normalized", "select_frames", "crop_image", ""]),
    arguments,
)
noise = st.text(alphabet=st.characters(codec="utf-8"), max_size=40)
fragments = st.sampled_from(["<tool_call>", "</tool_call>", "<|im_end|>", "{", "}", '"name"', "NaN", "\n"])
turn_texts = st.one_of(
    noise,
    st.builds(lambda pre, body: f"{pre}<tool_call>\n{body}\n</tool_call>", noise, call_payloads),
    st.builds(
        lambda pre, body, post: f"{pre}<tool_call>{body}</tool_call>{post}",
        noise,
        noise,
        st.sampled_from(["", "<|im_end|>"]),
    ),
    st.lists(st.one_of(fragments, noise), max_size=12).map("".join),
    st.builds(lambda body: f"<tool_call>{body[:-3]}</tool_call>", call_payloads),  # truncated JSON
)


def check_observation(obs: Observation | None, text: str) -> None:
    if obs is None:
        assert not is_tool_call(text)
        return
    assert isinstance(obs.text, str)
    if obs.error is not None:
        assert obs.images == () and obs.text == f"\nExecution error:\n{obs.error}\n" and obs.error
    else:
        match = SUCCESS.match(obs.text)
        assert match, obs.text
        w, h = int(match.group(1) or match.group(3)), int(match.group(2) or match.group(4))
        assert obs.images and all(im.size == (w, h) for im in obs.images)
        assert w % 28 == 0 and h % 28 == 0


@settings(max_examples=3000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=turn_texts, kind=st.sampled_from(sorted(CONTEXTS)))
def test_fuzz_execute_turn_never_raises(text: str, kind: str) -> None:
    check_observation(execute_turn(text, CONTEXTS[kind](), BUDGET), text)


@settings(max_examples=1500, deadline=None)
@given(
    bbox=st.lists(st.floats(-5, 5) | st.integers(-50, 800), min_size=4, max_size=4), target=st.integers(-2, 4)
)
def test_fuzz_crop_geometry_always_valid(bbox: list[float], target: int) -> None:
    payload = json.dumps(
        {"name": "crop_image_normalized", "arguments": {"bbox_2d": bbox, "target_image": target}}
    )
    text = f"<tool_call>\n{payload}\n</tool_call>"
    check_observation(execute_turn(text, CONTEXTS["image"](), BUDGET), text)
