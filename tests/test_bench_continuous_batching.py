"""``bench/continuous_batching.py --dry-run``: transformers' continuous batching against bcat's generator,
predictions only, on a tiny random model."""

from __future__ import annotations

import json

from helpers import TEXT
from test_bench_protocol import _load

bench = _load("continuous_batching")


def test_dry_run_compares_the_predictions_of_both_generators(tiny_model_dir, tmp_path):
    prompts = [" ".join(t.split()[: 3 + i % 5]) for i, t in enumerate(TEXT)]
    (tmp_path / "prompts.json").write_text(json.dumps(prompts), encoding="utf-8")
    out = tmp_path / "cb.json"
    rc = bench.main(["--model", str(tiny_model_dir), "--prompts", str(tmp_path / "prompts.json"), "--dry-run",
                     "--max-new-tokens", "8", "--batch-size", "4", "--batch-tokens", "64", "--out", str(out)])
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["meta"]["dry_run"] and "rounds" not in doc  # nothing timed
    assert doc["outputs"]["items"] == [f"prompt {i}" for i in range(len(prompts))]
    assert len(doc["outputs"]["bcat"]) == len(doc["outputs"]["transformers"]) == len(prompts)
    assert len(set(doc["outputs"]["bcat"])) > len(prompts) // 2  # the comparison is not vacuous
    assert doc["identical"] and doc["different_items"] == [] and rc == 0


def test_a_dry_run_never_replaces_the_timed_result_by_default():
    assert bench.default_out("builtin:gemma3-270m", dry_run=False).name == "continuous-batching-builtin-gemma3-270m.json"
    assert bench.default_out("builtin:gemma3-270m", dry_run=True).name == "continuous-batching-builtin-gemma3-270m-dry-run.json"
