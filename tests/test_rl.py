"""The RL trainer: updates, batched log-probs, resume equivalence, two processes.

A random tiny model rarely earns a reward, so most groups would be uniform and nothing would
train. These tests replace the task score by a deterministic hash of each rollout's text (a
stand-in reward with variance) to exercise the machinery; the reward functions themselves are
tested in test_rl_math.py and learning is measured in bench/.
"""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import zlib
from collections import Counter
from pathlib import Path

import pytest
import torch

from pixelreasoner.data.formats import read_items
from pixelreasoner.models.loading import load_model
from pixelreasoner.models.tiny import save_tiny_model
from pixelreasoner.render import Renderer
from pixelreasoner.rl.reward import RolloutFacts
from pixelreasoner.rollout.backend import SamplingParams
from pixelreasoner.rollout.engine import Query, RolloutEngine
from pixelreasoner.rollout.hf import TransformersBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.train import rl as rl_module
from pixelreasoner.train import rl_steps
from pixelreasoner.train.metrics import read_metrics
from pixelreasoner.train.rl import RLConfig, Sample, Scorer, train_rl
from pixelreasoner.vision.budget import tiny

BUDGET = tiny()


def hashed_facts(trajectory, item) -> RolloutFacts:  # type: ignore[no-untyped-def]
    """A reward with variance for a random model: a hash of the generated text."""
    score = float(zlib.crc32(trajectory.final_text.encode()) % 2)
    return RolloutFacts(
        score=score, has_answer=True, n_ops=trajectory.n_calls, final_error=trajectory.final_error
    )


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("rl")
    generate_dataset([make_family("needle")], 8, root / "data", progress=False)
    model = save_tiny_model(root / "model", preset="tiny-1m", seed=0)
    return root / "data", model


