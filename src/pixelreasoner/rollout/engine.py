"""The multi-turn rollout engine: generate → tool call? → execute → observe → generate …

Each trajectory is a small state machine (:class:`_Run`): it asks for a turn, reads the turn,
and either finishes or executes the tool call and appends the observation. Two drivers move
many of them: :meth:`RolloutEngine.run` advances all live trajectories in lockstep, one
batched backend call per turn (in-process models); :meth:`RolloutEngine.run_async` gives each
trajectory its own coroutine against an async backend with bounded concurrency (HTTP servers).

The engine knows nothing about training: it returns :class:`~pixelreasoner.trajectory.Trajectory`
records. It never raises on model output; a broken input image ends only that trajectory
(``bad_input``), and a backend failure ends only the request it hit (``backend_error``).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from PIL import Image
from tqdm import tqdm

from pixelreasoner.data.items import TaskItem
from pixelreasoner.protocol.prompts import PromptMode
from pixelreasoner.protocol.turns import execute_call, parse_turn
from pixelreasoner.rollout.backend import Backend, SamplingParams, TurnRequest, TurnResult
from pixelreasoner.trajectory import Conversation, FinishReason, ImagePart, Trajectory, VideoPart
from pixelreasoner.vision.budget import AspectRatioError, PixelBudget, PixelRange
from pixelreasoner.vision.images import ImageLoadError, load_frames, load_image
from pixelreasoner.vision.ops import VisualContext


@dataclass(frozen=True)
class RolloutLimits:
    """Released limits (SPEC §2): 4 executed calls, 16 images, ~12k tokens, 2048 per turn."""

    max_calls: int = 4
    max_images: int = 16
    max_total_tokens: int = 12288
    max_turn_tokens: int = 2048


@dataclass
class Query:
    """A conversation ready to roll out, with the images its operations act on."""

    conversation: Conversation
    context: VisualContext
    qid: str | None = None
    error: str | None = None
    """Set when the query's input could not be loaded; the rollout then ends at once (``bad_input``)."""

    @classmethod
    def from_item(cls, item: TaskItem, budget: PixelBudget, mode: PromptMode = "vcot") -> Query:
        """Load an item's images; a broken image gives a query that reports it instead of raising.

        Broken means: unreadable (:class:`ImageLoadError`), or a shape the model cannot take in
        (an aspect ratio above 200, which ``smart_resize`` refuses), named with its file.
        """
        try:
            if item.is_video:
                frames = load_frames(item.images, max_pixels=budget.max_decode_pixels)
                _check_shapes(item.images, frames, budget.video, budget.factor)
                context = VisualContext.for_query(video=frames, budget=budget)
                video = VideoPart(frames=tuple(frames))
                conversation = Conversation.from_question(item.question, video=video, mode=mode)
            else:
                images = [load_image(p, max_pixels=budget.max_decode_pixels) for p in item.images]
                _check_shapes(item.images, images, budget.inputs, budget.factor)
                context = VisualContext.for_query(images, budget=budget)
                conversation = Conversation.from_question(
                    item.question, [ImagePart(image=i) for i in images], mode=mode
                )
        except ImageLoadError as exc:
            return cls(
                Conversation.from_question(item.question, mode=mode), VisualContext(), item.qid, str(exc)
            )
        return cls(conversation, context, item.qid)


def _check_shapes(
    paths: Sequence[str], images: Sequence[Image.Image], limits: PixelRange, factor: int
) -> None:
    """Raise :class:`ImageLoadError` naming the first image that cannot be resized into ``limits``."""
    for path, image in zip(paths, images, strict=False):
        try:
            limits.target_size(image.width, image.height, factor)
        except AspectRatioError as exc:
            raise ImageLoadError(str(path), f"{image.width}x{image.height} image: {exc}") from exc


@dataclass
class _Run:
    """One trajectory in flight."""

    key: int
    query: Query
    trajectory: Trajectory
    done: bool = False
    turns: int = 0

    def finish(self, reason: FinishReason, error: str | None = None) -> None:
        self.trajectory.finish_reason = reason
        self.trajectory.error = error
        self.done = True

    def accept(self, result: TurnResult, budget: PixelBudget, limits: RolloutLimits) -> None:
        """Take a generated turn: finish, or execute its call and append the observation."""
        traj = self.trajectory
        self.turns += 1
        if result.error is not None:
            self.finish("backend_error", result.error)
            return
        generated = (
            len(result.token_ids)
            if result.token_ids is not None
            else int(result.extra.get("completion_tokens", 0))
        )
        traj.generated_tokens += generated
        traj.prompt_tokens = max(traj.prompt_tokens, result.prompt_tokens)
        self.query.conversation.add_model_turn(
            result.text, token_ids=result.token_ids, logprobs=result.logprobs
        )
        if result.finish == "length":
            self.finish("truncated")
            return
        turn = parse_turn(result.text)
        if turn.call is None:
            self.finish("answer")
            return
        cut_off: FinishReason | None = (
            "max_calls"
            if traj.n_calls >= limits.max_calls
            else "max_tokens"
            if result.prompt_tokens + generated > limits.max_total_tokens
            else None
        )
        if cut_off is not None:
            # The release counts a call that a limit stops as an operation (its `ncall`) and as a
            # failed one (`ntoolfail`): it enters RaPR, the bonus and the penalty.
            traj.n_calls += 1
            traj.n_failed += 1
            self.finish(cut_off)
            return
        observation = execute_call(turn.call, self.query.context, budget)
        traj.n_calls += 1
        traj.n_failed += observation.error is not None
        traj.final_error = observation.error is not None
        if self.query.context.image_count + len(observation.images) > limits.max_images:
            self.finish("max_images")
            return
        self.query.conversation.add_observation(observation)
        self.query.context.add(observation)


