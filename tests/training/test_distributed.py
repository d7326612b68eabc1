"""Two CPU processes (gloo) train like one process with the same global batch, and never split a group;
evaluation split across two processes gives the same predictions as one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import parallel_records, qa_records, write_jsonl

COMMON = ["objective.name=orpo", "training.max_steps=3", "batch.mode=grouped", "batch.groups_per_batch=1", "training.lr_scheduler=constant",
          "training.learning_rate=5e-3", "training.log_batch_items=true", "training.threads=1",
          "alignment.hidden_loss=cosine", "alignment.hidden_weight=3", "alignment.output_weight=2"]
TERMS = ("loss", "main", "hidden", "output", "grad_norm")


def assert_same_terms(a: dict, b: dict) -> None:
    """Two ways of batching the same records give the same logged terms, to rounding.

    Step 1 (before any update) agrees to 1e-4. After an AdamW update it agrees less: Adam's first
    update is about ``lr * sign(g)``, so where a gradient entry is near zero its rounding decides a
    whole update's sign, and the trajectories drift apart (5e-4 relative at step 3 on some hosts).
    A normalisation bug (one micro-batch's tokens weighed 3x) moves the terms by tens of percent.
    """
    rel = 1e-4 if a["step"] == 1 else 2e-3
    for key in TERMS:
        assert a[key] == pytest.approx(b[key], rel=rel, abs=1e-6), (a["step"], key)


def run_bcat(argv, processes: int) -> None:
    """``bcat ARGV`` in one plain process, or under ``accelerate launch`` (gloo on CPU) with N processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if processes == 1:
        cmd = [sys.executable, "-m", "bcat.cli", *argv]
    else:
        launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
        cmd = [launcher, "launch", "--multi_gpu", "--num_processes", str(processes), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "bcat.cli", *argv]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


def bcat_train(args, processes: int) -> None:
    run_bcat(["train", *args], processes)


def test_two_processes_match_one_process_and_keep_groups_whole(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4, langs=("en", "fr", "de")))
    base = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON]
    bcat_train([*base, f"training.output_dir={tmp_path / 'one'}", "training.gradient_accumulation_steps=2"], 1)
    bcat_train([*base, f"training.output_dir={tmp_path / 'two'}", "training.gradient_accumulation_steps=1"], 2)
    one = [json.loads(x) for x in (tmp_path / "one" / "train_log.jsonl").read_text().splitlines()]
    two = [json.loads(x) for x in (tmp_path / "two" / "train_log.jsonl").read_text().splitlines()]
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        # The same records per optimizer step: 2 micro-batches on one rank == 1 micro-batch on each of 2 ranks.
        assert sorted(map(tuple, sum(a["items_per_rank"][0], []))) == sorted(
            map(tuple, sum((rank[0] for rank in b["items_per_rank"]), [])))
        assert_same_terms(a, b)
        for lang in a["main_per_language"]:
            assert a["main_per_language"][lang] == pytest.approx(b["main_per_language"][lang], abs=1e-4)
        # No group is ever split across the two ranks.
        groups = [{g for g, _ in rank[0]} for rank in b["items_per_rank"]]
        assert not groups[0] & groups[1]
    summary = json.loads((tmp_path / "two" / "training_summary.json").read_text())
    assert summary["world_size"] == 2


