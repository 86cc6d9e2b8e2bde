"""Template wording for synthesized traces (the offline default writer).

A trace is a fixed skeleton around the annotated cue. Each step of that skeleton gets its text
from a writer: these templates, or a teacher model (:mod:`pixelreasoner.synth.teacher`).

- ``locate``: read the global view, say where the cue is, decide to look closer;
- ``wrong``: a deliberately wrong operation, stated with conviction;
- ``recover``: after a wrong crop or frames, notice the mistake and redo it right;
- ``coarse``: an over-large crop, the detail is still too small, zoom in further;
- ``conclude``: read the answer off the crop or frames and box it;
- ``direct``: answer a question about the global view without any operation.

The fields each template can use are listed in :class:`Facts`. Several phrasings per step keep
the model from learning one sentence.
"""

from __future__ import annotations

from dataclasses import dataclass

TEMPLATES: dict[str, tuple[str, ...]] = {
    "locate": (
        "The {thing} is at {where}. Its {detail} is too small to see here, so I will look closer.",
        "I can see the {thing} at {where}, but not its {detail}. Let me zoom in.",
        "The {thing} is at {where}. I need a closer look to make out its {detail}.",
    ),
    "wrong": (
        "I will look closer at {wrong_where}.",
        "Let me check {wrong_where} first.",
    ),
    "recover": (
        "This is not the {thing}. It is at {where}, so I will look there instead.",
        "That view does not show the {thing}. The {thing} is at {where}; let me look there.",
    ),
    "coarse": (
        "The {detail} is still too small to make out. I will zoom in closer on the {thing} at {where}.",
        "This view is too wide to see the {detail}. Let me zoom in further on {where}.",
    ),
    "conclude": (
        "Now I can see it: {finding}. The answer is \\boxed{{{answer}}}.",
        "In the closer view, {finding}. So the answer is \\boxed{{{answer}}}.",
        "{finding_cap}. The answer is \\boxed{{{answer}}}.",
    ),
    "direct": (
        "The {thing} is at {where}. The answer is \\boxed{{{answer}}}.",
        "Looking at the image, the {thing} is at {where}, so the answer is \\boxed{{{answer}}}.",
    ),
}


@dataclass(frozen=True)
class Facts:
    """What a step's text may mention.

    ``thing`` (with its marker: "red cell", "red frame"), ``where`` (e.g. "row 2, column 4"),
    ``detail`` (what is too small: "pattern", "squares", "number"), ``wrong_where``, ``finding``
    (what the close look shows, e.g. "the red cell is filled with coarse checkerboard") and
    ``answer`` (boxed text).
    """

    thing: str
    where: str
    detail: str
    answer: str
    finding: str = ""
    wrong_where: str = ""

    def fields(self) -> dict[str, str]:
        finding_cap = self.finding[:1].upper() + self.finding[1:]
        return {
            "thing": self.thing,
            "where": self.where,
            "detail": self.detail,
            "answer": self.answer,
            "finding": self.finding,
            "finding_cap": finding_cap,
            "wrong_where": self.wrong_where,
        }


def fill(step: str, facts: Facts, choice: int) -> str:
    """The ``choice``-th phrasing (modulo the number available) of ``step`` with ``facts``."""
    options = TEMPLATES[step]
    return options[choice % len(options)].format(**facts.fields())
