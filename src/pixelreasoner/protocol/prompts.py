"""The question suffixes of the two prompting modes.

``vcot``: the model may use the visual operations (system message with tools). ``notool``: the
text-only baseline (bare system message). The released prompts put the ``vcot`` suffix four
newlines after the question and the ``notool`` suffix two newlines after it.
"""

from __future__ import annotations

from typing import Literal

PromptMode = Literal["vcot", "notool"]

VCOT_SUFFIX = (
    "Guidelines: Understand the given visual information and the user query. Determine if it is "
    "beneficial to employ the given visual operations (tools). For a video, we can look closer by "
    "`select_frames`. For an image, we can look closer by `crop_image`. Reason with the visual "
    "information step by step, and put your final answer within \\boxed{}."
)
NOTOOL_SUFFIX = "Please think step by step, and put your final answer within \\boxed{}."

_SUFFIXES: dict[str, tuple[str, str]] = {
    "vcot": ("\n\n\n\n", VCOT_SUFFIX),
    "notool": ("\n\n", NOTOOL_SUFFIX),
}


def question_text(question: str, mode: PromptMode = "vcot") -> str:
    """The text of the first user turn: the question followed by the mode's suffix."""
    try:
        gap, suffix = _SUFFIXES[mode]
    except KeyError:
        raise ValueError(f"unknown prompt mode {mode!r}; choose 'vcot' or 'notool'") from None
    return f"{question}{gap}{suffix}"


def uses_tools(mode: PromptMode) -> bool:
    return mode == "vcot"
