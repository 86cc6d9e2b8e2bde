"""Rollout engine (scripted backend) and the in-process transformers backend."""

from __future__ import annotations

import asyncio
import copy
import json

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelreasoner.data.items import TaskItem
from pixelreasoner.protocol.turns import execute_turn
from pixelreasoner.render import Renderer
from pixelreasoner.rollout.backend import GREEDY, SamplingParams, TurnRequest, TurnResult
from pixelreasoner.rollout.engine import Query, RolloutEngine, RolloutLimits
from pixelreasoner.rollout.hf import TransformersBackend, _filter_logits
from pixelreasoner.rollout.scripted import ScriptedBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_item
from pixelreasoner.train.tokens import token_logprobs
from pixelreasoner.vision.budget import tiny

BUDGET = tiny()


def crop_call(box: list[float], target: int = 1) -> str:
    payload = json.dumps(
        {"name": "crop_image_normalized", "arguments": {"bbox_2d": box, "target_image": target}}
    )
    return f"Looking closer.\n<tool_call>\n{payload}\n</tool_call>"


GOOD, BAD, ANSWER = crop_call([0.4, 0.4, 0.6, 0.6]), crop_call([0.6, 0.6, 0.4, 0.4]), "So \\boxed{A}."


@pytest.fixture(scope="module")
def items(tmp_path_factory: pytest.TempPathFactory) -> list[TaskItem]:
    out = tmp_path_factory.mktemp("rollout")
    needle, frames = make_family("needle"), make_family("frames")
    return [generate_item(needle, i, 0, out) for i in range(4)] + [generate_item(frames, 0, 0, out)]


def run(script, items, limits=None, queries=None):  # type: ignore[no-untyped-def]
    engine = RolloutEngine(ScriptedBackend(script), BUDGET, limits)
    return engine.run(queries or [Query.from_item(i, BUDGET) for i in items])


@pytest.mark.parametrize(
    ("script", "reason", "calls", "failed", "final_error"),
    [
        ([ANSWER], "answer", 0, 0, False),
        ([GOOD, ANSWER], "answer", 1, 0, False),
        ([BAD, ANSWER], "answer", 1, 1, True),  # unrepaired: the last call failed
        ([BAD, GOOD, ANSWER], "answer", 2, 1, False),  # repaired by a later success
        ([GOOD, BAD, ANSWER], "answer", 2, 1, True),
        ([GOOD] * 6, "max_calls", 5, 1, False),  # the 5th call ends it unanswered, counted as failed
        ([TurnResult(text="rambling", finish="length")], "truncated", 0, 0, False),
        ([TurnResult(text="", finish="stop", error="server down")], "backend_error", 0, 0, False),
    ],
    ids=[
        "answer",
        "one-crop",
        "failed-unrepaired",
        "repaired",
        "failed-last",
        "max-calls",
        "truncated",
        "backend-error",
    ],
)
def test_finish_reasons_and_counts(items, script, reason, calls, failed, final_error) -> None:  # type: ignore[no-untyped-def]
    trajectory = run(script, items[:1])[0]
    assert (trajectory.finish_reason, trajectory.n_calls, trajectory.n_failed, trajectory.final_error) == (
        reason,
        calls,
        failed,
        final_error,
    )
    observations = [t for t in trajectory.conversation.turns if t.kind.value == "observation"]
    assert len(observations) == min(calls, 4)
    if reason == "max_calls":
        assert trajectory.conversation.turns[-1].role == "assistant"  # the 5th call got no answer


def test_image_and_token_limits(items) -> None:  # type: ignore[no-untyped-def]
    assert run([GOOD] * 5, items[:1], RolloutLimits(max_images=2))[0].finish_reason == "max_images"
    huge = TurnResult(text=GOOD, finish="stop", prompt_tokens=20_000)
    assert run([huge], items[:1])[0].finish_reason == "max_tokens"


@pytest.mark.parametrize(
    ("script", "limits", "reason"),
    [
        ([GOOD] * 6, RolloutLimits(), "max_calls"),
        ([TurnResult(text=GOOD, finish="stop", prompt_tokens=20_000)], RolloutLimits(), "max_tokens"),
    ],
    ids=["call-limit", "token-budget"],
)
def test_a_call_stopped_by_a_limit_counts_as_an_operation(items, script, limits, reason) -> None:  # type: ignore[no-untyped-def]
    """Regression: a tool call cut off by the call limit or the token budget was not counted, while
    the release counts it (``ncall``) and so puts it into RaPR, the curiosity bonus and the
    penalty; a first-turn call stopped by the token budget made a rollout count as tool-free."""
    trajectory = run(script, items[:1], limits)[0]
    executed = sum(t.kind.value == "observation" for t in trajectory.conversation.turns)
    assert trajectory.finish_reason == reason
    assert trajectory.n_calls == executed + 1 and trajectory.n_failed == 1
    assert trajectory.uses_tools


