"""The curiosity-driven reward (SPEC §4), as pure functions over plain numbers.

For a query x with G rollouts, RaPR(x) is the share of rollouts that called at least one
operation. Each rollout y gets

    r'(x, y) = correctness(y) + curiosity(y, RaPR(x)) + penalty(y)

with two forms of the bonus:

- ``paper``:    α · max(H − RaPR, 0) · 1[y uses an operation]           (α = 0.5, H = 0.3)
- ``released``: max(H − RaPR, 0) / s · 0.25 / RaPR, only if y uses one   (s = 2 image, 1.5 video)

and the efficiency penalty β · min(N − n_ops, 0) (β = 0.05, N = 1). The released code applied it
only to rollouts with at least one call, which is the same number: min(1 − 0, 0) = 0.

Beyond the paper, ``rescue`` (off by default; an ablation) adds to each tool-using rollout whose
operations worked a bonus tied to the *batch's* RaPR R_B (all queries of the phase on this
process):

    rescue(y) = min(α · max(H − R_B, 0) · H / R_B, cap) · 1[y uses an operation, none left failed]

The paper's bonus pays α·(H − RaPR) per tool-using rollout, so the total it pays in a batch,
α·(H − R_B)·R_B·|B|, vanishes as tool use does: a policy drifting to direct answers gets an
ever smaller pull back, and a query whose RaPR is 0 gets none at all. The rescue bonus keeps
that total at α·H·(H − R_B)·|B| (about α·H² per rollout of the batch) however rare the tool
path gets, until the cap binds; the few tool-using rollouts that still appear carry it. A
rollout whose last operation failed and was never repaired gets none: a first version paid it
too, and with the cap at one right answer's worth it paid broken calls as much as right answers
(bench/RESULTS.md). It cannot revive a path that sampling never produces (top-p can cut it off
entirely).

Correctness is the task's score (0/1, or ANLS), except: a rollout whose answer has no box
scores ``unparseable`` (paper 0, released −1), and one whose last operation failed and was
never repaired scores 0 however right its answer (the release meant this but indexed the flag
wrongly).

>>> rollouts = [RolloutFacts(score=1.0, has_answer=True, n_ops=1)] + [RolloutFacts(1.0, True)] * 7
>>> rapr([r.n_ops > 0 for r in rollouts])
0.125
>>> round(curiosity_bonus(True, 0.125, RewardConfig()), 4)  # 0.5 * (0.3 - 0.125)
0.0875
>>> round(curiosity_bonus(True, 0.125, RewardConfig(curiosity="released")), 4)  # 0.175 / 2 * 0.25 / 0.125
0.175
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class RewardConfig:
    """Every constant of the reward, named, with its source."""

    curiosity: Literal["paper", "released", "none"] = "paper"
    alpha: float = 0.5
    """Bonus weight (paper)."""
    target_rapr: float = 0.3
    """H: the RaPR below which a query's tool-using rollouts get a bonus (paper and release)."""
    scale_image: float = 2.0
    """s for images (released form)."""
    scale_video: float = 1.5
    """s for videos (released form)."""
    beta: float = 0.05
    """Penalty per operation beyond ``free_ops`` (paper and release)."""
    free_ops: int = 1
    """N: operations allowed before the penalty."""
    penalty: bool = True
    unparseable: float = 0.0
    """Correctness of an answer without a box (paper 0; released −1)."""
    zero_if_final_error: bool = True
    """An unrepaired failed last operation makes correctness 0 (the release's intent)."""
    rescue: bool = False
    """Add the batch-RaPR rescue bonus (see the module docstring; not in the paper or release)."""
    rescue_cap: float = 1.0
    """Largest rescue bonus of one rollout (one correct answer's worth)."""

    @classmethod
    def released(cls) -> RewardConfig:
        """The released code's variant."""
        return cls(curiosity="released", unparseable=-1.0)


