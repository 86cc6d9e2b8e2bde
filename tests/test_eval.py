"""Evaluation harness: task loading, scoring through trajectories, resumable JSONL, summaries."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import pytest

from pixelreasoner.cli import main
from pixelreasoner.data.formats import write_items
from pixelreasoner.data.items import TaskItem
from pixelreasoner.eval.harness import (
    PROTOCOL_FILE,
    TaskRun,
    evaluate_task,
    format_table,
    mean_interval,
    ratio_interval,
    run_evaluation,
    summarize,
)
from pixelreasoner.eval.protocol import (
    SCORING_VERSION,
    Decoding,
    ModelIdentity,
    ProtocolMismatch,
    build_protocol,
    differences,
    http_identity,
    memory_identity,
    protocol_record,
)
from pixelreasoner.eval.tasks import get_task, task_for
from pixelreasoner.rollout.engine import RolloutEngine, RolloutLimits
from pixelreasoner.rollout.scripted import ScriptedBackend
from pixelreasoner.tasks.families import make_family
from pixelreasoner.tasks.generate import generate_dataset
from pixelreasoner.vision.budget import PixelRange, released_eval, tiny

BUDGET = tiny()


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("evaldata")
    generate_dataset([make_family("needle"), make_family("read")], 6, root, progress=False)
    return root


def oracle_script(items, right=None):  # type: ignore[no-untyped-def]
    """Zoom on the cue, then answer with the gold for even-numbered items, a wrong one for odd.

    ``right(n, key)`` overrides which answers are right (item number, trajectory key).
    """
    by_question = {}
    for n, item in enumerate(items):
        by_question[item.question, tuple(item.cue_bbox or ())] = (item, n)

    def script(request, turn):  # type: ignore[no-untyped-def]
        first_user = request.conversation.turns[1]
        text = first_user.text
        matches = [v for (q, _), v in by_question.items() if text.startswith(q)]
        item, n = matches[0]
        if turn == 0:
            payload = json.dumps(
                {"name": "crop_image_normalized", "arguments": {"bbox_2d": item.cue_bbox, "target_image": 1}}
            )
            return f"zoom\n<tool_call>\n{payload}\n</tool_call>"
        correct = right(n, request.key) if right else n % 2 == 0
        return f"\\boxed{{{item.answer if correct else 'zzz'}}}"

    return script


def test_tasks_find_their_rows_and_score(data: Path) -> None:
    needle = get_task("needle").load(data)
    assert len(needle.items) == 6 and all(i.benchmark == "needle" for i in needle.items)
    assert task_for(needle.items[0]).name == "needle" and get_task("read").metric == "anls"
    with pytest.raises(FileNotFoundError, match="no rows of benchmark 'vstar'"):
        get_task("vstar").load(data)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mmmu")


def test_evaluate_writes_records_and_resumes(data: Path, tmp_path: Path) -> None:
    items = get_task("needle").load(data).items
    script = oracle_script(items)
    first_backend = ScriptedBackend(script)
    engine = RolloutEngine(first_backend, BUDGET)
    evaluate_task(engine, get_task("needle"), items[:4], tmp_path, batch_size=2, progress=False)
    lines = (tmp_path / "needle.jsonl").read_text().splitlines()
    assert len(lines) == 4
    # a killed run leaves a cut-off line behind; the next run drops it and carries on
    (tmp_path / "needle.jsonl").write_text("\n".join(lines) + '\n{"qid": "needle-0000')
    second_backend = ScriptedBackend(script)
    records = evaluate_task(
        RolloutEngine(second_backend, BUDGET),
        get_task("needle"),
        items,
        tmp_path,
        batch_size=4,
        progress=False,
    )
    assert len(records) == 6 and sum(len(c) for c in second_backend.calls if c) == 2 * 2  # only 2 new items
    assert [r["qid"] for r in records] == [i.qid for i in items]
    report = summarize(get_task("needle"), records)
    # even-numbered items answer right: 3 of 6; every item zoomed once, without errors
    assert (report.n, report.score, report.rapr, report.mean_ops, report.tool_error_rate) == (
        6,
        0.5,
        1.0,
        1.0,
        0.0,
    )
    assert report.mean_turns == 2.0 and report.finish == {"answer": 6}
    # 6 items, 1 sample; interval 0.5 ± 1.96 * sqrt(0.3) / sqrt(6) (all zoomed: a point for RaPR)
    assert "| needle | accuracy | 6 | 1 | 50.0 [6.2, 93.8] | 100.0% [100.0, 100.0] | 0.0% [0.0, 0.0] |" in (
        format_table([report])
    )


def test_anls_task_scores_partial_matches(data: Path) -> None:
    from pixelreasoner.trajectory import Conversation, Trajectory

    item = get_task("read").load(data).items[0]
    conversation = Conversation.from_question(item.question)
    conversation.add_model_turn(f"It reads \\boxed{{{item.answer}}}")
    assert get_task("read").score(Trajectory(conversation), item) == 1.0
    conversation.add_model_turn("no box here")  # only the final turn counts
    assert get_task("read").score(Trajectory(conversation), item) == 0.0


def test_eval_command_with_a_released_style_parquet(tmp_path: Path, tiny) -> None:  # type: ignore[no-untyped-def]
    """The CLI end to end on an in-process tiny model and a parquet holding two benchmarks."""
    from pixelreasoner.models.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    dataset = generate_dataset([make_family("needle")], 2, tmp_path / "data", progress=False)
    extra = TaskItem(
        qid="vstar-1",
        question="Which?\n(A) a\n(B) b",
        answer="A",
        images=dataset.items[0].images,
        choices=["a", "b"],
    )
    write_items([*dataset.items, extra], tmp_path / "data" / "items.parquet", relative_to=tmp_path / "data")
    out = tmp_path / "eval"
    code = main(
        [
            "eval",
            "--model",
            str(model_dir),
            "--tasks",
            "vstar,needle",
            "--data-root",
            str(tmp_path / "data"),
            "--out",
            str(out),
            "--budget",
            "tiny",
            "--max-new-tokens",
            "8",
        ]
    )
    assert code == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [(r["task"], r["n"]) for r in summary["tasks"]] == [("vstar", 1), ("needle", 2)]
    assert summary["protocol"] == json.loads((out / PROTOCOL_FILE).read_text())
    md = (out / "summary.md").read_text()
    assert md.startswith("## Protocol: custom") and "| task |" in md
    # the weights' hash is the safetensors files' (each file's sha256, then one over the list)
    files = sorted(model_dir.glob("*.safetensors"))
    each = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}
    combined = hashlib.sha256("".join(f"{n} {h}\n" for n, h in each.items()).encode()).hexdigest()
    model = summary["protocol"]["model"]
    assert model["files"] == each and model["sha256"] == combined and model["kind"] == "local"
    assert f"sha256 {combined}" in md


# ---------------------------------------------------------------------- intervals


def test_intervals_match_hand_computation() -> None:
    # per-item means 1, 0, .5, .5: mean .5, s^2 = (.25 + .25 + 0 + 0) / 3, se = s / 2
    mean, ci = mean_interval([1.0, 0.0, 0.5, 0.5])
    half = 1.959963984540054 * math.sqrt(0.5 / 3) / 2
    assert mean == 0.5 and ci is not None
    assert ci == pytest.approx((0.5 - half, 0.5 + half)) and ci[0] == pytest.approx(0.099924, abs=1e-6)
    # ratio: failed 1, 0, 1 over calls 2, 1, 1: R = 2/4; d = f - R c = 0, -.5, .5; s_d = .5; mean(c) = 4/3
    ratio, rci = ratio_interval([1.0, 0.0, 1.0], [2.0, 1.0, 1.0])
    half = 1.959963984540054 * 0.5 / (4 / 3 * math.sqrt(3))
    assert ratio == 0.5 and rci == pytest.approx((0.5 - half, 0.5 + half))
    assert rci is not None and rci[0] == pytest.approx(0.075656, abs=1e-6)
    # clipped to [0, 1]; one item or no calls: no interval
    assert mean_interval([1.0, 0.0])[1] == (0.0, 1.0)
    assert mean_interval([0.7]) == (0.7, None) and mean_interval([]) == (0.0, None)
    assert ratio_interval([0.0, 0.0], [0.0, 0.0]) == (0.0, None)


def _rec(qid: str, sample: int, score: float, calls: int, failed: int) -> dict[str, Any]:
    turns = [{"role": "assistant"}] * (calls + 1)
    return dict(
        qid=qid,
        sample=sample,
        score=score,
        n_calls=calls,
        n_failed=failed,
        turns=turns,
        finish_reason="answer",
    )


def test_summary_of_two_samples_per_item_by_hand() -> None:
    """Avg@2 over 4 items: per-item means first, then the interval over items."""
    records = [
        _rec("a", 0, 1.0, 1, 0),
        _rec("a", 1, 1.0, 1, 0),
        _rec("b", 0, 1.0, 2, 1),
        _rec("b", 1, 0.0, 0, 0),
        _rec("c", 0, 0.0, 1, 1),
        _rec("c", 1, 1.0, 1, 0),
        _rec("d", 0, 0.0, 0, 0),
        _rec("d", 1, 0.0, 0, 0),
    ]
    r = summarize(get_task("needle"), records)
    assert (r.n, r.samples, r.n_records) == (4, 2, 8)
    # scores per item 1, .5, .5, 0 -> .5 with the interval of the hand example above
    assert r.score == 0.5 and r.score_ci == pytest.approx(mean_interval([1.0, 0.0, 0.5, 0.5])[1])
    assert r.sample_scores == [0.5, 0.5]
    # RaPR per item 1, .5, 1, 0
    assert r.rapr == 0.625 and r.rapr_ci == pytest.approx(mean_interval([1.0, 0.5, 1.0, 0.0])[1])
    # tool errors: per-item means failed .0 .5 .5 0 over calls 1 1 1 0 -> 1/3
    assert r.tool_error_rate == pytest.approx(1 / 3)
    assert r.tool_error_ci == pytest.approx(ratio_interval([0, 0.5, 0.5, 0], [1, 1, 1, 0])[1])
    assert r.mean_ops == 0.75 and r.mean_turns == 1.75


# ---------------------------------------------------------------------- the protocol


def test_released_protocol_values() -> None:
    p = build_protocol("released")
    # released-eval as the authors ran it: crops cut from the model's view, a 512..5120-token processor
    as_run = released_eval().replace(crop_from_original=False, processor=PixelRange(512 * 784, 5120 * 784))
    assert (p.name, p.mode, p.budget_name, p.budget) == ("released", "vcot", "released-eval-as-run", as_run)
    assert p.budget.frames is None and p.budget.inputs == PixelRange(256 * 784, 8000 * 784)
    assert p.decoding == Decoding(
        temperature=0.0, top_p=1.0, top_k=0, samples=1, seed=None, max_new_tokens=2048
    )
    assert p.limits == RolloutLimits(
        max_calls=4, max_images=16, max_total_tokens=12 * 1024 - 200, max_turn_tokens=2048
    )
    # values equal to the preset's may be given; others are refused, each named
    assert build_protocol("released", mode="vcot", budget="released-eval-as-run", samples=1) == p
    with pytest.raises(
        ValueError, match=r"--budget tiny \(preset: released-eval-as-run\); --samples 2 \(preset: 1\)"
    ):
        build_protocol("released", budget="tiny", samples=2, temperature=None)
    with pytest.raises(ValueError, match="unknown protocol"):
        build_protocol("paper")
    record = protocol_record(p, http_identity("http://x:8000/v1", "m"))
    assert record["budget"]["frames"] is None and record["budget"]["crops"] == {
        "min_pixels": 256 * 784,
        "max_pixels": 5120 * 784,
    }
    assert (
        record["budget"]["processor"]["min_pixels"] == 512 * 784
        and not record["budget"]["crop_from_original"]
    )
    assert build_protocol(budget="released-eval-as-run").budget == as_run  # a custom run may use it too
    assert record["limits"]["max_total_tokens"] == 12088 and record["scoring_version"] == SCORING_VERSION


def test_custom_protocol_defaults_and_checks() -> None:
    p = build_protocol()
    assert (p.name, p.mode, p.budget_name, p.decoding.greedy, p.decoding.samples) == (
        "custom",
        "vcot",
        "released-eval",
        True,
        1,
    )
    assert p.limits == RolloutLimits()
    sampled = build_protocol(temperature=0.7, samples=4, top_p=0.95, max_new_tokens=96, budget="tiny")
    assert sampled.decoding.seed == 0 and sampled.limits.max_turn_tokens == 96  # a seed is always recorded
    assert sampled.decoding.params().top_p == 0.95 and sampled.budget == tiny()
    with pytest.raises(ValueError, match="need sampling"):
        build_protocol(samples=2)
    with pytest.raises(ValueError, match="only apply when sampling"):
        build_protocol(top_p=0.9)
    with pytest.raises(ValueError, match="unknown pixel budget"):
        build_protocol(budget="huge")


def test_differences_name_the_fields() -> None:
    model = ModelIdentity("local", "/a", "abc", "safetensors files")
    greedy = protocol_record(build_protocol(budget="tiny"), model)
    sampled = protocol_record(build_protocol(budget="tiny", temperature=1.0, samples=2), model)
    assert differences(greedy, greedy) == []
    assert differences(greedy, sampled) == [
        "decoding.samples: recorded 1, now 2",
        "decoding.seed: recorded null, now 0",
        "decoding.temperature: recorded 0.0, now 1.0",
    ]
    # the same weights elsewhere are the same model; other weights are not
    moved = protocol_record(
        build_protocol(budget="tiny"), ModelIdentity("local", "/b", "abc", "safetensors files")
    )
    assert differences(greedy, moved) == []
    other = protocol_record(
        build_protocol(budget="tiny"), ModelIdentity("local", "/a", "def", "safetensors files")
    )
    assert differences(greedy, other) == ['model.sha256: recorded "abc", now "def"']
    # served models have no hash: the URL and the served name stand for them
    a = protocol_record(build_protocol(budget="tiny"), http_identity("http://h:1/v1", "m"))
    b = protocol_record(build_protocol(budget="tiny"), http_identity("http://h:2/v1", "m"))
    assert differences(a, b) == ['model.path: recorded "http://h:1/v1", now "http://h:2/v1"']
    # library versions are compared too
    newer = {**greedy, "versions": {**greedy["versions"], "torch": "9.9"}}
    assert [d.split(":")[0] for d in differences(greedy, newer)] == ["versions.torch"]


def test_state_dict_hash(tiny) -> None:  # type: ignore[no-untyped-def]
    import torch

    model, _ = tiny
    first = memory_identity(model)
    assert first.sha256 == memory_identity(model).sha256 and first.hashed == "state dict"
    weight = next(model.parameters())
    saved = weight.detach().clone()
    with torch.no_grad():
        weight.view(-1)[0] += 1.0
        try:
            assert memory_identity(model).sha256 != first.sha256
        finally:
            weight.copy_(saved)
    assert memory_identity(model).sha256 == first.sha256


# ---------------------------------------------------------------------- run_evaluation


MODEL = ModelIdentity("in-memory", "oracle", "0" * 64, "state dict")


def _run(data: Path, out: Path, protocol, backend, n=4, **kw):  # type: ignore[no-untyped-def]
    items = get_task("needle").load(data).items[:n]
    return run_evaluation(
        backend, [TaskRun(get_task("needle"), items)], out, protocol, MODEL, progress=False, **kw
    )


def test_protocol_recorded_and_a_different_one_refused(data: Path, tmp_path: Path) -> None:
    items = get_task("needle").load(data).items[:4]
    greedy = build_protocol(budget="tiny")
    _run(data, tmp_path, greedy, ScriptedBackend(oracle_script(items)))
    recorded = json.loads((tmp_path / PROTOCOL_FILE).read_text())
    assert recorded["name"] == "custom" and recorded["mode"] == "vcot" and recorded["budget_name"] == "tiny"
    assert recorded["budget"]["frames"] == {"min_pixels": 4 * 784, "max_pixels": 64 * 784}
    assert set(recorded["budget"]) == {
        "inputs",
        "crops",
        "frames",
        "video",
        "processor",
        "factor",
        "max_decode_pixels",
        "crop_from_original",
    }
    assert recorded["decoding"] == {
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": 0,
        "samples": 1,
        "seed": None,
        "max_new_tokens": 2048,
    }
    assert recorded["limits"] == {
        "max_calls": 4,
        "max_images": 16,
        "max_total_tokens": 12288,
        "max_turn_tokens": 2048,
    }
    assert recorded["scoring_version"] == SCORING_VERSION and recorded["model"]["sha256"] == "0" * 64
    assert set(recorded["versions"]) == {"pixelreasoner", "torch", "transformers"}
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["protocol"] == recorded
    md = (tmp_path / "summary.md").read_text()
    assert md.startswith("## Protocol: custom\n") and "- decoding: greedy; 1 sample per item" in md
    assert "- limits: 4 calls, 16 images, 12288 tokens" in md and "answer checking: version" in md
    lines = (tmp_path / "needle.jsonl").read_text().splitlines()
    assert len({json.loads(line)["protocol_id"] for line in lines}) == 1

    # the same protocol resumes (nothing left to do); another one is refused, naming the fields
    again = ScriptedBackend(oracle_script(items))
    _run(data, tmp_path, greedy, again)
    assert again.calls == []
    sampled = build_protocol(budget="tiny", temperature=1.0, samples=2)
    with pytest.raises(ProtocolMismatch) as refused:
        _run(data, tmp_path, sampled, ScriptedBackend(oracle_script(items)))
    message = str(refused.value)
    assert "decoding.samples: recorded 1, now 2" in message and "decoding.temperature" in message
    assert "--force" in message and (tmp_path / "needle.jsonl").read_text().splitlines() == lines
    # --force sets the old results aside and starts again
    reports = _run(data, tmp_path, sampled, ScriptedBackend(oracle_script(items)), force=True)
    assert (tmp_path / "superseded-1" / "needle.jsonl").read_text().splitlines() == lines
    assert (tmp_path / "superseded-1" / PROTOCOL_FILE).is_file()
    assert reports[0].n_records == 8
    assert json.loads((tmp_path / PROTOCOL_FILE).read_text())["decoding"]["samples"] == 2


def test_results_without_a_protocol_are_refused(data: Path, tmp_path: Path) -> None:
    items = get_task("needle").load(data).items[:2]
    engine = RolloutEngine(ScriptedBackend(oracle_script(items)), BUDGET)
    evaluate_task(engine, get_task("needle"), items, tmp_path, progress=False)  # as before protocols
    with pytest.raises(ProtocolMismatch, match=r"needle.jsonl\) without a recorded protocol"):
        _run(data, tmp_path, build_protocol(budget="tiny"), ScriptedBackend(oracle_script(items)), n=2)


def test_avg_at_k_and_per_sample_resume(data: Path, tmp_path: Path) -> None:
    items = get_task("needle").load(data).items[:4]
    # sample 0 (even keys in a fresh run) always right; sample 1 right on even items only
    script = oracle_script(items, right=lambda n, key: n % 2 == 0 or key % 2 == 0)
    protocol = build_protocol(budget="tiny", temperature=1.0, samples=2, seed=3)
    report = _run(data, tmp_path, protocol, ScriptedBackend(script))[0]
    lines = [json.loads(line) for line in (tmp_path / "needle.jsonl").read_text().splitlines()]
    assert [(r["qid"], r["sample"]) for r in lines] == [(i.qid, k) for i in items for k in (0, 1)]
    # per-item means 1, .5, 1, .5: .75 ± 1.96 * sqrt(1/12) / 2, clipped at 1
    assert (report.n, report.samples, report.n_records, report.score) == (4, 2, 8, 0.75)
    assert report.score_ci == pytest.approx((0.75 - 1.959963984540054 * math.sqrt(1 / 12) / 2, 1.0))
    assert report.sample_scores == [1.0, 0.5] and report.rapr == 1.0 and report.rapr_ci == (1.0, 1.0)
    summary = json.loads((tmp_path / "summary.json").read_text())["tasks"][0]
    assert summary["score_ci"] == pytest.approx(list(report.score_ci)) and summary["samples"] == 2
    assert "Avg@2" in (tmp_path / "summary.md").read_text()

    # a killed run: two (item, sample) lines lost, the last one cut off
    kept = [r for r in lines if (r["qid"], r["sample"]) not in {(items[1].qid, 1), (items[3].qid, 0)}]
    text = "".join(json.dumps(r) + "\n" for r in kept)
    (tmp_path / "needle.jsonl").write_text(text + '{"qid": "needle-00')
    backend = ScriptedBackend(script)
    report = _run(data, tmp_path, protocol, backend)[0]
    assert sum(len(c) for c in backend.calls) == 2 * 2  # only the 2 missing pairs, 2 turns each
    lines = [json.loads(line) for line in (tmp_path / "needle.jsonl").read_text().splitlines()]
    assert sorted((r["qid"], r["sample"]) for r in lines) == [(i.qid, k) for i in items for k in (0, 1)]
    assert report.n_records == 8 and report.n == 4
    # lines stamped with another protocol's id are refused even without protocol.json's help
    engine = RolloutEngine(ScriptedBackend(script), BUDGET)
    with pytest.raises(ProtocolMismatch, match="holds results of another protocol"):
        evaluate_task(engine, get_task("needle"), items, tmp_path, progress=False, protocol="0123")


def test_eval_command_avg_at_k_and_protocol_flags(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--samples/--temperature on the tiny model, per-sample records, repeatable with a seed; a
    different protocol refused; flags that contradict --protocol released refused."""
    from pixelreasoner.models.tiny import save_tiny_model

    model_dir = save_tiny_model(tmp_path / "model")
    generate_dataset([make_family("needle")], 3, tmp_path / "data", progress=False)
    base = ["eval", "--model", str(model_dir), "--tasks", "needle", "--data-root", str(tmp_path / "data")]
    tiny_args = ["--budget", "tiny", "--max-new-tokens", "8"]
    sampled = [*tiny_args, "--samples", "2", "--temperature", "1.0", "--top-k", "50", "--seed", "7"]
    assert main([*base, *sampled, "--out", str(tmp_path / "a"), "--batch-size", "4"]) == 0
    assert main([*base, *sampled, "--out", str(tmp_path / "b"), "--batch-size", "4"]) == 0
    a = [json.loads(line) for line in (tmp_path / "a" / "needle.jsonl").read_text().splitlines()]
    b = [json.loads(line) for line in (tmp_path / "b" / "needle.jsonl").read_text().splitlines()]
    assert [(r["qid"], r["sample"]) for r in a] == [(f"needle-{i:06d}", k) for i in range(3) for k in (0, 1)]
    assert [r["turns"] for r in a] == [r["turns"] for r in b]  # same seed, same trajectories
    assert any(a[2 * i]["turns"] != a[2 * i + 1]["turns"] for i in range(3))  # samples differ
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["tasks"][0]["samples"] == 2 and summary["tasks"][0]["n"] == 3
    assert summary["protocol"]["decoding"] == {
        "temperature": 1.0,
        "top_p": 1.0,
        "top_k": 50,
        "samples": 2,
        "seed": 7,
        "max_new_tokens": 8,
    }
    assert "## Protocol: custom" in capsys.readouterr().out
    with pytest.raises(
        SystemExit, match=r"(?s)another evaluation protocol.*decoding.samples: recorded 2, now 1"
    ):
        main([*base, *tiny_args, "--out", str(tmp_path / "a")])
    with pytest.raises(SystemExit, match=r"--protocol released fixes these settings.*--budget tiny"):
        main([*base, "--protocol", "released", *tiny_args, "--out", str(tmp_path / "c")])
    with pytest.raises(SystemExit, match="need sampling"):
        main([*base, *tiny_args, "--samples", "3", "--out", str(tmp_path / "c")])
    assert not (tmp_path / "c").exists()


