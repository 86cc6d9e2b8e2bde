"""Tool schemas and the system message, in the exact format of the released checkpoints.

The released model was trained with Qwen's Hermes-style function-calling prompt: the default
system sentence, a ``# Tools`` block listing each tool's JSON schema on one line inside
``<tools></tools>``, and the instruction to answer with ``<tool_call>...</tool_call>``. The test
suite compares :func:`system_message` with the fixtures in ``shared/protocol/`` byte for byte.
"""

from __future__ import annotations

import json
from typing import Any

from pixelreasoner.protocol.chat_template import DEFAULT_SYSTEM
from pixelreasoner.vision.ops import CROP_TOOL, FRAMES_TOOL, MAX_SELECTED_FRAMES

# Key order matters: json.dumps keeps it, and the released prompt lists name, description,
# parameters (type, properties, required).
CROP_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": CROP_TOOL,
        "description": "Zoom in on the image based on the bounding box coordinates. "
        "It is useful when the object or text in the image is too small to be seen.",
        "parameters": {
            "type": "object",
            "properties": {
                "bbox_2d": {
                    "type": "array",
                    "description": "coordinates for bounding box of the area you want to zoom in. "
                    "Values should be within [0.0,1.0].",
                    "items": {"type": "number"},
                },
                "target_image": {
                    "type": "number",
                    "description": "The index of the image to crop. Index from 1 to the number of images. "
                    "Choose 1 to operate on original image.",
                },
            },
            "required": ["bbox_2d", "target_image"],
        },
    },
}

FRAMES_SCHEMA: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": FRAMES_TOOL,
        "description": "Select frames from a video.",
        "parameters": {
            "type": "object",
            "properties": {
                "target_frames": {
                    "type": "array",
                    "description": "List of frame indices to select from the video "
                    f"(no more than {MAX_SELECTED_FRAMES} frames in total).",
                    "items": {"type": "integer", "description": "Frame index from 1 to 16."},
                },
            },
            "required": ["target_frames"],
        },
    },
}

TOOLS: tuple[dict[str, Any], ...] = (CROP_SCHEMA, FRAMES_SCHEMA)
TOOL_NAMES: frozenset[str] = frozenset(t["function"]["name"] for t in TOOLS)

TOOL_CALL_START = "<tool_call>"
TOOL_CALL_END = "</tool_call>"


def tools_block(tools: tuple[dict[str, Any], ...] = TOOLS) -> str:
    """The ``# Tools`` section appended to the system sentence."""
    lines = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
    return (
        "# Tools\n\n"
        "You may call one or more functions to assist with the user query.\n\n"
        "You are provided with function signatures within <tools></tools> XML tags:\n"
        f"<tools>\n{lines}\n</tools>\n\n"
        "For each function call, return a json object with function name and arguments within "
        "<tool_call></tool_call> XML tags:\n"
        f'{TOOL_CALL_START}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_END}'
    )


def system_message(with_tools: bool = True, tools: tuple[dict[str, Any], ...] = TOOLS) -> str:
    """The system message: with the tools block (``vcot`` mode) or the bare sentence (``notool``)."""
    if not with_tools:
        return DEFAULT_SYSTEM
    return f"{DEFAULT_SYSTEM}\n\n{tools_block(tools)}"
