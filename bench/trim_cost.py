"""What exactness costs: ``bcat train`` on the built-in model with the full vocabulary
(``model.trim_vocab=false``, the exact objective) against the trimmed one (``true``).

    python bench/trim_cost.py --workdir DIR                 # 1 warm-up + 5 rounds, 6 steps per run, ~15 min on 2 cores
    python bench/trim_cost.py --workdir DIR --reuse --rounds 7   # continue: reuse DIR's runs, add rounds
    python bench/trim_cost.py --table bench/results/trim-cost-gemma3-270m.json

Every run is a real ``bcat train`` (the library's ``train()``, the same code path as the command),
each in its OWN process so its memory is its own, with the same data, config and seed; only
``model.trim_vocab`` differs. Timing follows ``bench/protocol.py``: rounds of one run per arm, the
order alternating (full trimmed, trimmed full, ...), a ratio per round, the median ratio with its
bootstrap 95% CI; the target (at most 1.3x) is met only when the CI's upper bound is under it.

Measured per run:

- step time: the interval between consecutive optimizer steps (a global
  ``torch.optim`` step post-hook), i.e. collate + forward + backward + clip + AdamW; the first
  ``--warmup`` intervals are dropped; the run's MEDIAN interval is its step time;
- peak memory during training: the process's resident-set high-water mark (``VmHWM``) reset at
  the first optimizer step (Linux ``/proc/self/clear_refs``), read at the end, so loading and
  trimming the model do not count; ``ru_maxrss`` (whole process) is kept too;
- the machine's state (load, fp32 matmul rate) before and after, and the load around each run.

Raw per-run data and every command go to the JSON file.

Training settings (``TRAIN``): the demo's (ORPO, grouped, one group of English + 3 languages per
micro-batch, prompts up to 384 tokens, LoRA r=16, alignment terms on) on pairs made from the
bundled train split, fp32, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from protocol import (MIN_ROUNDS, fmt, machine_state, ratio_stats, run_rounds, state_line,  # noqa: E402
                      verdict, verdict_word)

TARGET = 1.3
"""Issue 12: exact full-vocabulary training becomes the default if it costs at most this ratio."""
ARMS = {"full": "model.trim_vocab=false", "trimmed": "model.trim_vocab=true"}
TRAIN = [
    "objective.name=orpo",
    "batch.mode=grouped",
    "batch.groups_per_batch=1",
    "batch.languages_per_group=3",
    "alignment.hidden_loss=cosine",
    "data.max_length=384",
    "data.languages=[en,de,es,fr,hi,ja,zh]",
    "training.learning_rate=3e-4",
    "training.lr_scheduler=constant",
    "training.threads=2",
    "training.grad_ratio_steps=0",
    "training.save_steps=0",
]


def _vm_hwm_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args) -> None:
    """One ``bcat train`` run in this process; write its timings as JSON to ``args.child_out``."""
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from bcat.cli import offline_by_default
    from bcat.config import load_config
    from bcat.training.loop import train

    offline_by_default()
    stamps: list[float] = []
    reset = {"done": False}

    def after_step(optimizer, *_):
        stamps.append(time.perf_counter())
        if not reset["done"]:  # training peak only: forget the loading and trimming peak
            reset["done"] = True
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                reset["done"] = "unsupported"

    register_optimizer_step_post_hook(after_step)
    cfg = load_config(None, args.overrides)
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    summary = train(cfg)
    intervals = [b - a for a, b in zip(stamps, stamps[1:])]
    result = {
        "step_intervals_s": intervals,
        "step_s": statistics.median(intervals[args.warmup:]),
        "training_peak_rss_mb": _vm_hwm_mb() if reset["done"] is True else None,
        "process_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_s": time.perf_counter() - started,
        "forward_path": summary["forward_path"],
        "torch_threads": torch.get_num_threads(),
        "final_terms": summary["final_terms"],
        "load_before": load_before,
        "load_after": os.getloadavg()[0],
    }
    Path(args.child_out).write_text(json.dumps(result, indent=1))


def table(result: dict) -> str:
    lines = [f"{result['model']}: {result['steps']} steps per run ({result['warmup']} warm-up interval dropped), "
             f"{len(result['rounds'])} rounds after {len(result['warmup_rounds'])} warm-up, order alternating",
             "| round | full step s | trimmed step s | full peak MB | trimmed peak MB |", "|---:|---:|---:|---:|---:|"]
    for i, r in enumerate(result["rounds"]):
        f, t = r["full"], r["trimmed"]
        lines.append(f"| {i + 1} | {f['step_s']:.2f} | {t['step_s']:.2f} | {f['training_peak_rss_mb'] or float('nan'):.0f} | "
                     f"{t['training_peak_rss_mb'] or float('nan'):.0f} |")
    for key, s in result["ratios"].items():
        lines.append(f"{key} full/trimmed: {fmt(s)} (median of per-round ratios, bootstrap 95% CI)")
    lines.append(f"exact full vocabulary at most {TARGET}x the trimmed step time: {result['verdict']}")
    lines.append(state_line(result["machine_before"], result["machine_after"]))
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--rounds", type=int, default=MIN_ROUNDS, help="rounds, each one run of each arm")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="step intervals dropped at the start of each run")
    p.add_argument("--warmup-rounds", type=int, default=1, help="rounds run first and not kept (cold caches)")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "trim-cost-gemma3-270m.json")
    p.add_argument("--workdir", type=Path, default=None, help="keep data and runs here (default: a temp dir)")
    p.add_argument("--reuse", action="store_true",
                   help="keep the runs already finished in --workdir (an interrupted benchmark continues)")
    p.add_argument("--table", type=Path, help="print a saved result and exit")
    p.add_argument("--child-out", help=argparse.SUPPRESS)
    p.add_argument("overrides", nargs="*", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_out:
        child(args)
        return 0
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0

    work = args.workdir or Path(tempfile.mkdtemp(prefix="bcat-trim-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    pairs = work / "train_pairs.jsonl"
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "2"}
    data_cmd = [sys.executable, "-m", "bcat.cli", "data", "pairs", "--input",
                str(REPO / "bcat" / "resources" / "kb" / "train.jsonl"), "--output", str(pairs)]
    if not (args.reuse and pairs.exists()):
        subprocess.run(data_cmd, check=True, env=env, capture_output=True)
    runs: dict[str, list[dict]] = {arm: [] for arm in ARMS}

    def measure(arm: str) -> float:
        i = sum(map(len, runs.values()))
        out_dir, result_file = work / f"run-{i}-{arm}", work / f"run-{i}-{arm}.json"
        overrides = [f"model.path={args.model}", f"data.train={pairs}", f"training.max_steps={args.steps}",
                     f"training.output_dir={out_dir}", *TRAIN, ARMS[arm]]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-out", str(result_file), "--warmup",
               str(args.warmup), "--", *overrides]
        if not (args.reuse and result_file.exists()):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr[-4000:])
                raise SystemExit(done.returncode)
        run = json.loads(result_file.read_text())
        run["step_s"] = statistics.median(run["step_intervals_s"][args.warmup:])  # a reused run: this warm-up rule
        runs[arm].append(run)
        return run["step_s"]

    before = machine_state(threads=2)
    run_rounds(measure, list(ARMS), args.rounds, warmup=args.warmup_rounds)
    after = machine_state(threads=2)
    everything = [{arm: runs[arm][i] for arm in ARMS} for i in range(len(runs["full"]))]
    warmup_rounds, rounds = everything[:args.warmup_rounds], everything[args.warmup_rounds:]
    ratios = {"step_s": ratio_stats([r["full"]["step_s"] for r in rounds], [r["trimmed"]["step_s"] for r in rounds])}
    if all(r[arm]["training_peak_rss_mb"] for r in rounds for arm in ARMS):
        ratios["training_peak_rss_mb"] = ratio_stats([r["full"]["training_peak_rss_mb"] for r in rounds],
                                                     [r["trimmed"]["training_peak_rss_mb"] for r in rounds])
    result = {
        "model": args.model, "steps": args.steps, "warmup": args.warmup, "warmup_rounds": warmup_rounds,
        "train": TRAIN, "arms": ARMS,
        "command": " ".join([Path(sys.executable).name, "bench/trim_cost.py", *sys.argv[1:]]),
        "data_command": "bcat data pairs --input bcat/resources/kb/train.jsonl --output train_pairs.jsonl",
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine_before": before, "machine_after": after,
        "rounds": rounds, "ratios": ratios, "verdict": verdict_word(verdict(ratios["step_s"], TARGET, at_least=False)),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
