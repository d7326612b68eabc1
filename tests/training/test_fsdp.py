"""FSDP2 (parameters, gradients and optimizer state sharded) on 2 CPU processes (gloo) under ``accelerate launch``
with ``configs/accelerate/fsdp2.yaml``, LoRA and full fine-tuning:

- the same per-step losses as 1 process with the same global batch (within 1e-4), groups never split, with the
  output head run one position at a time on the sharded side (frozen head under LoRA, trained head otherwise:
  both paths of :func:`bcat.model.forward.head_logps` under FSDP2) and in one piece on the other;
- the exported model (adapter, merged, full weights; trimmed vocabulary or not) loads in plain transformers with the
  weights of the 1-process run (within a tolerance far below what training moved them: the two runs sum gradients
  in a different order and Adam amplifies the last bits of near-zero gradients, so they are not bit-identical);
- ``kill -9`` of every process mid-run, then ``--resume``: bitwise the uninterrupted FSDP run;
- the multi-node recipe: two launchers (one per "machine", here both on this one) meeting through a c10d
  rendezvous train exactly like one launcher with two processes.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from helpers import parallel_records, train_log_without_times, write_jsonl
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp2.yaml"
COMMON = ["objective.name=orpo", "batch.mode=grouped", "batch.groups_per_batch=1", "training.lr_scheduler=constant",
          "training.log_batch_items=true", "training.threads=1", "alignment.hidden_loss=cosine",
          "alignment.hidden_weight=3", "alignment.output_weight=2"]  # both terms on (off by default)
TERMS = ("loss", "nll", "log_odds", "main", "hidden", "output")
SMALL_HEAD_CHUNKS = {"BCAT_HEAD_CHUNK_ELEMENTS": "2"}  # one position per chunk: many chunks on every rank


def _env(**extra: str) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep), **extra}


def _launcher() -> str:
    return shutil.which("accelerate", path=os.path.dirname(sys.executable)) or "accelerate"


def fsdp_cmd(args, *launcher_args, resume: bool = False) -> list[str]:
    return [_launcher(), "launch", "--config_file", str(FSDP_CONFIG), *launcher_args, "-m", "bcat.cli", "train",
            *(["--resume"] if resume else []), *args]


def run(cmd, **env: str) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=_env(**env), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def one_process(args) -> None:
    run([sys.executable, "-m", "bcat.cli", "train", *args, "training.gradient_accumulation_steps=2"])


def log(out: Path) -> list[dict]:
    return train_log_without_times(out)


def summary(out: Path) -> dict:
    return json.loads((out / "training_summary.json").read_text())


def assert_same_steps(one: Path, two: Path, steps: int) -> None:
    """Per-step losses within 1e-4, the same records per step, no group on two ranks."""
    a_log, b_log = log(one), log(two)
    assert [e["step"] for e in a_log] == [e["step"] for e in b_log] == list(range(1, steps + 1))
    for a, b in zip(a_log, b_log):
        assert sorted(map(tuple, sum(a["items_per_rank"][0], []))) == sorted(
            map(tuple, sum((rank[0] for rank in b["items_per_rank"]), [])))
        for key in TERMS:
            assert a[key] == pytest.approx(b[key], abs=1e-4), key
        for lang in a["main_per_language"]:
            assert a["main_per_language"][lang] == pytest.approx(b["main_per_language"][lang], abs=1e-4)
        groups = [{g for g, _ in rank[0]} for rank in b["items_per_rank"]]
        assert len(groups) == 2 and not groups[0] & groups[1]
    assert (summary(one)["parallelism"], summary(two)["parallelism"]) == ("single", "fsdp2")
    assert summary(two)["world_size"] == 2


def plain_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model as plain transformers loads it (safetensors, no bcat code)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, use_safetensors=True).state_dict()


def assert_close_weights(a: dict, b: dict, start: dict, tol: float) -> None:
    """``a`` and ``b`` agree within ``tol``, and training moved them by far more than that (the test can fail)."""
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= tol
    moved = max((a[k] - start[k]).abs().max().item() for k in a)
    assert moved > 50 * tol, moved


def test_fsdp_lora_matches_one_process_and_exports_its_model(tmp_path, tiny_model_dir):
    """LoRA on a trimmed vocabulary, adapter and merged model exported from the sharded run."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4, langs=("en", "fr", "de")))
    args = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, "training.max_steps=3",
            "training.learning_rate=5e-3", "model.trim_vocab=true", "training.save_merged=true"]
    one, two = tmp_path / "one", tmp_path / "two"
    one_process([*args, f"training.output_dir={one}"])
    run(fsdp_cmd([*args, f"training.output_dir={two}"]), **SMALL_HEAD_CHUNKS)
    assert_same_steps(one, two, 3)

    a, b = (load_file(d / "model" / "adapter_model.safetensors") for d in (one, two))
    zeros = {k: torch.zeros_like(v) for k, v in a.items()}  # lora_B starts at 0; lora_A moves little
    assert_close_weights({k: v for k, v in a.items() if "lora_B" in k}, {k: v for k, v in b.items() if "lora_B" in k},
                         {k: v for k, v in zeros.items() if "lora_B" in k}, tol=1e-4)
    # lora_A's gradient is ~0 while lora_B is ~0, and AdamW divides by its root-mean-square, so the
    # rounding of those near-zero gradients (summed in another order over 2 ranks) moves lora_A by a
    # small fraction of the learning rate (5e-3 x 3 steps); lora_B and the merged weights carry the function.
    assert max((a[k] - b[k]).abs().max().item() for k in a if "lora_A" in k) <= 1e-3
    base = plain_weights(tiny_model_dir)
    merged_one, merged_two = plain_weights(one / "merged"), plain_weights(two / "merged")
    assert {k: v.shape for k, v in merged_two.items()} == {k: v.shape for k, v in base.items()}  # full vocabulary
    # merged = base + B A: lora_A's drift (above) reaches it through B (1.8e-5 on some hosts)
    assert_close_weights(merged_one, merged_two, base, tol=5e-5)