def config(setup: tuple[Path, Path], out: Path, **changes: object) -> RLConfig:
    data, model = setup
    base = RLConfig(
        data=str(data),
        model=str(model),
        out_dir=str(out),
        steps=2,
        queries_per_step=2,
        group_size=4,
        max_turn_tokens=12,
        train_batch_size=8,
        micro_batch=4,
        lr=1e-3,
        progress=False,
        metrics=("jsonl",),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def weights(path: Path) -> dict[str, torch.Tensor]:
    model, _ = load_model(path, dtype=torch.float32)
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_rl_updates_every_trainable_parameter(setup, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rl_steps, "rollout_facts", hashed_facts)
    result = train_rl(config(setup, tmp_path / "run", filter="none"))
    assert result.steps == 2 and all(
        torch.isfinite(torch.tensor(list(h.values()))).all() for h in result.history
    )
    assert all(h["trained_samples"] > 0 for h in result.history)
    before, after = weights(setup[1]), weights(result.final_dir)
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert unchanged == []
    logged = read_metrics(tmp_path / "run" / "metrics.jsonl")
    for key in (
        "reward",
        "correctness",
        "curiosity",
        "penalty",
        "rapr",
        "tool_error_rate",
        "uniform_group_ratio",
        "clip_fraction",
        "entropy",
        "response_tokens",
        "time_rollout",
        "time_logprob",
        "time_update",
        "replay_mb",
        "replay_samples",
        "bad_inputs",
    ):
        assert f"train/{key}" in logged[-1], key


def test_replay_keeps_the_view_the_model_saw_not_the_decoded_original(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: every replayed sample kept the decoded full-resolution originals (crops are cut
    from them), and checkpoints pickled them: ~20 GB per process at V* sizes and the 7B recipe's
    capacity. The buffer now keeps the query's images resized as the model saw them, which render
    to the same tokens and pixels, and it is bounded in bytes."""
    from PIL import Image

    from pixelreasoner.data.items import TaskItem
    from pixelreasoner.rl.algorithm import ReplayBuffer
    from pixelreasoner.rollout.scripted import ScriptedBackend
    from pixelreasoner.train.rl_steps import for_replay, sample_bytes

    _, model_dir = setup
    _, processor = load_model(model_dir, dtype=torch.float32)
    big = tmp_path / "big.png"
    Image.effect_noise((2400, 1800), 60).convert("RGB").save(big)
    item = TaskItem(qid="needle-big", question="Q?", answer="A", images=[str(big)])
    box = '{"bbox_2d": [0.1, 0.1, 0.4, 0.4], "target_image": 1}'
    call = f'<tool_call>\n{{"name": "crop_image_normalized", "arguments": {box}}}\n</tool_call>'
    engine = RolloutEngine(ScriptedBackend([call, "\\boxed{A}"]), BUDGET)
    trajectory = engine.run([Query.from_item(item, BUDGET)])[0]
    assert trajectory.n_calls == 1 and trajectory.n_failed == 0
    fresh = Sample(trajectory, 1.0, old_logprobs=torch.zeros(5))
    kept = for_replay(fresh, BUDGET)
    renderer = Renderer(processor, BUDGET)
    a, b = renderer.render(fresh.trajectory.conversation), renderer.render(kept.trajectory.conversation)
    assert a.input_ids == b.input_ids and a.loss_mask == b.loss_mask
    assert a.pixel_values is not None and b.pixel_values is not None
    assert a.pixel_values.shape == b.pixel_values.shape and (a.pixel_values == b.pixel_values).all()
    assert kept.old_logprobs is fresh.old_logprobs
    # the returned crop (at most 144 tokens here) is kept as it is; the original is not
    assert sample_bytes(fresh) > 2400 * 1800 * 3 > 20 * sample_bytes(kept)
    buffer: ReplayBuffer[Sample] = ReplayBuffer(100, int(2.5 * sample_bytes(kept)), sample_bytes)
    buffer.add([for_replay(fresh, BUDGET) for _ in range(5)], [1.0] * 5)
    assert len(buffer) == 2 and buffer.nbytes <= 2.5 * sample_bytes(kept)


def test_replays_keep_the_log_probs_of_the_policy_that_sampled_them(setup, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Old log-probs are computed once per sample, when it is fresh; replays reuse them, so
    PPO's clip bounds how far repeated replays move a sample."""
    monkeypatch.setattr(rl_steps, "rollout_facts", hashed_facts)
    scored_old: list[Sample] = []  # the objects themselves, so ids are never reused
    updated: list[Sample] = []
    original = Scorer.logprobs

    def spy(self, model, samples, device):  # type: ignore[no-untyped-def]
        (updated if torch.is_grad_enabled() else scored_old).extend(samples)
        return original(self, model, samples, device)

    monkeypatch.setattr(Scorer, "logprobs", spy)
    train_rl(config(setup, tmp_path / "run", steps=3, filter="ssr"))
    # A replayed sample is a compact copy of the fresh one (for_replay) that shares its old
    # log-probs tensor: the tensor's identity follows a sample through the buffer.
    old_ids = [id(s.old_logprobs) for s in scored_old]
    assert len(old_ids) == len(set(old_ids))  # never re-scored
    times_updated = Counter(id(s.old_logprobs) for s in updated)
    assert set(times_updated) <= set(old_ids)  # every updated sample was scored once, when fresh
    assert max(times_updated.values()) > 1  # and some were replayed in a later phase


def test_resume_matches_an_uninterrupted_run(setup, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rl_steps, "rollout_facts", hashed_facts)
    straight = train_rl(config(setup, tmp_path / "straight", steps=3))
    train_rl(config(setup, tmp_path / "cut", steps=3, stop_after_steps=2))
    assert not (tmp_path / "cut" / "final").exists()
    resumed = train_rl(config(setup, tmp_path / "cut", steps=3))
    assert resumed.steps == 3
    for a, b in zip(straight.history, resumed.history, strict=True):
        for key in ("reward", "rapr", "trained_samples", "response_tokens"):
            assert a[key] == pytest.approx(b[key], abs=1e-6), key
    one, two = weights(straight.final_dir), weights(resumed.final_dir)
    assert max((one[k] - two[k]).abs().max().item() for k in one) < 1e-6


@pytest.mark.parametrize("temperature", [1.0, 0.9])
def test_batched_logprobs_match_one_at_a_time_and_the_sampler(setup, temperature) -> None:  # type: ignore[no-untyped-def]
    """Regression: the sampler stored log-probs of the temperature-scaled distribution (0.9 after
    a tool result) while the learner scored at temperature 1, so with ``old_logprobs: sampler``
    the PPO ratio was not 1 at the first update and the clip was biased. Both now score the
    model's temperature-1 distribution, whatever temperature and top-k/top-p drew the tokens."""
    data, model_dir = setup
    model, processor = load_model(model_dir, dtype=torch.float32)
    items = read_items(data).items[:3]
    params = SamplingParams(temperature=temperature, top_p=0.95, top_k=40, max_new_tokens=20)
    engine = RolloutEngine(TransformersBackend(model, processor, BUDGET, seed=3), BUDGET, first=params)
    trajectories = engine.run([Query.from_item(i, BUDGET) for i in items for _ in range(2)])
    samples = [Sample(t, 0.0) for t in trajectories]
    scorer = Scorer(Renderer(processor, BUDGET))
    with torch.no_grad():
        batched, _, counts = scorer.logprobs(model, samples, torch.device("cpu"))
        single = torch.cat([scorer.logprobs(model, [s], torch.device("cpu"))[0] for s in samples])
    sampler = torch.tensor(
        [lp for t in trajectories for turn in t.conversation.model_turns for lp in turn.logprobs]
    )
    assert sum(counts) == batched.numel() == single.numel() == sampler.numel()
    assert (batched - single).abs().max() < 1e-5
    assert (batched - sampler).abs().max() < 1e-5


def test_two_processes_train(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Two families, 2 queries per process: in some phase one process draws both tasks and the
    # other one, and the per-task metrics must still pair up the same collectives (else: a hang).
    _, model = setup
    data = tmp_path / "mixed"
    generate_dataset([make_family("needle"), make_family("frames")], 4, data, seed=3, progress=False)
    done = _launch_rl(
        data,
        model,
        tmp_path / "two",
        "seed=2",  # the first phase: one process draws frames only, the other frames and needle
        "steps=2",
        "queries_per_step=4",
        "train_batch_size=8",
        "micro_batch=4",
    )
    assert done.returncode == 0, done.stderr[-3000:]
    logged = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2]
    assert all("train/reward" in r and "train/rapr" in r for r in logged)
    drawn = {k for r in logged for k in r if k.startswith("train/rapr_")}
    assert drawn == {"train/rapr_needle", "train/rapr_frames"}
    assert all(0.0 <= r[k] <= 1.0 for r in logged for k in r if k.startswith("train/rapr_"))
    assert (tmp_path / "two" / "final" / "config.json").is_file()


def test_visuals_encoded_first_give_the_models_own_logits(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The training forward runs the vision tower once over a batch's images and videos together
    (a blank image when there are none, so DDP and FSDP see the same modules on every process);
    the logits must equal the model's own forward from pixels, and the blank pass must reach the
    tower's parameters with a zero gradient."""
    from pixelreasoner.render import ModelInputs
    from pixelreasoner.train.tokens import selected_logits
    from pixelreasoner.trajectory import Conversation

    data, model_dir = setup
    model, processor = load_model(model_dir, dtype=torch.float32)
    generate_dataset([make_family("frames")], 1, tmp_path / "video", progress=False)
    items = [*read_items(data).items[:2], read_items(tmp_path / "video").items[0]]
    conversations = [Query.from_item(i, BUDGET).conversation for i in items]
    for conv in conversations:
        conv.add_model_turn("It is \\boxed{A}.")
    text_only = Conversation.from_question("Which letter?")
    text_only.add_model_turn("\\boxed{B}")
    renderer = Renderer(processor, BUDGET)
    for batch_convs in (conversations, [text_only, text_only]):
        batch: ModelInputs = renderer(batch_convs, padding_side="right")
        keep = torch.zeros_like(batch.loss_mask, dtype=torch.bool)
        keep[:, :-1] = batch.loss_mask[:, 1:].bool()
        with torch.no_grad():
            reference = model(**batch.model_kwargs(), logits_to_keep=keep, use_cache=False).logits
            logits, _ = selected_logits(model, batch, batch.loss_mask)
        assert (logits - reference).abs().max() < 1e-5
    model.zero_grad()
    logits, _ = selected_logits(model, batch, batch.loss_mask)  # the text-only batch
    logits.sum().backward()
    tower = [p for n, p in model.named_parameters() if ".visual." in f".{n}"]
    assert tower and all(p.grad is not None and not p.grad.any() for p in tower)


def test_mixed_precision_reaches_the_vision_tower(setup) -> None:  # type: ignore[no-untyped-def]
    """Regression: accelerate's autocast wraps the model's forward only; the training forward calls
    the vision tower directly, so under ``mixed_precision: bf16`` the tower ran in fp32."""
    from pixelreasoner.train.dist import make_accelerator
    from pixelreasoner.train.tokens import selected_logits

    data, model_dir = setup
    model, processor = load_model(model_dir, dtype=torch.float32)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    prepared, _ = make_accelerator("bf16").prepare(model, optimizer)
    seen: list[torch.dtype] = []
    model.model.visual.blocks[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    conversation = Query.from_item(read_items(data).items[0], BUDGET).conversation
    conversation.add_model_turn("It is \\boxed{A}.")
    batch = Renderer(processor, BUDGET)([conversation], padding_side="right")
    selected_logits(prepared, batch, batch.loss_mask)
    assert seen == [torch.bfloat16]


def _launch(processes: int, *args: str, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def _launch_rl(data: Path, model: Path, out: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    """``pixelreasoner rl`` on 2 gloo processes with the tests' tiny rollouts (2 per query)."""
    base = ["group_size=2", "max_turn_tokens=12", "filter=none", "progress=false", "metrics=jsonl"]
    return _launch(
        2,
        "-m",
        "pixelreasoner.cli",
        "rl",
        f"data={data}",
        f"model={model}",
        f"out_dir={out}",
        *base,
        *overrides,
    )


@pytest.mark.parametrize(
    ("loss_norm", "strategy", "checkpointing"),
    [
        ("constant", "auto", "0"),
        pytest.param("tokens", "auto", "0", marks=pytest.mark.slow),
        ("constant", "fsdp", "0"),
        pytest.param("tokens", "fsdp", "1", marks=pytest.mark.slow),
    ],
    ids=["constant-ddp", "tokens-ddp", "constant-fsdp", "tokens-fsdp-checkpointing"],
)
def test_the_update_does_not_depend_on_how_many_processes_share_the_batch(  # type: ignore[no-untyped-def]
    setup, tmp_path, loss_norm, strategy, checkpointing
) -> None:
    """Regression: with ``loss_norm: constant`` every process divided its summed token loss by 200
    and DDP then averaged over processes, so the same global batch moved the parameters half as
    far on two processes as on one. One process and two (DDP, or FSDP2 with its parameters,
    gradients and optimizer state sharded, with and without activation checkpointing) must now
    give the same parameters after an SGD step over the same global batch."""
    data, model = setup
    script = str(Path(__file__).with_name("dist_ppo_update.py"))
    after = {}
    for processes, how in ((1, "auto"), (2, strategy)):
        out = tmp_path / f"params-{processes}.pt"
        done = _launch(processes, script, str(model), str(data), str(out), loss_norm, how, checkpointing)
        assert done.returncode == 0, done.stderr[-3000:]
        after[processes] = torch.load(out)
    before = weights(model)
    moved = max((after[1][k] - before[k]).abs().max().item() for k in before)
    differ = max((after[1][k] - after[2][k]).abs().max().item() for k in before)
    assert moved > 1e-4  # the step did something the comparison can see
    assert differ < 1e-6 * max(1.0, moved * 1e2), (moved, differ)


def test_rollouts_on_the_sharded_model_match_the_unsharded_one(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """FSDP2: rollouts inside ``gathered`` with unequal work per process (1 and 3 queries, a crop
    then a KV-cache continuation) give the unsharded model's token ids and log-probs, do not hang,
    and the resharded model still trains (tests/dist_fsdp_rollout.py)."""
    data, model = setup
    script = str(Path(__file__).with_name("dist_fsdp_rollout.py"))
    done = _launch(2, script, str(model), str(data), str(tmp_path), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "ok-0").is_file() and (tmp_path / "ok-1").is_file()


def test_two_processes_survive_batches_without_images(setup, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Regression: while RL trains the vision tower, a synced micro-batch without images on one
    process (here the stand-in pass of a process whose queries were all bad input) left the tower
    without gradients and DDP failed at the next step ("Expected to have finished reduction in
    the prior iteration"). Three of the four queries have an image too elongated to use; the
    first two phases draw all four, so some process gets only bad ones before another phase."""
    from PIL import Image

    from pixelreasoner.data.formats import write_items

    _, model = setup
    data = tmp_path / "mixed"
    generate_dataset([make_family("needle")], 1, data, seed=0, progress=False)
    items = read_items(data).items
    thin = data / "thin.png"
    Image.new("RGB", (4020, 20), "white").save(thin)
    bad = [dataclasses.replace(items[0], qid=f"needle-thin{k}", images=[str(thin)]) for k in range(3)]
    write_items([*items, *bad], data / "items.parquet")
    done = _launch_rl(
        data, model, tmp_path / "two", "steps=3", "queries_per_step=2", "train_batch_size=4", "micro_batch=2"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "skipping query needle-thin" in done.stderr
    logged = read_metrics(tmp_path / "two" / "metrics.jsonl")
    assert [r["step"] for r in logged] == [1, 2, 3]
    assert sum(r["train/bad_inputs"] for r in logged) >= 3


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"filter": "drop"}, "uniform_group_ratio"),
        ({"kl_coef": 0.1}, "kl"),
    ],
    ids=["drop-uniform-groups", "kl-to-reference"],
)
def test_filter_and_kl_variants_run(setup, tmp_path, monkeypatch, changes, key) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rl_steps, "rollout_facts", hashed_facts)
    result = train_rl(config(setup, tmp_path / "run", steps=1, **changes))
    assert result.steps == 1 and key in result.history[0]
    if key == "kl":
        # the first update starts at the reference policy: k3 is 0 there and stays small
        assert 0.0 <= result.history[0]["kl"] < 0.1


def test_rollout_batches_checkpointing_and_the_dropped_cache(setup, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(rl_steps, "rollout_facts", hashed_facts)
    sizes: list[int] = []
    resets: list[bool] = []
    checkpointed: list[bool] = []
    generate, reset, enable = (
        TransformersBackend.generate,
        TransformersBackend.reset,
        rl_module.enable_checkpointing,
    )

    def spy_generate(self, requests):  # type: ignore[no-untyped-def]
        sizes.append(len(requests))
        return generate(self, requests)

    def spy_reset(self) -> None:  # type: ignore[no-untyped-def]
        reset(self)
        resets.append(self.cache is None and not self.rows)

    def spy_enable(model) -> None:  # type: ignore[no-untyped-def]
        checkpointed.append(True)
        enable(model)

    monkeypatch.setattr(TransformersBackend, "generate", spy_generate)
    monkeypatch.setattr(TransformersBackend, "reset", spy_reset)
    monkeypatch.setattr(rl_module, "enable_checkpointing", spy_enable)
    changes = {"steps": 2, "rollout_batch": 3, "gradient_checkpointing": True, "filter": "none"}
    result = train_rl(config(setup, tmp_path / "run", **changes))
    assert max(sizes) == 3  # 2 queries x 4 rollouts, in batches of at most 3
    assert resets == [True, True]  # once per phase, before the update
    assert checkpointed == [True]
    norms = [h["grad_norm"] for h in result.history]  # 0 where every group was uniform
    assert all(math.isfinite(n) for n in norms) and max(norms) > 0


@pytest.mark.parametrize("recipe", ["configs/rl_tiny.yaml", "configs/rl_qwen25vl_7b.yaml"])
def test_rl_recipes_parse(recipe: str) -> None:
    from pixelreasoner.config import load_config

    config = load_config(RLConfig, Path(__file__).resolve().parent.parent / recipe)
    assert config.group_size == 8 and config.reward.curiosity == "paper"


@pytest.mark.parametrize("kind", ["DEEPSPEED", "FSDP"])
def test_unsupported_distributed_setups_are_refused_with_the_reason(kind: str) -> None:
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    from pixelreasoner.train.dist import check_supported

    expected = "DeepSpeed is not supported" if kind == "DEEPSPEED" else "FSDP plugin is not used"
    with pytest.raises(NotImplementedError, match=expected):
        check_supported(SimpleNamespace(distributed_type=DistributedType[kind]))  # type: ignore[arg-type]
    check_supported(SimpleNamespace(distributed_type=DistributedType.MULTI_GPU))  # type: ignore[arg-type]
