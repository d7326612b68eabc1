"""Folders are replaced whole: a failure injected at any step of writing the trained model or an eval's
pair of files leaves the old complete folder or the new one in place, never a missing model or new answers
beside old metrics."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import bcat.output
from bcat.evaluation.scoring import write_outputs
from bcat.model.export import save_model


class Injected(Exception):
    pass


def _fail_at_step(monkeypatch, k: int) -> list[int]:
    """Make the ``k``-th call to any primitive that moves or removes a path raise; returns the call count."""
    calls = [0]

    def wrap(fn):
        def step(*args, **kwargs):
            calls[0] += 1
            if calls[0] == k:
                raise Injected(f"step {k}")
            return fn(*args, **kwargs)
        return step

    for owner, name in [(os, "rename"), (os, "replace"), (shutil, "rmtree"), (Path, "rename"), (Path, "replace"),
                        (bcat.output, "exchange")]:
        if hasattr(owner, name):
            monkeypatch.setattr(owner, name, wrap(getattr(owner, name)))
    return calls


def _contents(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}


def _every_step(monkeypatch, write, check) -> int:
    """Run ``write`` with a failure at step 1, 2, ... until it runs through; ``check()`` after each."""
    for k in range(1, 50):
        with monkeypatch.context() as m:
            calls = _fail_at_step(m, k)
            try:
                write()
            except Injected:
                check()
                continue
        check()
        return calls[0]
    raise AssertionError("the write never completed")


@pytest.fixture(params=["exchange", "two renames"])
def swap(request, monkeypatch):
    """Both ways of swapping: renameat2's exchange, and where it is missing two renames (after which a
    restore puts the folder aside back)."""
    if request.param == "two renames":
        monkeypatch.setattr(bcat.output, "exchange", lambda a, b: False)
    return request.param


def test_export_replaces_the_model_whole(tmp_path, tiny_model_dir, monkeypatch, swap):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    out = tmp_path / "run"
    save_model(model, tokenizer, out, merged=False)
    old = _contents(out / "model")
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    save_model(model, tokenizer, tmp_path / "expected", merged=False)
    new = _contents(tmp_path / "expected" / "model")
    assert old["model.safetensors"] != new["model.safetensors"]

    def check():
        if swap == "two renames":
            bcat.output.restore_dir(out / "model")
        assert _contents(out / "model") in (old, new)

    steps = _every_step(monkeypatch, lambda: save_model(model, tokenizer, out, merged=False), check)
    assert steps >= 2 and _contents(out / "model") == new
    assert sorted(p.name for p in out.iterdir()) == ["model"]  # nothing left beside it


def test_eval_outputs_replace_the_pair_whole(tmp_path, monkeypatch, swap):
    out = tmp_path / "eval"
    old_metrics, old_preds = {"gap": 0.1}, [{"group": "g1", "lang": "en", "prediction": "old"}]
    write_outputs(out, old_metrics, old_preds)
    (out / "comparison.json").write_text("{}")  # written by another command: kept
    old = _contents(out)
    new_metrics, new_preds = {"gap": 0.2}, [{"group": "g1", "lang": "en", "prediction": "new"}]

    def check():
        if swap == "two renames":
            bcat.output.restore_dir(out)
        pair = json.loads((out / "metrics.json").read_text())["gap"], (out / "predictions.jsonl").read_text()
        assert pair in ((0.1, old["predictions.jsonl"].decode()), (0.2, '{"group": "g1", "lang": "en", '
                                                                         '"prediction": "new"}\n'))
        assert (out / "comparison.json").read_text() == "{}"

    _every_step(monkeypatch, lambda: write_outputs(out, new_metrics, new_preds), check)
    assert json.loads((out / "metrics.json").read_text()) == new_metrics
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval"]
