"""``--resume`` continues a run or says why it cannot, before any work and without touching the folder:
nothing to resume, a finished run, settings that changed since the checkpoint, a tampered checkpoint.
Checkpoints are written by default, so a killed run can resume."""

from __future__ import annotations

import json
import logging
import os
import shutil

import pytest
import torch
from helpers import parallel_records, write_jsonl
from reliability.support import assert_clean_failure, edit_json
from safetensors.torch import load_file, save_file

from bcat.config import TrainingConfig

CKPT = "step-00000002"


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", parallel_records(3))


def snapshot(root):
    """Every path under ``root`` with its content and modification time: "touched nothing" means equal."""
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")}


@pytest.fixture
def killed(tmp_path, train, data):
    """A run of 3 steps with checkpoints at steps 1 and 2, as a kill before its end leaves it."""
    out = tmp_path / "out"
    assert train(out, data, "training.save_steps=1", steps=3).rc == 0
    (out / "training_summary.json").unlink()
    shutil.rmtree(out / "model")
    return out


# ------------------------------------------------------------------------------------- nothing to resume


def test_resume_of_a_finished_run_is_refused_and_touches_nothing(tmp_path, train, data):
    out = tmp_path / "out"
    assert train(out, data, steps=2).rc == 0
    before = snapshot(out)
    for mode in (True, "if-possible"):
        assert_clean_failure(train(out, data, steps=2, resume=mode), f"training.output_dir {out} already holds a "
                             "finished run", "nothing to resume")
        assert snapshot(out) == before


def test_resume_with_no_checkpoint_is_refused(tmp_path, train, data):
    missing = tmp_path / "never-trained"
    assert_clean_failure(train(missing, data, resume=True), f"{missing} does not exist: nothing to resume",
                         "--resume-if-possible")
    assert not missing.exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_clean_failure(train(empty, data, resume=True), f"{empty} holds no checkpoint", "nothing to resume")
    assert list(empty.iterdir()) == []


def test_resume_if_possible_starts_where_there_is_no_run_and_continues_where_there_is(tmp_path, train, data, killed):
    fresh = tmp_path / "fresh"
    assert train(fresh, data, "training.save_steps=1", steps=3, resume="if-possible").rc == 0
    assert json.loads((fresh / "training_summary.json").read_text())["resumes"] == []
    assert train(killed, data, "training.save_steps=1", steps=3, resume="if-possible").rc == 0
    assert json.loads((killed / "training_summary.json").read_text())["resumes"] == [{"step": 2, "changed": {}}]
    for name in ("adapter_model.safetensors",):
        a, b = load_file(fresh / "model" / name), load_file(killed / "model" / name)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_starting_over_an_unfinished_run_is_refused(train, data, killed):
    before = snapshot(killed)
    assert_clean_failure(train(killed, data, "training.save_steps=1", steps=3),
                         f"{killed} holds an unfinished run (checkpoint {CKPT})", "--resume")
    assert snapshot(killed) == before


def test_checkpoints_are_written_by_default(tmp_path, train, data):
    every = TrainingConfig().save_steps
    assert every > 0
    out = tmp_path / "out"
    assert train(out, data, steps=every + 1).rc == 0
    assert [p.name for p in (out / "checkpoints").iterdir()] == [f"step-{every:08d}"]


# ---------------------------------------------------------------------------------------- changed settings


@pytest.mark.parametrize("override, key", [
    ("training.learning_rate=0.5", "training.learning_rate (0.0002 -> 0.5)"),
    ("objective.name=dpo", "objective.name ('orpo' -> 'dpo')"),
    ("training.seed=7", "training.seed (0 -> 7)"),
    ("model.lora_alpha=64", "model.lora_alpha (32 -> 64)"),
    ("batch.seed=3", "batch.seed (0 -> 3)"),
    ("training.max_steps=4", "training.max_steps (3 -> 4): the cosine learning-rate schedule is laid out over max_steps"),
])
def test_resume_with_changed_settings_is_refused_naming_the_keys(train, data, killed, override, key):
    before = snapshot(killed)
    result = train(killed, data, "training.save_steps=1", override, steps=3, resume=True)
    assert_clean_failure(result, f"differ from those of checkpoint {killed / 'checkpoints' / CKPT}", key)
    assert snapshot(killed) == before


def test_resume_with_other_data_is_refused(tmp_path, train, data, killed):
    other = write_jsonl(tmp_path / "other.jsonl", parallel_records(4))
    result = train(killed, other, "training.save_steps=1", steps=3, resume=True)
    assert_clean_failure(result, "data.train (content): the tokenized records differ")
    records = parallel_records(3)
    records[0]["prompt"] += " (edited)"
    write_jsonl(data, records)  # the same file name, other records
    result = train(killed, data, "training.save_steps=1", steps=3, resume=True)
    assert_clean_failure(result, "data.train (content): the tokenized records differ")


