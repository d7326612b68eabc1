"""``training.snapshot_steps``: the model as it was after step k, for learning curves."""

from __future__ import annotations

import pytest
from helpers import parallel_records, write_jsonl
from safetensors.torch import load_file

from bcat.cli import main
from bcat.model.loading import load_for_eval


@pytest.mark.parametrize("trim", [False, True])
def test_snapshot_equals_a_shorter_run_under_a_constant_learning_rate(tmp_path, tiny_model_dir, trim):
    data = write_jsonl(tmp_path / "pairs.jsonl", parallel_records(2, objective="dpo"))
    common = [f"model.path={tiny_model_dir}", f"data.train={data}", "objective.name=orpo", f"model.trim_vocab={trim}",
              "training.learning_rate=5e-3", "training.lr_scheduler=constant", "batch.groups_per_batch=1",
              "alignment.hidden_loss=cosine", "training.threads=1"]
    long, short = tmp_path / "long", tmp_path / "short"
    assert main(["train", *common, "training.max_steps=3", "training.snapshot_steps=[2,3,9]",
                 f"training.output_dir={long}"]) == 0
    assert main(["train", *common, "training.max_steps=2", f"training.output_dir={short}"]) == 0
    # step 3 is the final model and 9 is never reached: neither is written as a snapshot
    assert sorted(p.name for p in (long / "snapshots").iterdir()) == ["step-00000002"]
    snap = load_file(long / "snapshots" / "step-00000002" / "model" / "adapter_model.safetensors")
    ref = load_file(short / "model" / "adapter_model.safetensors")
    assert snap.keys() == ref.keys() and all((snap[k] == ref[k]).all() for k in ref)
    final = load_file(long / "model" / "adapter_model.safetensors")
    assert any((final[k] != ref[k]).any() for k in ref)
    model, _ = load_for_eval(str(long / "snapshots" / "step-00000002"))  # `bcat eval --model` takes it as is
    assert not hasattr(model, "peft_config")


def test_snapshot_steps_must_be_positive(tmp_path, tiny_model_dir, capsys):
    assert main(["train", f"model.path={tiny_model_dir}", "data.train=x.jsonl", "training.snapshot_steps=[0]",
                 f"training.output_dir={tmp_path / 'o'}"]) == 2
    assert "training.snapshot_steps" in capsys.readouterr().err
