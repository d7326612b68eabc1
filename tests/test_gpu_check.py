"""``bench/gpu_check.py --dry-run``: every section of the GPU check runs on the CPU (tiny model, one round), so the
first run on a GPU machine cannot fail for a trivial reason. Correctness only: no timing is asserted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_dry_run_covers_every_section(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    run = subprocess.run([sys.executable, "bench/gpu_check.py", "--dry-run", "--output", str(tmp_path)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    doc = json.loads((tmp_path / "gpu_check.json").read_text())
    assert doc["dry_run"] is True
    cases = {c["test"].rsplit("::", 1)[-1].split("[")[0]: c["status"] for c in doc["tests"]["cases"]}
    assert set(cases) >= {"test_packed_equals_plain_in_bf16", "test_each_loss_in_bf16_against_fp32",
                          "test_training_on_this_device_follows_the_cpu_reference"}
    assert all(s == "passed" for s in cases.values()), cases
    assert [(b["model"], b["data"]) for b in doc["bench"]] == [("tiny", "rag"), ("tiny", "chat")]
    for b in doc["bench"]:
        assert set(b["configs"]) == {"bcat-dpo", "bcat-orpo", "trl-dpo", "trl-orpo"}, b["notes"]
        assert all(c["step_s_median"] > 0 and c["executed_flop_per_step"] > 0 for c in b["configs"].values()), b
        assert b["configs"]["bcat-orpo"]["packed"] is True
        assert set(b["speed_ratios"]) == {"trl-dpo / bcat-dpo step time", "trl-orpo / bcat-orpo step time"}
    assert doc["eval"]["float32_bcat_equals_generate"] == 1.0
    assert "trl-dpo" in run.stdout and "eval:" in run.stdout  # the closing table
