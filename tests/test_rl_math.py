"""Reward, advantages, filtering, replay and the PPO loss: values derived by hand."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import torch

from pixelreasoner.rl.algorithm import (
    ReplayBuffer,
    group_advantages,
    is_uniform,
    ppo_token_loss,
    token_entropy,
)
from pixelreasoner.rl.reward import (
    RewardConfig,
    RolloutFacts,
    correctness,
    curiosity_bonus,
    efficiency_penalty,
    group_rewards,
    rapr,
)
from pixelreasoner.train.common import cosine_schedule

PAPER, RELEASED = RewardConfig(), RewardConfig.released()


@pytest.mark.parametrize(
    ("uses", "group_rapr", "config", "video", "expected"),
    [
        # paper: 0.5 * max(0.3 - 0.125, 0) = 0.0875
        (True, 1 / 8, PAPER, False, 0.0875),
        # paper, no operation: no bonus whatever the RaPR
        (False, 1 / 8, PAPER, False, 0.0),
        # paper, RaPR above H: max(0.3 - 0.5, 0) = 0
        (True, 0.5, PAPER, False, 0.0),
        # released, image: (0.3 - 0.125) / 2 * 0.25 / 0.125 = 0.175 (twice the paper's 0.0875)
        (True, 1 / 8, RELEASED, False, 0.175),
        # released, RaPR 2/8: (0.3 - 0.25) / 2 * 0.25 / 0.25 = 0.025; paper: 0.5 * 0.05 = 0.025 (equal at 2/8)
        (True, 2 / 8, RELEASED, False, 0.025),
        (True, 2 / 8, PAPER, False, 0.025),
        # released, video: s = 1.5: (0.3 - 0.125) / 1.5 * 0.25 / 0.125 = 0.2333...
        (True, 1 / 8, RELEASED, True, 0.175 * 2 / 1.5),
        # bonus switched off
        (True, 1 / 8, RewardConfig(curiosity="none"), False, 0.0),
    ],
    ids=[
        "paper",
        "paper-no-op",
        "paper-above-H",
        "released",
        "released-2of8",
        "paper-2of8",
        "released-video",
        "none",
    ],
)
def test_curiosity_bonus(uses, group_rapr, config, video, expected) -> None:  # type: ignore[no-untyped-def]
    assert curiosity_bonus(uses, group_rapr, config, video) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("n_ops", "expected"),
    [(0, 0.0), (1, 0.0), (2, -0.05), (4, -0.15)],  # 0.05 * min(1 - n, 0)
)
def test_efficiency_penalty(n_ops: int, expected: float) -> None:
    assert efficiency_penalty(n_ops, PAPER) == pytest.approx(expected)
    assert efficiency_penalty(n_ops, RewardConfig(penalty=False)) == 0.0


@pytest.mark.parametrize(
    ("facts", "config", "expected"),
    [
        (RolloutFacts(1.0, True), PAPER, 1.0),
        (RolloutFacts(0.0, False), PAPER, 0.0),  # no box: 0 in the paper
        (RolloutFacts(0.0, False), RELEASED, -1.0),  # no box: -1 in the release
        (RolloutFacts(1.0, True, n_ops=2, final_error=True), PAPER, 0.0),  # unrepaired failed last operation
        (RolloutFacts(1.0, True, n_ops=2, final_error=True), RewardConfig(zero_if_final_error=False), 1.0),
        (RolloutFacts(0.7, True), PAPER, 0.7),  # ANLS passes through
    ],
    ids=["right", "no-box-paper", "no-box-released", "final-error", "final-error-off", "anls"],
)
def test_correctness_rules(facts: RolloutFacts, config: RewardConfig, expected: float) -> None:
    assert correctness(facts, config) == expected


def test_group_rewards_end_to_end() -> None:
    # 8 rollouts: one uses 2 operations and is right, one uses 1 and is wrong, six answer right directly.
    # RaPR = 2/8 = 0.25; bonus (paper) = 0.5 * (0.3 - 0.25) = 0.025 for the two tool users;
    # penalty: 0.05 * min(1 - 2, 0) = -0.05 for the first, 0 for the second.
    group = [RolloutFacts(1.0, True, n_ops=2), RolloutFacts(0.0, True, n_ops=1)] + [
        RolloutFacts(1.0, True)
    ] * 6
    parts = group_rewards(group, PAPER)
    assert rapr([f.n_ops > 0 for f in group]) == 0.25
    assert [round(p.total, 6) for p in parts] == [0.975, 0.025] + [1.0] * 6
    assert (parts[0].correctness, parts[0].curiosity, parts[0].penalty) == pytest.approx((1.0, 0.025, -0.05))


def test_advantages_and_uniform_groups() -> None:
    # mean 0.25: A = r - 0.25
    assert group_advantages([1.0, 0.0, 0.0, 0.0]) == [0.75, -0.25, -0.25, -0.25]
    # std of [1,0,0,0] = sqrt(0.1875) = 0.4330
    scaled = group_advantages([1.0, 0.0, 0.0, 0.0], scale_by_std=True)
    assert scaled[0] == pytest.approx(0.75 / math.sqrt(0.1875), rel=1e-5)
    assert is_uniform([1.0] * 8) and is_uniform([0.5, 0.505, 0.5, 0.5])  # mean |r - mean| = 0.0028
    assert not is_uniform([1.0, 1.0, 1.0, 0.0])  # mean |r - mean| = 0.375
    # a group made non-uniform only by curiosity is not uniform: 0.025 bonus differences
    assert not is_uniform([0.0, 0.0, 0.025 * 4, 0.0])


def test_replay_draws_proportional_to_advantage() -> None:
    buffer: ReplayBuffer[str] = ReplayBuffer(capacity=10)
    buffer.add(["a", "b", "zero"], [0.75, -0.25, 0.0])  # zero-advantage samples are not kept
    assert len(buffer) == 2
    rng = np.random.default_rng(0)
    drawn = Counter(s for _ in range(20_000) for s in buffer.draw(1, rng))
    assert drawn["a"] / 20_000 == pytest.approx(0.75, abs=0.015)  # 0.75 / (0.75 + 0.25)
    assert sorted(buffer.draw(5, rng)) == ["a", "b"]  # distinct, at most the buffer's size
    buffer.add([f"x{i}" for i in range(12)], [1.0] * 12)
    assert len(buffer) == 10 and "a" not in buffer.samples  # oldest dropped first


def test_replay_is_bounded_in_bytes() -> None:
    """Regression: the buffer was bounded only in count, while its samples carried full images."""
    buffer: ReplayBuffer[str] = ReplayBuffer(capacity=10, max_bytes=7, size_of=len)
    buffer.add(["aaa", "bbb", "ccc"], [1.0, 1.0, 1.0])  # 3 + 3 + 3 = 9 > 7: "aaa" goes
    assert buffer.samples == ["bbb", "ccc"] and buffer.nbytes == 6
    buffer.add(["dddddddd"], [1.0])  # 8 > 7 alone: everything goes, the buffer stays bounded
    assert len(buffer) == 0 and buffer.nbytes == 0
    unbounded: ReplayBuffer[str] = ReplayBuffer(capacity=2)
    unbounded.add(["aaa", "bbb", "ccc"], [1.0, 1.0, 1.0])
    assert unbounded.samples == ["bbb", "ccc"] and unbounded.nbytes == 0  # no size_of: count only


def test_ppo_loss_hand_derived() -> None:
    old = torch.log(torch.tensor([0.5, 0.5, 0.5, 0.5]))
    # ratios 1.0, 1.5, 0.5, 1.2 against advantages +1, +1, -1, -1
    new = old + torch.log(torch.tensor([1.0, 1.5, 0.5, 1.2]))
    advantages = torch.tensor([1.0, 1.0, -1.0, -1.0])
    stats = ppo_token_loss(new, old, advantages, 0.2, 0.35, normalizer=200.0)
    # per token -min(rA, clip(r)A): -1.0; -min(1.5, 1.35) = -1.35; -min(-0.5, -0.8) = 0.8;
    # -min(-1.2, -1.2) = 1.2
    assert stats.loss.item() == pytest.approx((-1.0 - 1.35 + 0.8 + 1.2) / 200)
    assert stats.clip_fraction == pytest.approx(0.5)  # tokens 2 (r > 1.35, A > 0) and 3 (r < 0.8, A < 0)
    by_count = ppo_token_loss(new, old, advantages, normalizer=None)
    assert by_count.loss.item() == pytest.approx((-1.0 - 1.35 + 0.8 + 1.2) / 4)


def test_ppo_gradient_flows_only_through_unclipped_tokens() -> None:
    old = torch.zeros(3)
    new = torch.log(torch.tensor([1.0, 1.5, 0.5])).requires_grad_(True)
    ppo_token_loss(new, old, torch.tensor([1.0, 1.0, -1.0]), normalizer=1.0).loss.backward()
    assert new.grad is not None
    # token 0: d(-r)/dlogp = -r = -1; tokens 1 and 2 are clipped: no gradient
    assert new.grad.tolist() == pytest.approx([-1.0, 0.0, 0.0])


def test_k3_kl_term() -> None:
    logp = torch.log(torch.tensor([0.5]))
    ref = torch.log(torch.tensor([0.25]))
    stats = ppo_token_loss(logp, logp, torch.zeros(1), ref_logprobs=ref, kl_coef=1.0, normalizer=1.0)
    # k3 = exp(ref - logp) - (ref - logp) - 1 = 0.5 - ln 0.5 - 1 = 0.19315
    assert stats.kl == pytest.approx(0.5 - math.log(0.5) - 1, rel=1e-5)


def test_entropy_and_schedule() -> None:
    assert token_entropy(torch.zeros(1, 4)).item() == pytest.approx(math.log(4))
    assert cosine_schedule(0, 100, 3, 0.5) == pytest.approx(1 / 3)
    assert cosine_schedule(3, 100, 3, 0.5) == pytest.approx(1.0)
    assert cosine_schedule(100, 100, 3, 0.5) == pytest.approx(0.5)


def test_token_entropy_in_chunks_equals_the_whole() -> None:
    logits = torch.randn(37, 50, generator=torch.Generator().manual_seed(0)) * 3
    logp = torch.log_softmax(logits, dim=-1)
    whole = -(logp.exp() * logp).sum(-1)
    for rows in (1, 5, 37, 100):
        assert torch.allclose(token_entropy(logits, rows_per_chunk=rows), whole, atol=1e-6)
    assert token_entropy(torch.zeros(0, 50)).shape == (0,)


# ------------------------------------------------------------------ the rescue bonus (beyond the paper)
@pytest.mark.parametrize(
    ("uses", "batch_rapr", "expected"),
    [
        (True, 0.1, 0.3),  # 0.5 * (0.3 - 0.1) * 0.3 / 0.1
        (True, 0.2, 0.075),  # 0.5 * 0.1 * 1.5
        (True, 0.01, 1.0),  # 0.5 * 0.29 * 30 = 4.35, capped at 1
        (True, 0.3, 0.0),  # at H: no gap
        (True, 0.8, 0.0),
        (False, 0.1, 0.0),  # only tool-using rollouts
        (True, 0.0, 0.0),  # no tool use in the batch: nobody to pay
    ],
)
def test_rescue_bonus_hand_derived(uses: bool, batch_rapr: float, expected: float) -> None:
    from pixelreasoner.rl.reward import rescue_bonus

    assert rescue_bonus(uses, batch_rapr, RewardConfig(rescue=True)) == pytest.approx(expected)
    assert rescue_bonus(uses, batch_rapr, RewardConfig()) == 0.0  # off unless asked for


def test_rescue_bonus_keeps_the_batch_total_as_tool_use_vanishes() -> None:
    """What the paper's bonus lacks: its batch total α(H − R)·R shrinks to 0 with R; the rescue
    bonus's total R·b(R) = α·H·(H − R) tends to α·H² (until the cap binds)."""
    from pixelreasoner.rl.reward import rescue_bonus

    config = RewardConfig(rescue=True, rescue_cap=100.0)
    for r in (0.25, 0.1, 0.05, 0.01, 0.001):
        assert r * rescue_bonus(True, r, config) == pytest.approx(0.5 * 0.3 * (0.3 - r))
        assert r * curiosity_bonus(True, r, config) == pytest.approx(0.5 * (0.3 - r) * r)


