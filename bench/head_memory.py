"""Peak memory of a chat-shaped training step: the output head in chunks (bcat's default) vs in one piece.

Usage::

    python bench/head_memory.py --rounds 3 --out bench/results/head-memory-gemma3-270m.json

Each run is one ``bcat train`` process (ORPO, bcat's defaults: no alignment terms, LoRA, the packed
prompt-shared forward, full vocabulary) on the built-in model and the chat-shaped synthetic pairs of
``throughput.py`` (prompts about 50 words, answers about 130 words: 4 pairs, about 2,400 scored
answer tokens per step), for ``--steps`` optimizer steps. ``one-piece`` sets
``bcat.model.forward.HEAD_CHUNK_ELEMENTS`` so high that the ``[K, V]`` logits are computed and kept
in one piece (the behaviour before chunking); ``chunked`` leaves the default. Reported per run: the
process's peak RSS (``wait4``) and its median step time (``train_log.jsonl`` has no times, so the
script times the whole run and the runs' one-time work is the same on both sides). Runs alternate
(``protocol.round_orders``); the peak-RSS ratio and the time ratio get the protocol's median and
bootstrap CI over rounds (fewer than 5 rounds: the time ratio is indicative only; peak RSS barely moves
between runs). Runs one at a time. A run that fails (on a 24 GB machine the one-piece run is killed
by the out-of-memory killer) is recorded with its exit code, and then no ratio is computed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import protocol  # noqa: E402
from throughput import THREADS, synthetic_records  # noqa: E402

VARIANTS = {"chunked": None, "one-piece": 1 << 62}


def run_once(variant: str, data: Path, out: Path, steps: int) -> dict:
    chunk = VARIANTS[variant]
    setup = f"import bcat.model.forward as f; f.HEAD_CHUNK_ELEMENTS = {chunk}; " if chunk else ""
    args = ["train", "model.path=builtin:gemma3-270m", f"data.train={data}", "objective.name=orpo",
            f"training.max_steps={steps}", f"training.output_dir={out}", f"training.threads={THREADS}",
            "training.lr_scheduler=constant", "training.learning_rate=2e-4", "training.save_steps=0",
            "data.max_length=2048", "model.lora_dropout=0"]
    code = f"{setup}import sys; from bcat.cli import main; sys.exit(main({args!r}))"
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace")
    rc = os.waitstatus_to_exitcode(status)
    run = {"variant": variant, "rc": rc, "peak_rss_gb": usage.ru_maxrss / 1e6, "seconds": seconds}
    if rc != 0:  # -9: the out-of-memory killer (what the one-piece head meets on a 24 GB machine)
        run["error_tail"] = err[-600:]
        return run
    log = [json.loads(x) for x in (out / "train_log.jsonl").read_text().splitlines()]
    return {**run, "final_loss": log[-1]["loss"], "tokens_per_step": log[-1]["tokens"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=protocol.MIN_ROUNDS)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--out", default="bench/results/head-memory-gemma3-270m.json")
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bcat-head-memory-"))
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records("chat", 8)))
    before = protocol.machine_state(THREADS)
    runs = []
    for r, order in enumerate(protocol.round_orders(list(VARIANTS), args.rounds)):
        for variant in order:
            run = run_once(variant, data, work / f"{variant}-{r}", args.steps)
            run["round"] = r
            runs.append(run)
            print(f"head_memory: round {r} {variant}: exit {run['rc']}, peak RSS {run['peak_rss_gb']:.2f} GB, "
                  f"{run['seconds']:.1f} s, loss {run.get('final_loss')}", flush=True)
    after = protocol.machine_state(THREADS)

    def per_round(variant, key):
        return [x[key] for x in sorted(runs, key=lambda x: x["round"]) if x["variant"] == variant]

    doc = {"command": "python bench/head_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine_before": before, "machine_after": after, "runs": runs}
    if all(x["rc"] == 0 for x in runs):  # ratios only where both sides finished every round
        doc["peak_rss_ratio_one_piece_over_chunked"] = protocol.ratio_stats(per_round("one-piece", "peak_rss_gb"),
                                                                            per_round("chunked", "peak_rss_gb"))
        doc["time_ratio_chunked_over_one_piece"] = protocol.ratio_stats(per_round("chunked", "seconds"),
                                                                        per_round("one-piece", "seconds"))
        doc["final_loss_max_abs_diff"] = max(abs(a - b) for a, b in zip(per_round("chunked", "final_loss"),
                                                                         per_round("one-piece", "final_loss")))
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v for k, v in doc.items() if k not in ("machine_before", "machine_after")}, indent=1))
    print(protocol.state_line(before, after))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
