"""The small protocol between the rollout engine and whatever generates text.

A backend writes the next assistant turn for a batch of conversations. It knows nothing about
tools: the engine parses the turn, executes the call and appends the observation. Backends:

- :class:`~pixelreasoner.rollout.hf.TransformersBackend`: in-process, batched, KV-cache
  continuation across turns (CPU and GPU; what RL uses here);
- :class:`~pixelreasoner.rollout.http.OpenAIBackend`: any OpenAI-compatible server (vLLM,
  SGLang, ``transformers serve``, hosted APIs);
- :class:`~pixelreasoner.rollout.scripted.ScriptedBackend`: canned turns, for tests.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from pixelreasoner.trajectory import Conversation


@dataclass(frozen=True)
class SamplingParams:
    """How one turn is sampled. ``temperature == 0`` means greedy."""

    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    """0 disables top-k."""
    max_new_tokens: int = 2048
    seed: int | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0

    def __post_init__(self) -> None:
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0 or self.max_new_tokens < 1:
            raise ValueError(f"invalid sampling parameters: {self}")


GREEDY = SamplingParams(temperature=0.0)


@dataclass
class TurnRequest:
    """Generate the next assistant turn of ``conversation`` (which ends with a user turn)."""

    conversation: Conversation
    params: SamplingParams
    key: int = 0
    """Identifies the trajectory across turns (lets a backend keep per-trajectory state such as a cache)."""


@dataclass
class TurnResult:
    """One generated turn.

    ``text`` excludes the end-of-turn token. ``token_ids`` are the sampled ids including the
    end-of-turn token when the turn ended with it; ``logprobs`` are the sampler's log-probs of
    those ids under the model's own distribution (log-softmax at temperature 1, before top-p/top-k
    truncation: what the learner scores; see ``TransformersBackend._sample``).
    Backends that cannot give ids (most HTTP servers) leave them ``None``.
    """

    text: str
    finish: Literal["stop", "length"]
    token_ids: list[int] | None = None
    logprobs: list[float] | None = None
    prompt_tokens: int = 0
    error: str | None = None
    """Set when the backend failed on this request (e.g. the server was down): the turn is empty."""
    extra: dict[str, float] = field(default_factory=dict)


class Backend(Protocol):
    def generate(self, requests: Sequence[TurnRequest]) -> list[TurnResult]:
        """The next turn for each request, in order."""
        ...

    def release(self, key: int) -> None:
        """Forget any state kept for trajectory ``key`` (it has finished)."""
        ...
