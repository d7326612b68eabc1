"""Crashes: a kill mid-checkpoint or mid-log-line, a real SIGKILL mid-training, and a NaN loss all leave a
usable last checkpoint, and ``bcat train --resume`` finishes BITWISE like an uninterrupted run."""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time

import torch
from helpers import parallel_records, train_log_without_times, write_jsonl
from reliability.support import assert_clean_failure
from safetensors.torch import load_file

import bcat.training.losses
from bcat.training.checkpoint import latest_checkpoint

# Constant LR: the schedule must not depend on max_steps when a shorter run is resumed to a longer one.
COMMON = ["objective.name=orpo", "training.lr_scheduler=constant", "training.learning_rate=5e-3",
          "training.save_steps=1", "training.threads=1", "training.log_batch_items=true"]


def adapter(out):
    return load_file(out / "model" / "adapter_model.safetensors")


def assert_bitwise_equal(a_out, b_out):
    a, b = adapter(a_out), adapter(b_out)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def log(out):
    return train_log_without_times(out)


def checkpoint_steps(out):
    root = out / "checkpoints"
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return sorted(int(n.split("-")[1]) for n in names if n.startswith("step-") and not n.endswith(".tmp"))


def test_leftover_tmp_checkpoint_and_cut_log_line_are_ignored_on_resume(tmp_path, train, caplog):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(3))
    full, part = tmp_path / "full", tmp_path / "part"
    assert train(full, data, *COMMON, steps=4).rc == 0
    assert train(part, data, *COMMON, steps=3).rc == 0
    assert checkpoint_steps(part) == [1, 2]
    # Simulate a kill during step 3's checkpoint and during a log write: a half-written step-3 (.tmp, no
    # state.json), a .tmp that even looks complete, no final model, and half a JSON line at the end of the log.
    (part / "training_summary.json").unlink()
    torch.save({}, part / "model" / "junk.pt")
    half = part / "checkpoints" / "step-00000003.tmp"
    half.mkdir()
    (half / "trainable.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    looks_done = part / "checkpoints" / "step-00000009.tmp"
    looks_done.mkdir()
    (looks_done / "state.json").write_text("{}")
    with open(part / "train_log.jsonl", "a") as f:
        f.write('{"step": 4, "loss": 1.2')
    assert latest_checkpoint(part).name == "step-00000002"

    caplog.set_level(logging.INFO, logger="bcat.training.loop")
    assert train(part, data, *COMMON, steps=4, resume=True).rc == 0
    assert "step-00000002 (step 2)" in caplog.text
    assert_bitwise_equal(full, part)
    assert log(part) == log(full)  # the same steps, batches and losses, each step once, the cut line gone


def test_sigkill_mid_training_then_resume_is_bitwise_identical(tmp_path, train, tiny_model_dir):
    """A real ``kill -9`` of ``python -m bcat.cli train`` once step 3's checkpoint exists, then ``--resume``."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4))
    steps = 20
    args = [f"model.path={tiny_model_dir}", f"data.train={data}", f"training.max_steps={steps}",
            "batch.mode=grouped", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine", *COMMON]
    killed = tmp_path / "killed"
    stderr = open(tmp_path / "killed.stderr", "w")
    proc = subprocess.Popen([sys.executable, "-m", "bcat.cli", "train", *args, f"training.output_dir={killed}"],
                            stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 240
        while not checkpoint_steps(killed) or checkpoint_steps(killed)[-1] < 3:
            assert proc.poll() is None, (tmp_path / "killed.stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        stderr.close()
    assert proc.returncode == -signal.SIGKILL
    done = checkpoint_steps(killed)[-1]
    assert 3 <= done < steps and not (killed / "training_summary.json").exists()

    full = tmp_path / "full"
    assert train(full, data, *COMMON, steps=steps).rc == 0
    assert train(killed, data, *COMMON, steps=steps, resume=True).rc == 0
    assert_bitwise_equal(full, killed)
    resumed, uninterrupted = log(killed), log(full)
    assert [e["step"] for e in resumed] == list(range(1, steps + 1))
    # The same data order (every rank's (group, lang) items per step) and the same losses, step for step.
    assert [e["items_per_rank"] for e in resumed] == [e["items_per_rank"] for e in uninterrupted]
    assert resumed == uninterrupted


def test_nan_loss_stops_with_step_term_and_languages_and_the_checkpoint_resumes(tmp_path, train, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(3))
    real, calls = bcat.training.losses.hidden_alignment_loss, {"n": 0}

    def poisoned(*args, **kwargs):  # the hidden-alignment term turns NaN at the 3rd step
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value

    monkeypatch.setattr(bcat.training.losses, "hidden_alignment_loss", poisoned)
    out = tmp_path / "out"
    result = train(out, data, *COMMON, "alignment.hidden_weight=0.3", steps=5)
    assert_clean_failure(result, "non-finite loss at step 3", "hidden", "['de', 'en', 'fr']",
                         "the last checkpoint is intact")
    assert checkpoint_steps(out) == [1, 2]
    assert not (out / "model").exists() and not (out / "training_summary.json").exists()
    assert [e["step"] for e in log(out)] == [1, 2]

    monkeypatch.undo()
    assert train(out, data, *COMMON, "alignment.hidden_weight=0.3", steps=5, resume=True).rc == 0
    full = tmp_path / "full"
    assert train(full, data, *COMMON, "alignment.hidden_weight=0.3", steps=5).rc == 0
    assert_bitwise_equal(full, out)
    assert log(out) == log(full)


class InfiniteGradient(torch.autograd.Function):
    """Identity forward, infinite backward: a finite loss whose gradient is not (like ORPO's log(1 - p)
    when the mean log-prob rounds to 0)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


def test_finite_loss_with_infinite_gradient_stops_with_step_term_and_languages(tmp_path, train, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(3))
    real, calls = bcat.training.losses.output_agreement_loss, {"n": 0}

    def poisoned(probs, *args, **kwargs):  # from the 3rd step on, the output term's gradient is not finite, its value is
        calls["n"] += 1
        value = real(probs, *args, **kwargs)
        # (+ 0 * f(probs) with an infinite backward: a finite value, a nan gradient into every probability)
        return value + 0.0 * InfiniteGradient.apply(probs.sum()) if calls["n"] >= 3 else value

    monkeypatch.setattr(bcat.training.losses, "output_agreement_loss", poisoned)
    out = tmp_path / "out"
    result = train(out, data, *COMMON, "alignment.output_weight=0.1", steps=5)
    assert_clean_failure(result, "non-finite gradient at step 3", "output (languages in the micro-batch: "
                         "['de', 'en', 'fr'])", "the last checkpoint is intact")
    assert "main" not in result.err.split("non-finite gradient")[1].split("(languages")[0]
    assert checkpoint_steps(out) == [1, 2]
    assert not (out / "model").exists() and not (out / "training_summary.json").exists()
    logged = log(out)
    assert [e["step"] for e in logged] == [1, 2] and all(math.isfinite(e["loss"]) for e in logged)

    monkeypatch.undo()
    assert train(out, data, *COMMON, "alignment.output_weight=0.1", steps=5, resume=True).rc == 0
    full = tmp_path / "full"
    assert train(full, data, *COMMON, "alignment.output_weight=0.1", steps=5).rc == 0
    assert_bitwise_equal(full, out)


def test_inf_in_a_term_is_caught_too(tmp_path, train, monkeypatch):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(2))
    real = bcat.training.losses.output_agreement_loss
    monkeypatch.setattr(bcat.training.losses, "output_agreement_loss", lambda *a, **k: real(*a, **k) + float("inf"))
    result = train(tmp_path / "out", data, *COMMON, "alignment.output_weight=0.1")
    assert_clean_failure(result, "non-finite loss at step 1", "output", "['de', 'en', 'fr']")