def test_fsdp_full_finetune_matches_one_process_and_exports_its_model(tmp_path, tiny_model_dir):
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4, langs=("en", "fr", "de")))
    args = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, "training.max_steps=3",
            "training.learning_rate=1e-3", "model.lora=false"]
    one, two = tmp_path / "one", tmp_path / "two"
    one_process([*args, f"training.output_dir={one}"])
    run(fsdp_cmd([*args, f"training.output_dir={two}"]), **SMALL_HEAD_CHUNKS)
    assert_same_steps(one, two, 3)
    assert_close_weights(plain_weights(one / "model"), plain_weights(two / "model"), plain_weights(tiny_model_dir),
                         tol=5e-5)


def _checkpoint_steps(out: Path) -> list[int]:
    root = out / "checkpoints"
    names = [p.name for p in root.iterdir()] if root.is_dir() else []
    return sorted(int(n.split("-")[1]) for n in names if n.startswith("step-") and not n.endswith(".tmp"))


def _trained(out: Path, lora: bool) -> dict[str, torch.Tensor]:
    return load_file(out / "model" / ("adapter_model.safetensors" if lora else "model.safetensors"))


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full-trimmed"])
def test_fsdp_sigkill_then_resume_is_bitwise_identical(tmp_path, tiny_model_dir, lora):
    """``kill -9`` of the launcher and both ranks once step 2's checkpoint exists, then ``--resume`` on 2 processes:
    the same weights, data order and losses as an uninterrupted FSDP run, bit for bit. A checkpoint written by 2
    processes is refused by 1 with a clear message."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4))
    steps = 10
    args = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, f"training.max_steps={steps}",
            "training.save_steps=1", "training.learning_rate=5e-3" if lora else "training.learning_rate=1e-3",
            *([] if lora else ["model.lora=false", "model.trim_vocab=true"])]
    killed = tmp_path / "killed"
    stderr = open(tmp_path / "killed.stderr", "w")
    proc = subprocess.Popen(fsdp_cmd([*args, f"training.output_dir={killed}"]), env=_env(),
                            stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not _checkpoint_steps(killed) or _checkpoint_steps(killed)[-1] < 2:
            assert proc.poll() is None, (tmp_path / "killed.stderr").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within the time limit"
            time.sleep(0.005)
        _kill_tree(proc)  # the launcher and every rank: a machine going down
    finally:
        if proc.poll() is None:
            _kill_tree(proc)
        stderr.close()
    done = _checkpoint_steps(killed)[-1]
    assert 2 <= done < steps and not (killed / "training_summary.json").exists()

    full = tmp_path / "full"
    run(fsdp_cmd([*args, f"training.output_dir={full}"]))
    run(fsdp_cmd([*args, f"training.output_dir={killed}"], resume=True))
    a, b = _trained(full, lora), _trained(killed, lora)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    resumed, uninterrupted = log(killed), log(full)
    assert [e["step"] for e in resumed] == list(range(1, steps + 1))
    assert resumed == uninterrupted  # every rank's (group, lang) items and every loss term, step for step
    assert summary(killed)["parallelism"] == "fsdp2"

    if lora:  # the number of processes is part of a checkpoint
        (killed / "training_summary.json").unlink()
        shutil.rmtree(killed / "model")
        done = subprocess.run([sys.executable, "-m", "bcat.cli", "train", "--resume", *args,
                               f"training.output_dir={killed}"], env=_env(), capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "was written by 2 process(es), this run has 1" in done.stderr and "Traceback" not in done.stderr


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and every process below it: the ranks run in sessions of their own, so killing
    the launcher's process group alone leaves them training to the end."""
    ranks = psutil.Process(proc.pid).children(recursive=True)
    os.killpg(proc.pid, signal.SIGKILL)
    for rank in ranks:
        try:
            rank.kill()
        except psutil.NoSuchProcess:
            pass
    proc.wait(timeout=60)
    psutil.wait_procs(ranks, timeout=60)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_machines_through_a_c10d_rendezvous(tmp_path, tiny_model_dir):
    """The README's multi-node recipe, one process per "machine": two ``accelerate launch`` (machine_rank 0 and 1,
    ``--rdzv_backend c10d``) meet at host:port. Global ranks come from the rendezvous, each gets whole groups, and
    the run equals one launcher with two processes (and one process with the same global batch)."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(4, langs=("en", "fr", "de")))
    args = [f"model.path={tiny_model_dir}", f"data.train={data}", *COMMON, "training.max_steps=3",
            "training.learning_rate=5e-3"]
    one, nodes = tmp_path / "one", tmp_path / "nodes"
    one_process([*args, f"training.output_dir={one}"])
    port = _free_port()
    procs = []
    for machine in (0, 1):
        launcher = ["--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine),
                    "--main_process_ip", "127.0.0.1", "--main_process_port", str(port), "--rdzv_backend", "c10d"]
        procs.append(subprocess.Popen(fsdp_cmd([*args, f"training.output_dir={nodes}"], *launcher), env=_env(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        time.sleep(1)  # machine 0 first: it checks that the port is free, then hosts the rendezvous
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    assert_same_steps(one, nodes, 3)
    a, b = (load_file(d / "model" / "adapter_model.safetensors") for d in (one, nodes))
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-4


@pytest.mark.parametrize("env, words", [
    ({"ACCELERATE_USE_DEEPSPEED": "true"}, "DeepSpeed is not supported"),
    ({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"}, "FSDP1 is not supported"),
])
def test_untested_backends_are_refused_before_any_work(tmp_path, tiny_model_dir, env, words):
    """What a launcher asks for and bcat does not test is an error, not a silent fallback to another backend."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(2))
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "bcat.cli", "train", f"model.path={tiny_model_dir}",
                           f"data.train={data}", f"training.output_dir={out}", "training.max_steps=1"],
                          env={**_env(), **env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert words in done.stderr and "Traceback" not in done.stderr
    assert not out.exists()
