"""The conversation record every stage exchanges.

A :class:`Conversation` is a list of :class:`Turn` s. Each turn has a chat role, a
:class:`TurnKind` that decides whether its tokens are learned, and ordered content parts (text,
images, a video). Synthesis writes conversations, SFT renders them, the rollout engine grows
them turn by turn, and RL renders them again with the token ids the sampler produced.

Kinds and the loss mask:

========================  ===========  ==========================================
kind                      role         learned?
========================  ===========  ==========================================
``PROMPT``                system/user  no
``MODEL``                 assistant    yes: its text and its end-of-turn token
``OBSERVATION``           user         no (a tool result: the model did not write it)
``ERRONEOUS``             assistant    no (a deliberately wrong operation kept as context)
========================  ===========  ==========================================
"""

from __future__ import annotations

import enum
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from PIL import Image

from pixelreasoner.protocol.prompts import PromptMode, question_text, uses_tools
from pixelreasoner.protocol.tools import system_message
from pixelreasoner.vision.ops import Observation

Role = Literal["system", "user", "assistant"]


class TurnKind(str, enum.Enum):
    PROMPT = "prompt"
    MODEL = "model"
    OBSERVATION = "observation"
    ERRONEOUS = "erroneous"

    @property
    def learned(self) -> bool:
        return self is TurnKind.MODEL


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class ImagePart:
    """An image in a turn: in memory, or a path loaded when rendered.

    ``returned`` marks an image an operation returned: it is already sized by the crop/frame
    budget, so rendering does not apply the input budget to it again.
    """

    image: Image.Image | None = None
    path: str | None = None
    returned: bool = False

    def __post_init__(self) -> None:
        if (self.image is None) == (self.path is None):
            raise ValueError("an ImagePart needs exactly one of `image` or `path`")


@dataclass(frozen=True)
class VideoPart:
    """A video as its frames (in memory or paths). ``fps`` sets the temporal rope spacing."""

    frames: tuple[Image.Image, ...] = ()
    paths: tuple[str, ...] = ()
    fps: float = 2.0

    def __post_init__(self) -> None:
        if bool(self.frames) == bool(self.paths):
            raise ValueError("a VideoPart needs frames or paths (exactly one of them, non-empty)")
        if self.fps <= 0:
            raise ValueError(f"fps must be positive, got {self.fps}")


Part = Text | ImagePart | VideoPart


@dataclass
class Turn:
    """One chat message.

    ``token_ids`` holds the ids a sampler produced for a model turn (its text and, unless the
    turn was cut off, the end-of-turn token). When present, rendering uses them verbatim instead
    of tokenizing the text again, so training sees exactly what was sampled.
    """

    role: Role
    kind: TurnKind
    parts: list[Part]
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    error: str | None = None

    def __post_init__(self) -> None:
        expected = {
            TurnKind.PROMPT: ("system", "user"),
            TurnKind.MODEL: ("assistant",),
            TurnKind.ERRONEOUS: ("assistant",),
            TurnKind.OBSERVATION: ("user",),
        }[self.kind]
        if self.role not in expected:
            raise ValueError(
                f"a {self.kind.value} turn must have role {' or '.join(expected)}, not {self.role}"
            )
        if self.token_ids is not None and self.role != "assistant":
            raise ValueError("only assistant turns carry sampled token ids")

    @property
    def text(self) -> str:
        """The turn's text parts joined (images and videos left out)."""
        return "".join(p.text for p in self.parts if isinstance(p, Text))

    @property
    def images(self) -> list[ImagePart]:
        return [p for p in self.parts if isinstance(p, ImagePart)]


def _as_image_part(item: Image.Image | str | os.PathLike[str] | ImagePart) -> ImagePart:
    if isinstance(item, ImagePart):
        return item
    if isinstance(item, Image.Image):
        return ImagePart(image=item)
    return ImagePart(path=os.fspath(item))