class AsyncBackend(Protocol):
    async def agenerate(self, request: TurnRequest) -> TurnResult: ...


class RolloutEngine:
    """Rolls out queries with a backend under one pixel budget and the protocol's limits.

    ``first`` samples the first turn, ``later`` every turn after a tool result (the release
    uses temperature 1.0 then 0.9); evaluation passes :data:`~pixelreasoner.rollout.backend.GREEDY`.
    """

    def __init__(
        self,
        backend: Backend | AsyncBackend,
        budget: PixelBudget,
        limits: RolloutLimits | None = None,
        first: SamplingParams | None = None,
        later: SamplingParams | None = None,
    ) -> None:
        self.backend = backend
        self.budget = budget
        self.limits = limits or RolloutLimits()
        first = first or SamplingParams(max_new_tokens=self.limits.max_turn_tokens)
        self.first = first
        self.later = later or first
        self._keys = itertools.count()

    def _start(self, queries: Sequence[Query]) -> list[_Run]:
        runs = []
        for query in queries:
            run = _Run(next(self._keys), query, Trajectory(query.conversation, qid=query.qid))
            if query.error is not None:
                run.finish("bad_input", query.error)
            runs.append(run)
        return runs

    def _request(self, run: _Run) -> TurnRequest:
        params = self.first if run.turns == 0 else self.later
        return TurnRequest(run.query.conversation, params, key=run.key)

    def run(self, queries: Sequence[Query], progress: bool = False, max_batch: int = 0) -> list[Trajectory]:
        """Lockstep driver: one batched ``generate`` per turn over all live trajectories.

        ``max_batch`` > 0 rolls the queries out in consecutive batches of at most that many
        trajectories (in order), which bounds an in-process backend's KV cache and activations.
        """
        backend = self.backend
        if not hasattr(backend, "generate"):
            raise TypeError("this backend is async-only; use run_async")
        if max_batch < 0:
            raise ValueError(f"max_batch must be >= 0 (0: all at once), got {max_batch}")
        runs = self._start(queries)
        bar = tqdm(total=len(runs), desc="rollouts", unit="traj", disable=not progress)
        bar.update(sum(r.done for r in runs))
        size = max_batch or max(len(runs), 1)
        for start in range(0, len(runs), size):
            batch = runs[start : start + size]
            while live := [r for r in batch if not r.done]:
                results = backend.generate([self._request(r) for r in live])
                for run, result in zip(live, results, strict=True):
                    run.accept(result, self.budget, self.limits)
                    if run.done:
                        backend.release(run.key)  # type: ignore[union-attr]
                        bar.update()
        bar.close()
        return [r.trajectory for r in runs]

    async def run_async(
        self, queries: Sequence[Query], concurrency: int = 8, progress: bool = False
    ) -> list[Trajectory]:
        """One coroutine per trajectory; at most ``concurrency`` requests in flight."""
        backend = self.backend
        if not hasattr(backend, "agenerate"):
            raise TypeError("this backend has no async interface; use run")
        gate = asyncio.Semaphore(concurrency)
        runs = self._start(queries)
        bar = tqdm(total=len(runs), desc="rollouts", unit="traj", disable=not progress)

        async def drive(run: _Run) -> None:
            while not run.done:
                async with gate:
                    result = await backend.agenerate(self._request(run))
                run.accept(result, self.budget, self.limits)
            bar.update()

        await asyncio.gather(*(drive(r) for r in runs))
        bar.close()
        return [r.trajectory for r in runs]


def rollout_items(
    engine: RolloutEngine, items: Sequence[TaskItem], mode: PromptMode = "vcot", progress: bool = False
) -> list[Trajectory]:
    """Convenience: load items into queries and roll them out with the lockstep driver."""
    return engine.run([Query.from_item(i, engine.budget, mode) for i in items], progress=progress)


__all__ = ["AsyncBackend", "Query", "RolloutEngine", "RolloutLimits", "rollout_items"]
