"""A backend that replays canned turns: for engine tests and examples, no model needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pixelreasoner.rollout.backend import TurnRequest, TurnResult

Script = Callable[[TurnRequest, int], str | TurnResult]
"""Given the request and the turn number (0-based) of its trajectory, the turn to return."""


class ScriptedBackend:
    """Answers each request from ``script``: a list of turns (same for every trajectory) or a function."""

    def __init__(self, script: Sequence[str | TurnResult] | Script) -> None:
        self.script = script
        self.turns: dict[int, int] = {}
        self.calls: list[list[int]] = []
        self.released: list[int] = []

    def _one(self, request: TurnRequest) -> TurnResult:
        turn = self.turns.get(request.key, 0)
        self.turns[request.key] = turn + 1
        if callable(self.script):
            produced = self.script(request, turn)
        else:
            produced = self.script[min(turn, len(self.script) - 1)]
        if isinstance(produced, TurnResult):
            return produced
        return TurnResult(text=produced, finish="stop", prompt_tokens=100)

    def generate(self, requests: Sequence[TurnRequest]) -> list[TurnResult]:
        self.calls.append([r.key for r in requests])
        return [self._one(r) for r in requests]

    async def agenerate(self, request: TurnRequest) -> TurnResult:
        return self._one(request)

    def release(self, key: int) -> None:
        self.released.append(key)