@dataclass
class Conversation:
    """A whole multi-turn exchange, the unit that every stage renders."""

    turns: list[Turn] = field(default_factory=list)

    @classmethod
    def from_question(
        cls,
        question: str,
        images: Sequence[Image.Image | str | os.PathLike[str] | ImagePart] = (),
        video: VideoPart | None = None,
        mode: PromptMode = "vcot",
    ) -> Conversation:
        """System message (with tools in ``vcot`` mode) and the first user turn.

        The user turn lists the images (or the video) first, then the question with its suffix,
        as the released prompts do.
        """
        if images and video is not None:
            raise ValueError("a question has either images or one video, not both")
        visuals: list[Part] = [_as_image_part(i) for i in images]
        if video is not None:
            visuals.append(video)
        return cls(
            turns=[
                Turn("system", TurnKind.PROMPT, [Text(system_message(uses_tools(mode)))]),
                Turn("user", TurnKind.PROMPT, [*visuals, Text(question_text(question, mode))]),
            ]
        )

    def add_model_turn(
        self,
        text: str,
        *,
        erroneous: bool = False,
        token_ids: list[int] | None = None,
        logprobs: list[float] | None = None,
    ) -> Turn:
        """Append an assistant turn (``text`` without the end-of-turn token)."""
        kind = TurnKind.ERRONEOUS if erroneous else TurnKind.MODEL
        turn = Turn("assistant", kind, [Text(text)], token_ids=token_ids, logprobs=logprobs)
        self.turns.append(turn)
        return turn

    def add_observation(self, observation: Observation) -> Turn:
        """Append a tool result as a user turn: its text, then the returned images."""
        parts: list[Part] = [Text(observation.text)]
        parts.extend(ImagePart(image=img, returned=True) for img in observation.images)
        turn = Turn("user", TurnKind.OBSERVATION, parts, error=observation.error)
        self.turns.append(turn)
        return turn

    @property
    def model_turns(self) -> list[Turn]:
        return [t for t in self.turns if t.role == "assistant"]

    def to_messages(self) -> list[dict[str, object]]:
        """Qwen-style messages (``{"role", "content": [{"type": ...}]}``) for ``apply_chat_template``."""
        messages: list[dict[str, object]] = []
        for turn in self.turns:
            content: list[dict[str, object]] = []
            for part in turn.parts:
                if isinstance(part, Text):
                    content.append({"type": "text", "text": part.text})
                elif isinstance(part, ImagePart):
                    content.append({"type": "image", "image": part.path if part.path else part.image})
                else:
                    content.append({"type": "video", "video": list(part.paths or part.frames)})
            messages.append({"role": turn.role, "content": content})
        return messages


FinishReason = Literal[
    "answer", "max_calls", "max_images", "max_tokens", "truncated", "backend_error", "bad_input"
]


@dataclass
class Trajectory:
    """One rollout: the conversation (with sampled ids and log-probs on model turns) and its counts.

    - ``n_calls``: tool calls the model made: executed ones (an erroring call counts) and, as the
      release counts them, a last call that the call or token limit stopped unexecuted;
    - ``n_failed``: calls that returned an error observation, or that a limit stopped;
    - ``final_error``: the last executed call failed and no later call succeeded (the
      "unrepaired final tool error" of the reward);
    - ``finish_reason``: ``answer`` (a turn without a tool call), ``max_calls`` (a call past the
      limit ends it unanswered), ``max_images``, ``max_tokens``, ``truncated`` (a turn hit the
      per-turn token limit), ``backend_error`` or ``bad_input`` (with ``error`` saying why).
    """

    conversation: Conversation
    qid: str | None = None
    finish_reason: FinishReason = "answer"
    n_calls: int = 0
    n_failed: int = 0
    final_error: bool = False
    prompt_tokens: int = 0
    generated_tokens: int = 0
    error: str | None = None

    @property
    def final_text(self) -> str:
        """The last model turn's text ("" if the model never spoke)."""
        turns = self.conversation.model_turns
        return turns[-1].text if turns else ""

    @property
    def uses_tools(self) -> bool:
        return self.n_calls > 0

    @property
    def n_turns(self) -> int:
        return len(self.conversation.model_turns)

    def to_record(self) -> dict[str, object]:
        """A JSON-ready summary: texts of every turn (images as counts) and the counts."""
        return {
            "qid": self.qid,
            "finish_reason": self.finish_reason,
            "n_calls": self.n_calls,
            "n_failed": self.n_failed,
            "final_error": self.final_error,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
            "error": self.error,
            "turns": [
                {
                    "role": t.role,
                    "kind": t.kind.value,
                    "text": t.text,
                    "images": len(t.images),
                    "error": t.error,
                }
                for t in self.conversation.turns
            ],
        }
