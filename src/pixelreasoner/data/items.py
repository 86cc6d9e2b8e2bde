"""One question with its visual cue: the unit of evaluation and RL data.

A :class:`TaskItem` is what a row of the released evaluation parquet holds (``question``,
``answer``, ``image``, ``is_video``, ``qid``) plus the cue annotations our synthesis needs: the
box that answers the question, or the frames that do. Paths are relative to a data root.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class TaskItem:
    """A question about images (or a video's frames), with its answer and cue.

    - ``qid``: ``"{benchmark}-{id}"``; the part before the first ``-`` names the benchmark.
    - ``answer``: the gold answer, or a list of accepted answers.
    - ``images``: image paths (relative to the data root); the frames when ``is_video``.
    - ``choices``: option texts of a multiple-choice question, in letter order (A, B, ...).
    - ``cue_bbox``: normalized ``[x1, y1, x2, y2]`` of the region that answers the question.
    - ``cue_frames``: 1-based frame numbers that answer the question (videos).
    - ``meta``: anything else a generator wants to keep (JSON-serialisable).
    """

    qid: str
    question: str
    answer: str | list[str]
    images: list[str] = field(default_factory=list)
    is_video: bool = False
    choices: list[str] | None = None
    cue_bbox: list[float] | None = None
    cue_frames: list[int] | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def benchmark(self) -> str:
        return self.qid.split("-", 1)[0]

    @property
    def answers(self) -> list[str]:
        """The accepted answers as a list."""
        return list(self.answer) if isinstance(self.answer, list) else [self.answer]