def test_resume_from_a_moved_copy_of_the_same_data_is_allowed_and_recorded(tmp_path, train, data, killed):
    moved = tmp_path / "elsewhere" / "copy.jsonl"
    moved.parent.mkdir()
    shutil.copy(data, moved)
    result = train(killed, moved, "training.save_steps=1", steps=3, resume=True)
    assert result.rc == 0, result.err[-2000:]
    resumes = json.loads((killed / "training_summary.json").read_text())["resumes"]
    assert resumes == [{"step": 2, "changed": {"data.train": [str(data.resolve()), str(moved.resolve())]}}]


def test_resume_records_the_changes_it_allows(train, data, killed):
    """Logging, threads and (with a constant learning rate) a later max_steps may change; they are recorded."""
    out = killed.parent / "constant"
    assert train(out, data, "training.save_steps=1", "training.lr_scheduler=constant", steps=3).rc == 0
    (out / "training_summary.json").unlink()
    result = train(out, data, "training.save_steps=1", "training.lr_scheduler=constant", "training.logging_steps=2",
                   steps=5, resume=True)
    assert result.rc == 0, result.err[-2000:]
    changed = {"training.logging_steps": [1, 2], "training.max_steps": [3, 5]}
    assert json.loads((out / "training_summary.json").read_text())["resumes"] == [{"step": 2, "changed": changed}]


# ------------------------------------------------------------------------------------- tampered checkpoints


def _drop(key):
    def tamper(ckpt):
        state = json.loads((ckpt / "state.json").read_text())
        del state[key]
        (ckpt / "state.json").write_text(json.dumps(state))
    return tamper


def _reshape(file, pick):
    def tamper(ckpt):
        tensors = load_file(ckpt / file)
        key = pick(tensors)
        tensors[key] = torch.zeros(3, dtype=tensors[key].dtype)
        save_file(tensors, ckpt / file)
    return tamper


def _step_1000(ckpt):
    edit_json(ckpt / "state.json", step=1000)


def _step_1000_renamed(ckpt):
    state = json.loads((ckpt / "state.json").read_text())
    state["step"], state["scheduler"]["last_epoch"] = 1000, 1000
    (ckpt / "state.json").write_text(json.dumps(state))
    ckpt.rename(ckpt.with_name("step-00001000"))


def _symlinked(ckpt):
    elsewhere = ckpt.parent.parent.parent / "elsewhere"
    shutil.move(ckpt, elsewhere)
    os.symlink(elsewhere, ckpt)


def _sampler_moved(ckpt):
    edit_json(ckpt / "state.json", sampler={"epoch": 0, "position": 1})


@pytest.mark.parametrize("tamper, words", [
    (_drop("scheduler"), ["state.json whose 'scheduler' is missing"]),
    (_drop("sampler"), ["state.json whose 'sampler' is missing"]),
    (_reshape("rng.safetensors", lambda t: "cpu.0"), ["no usable CPU random state for rank 0"]),
    (_reshape("optimizer.safetensors", lambda t: next(k for k in t if k.endswith("/exp_avg"))),
     ["/exp_avg' of shape [3]"]),
    (_step_1000, ["state.json at step 1000", f"a folder named {CKPT}"]),
    (_step_1000_renamed, ["step-00001000 is at step 1000, not before training.max_steps=3"]),
    (_symlinked, ["has a symbolic link"]),
    (_sampler_moved, ["has the data position {'epoch': 0, 'position': 1}"]),
], ids=["no-scheduler", "no-sampler", "rng-shape", "optimizer-shape", "step-1000", "step-1000-renamed", "symlink",
        "sampler-position"])
def test_tampered_checkpoint_is_refused_before_resuming(train, data, killed, tamper, words):
    tamper(killed / "checkpoints" / CKPT)
    before = snapshot(killed)
    result = train(killed, data, "training.save_steps=1", steps=3, resume=True)
    assert_clean_failure(result, *words)
    assert "resumed from" not in result.err
    assert snapshot(killed) == before


def test_a_checkpoint_without_its_settings_is_compared_with_config_yaml(train, data, killed, caplog):
    """Checkpoints written before they recorded their run's settings: the run's config.yaml stands in."""
    for ckpt in (killed / "checkpoints").iterdir():
        edit_json(ckpt / "state.json", run=None)
    before = snapshot(killed)
    result = train(killed, data, "training.save_steps=1", "training.learning_rate=0.5", steps=3, resume=True)
    assert_clean_failure(result, "training.learning_rate (0.0002 -> 0.5)")
    assert snapshot(killed) == before
    caplog.set_level(logging.WARNING, logger="bcat.training.resume")
    assert train(killed, data, "training.save_steps=1", steps=3, resume=True).rc == 0
    assert "compared with" in caplog.text and "the content of data.train cannot be checked" in caplog.text