@dataclass(frozen=True)
class RolloutFacts:
    """What the reward needs to know about one rollout."""

    score: float
    """The task's score of the final answer (0/1 or ANLS)."""
    has_answer: bool
    """Whether the final turn had a ``\\boxed{}`` answer."""
    n_ops: int = 0
    final_error: bool = False
    is_video: bool = False


@dataclass(frozen=True)
class RewardParts:
    correctness: float
    curiosity: float
    penalty: float

    @property
    def total(self) -> float:
        return self.correctness + self.curiosity + self.penalty


def rapr(uses_operation: Sequence[bool]) -> float:
    """Rate of pixel-space reasoning: the share of a query's rollouts that used an operation."""
    return sum(bool(u) for u in uses_operation) / len(uses_operation) if uses_operation else 0.0


def correctness(facts: RolloutFacts, config: RewardConfig) -> float:
    """The task score, with the unparseable and unrepaired-final-error rules.

    >>> correctness(RolloutFacts(score=1.0, has_answer=True, n_ops=2, final_error=True), RewardConfig())
    0.0
    >>> correctness(RolloutFacts(score=0.0, has_answer=False), RewardConfig.released())
    -1.0
    """
    if not facts.has_answer:
        return config.unparseable
    if config.zero_if_final_error and facts.final_error:
        return 0.0
    return facts.score


def curiosity_bonus(
    uses_operation: bool, group_rapr: float, config: RewardConfig, is_video: bool = False
) -> float:
    """The bonus of one rollout given its query's RaPR (0 for rollouts without an operation)."""
    if not uses_operation or config.curiosity == "none":
        return 0.0
    gap = max(config.target_rapr - group_rapr, 0.0)
    if config.curiosity == "paper":
        return config.alpha * gap
    scale = config.scale_video if is_video else config.scale_image
    # uses_operation implies group_rapr > 0, so the division is safe
    return gap / scale * 0.25 / group_rapr


def rescue_bonus(uses_operation: bool, batch_rapr: float, config: RewardConfig) -> float:
    """min(α · max(H − R_B, 0) · H / R_B, cap) for a tool-using rollout, R_B the batch's RaPR
    (:func:`group_rewards` passes ``uses_operation`` False for a rollout left with a failed one).

    >>> round(rescue_bonus(True, 0.1, RewardConfig(rescue=True)), 4)  # 0.5 * 0.2 * 0.3 / 0.1
    0.3
    >>> rescue_bonus(True, 0.01, RewardConfig(rescue=True))  # 0.5 * 0.29 * 30 = 4.35, capped
    1.0
    """
    if not uses_operation or not config.rescue or batch_rapr <= 0:
        return 0.0
    gap = max(config.target_rapr - batch_rapr, 0.0)
    return min(config.alpha * gap * config.target_rapr / batch_rapr, config.rescue_cap)


def efficiency_penalty(n_ops: int, config: RewardConfig) -> float:
    """β · min(N − n_ops, 0): each operation beyond the N-th costs β.

    >>> efficiency_penalty(3, RewardConfig())  # 0.05 * min(1 - 3, 0)
    -0.1
    """
    if not config.penalty:
        return 0.0
    return config.beta * min(config.free_ops - n_ops, 0)


def group_rewards(
    group: Sequence[RolloutFacts], config: RewardConfig, batch_rapr: float | None = None
) -> list[RewardParts]:
    """The shaped rewards of the G rollouts of one query. ``batch_rapr`` (the phase's RaPR over
    all its queries) feeds the rescue bonus; without it the group's own RaPR stands in. The
    ``curiosity`` part holds the paper's (or released) bonus plus the rescue bonus."""
    group_rapr = rapr([f.n_ops > 0 for f in group])
    batch = group_rapr if batch_rapr is None else batch_rapr
    return [
        RewardParts(
            correctness=correctness(f, config),
            curiosity=curiosity_bonus(f.n_ops > 0, group_rapr, config, f.is_video)
            + rescue_bonus(f.n_ops > 0 and not f.final_error, batch, config),
            penalty=efficiency_penalty(f.n_ops, config),
        )
        for f in group
    ]