def test_an_input_too_elongated_for_the_model_is_bad_input(items, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: an image with aspect ratio > 200 raised ``AspectRatioError`` out of
    ``Query.from_item`` and took down RL and eval; it is now a ``bad_input`` naming the file."""
    from PIL import Image

    thin = tmp_path / "thin.png"
    Image.new("RGB", (4020, 20), "white").save(thin)
    bad = TaskItem(qid="needle-thin", question="Q?", answer="A", images=[str(thin)])
    trajectories = run([ANSWER], [bad, items[0]])
    assert trajectories[0].finish_reason == "bad_input"
    assert "thin.png" in (trajectories[0].error or "") and "aspect ratio" in (trajectories[0].error or "")
    assert trajectories[1].finish_reason == "answer"


def test_bad_input_ends_only_that_trajectory(items, tmp_path) -> None:  # type: ignore[no-untyped-def]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"nope")
    bad = TaskItem(qid="needle-bad", question="Q?", answer="A", images=[str(broken)])
    trajectories = run([ANSWER], [bad, items[0]])
    assert trajectories[0].finish_reason == "bad_input" and "broken.png" in (trajectories[0].error or "")
    assert trajectories[1].finish_reason == "answer"


def test_lockstep_batches_shrink_and_release(items) -> None:  # type: ignore[no-untyped-def]
    def script(request, turn):  # type: ignore[no-untyped-def]
        return GOOD if turn < request.key % 3 else ANSWER

    backend = ScriptedBackend(script)
    RolloutEngine(backend, BUDGET).run([Query.from_item(i, BUDGET) for i in items[:4]])
    assert [len(c) for c in backend.calls] == [4, 2, 1] and sorted(backend.released) == sorted(backend.turns)


def test_max_batch_rolls_out_in_bounded_batches_with_the_same_results(items) -> None:  # type: ignore[no-untyped-def]
    # one query answers at once, the others crop first: batches end at different turns
    def script(request, turn):  # type: ignore[no-untyped-def]
        return ANSWER if request.key % 3 == 0 or turn > 0 else GOOD

    queries = lambda: [Query.from_item(i, BUDGET) for i in items + items]  # noqa: E731
    whole = RolloutEngine(ScriptedBackend(script), BUDGET).run(queries())
    backend = ScriptedBackend(script)
    batched = RolloutEngine(backend, BUDGET).run(queries(), max_batch=3)
    assert max(len(call) for call in backend.calls) <= 3
    assert [k for call in backend.calls for k in call][:3] == [0, 1, 2]  # the first batch runs first
    assert sorted(backend.released) == list(range(len(items) * 2))
    assert [t.finish_reason for t in batched] == [t.finish_reason for t in whole]
    assert {t.n_calls for t in batched} == {0, 1}
    assert [[m.text for m in t.conversation.model_turns] for t in batched] == [
        [m.text for m in t.conversation.model_turns] for t in whole
    ]
    with pytest.raises(ValueError, match="max_batch"):
        RolloutEngine(ScriptedBackend([ANSWER]), BUDGET).run(queries(), max_batch=-1)


def test_async_driver_matches_lockstep(items) -> None:  # type: ignore[no-untyped-def]
    script = [GOOD, BAD, ANSWER]
    sync = run(script, items)
    engine = RolloutEngine(ScriptedBackend(script), BUDGET)
    done = asyncio.run(engine.run_async([Query.from_item(i, BUDGET) for i in items], concurrency=2))
    assert [t.to_record() for t in done] == [t.to_record() for t in sync]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    turns=st.lists(
        st.one_of(
            st.text(max_size=60),
            st.sampled_from(
                [
                    GOOD,
                    BAD,
                    crop_call([0, 0, 1, 1], 9),
                    "<tool_call>{}</tool_call>",
                    "</tool_call>",
                    '<tool_call>{"name": "select_frames", "arguments": '
                    '{"target_frames": [1, 99]}}</tool_call>',
                ]
            ),
        ),
        min_size=1,
        max_size=7,
    )
)
def test_engine_survives_arbitrary_model_output(items, turns) -> None:  # type: ignore[no-untyped-def]
    trajectories = run(turns, [items[0], items[-1]])
    for t in trajectories:
        assert t.finish_reason in ("answer", "max_calls", "max_images", "max_tokens", "truncated")
        assert t.n_failed <= t.n_calls <= 5 and t.n_turns >= 1


# ---------------------------------------------------------------------------------- transformers backend
def hf_rollout(model, processor, items, cache: bool, params=GREEDY):  # type: ignore[no-untyped-def]
    backend = TransformersBackend(model, processor, BUDGET, cache=cache, seed=0)
    engine = RolloutEngine(
        backend, BUDGET, first=SamplingParams(temperature=params.temperature, max_new_tokens=40)
    )
    return engine.run([Query.from_item(i, BUDGET) for i in items])


def test_cache_continuation_gives_the_same_tokens_as_reencoding(tiny, items) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    tok = processor.tokenizer
    results = {}
    for cache in (True, False):
        backend = TransformersBackend(model, processor, BUDGET, cache=cache)
        queries = [Query.from_item(i, BUDGET) for i in items]
        # turn 1: a scripted crop (as sampled ids), then the real model continues from the crop
        requests = []
        for k, q in enumerate(queries):
            ids = tok(GOOD, add_special_tokens=False)["input_ids"] + [processor.im_end_id]
            q.conversation.add_model_turn(GOOD, token_ids=ids)
            obs = execute_turn(
                GOOD if not items[k].is_video else crop_call([0, 0, 1, 1], 3), q.context, BUDGET
            )
            assert obs is not None
            q.conversation.add_observation(obs)
            q.context.add(obs)
            requests.append(q)
        first = backend.generate(
            [
                TurnRequest(q.conversation, SamplingParams(temperature=0, max_new_tokens=12), key=k)
                for k, q in enumerate(requests)
            ]
        )
        results[cache] = [r.token_ids for r in first]
    assert results[True] == results[False]


def test_multi_turn_cache_matches_reencode_and_batch_matches_single(tiny, items) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    cached = hf_rollout(model, processor, items, cache=True)
    fresh = hf_rollout(model, processor, items, cache=False)
    ids = [[t.token_ids for t in tr.conversation.model_turns] for tr in cached]
    assert ids == [[t.token_ids for t in tr.conversation.model_turns] for tr in fresh]
    for item, batched in zip(items, ids, strict=True):
        alone = hf_rollout(model, processor, [item], cache=True)[0]
        assert [t.token_ids for t in alone.conversation.model_turns] == batched


class CropThenModel(TransformersBackend):
    """Samples a scripted crop call (then ``<|im_end|>``) on the first turn, the model's own tokens after.

    The scripted tokens go through the real decode loop and cache, so the second turn takes the
    path a real tool call takes: the observation and its image are appended to the KV cache.
    """

    def __init__(self, *args, script: list[int], **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        self.script, self.calls, self.position = script, 0, 0

    def generate(self, requests):  # type: ignore[no-untyped-def]
        self.calls, self.position = self.calls + 1, 0
        return super().generate(requests)

    def _sample(self, logits, params):  # type: ignore[no-untyped-def]
        tokens, logprobs = super()._sample(logits, params)
        if self.calls == 1:
            tokens = torch.full_like(tokens, self.script[self.position])
            self.position += 1
        return tokens, logprobs


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_turn_after_a_tool_result_continues_the_cache_on_the_model_device(tiny, items, device) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    model = copy.deepcopy(model).to(device)  # the session's fixture stays on the CPU
    script = processor.tokenizer(GOOD, add_special_tokens=False)["input_ids"] + [processor.im_end_id]
    images = [i for i in items if not i.is_video][:3]
    turns = {}
    for cache in (True, False):
        backend = CropThenModel(model, processor, BUDGET, cache=cache, script=script)
        params = SamplingParams(temperature=0.0, max_new_tokens=len(script) + 8)
        engine = RolloutEngine(backend, BUDGET, first=params)
        trajectories = engine.run([Query.from_item(i, BUDGET) for i in images])
        assert all(t.n_calls == 1 and t.n_failed == 0 and t.n_turns == 2 for t in trajectories)
        assert backend.calls == 2  # the second turn was generated after the crop
        turns[cache] = [[t.token_ids for t in tr.conversation.model_turns] for tr in trajectories]
    assert turns[True] == turns[False]


def test_sampler_logprobs_match_the_learner(tiny, items) -> None:  # type: ignore[no-untyped-def]
    """Old log-probs for RL: recomputing the sampled ids with the renderer gives the sampler's values."""
    model, processor = tiny
    trajectories = hf_rollout(model, processor, items[:3], cache=True, params=SamplingParams(temperature=1.0))
    renderer = Renderer(processor, BUDGET)
    batch = renderer([t.conversation for t in trajectories], padding_side="right")
    with torch.no_grad():
        learner = token_logprobs(model, batch, batch.loss_mask)
    sampler = torch.tensor(
        [lp for t in trajectories for turn in t.conversation.model_turns for lp in turn.logprobs or []]
    )
    # the renderer marks model turns' ids as learned: exactly the sampled tokens, in order
    assert learner.shape == sampler.shape
    assert (learner - sampler).abs().max() < 1e-5


def test_vision_tokens_are_never_sampled(tiny) -> None:  # type: ignore[no-untyped-def]
    model, processor = tiny
    backend = TransformersBackend(model, processor, BUDGET)
    logits = torch.zeros(2, model.config.text_config.vocab_size)
    logits[:, processor.image_token_id] = 100.0
    tokens, _ = backend._sample(logits, [GREEDY, SamplingParams(temperature=1.0)])
    assert processor.image_token_id not in tokens.tolist()


def test_top_k_top_p_filtering() -> None:
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.5, 0.3, 0.15, 0.05]]))
    out = _filter_logits(logits, top_k=torch.tensor([2, 0]), top_p=torch.tensor([1.0, 0.7]))
    assert torch.isfinite(out[0]).tolist() == [True, True, False, False]
    # top-p 0.7: 0.5 alone is < 0.7, so the 0.3 token is kept too; 0.15 starts beyond the mass
    assert torch.isfinite(out[1]).tolist() == [True, True, False, False]
