"""Reading a generated turn and executing its tool call.

A turn is a tool call only if its text, with the end-of-turn token removed, *ends with*
``</tool_call>`` (the released rule); the last ``<tool_call>...</tool_call>`` is then parsed as
JSON. Anything else is the final answer. Nothing here raises on model output: a call that cannot
be read or executed becomes an error observation that the model reads in its next turn.

>>> parse_turn('Let me look closer.\\n<tool_call>\\n{"name": "select_frames", '
...            '"arguments": {"target_frames": [3, 4]}}\\n</tool_call><|im_end|>').call.arguments
{'target_frames': [3, 4]}
>>> parse_turn("The answer is \\\\boxed{B}.<|im_end|>").is_tool_call
False
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

from pixelreasoner.protocol.tools import TOOL_CALL_END, TOOL_CALL_START, TOOL_NAMES
from pixelreasoner.vision.budget import PixelBudget
from pixelreasoner.vision.ops import (
    CROP_TOOL,
    FRAMES_TOOL,
    Observation,
    VisualContext,
    crop_image_normalized,
    select_frames,
)

END_OF_TURN_TOKENS = ("<|im_end|>", "<|endoftext|>")


@dataclass(frozen=True)
class ToolCall:
    """A tool call as the model wrote it.

    ``error`` says why it could not be read; then ``name`` and ``arguments`` may be ``None``.
    """

    raw: str
    name: str | None = None
    arguments: dict[str, object] | None = None
    error: str | None = None


@dataclass(frozen=True)
class ParsedTurn:
    """A generated turn: its text (end-of-turn token removed) and, for a tool call, the call."""

    text: str
    call: ToolCall | None = None

    @property
    def is_tool_call(self) -> bool:
        return self.call is not None


def strip_end_of_turn(text: str) -> str:
    """Remove trailing end-of-turn tokens (``<|im_end|>``, ``<|endoftext|>``)."""
    stripped = True
    while stripped:
        stripped = False
        for token in END_OF_TURN_TOKENS:
            if text.endswith(token):
                text = text[: -len(token)]
                stripped = True
    return text


def is_tool_call(text: str) -> bool:
    """True when the turn ends with ``</tool_call>`` (after removing the end-of-turn token)."""
    return strip_end_of_turn(text).endswith(TOOL_CALL_END)


def parse_tool_call(text: str) -> ToolCall:
    """Parse the last ``<tool_call>...</tool_call>`` of a turn that ends with ``</tool_call>``."""
    body = strip_end_of_turn(text)
    body = body[: -len(TOOL_CALL_END)] if body.endswith(TOOL_CALL_END) else body
    start = body.rfind(TOOL_CALL_START)
    if start < 0:
        return ToolCall(raw=body, error=f"The tool call has no opening {TOOL_CALL_START} tag.")
    raw = body[start + len(TOOL_CALL_START) :].strip()
    try:
        payload = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        # RecursionError: deeply nested brackets exhaust json's recursion limit.
        reason = exc.msg if isinstance(exc, json.JSONDecodeError) else "it is nested too deeply"
        return ToolCall(raw=raw, error=f"The tool call is not valid JSON ({reason}).")
    if not isinstance(payload, dict):
        return ToolCall(
            raw=raw, error='The tool call must be a JSON object {"name": ..., "arguments": {...}}.'
        )
    name = payload.get("name")
    if not isinstance(name, str):
        return ToolCall(raw=raw, error='The tool call needs a "name" string.')
    arguments = payload.get("arguments", {})
    if isinstance(arguments, str):
        # Some chat APIs encode arguments as a JSON string; accept that form too.
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return ToolCall(raw=raw, name=name, error='"arguments" is a string that is not a JSON object.')
    if not isinstance(arguments, dict):
        return ToolCall(raw=raw, name=name, error='"arguments" must be a JSON object.')
    if name not in TOOL_NAMES:
        known = ", ".join(sorted(TOOL_NAMES))
        return ToolCall(
            raw=raw, name=name, arguments=arguments, error=f"Unknown tool {name!r}; use one of: {known}."
        )
    return ToolCall(raw=raw, name=name, arguments=arguments)


def parse_turn(text: str) -> ParsedTurn:
    """Classify a generated turn as a tool call or the final answer."""
    clean = strip_end_of_turn(text)
    if clean.endswith(TOOL_CALL_END):
        return ParsedTurn(text=clean, call=parse_tool_call(clean))
    return ParsedTurn(text=clean)


def _missing(arguments: dict[str, object], names: tuple[str, ...]) -> str | None:
    absent = [n for n in names if n not in arguments]
    return f"Missing argument(s): {', '.join(absent)}." if absent else None


def execute_call(call: ToolCall, context: VisualContext, budget: PixelBudget) -> Observation:
    """Run a parsed tool call against the trajectory's images.

    Returns the observation (text for the model, returned images, error). ``context`` is not
    changed: after appending the observation to the conversation, call ``context.add(obs)``.
    """
    if call.error is not None or call.arguments is None:
        return Observation.failure(call.error or "The tool call could not be read.", call.name)
    args = call.arguments
    if call.name == CROP_TOOL:
        problem = _missing(args, ("bbox_2d", "target_image"))
        result = (
            Observation.failure(problem, CROP_TOOL)
            if problem
            else crop_image_normalized(context, args["bbox_2d"], args["target_image"], budget)
        )
    elif call.name == FRAMES_TOOL:
        problem = _missing(args, ("target_frames",))
        result = (
            Observation.failure(problem, FRAMES_TOOL)
            if problem
            else select_frames(context, args["target_frames"], budget)
        )
    else:  # parse_tool_call already rejects unknown names; kept for calls built by hand
        return Observation.failure(f"Unknown tool {call.name!r}.", call.name)
    return dataclasses.replace(result, arguments=args)


def execute_turn(text: str, context: VisualContext, budget: PixelBudget) -> Observation | None:
    """Execute one generated turn's tool call.

    Returns ``None`` when the turn is a final answer (it does not end with ``</tool_call>``),
    otherwise the :class:`Observation`: its ``text`` is what the model reads next (a success
    message or ``"\\nExecution error:\\n...\\n"``), ``images`` the returned crop or frames and
    ``error`` the failure message, if any. Never raises on model-written text.
    """
    turn = parse_turn(text)
    if turn.call is None:
        return None
    return execute_call(turn.call, context, budget)