def test_eval_command_over_http_records_url_and_no_hash(tmp_path: Path) -> None:
    from test_http_backend import MODEL, FakeOpenAIServer

    generate_dataset([make_family("needle")], 2, tmp_path / "data", progress=False)
    out = tmp_path / "out"
    with FakeOpenAIServer() as server:
        args = [
            "eval",
            "--model",
            server.base_url,
            "--tasks",
            "needle",
            "--data-root",
            str(tmp_path / "data"),
        ]
        args += [
            "--budget",
            "tiny",
            "--out",
            str(out),
            "--samples",
            "2",
            "--temperature",
            "0.5",
            "--seed",
            "1",
        ]
        assert main([*args, "--served-model-name", MODEL]) == 0
        assert len(server.requests) == 2 * 2 * 2 and not server.problems  # 2 items x 2 samples x 2 turns
        assert all(isinstance(r.get("seed"), int) for r in server.requests)
        with pytest.raises(SystemExit, match=f'model.served_model_name: recorded "{MODEL}", now "other"'):
            main([*args, "--served-model-name", "other"])
        assert len(server.requests) == 8  # refused before any request
    model = json.loads((out / PROTOCOL_FILE).read_text())["model"]
    assert (model["kind"], model["path"], model["served_model_name"], model["sha256"]) == (
        "http",
        server.base_url,
        MODEL,
        None,
    )
    summary = (out / "summary.md").read_text()
    assert "(no hash: served over HTTP)" in summary and "| needle | accuracy | 2 | 2 | " in summary
    lines = (out / "needle.jsonl").read_text().splitlines()
    assert sorted((json.loads(x)["qid"], json.loads(x)["sample"]) for x in lines) == [
        (f"needle-{i:06d}", k) for i in range(2) for k in (0, 1)
    ]


def test_scores_by_path_split_sampled_trajectories() -> None:
    """Two items, two samples each: one zoomed right, one zoomed but its call failed and was left
    failed (right answer, earns 0), two answered directly (one right)."""
    from pixelreasoner.eval.harness import format_path_table

    records = [
        _rec("a", 0, 1.0, 1, 0),
        {**_rec("a", 1, 1.0, 1, 1), "final_error": True},
        _rec("b", 0, 1.0, 0, 0),
        _rec("b", 1, 0.0, 0, 0),
    ]
    report = summarize(get_task("needle"), records)
    assert report.paths == {
        "tool": {"n": 2, "score": 1.0, "earned": 0.5},
        "direct": {"n": 2, "score": 0.5, "earned": 0.5},
    }
    assert "| needle | 2 | 100.0 | 50.0 | 2 | 50.0 | 50.0 |" in format_path_table([report])
    only_direct = summarize(get_task("needle"), records[2:])
    assert "| needle | 0 | - | - | 2 | 50.0 | 50.0 |" in format_path_table([only_direct])