def test_group_rewards_add_the_rescue_bonus_from_the_batch_rapr() -> None:
    """One tool rollout of 4 in a group; the batch (8 rollouts) has RaPR 1/8."""
    group = [RolloutFacts(1.0, True, n_ops=1)] + [RolloutFacts(1.0, True)] * 3
    parts = group_rewards(group, RewardConfig(rescue=True), batch_rapr=0.125)
    # paper: 0.5 * (0.3 - 0.25) = 0.025; rescue: 0.5 * (0.3 - 0.125) * 0.3 / 0.125 = 0.21
    assert parts[0].curiosity == pytest.approx(0.025 + 0.21)
    assert [p.curiosity for p in parts[1:]] == [0.0] * 3
    # without a batch RaPR the group's own stands in: 0.5 * 0.05 * 0.3 / 0.25 = 0.03
    assert group_rewards(group, RewardConfig(rescue=True))[0].curiosity == pytest.approx(0.025 + 0.03)


def test_score_groups_pays_the_rescue_bonus_from_the_whole_batch() -> None:
    from pixelreasoner.train.rl_steps import score_groups

    items = [_item("a"), _item("b")]
    tool = _trajectory(n_calls=1, answer="A")
    direct = _trajectory(n_calls=0, answer="A")
    trajectories = [tool, direct, direct, direct] + [direct] * 4
    scores = score_groups(items, trajectories, 4, RewardConfig(rescue=True), "none")
    assert scores.parts[0].curiosity == pytest.approx(0.025 + 0.21)


def _item(qid: str):  # type: ignore[no-untyped-def]
    from pixelreasoner.data.items import TaskItem

    return TaskItem(qid=f"needle-{qid}", question="Which?", answer="A", choices=["x", "y"])


def _trajectory(n_calls: int, answer: str):  # type: ignore[no-untyped-def]
    from pixelreasoner.trajectory import Conversation, Trajectory

    conversation = Conversation.from_question("Which?")
    conversation.add_model_turn(f"The answer is \\boxed{{{answer}}}.")
    return Trajectory(conversation, n_calls=n_calls)


def test_rescue_bonus_is_not_paid_for_a_call_left_failed() -> None:
    """The paper's bonus pays any tool-using rollout; the rescue bonus only one whose operation worked."""
    broken = RolloutFacts(0.0, True, n_ops=1, final_error=True)
    group = [broken, RolloutFacts(1.0, True, n_ops=1)] + [RolloutFacts(1.0, True)] * 6
    parts = group_rewards(group, RewardConfig(rescue=True), batch_rapr=0.125)
    paper = 0.5 * (0.3 - 0.25)
    assert parts[0].curiosity == pytest.approx(paper)
    assert parts[1].curiosity == pytest.approx(paper + 0.21)
