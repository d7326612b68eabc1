"""Peak memory and step time of a chat-shaped training step under the ways of running the output head.

Usage::

    python bench/head_memory.py --rounds 3 --out bench/results/head-fused-gemma3-270m.json
    python bench/head_memory.py --variants checkpointed,one-piece --rounds 1   # the 2026-12-02 run

Each run is one ``bcat train`` process (ORPO, bcat's defaults: no alignment terms, LoRA, the packed
prompt-shared forward, full vocabulary) on the built-in model and the chat-shaped synthetic pairs of
``throughput.py`` (prompts about 50 words, answers about 130 words: 4 pairs, about 2,400 scored
answer tokens per step), for ``--steps`` optimizer steps. Variants of
``bcat.model.forward.head_logps`` (LoRA leaves the head frozen):

- ``fused``: bcat's default: chunks of at most ``HEAD_CHUNK_ELEMENTS`` logits, each chunk's gradient
  with respect to its states computed in the forward (``_FrozenHeadLogps``);
- ``checkpointed``: the same chunks under ``torch.utils.checkpoint`` (recomputed in the backward: one
  more head matmul per chunk), the default from 2026-12-02 until the fused path;
- ``one-piece``: the ``[K, V]`` logits computed and kept in one piece (the behaviour before chunking).

Reported per run: the process's peak RSS (``wait4``), its median step time over the steps after the
first (``step_s`` in ``train_log.jsonl``) and its final loss. Runs alternate
(``protocol.round_orders``); each variant's peak-RSS and step-time ratio over the first variant gets
the protocol's median and bootstrap CI over rounds (fewer than 5 rounds: indicative only; peak RSS
barely moves between runs). Runs one at a time. A run that fails (on a 24 GB machine the one-piece
run is killed by the out-of-memory killer) is recorded with its exit code, and then no ratio is
computed for its variant.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import protocol  # noqa: E402
from throughput import THREADS, synthetic_records  # noqa: E402

_PATCH = "import bcat.model.forward as f; f.head_logps = lambda head, config, hidden, targets, max_elements=None: "
VARIANTS = {
    "fused": "",
    "checkpointed": _PATCH + "f._checkpointed_logps(head, config, hidden, targets, "
                             "max(1, f.HEAD_CHUNK_ELEMENTS // head.out_features)); ",
    "one-piece": _PATCH + "f._target_logps(head, config, hidden, targets); ",
}
"""Code run before ``bcat train`` in the process: how the variant replaces bcat's default."""


def run_once(variant: str, data: Path, out: Path, steps: int) -> dict:
    setup = VARIANTS[variant]
    args = ["train", "model.path=builtin:gemma3-270m", f"data.train={data}", "objective.name=orpo", "batch.mode=grouped",
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
    timed = [e["step_s"] for e in log[1:]] or [log[0]["step_s"]]  # the first step includes warm-up
    return {**run, "step_s": statistics.median(timed), "final_loss": log[-1]["loss"],
            "tokens_per_step": log[-1]["tokens"] / log[-1]["step"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=protocol.MIN_ROUNDS)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--variants", default="fused,checkpointed",
                    help=f"comma-separated, the first is the baseline of the ratios: {', '.join(VARIANTS)}")
    ap.add_argument("--out", default="bench/results/head-fused-gemma3-270m.json")
    args = ap.parse_args(argv)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not variants or any(v not in VARIANTS for v in variants):
        ap.error(f"--variants: choose from {', '.join(VARIANTS)}")
    work = Path(tempfile.mkdtemp(prefix="bcat-head-memory-"))
    data = work / "chat.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in synthetic_records("chat", 8)))
    before = protocol.machine_state(THREADS)
    runs = []
    for r, order in enumerate(protocol.round_orders(variants, args.rounds)):
        for variant in order:
            run = run_once(variant, data, work / f"{variant}-{r}", args.steps)
            run["round"] = r
            runs.append(run)
            print(f"head_memory: round {r} {variant}: exit {run['rc']}, peak RSS {run['peak_rss_gb']:.2f} GB, "
                  f"{run['seconds']:.1f} s in all, step {run.get('step_s')} s, loss {run.get('final_loss')}", flush=True)
    after = protocol.machine_state(THREADS)

    def per_round(variant, key):
        return [x[key] for x in sorted(runs, key=lambda x: x["round"]) if x["variant"] == variant]

    doc = {"command": "python bench/head_memory.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "variants": variants, "steps": args.steps, "machine_before": before, "machine_after": after,
           "allocator_env": protocol.allocator_env(),
           "runs": runs}
    base = variants[0]
    for variant in variants[1:]:  # ratios only where both sides finished every round
        if all(x["rc"] == 0 for x in runs if x["variant"] in (base, variant)):
            doc[f"{variant}_over_{base}"] = {
                "peak_rss": protocol.ratio_stats(per_round(variant, "peak_rss_gb"), per_round(base, "peak_rss_gb")),
                "step_time": protocol.ratio_stats(per_round(variant, "step_s"), per_round(base, "step_s")),
                "final_loss_max_abs_diff": max(abs(a - b) for a, b in zip(per_round(variant, "final_loss"),
                                                                          per_round(base, "final_loss")))}
    Path(args.out).write_text(json.dumps(doc, indent=1))
    print(json.dumps({k: v for k, v in doc.items() if k not in ("machine_before", "machine_after")}, indent=1))
    print(protocol.state_line(before, after))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
