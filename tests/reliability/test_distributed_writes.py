"""A 2-process run (``accelerate launch``, gloo on CPU): only rank 0 writes, and the output holds exactly the
files of a 1-process run (no stray or per-rank file). Every write, mkdir, rename and delete under the test's
directory is recorded per rank by an audit hook (``reliability.support.GUARD``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from helpers import parallel_records, write_jsonl
from reliability.support import guard_env, guard_events, tree

ARGS = ["objective.name=orpo", "training.max_steps=3", "training.save_steps=1", "batch.groups_per_batch=1",
        "alignment.hidden_loss=cosine",
        "training.threads=1", "training.log_batch_items=true"]
PROBE = ".bcat-write-test-"  # rank 0 checks that the output directory is writable with an empty file it deletes


def test_only_rank_0_writes(tmp_path, tiny_model_dir, train):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4))
    one = tmp_path / "one"
    assert train(one, data, *ARGS, steps=3).rc == 0

    work = tmp_path / "work"
    cwd = work / "cwd"
    cwd.mkdir(parents=True)
    out = work / "two"
    env, events = guard_env(tmp_path, watch=work)
    launcher = shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"
    cmd = [launcher, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "-m", "bcat.cli", "train", f"model.path={tiny_model_dir}", f"data.train={data}",
           f"training.output_dir={out}", *ARGS]
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    started = {e["rank"] for e in guard_events(events) if e["kind"] == "start"}
    assert {"0", "1"} <= started  # the hook ran in both ranks
    assert [e for e in guard_events(events) if e["kind"] != "start" and e["rank"] != "0"] == []  # not even a probe
    writes = [e for e in guard_events(events) if e["kind"] != "start" and PROBE not in e["detail"]]
    by_rank = {}
    for e in writes:
        by_rank.setdefault(e["rank"], []).append(e)
    assert by_rank.get("1", []) == [], by_rank.get("1")[:5]
    assert set(by_rank) == {"0"}, set(by_rank)  # the launcher writes nothing either
    assert all(e["detail"].startswith(str(out.resolve())) for e in by_rank["0"])
    kinds = {e["kind"] for e in by_rank["0"]}
    assert {"open", "os.mkdir", "os.rename"} <= kinds  # the hook sees rank 0's log, checkpoints and model

    assert tree(work) == {"cwd", "two"} | {f"two/{p}" for p in tree(out)}
    assert tree(cwd) == set()
    assert tree(out) == tree(one)  # the same files as one process: nothing per rank, no leftover .tmp
    assert not any(p.endswith(".tmp") or PROBE in p for p in tree(out))
