"""The output directory is checked before any work: not writable, a file in the way, a finished run in the
way, the model's own folder, or too little disk for a size estimated from the model's parameter count."""

from __future__ import annotations

import collections
import os
import shutil

import pytest
from helpers import parallel_records, write_jsonl
from reliability.support import assert_clean_failure, tree
from transformers import AutoModelForCausalLM

import bcat.training.outputs
from bcat.config import load_config
from bcat.model.loading import stored_parameters
from bcat.training.outputs import required_free_bytes


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "d.jsonl", parallel_records(2))


def test_output_dir_below_a_regular_file(tmp_path, train, data):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    before = tree(tmp_path)
    for out in (blocker / "sub", blocker / "sub" / "deeper", blocker):
        assert_clean_failure(train(out, data), f"training.output_dir {out} is not writable")
    assert blocker.read_text() == "keep me" and tree(tmp_path) == before


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_read_only_output_dir(tmp_path, train, data):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        for out in (ro, ro / "run"):
            assert_clean_failure(train(out, data), "is not writable")
        assert tree(ro) == set()
    finally:
        ro.chmod(0o755)


def test_finished_run_in_the_way(tmp_path, train, data):
    out = tmp_path / "out"
    assert train(out, data, steps=1).rc == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert_clean_failure(train(out, data, steps=1), "already holds a finished run")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_output_dir_in_or_around_the_model_dir_is_refused(tmp_path, train, data, tiny_model_dir):
    """Training into the model's folder would write the tuned model where the base is read from."""
    model = shutil.copytree(tiny_model_dir, tmp_path / "m")
    before = tree(tmp_path)
    for out, where in ((model, "is"), (model / "run", "is inside"), (tmp_path, "holds")):
        assert_clean_failure(train(out, data, model=model), f"training.output_dir {out} {where} the model directory")
        assert tree(tmp_path) == before
    # the same through a symbolic link, and a model inside the output directory
    link = tmp_path / "link"
    link.symlink_to(model)
    assert_clean_failure(train(link / "run", data, model=model), "is inside the model directory")
    nested = shutil.copytree(tiny_model_dir, tmp_path / "out" / "base")
    assert_clean_failure(train(tmp_path / "out", data, model=nested), "holds the model directory")


def test_too_little_disk_is_refused_before_work(tmp_path, train, data, monkeypatch):
    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 2**20, 2**20))
    out = tmp_path / "out"
    assert_clean_failure(train(out, data), f"training.output_dir {out}: 0.0 GiB free, the run needs about 0.2 GiB")
    assert not out.exists()


def test_disk_estimate_is_proportional_to_the_model(tiny_model_dir, monkeypatch):
    """parameters x 4 bytes x (2 + checkpoints kept), read from the safetensors headers, 200 MiB at least."""
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert stored_parameters(tiny_model_dir) == sum(p.numel() for p in model.parameters())
    assert stored_parameters("/no/such/model") == 0
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "training.save_steps=0"])
    assert required_free_bytes(cfg) == 200 * 2**20  # a tiny model: the floor
    monkeypatch.setattr(bcat.training.outputs, "stored_parameters", lambda path: 270_000_000)
    assert required_free_bytes(cfg) == 270_000_000 * 4 * 2
    cfg = load_config(None, [f"model.path={tiny_model_dir}", "training.save_steps=10"])
    assert required_free_bytes(cfg) == 270_000_000 * 4 * (2 + 2)