@pytest.mark.parametrize("n_groups,groups_per_batch", [(5, 2), (7, 1)])
def test_two_processes_match_one_process_when_groups_do_not_divide_evenly(tmp_path, tiny_model_dir, n_groups,
                                                                          groups_per_batch):
    """An epoch whose micro-batches are not a multiple of the world size: 2 ranks still take turns along
    the one stream that 1 process with accumulation 2 reads, into the next epoch (4 steps cross it)."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(n_groups, langs=("en", "fr")))
    base = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, "training.max_steps=4",
            f"batch.groups_per_batch={groups_per_batch}", "training.grad_ratio_steps=0"]
    bcat_train([*base, f"training.output_dir={tmp_path / 'one'}", "training.gradient_accumulation_steps=2"], 1)
    bcat_train([*base, f"training.output_dir={tmp_path / 'two'}", "training.gradient_accumulation_steps=1"], 2)
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert a["items_per_rank"][0] == [rank[0] for rank in b["items_per_rank"]], a["step"]
        assert a["epoch"] == b["epoch"]
        assert_same_terms(a, b)
    assert one[-1]["epoch"] > 1  # the run went past an epoch boundary


def uneven_records(objective: str) -> list[dict]:
    """Two groups whose answers differ in length (2 vs ~12 tokens): micro-batches of different token counts."""
    recs = parallel_records(2, langs=("en", "fr", "de"), objective="sft" if objective == "sft" else "dpo")
    for r in recs:
        if r["group"] == "g1":
            for key in ("completion", "chosen"):
                if key in r:
                    r[key] += " and then some more words after the number to make it long"
    return recs


def _log(out):
    return [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("objective", ["orpo", "sft"])
def test_accumulation_equals_one_batch_with_uneven_token_counts(tmp_path, tiny_model_dir, objective):
    """One micro-batch holding both groups == 2 micro-batches of 1 group accumulated: the same loss, terms and
    gradient norm at every step, although the two micro-batches hold very different numbers of tokens
    (a per-micro-batch token mean, averaged, would weigh the short group's tokens ~3x more)."""
    data = write_jsonl(tmp_path / "d.jsonl", uneven_records(objective))
    base = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, f"objective.name={objective}",
            "training.grad_ratio_steps=0"]
    bcat_train([*base, f"training.output_dir={tmp_path / 'one'}", "batch.groups_per_batch=2",
                "training.gradient_accumulation_steps=1"], 1)
    bcat_train([*base, f"training.output_dir={tmp_path / 'acc'}", "batch.groups_per_batch=1",
                "training.gradient_accumulation_steps=2"], 1)
    one, acc = _log(tmp_path / "one"), _log(tmp_path / "acc")
    for a, b in zip(one, acc):
        assert sorted(map(tuple, sum(a["items_per_rank"][0], []))) == sorted(map(tuple, sum(b["items_per_rank"][0], [])))
        assert_same_terms(a, b)
    # the micro-batches really were uneven
    lengths = {g: len(r.get("completion", r.get("chosen"))) for r in uneven_records(objective) for g in [r["group"]]}
    assert lengths["g1"] > 5 * lengths["g0"]


def test_two_ranks_equal_one_batch_with_uneven_token_counts(tmp_path, tiny_model_dir):
    """The same records split over 2 processes (one group each, very different token counts) == one process
    with both groups in one micro-batch: loss, terms and gradient norm."""
    data = write_jsonl(tmp_path / "d.jsonl", uneven_records("orpo"))
    base = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, "training.grad_ratio_steps=0"]
    bcat_train([*base, f"training.output_dir={tmp_path / 'one'}", "batch.groups_per_batch=2"], 1)
    bcat_train([*base, f"training.output_dir={tmp_path / 'two'}", "batch.groups_per_batch=1"], 2)
    one, two = _log(tmp_path / "one"), _log(tmp_path / "two")
    assert len(one) == len(two) == 3
    for a, b in zip(one, two):
        assert sorted(map(tuple, a["items_per_rank"][0][0])) == sorted(
            map(tuple, sum((rank[0] for rank in b["items_per_rank"]), [])))
        assert_same_terms(a, b)


def test_eval_on_two_processes_equals_one_process(tmp_path, tiny_model_dir):
    """``bcat eval`` under ``accelerate launch``: items split across 2 ranks, predictions gathered in order;
    the same predictions and metrics as one process, and only rank 0 writes (the same files)."""
    data = write_jsonl(tmp_path / "qa.jsonl", qa_records(3))
    args = ["eval", "--model", str(tiny_model_dir), "--data", str(data), "--suite", "rag,ood", "--limit", "3",
            "--ood-tasks", "lastword,retrieval", "--max-new-tokens", "4", "--bootstrap", "200", "--batch-size", "4"]
    run_bcat([*args, "--output", str(tmp_path / "one")], 1)
    run_bcat([*args, "--output", str(tmp_path / "two")], 2)
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == sorted(p.name for p in (tmp_path / "one").iterdir())
    one, two = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("one", "two"))
    assert (one["processes"], two["processes"]) == (1, 2)
    for key in ("seconds", "processes"):
        one.pop(key), two.pop(key)
    assert one == two
    assert (tmp_path / "one" / "predictions.jsonl").read_text() == (tmp_path / "two" / "predictions.jsonl").read_text()
