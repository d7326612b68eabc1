"""What exactness costs: ``bcat train`` on the built-in model with the full vocabulary
(``model.trim_vocab=false``, the exact objective) against the trimmed one (``true``).

    python bench/trim_cost.py                               # 2 rounds A B B A, 6 steps each, ~20-40 min on 2 cores
    python bench/trim_cost.py --rounds 1 --steps 4          # quicker, noisier
    python bench/trim_cost.py --table bench/results/trim-cost-gemma3-270m.json

Every run is a real ``bcat train`` (the library's ``train()``, the same code path as the command),
each in its OWN process so its memory is its own, with the same data, config and seed; only
``model.trim_vocab`` differs. Runs are interleaved in rounds ``A B B A`` (A = full, B = trimmed),
so a change in the load of a shared machine hits both arms alike.

Measured per run:

- step time: the interval between consecutive optimizer steps (a global
  ``torch.optim`` step post-hook), i.e. collate + forward + backward + clip + AdamW; the first
  ``--warmup`` intervals are dropped; the run's MEDIAN interval is its step time;
- peak memory during training: the process's resident-set high-water mark (``VmHWM``) reset at
  the first optimizer step (Linux ``/proc/self/clear_refs``), read at the end, so loading and
  trimming the model do not count; ``ru_maxrss`` (whole process) is kept too;
- the machine's 1-minute load average before and after.

Result: ``ratio = mean(full step times) / mean(trimmed step times)`` over runs, with a 95%
percentile bootstrap interval that resamples the runs of each arm (10,000 draws); the same for
peak memory. Raw per-run data and every command go to the JSON file.

Training settings (``TRAIN``): the demo's (ORPO, grouped, one group of English + 3 languages per
micro-batch, prompts up to 384 tokens, LoRA r=16, alignment terms on) on pairs made from the
bundled train split, fp32, 2 threads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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


def bootstrap_ratio(a: list[float], b: list[float], draws: int = 10_000, seed: int = 0) -> list[float]:
    """95% percentile interval of mean(a) / mean(b), resampling each list with replacement."""
    rng = random.Random(seed)
    ratios = sorted(statistics.fmean(rng.choices(a, k=len(a))) / statistics.fmean(rng.choices(b, k=len(b)))
                    for _ in range(draws))
    return [ratios[int(0.025 * draws)], ratios[int(0.975 * draws) - 1]]


def summarise(runs: list[dict]) -> dict:
    by = {arm: [r for r in runs if r["arm"] == arm] for arm in ARMS}
    out = {}
    for key in ("step_s", "training_peak_rss_mb"):
        a = [r[key] for r in by["full"] if r.get(key) is not None]
        b = [r[key] for r in by["trimmed"] if r.get(key) is not None]
        if a and b:
            out[key] = {"full_mean": statistics.fmean(a), "trimmed_mean": statistics.fmean(b),
                        "ratio_full_over_trimmed": statistics.fmean(a) / statistics.fmean(b),
                        "ci95": bootstrap_ratio(a, b), "runs_per_arm": [len(a), len(b)]}
    return out


def table(result: dict) -> str:
    lines = [f"{result['model']}: {result['steps']} steps per run ({result['warmup']} warm-up dropped), "
             f"{result['rounds']} rounds of A B B A; machine {result['machine']}",
             "| run | arm | step s (median) | training peak RSS MB | load avg before/after |",
             "|---:|---|---:|---:|---|"]
    for i, r in enumerate(result["runs"]):
        load = "n/a" if r["load_before"] is None else f"{r['load_before']:.1f} / {r['load_after']:.1f}"
        lines.append(f"| {i} | {r['arm']} | {r['step_s']:.2f} | {r.get('training_peak_rss_mb') or float('nan'):.0f} | "
                     f"{load} |")
    for key, s in result["summary"].items():
        lines.append(f"{key}: full {s['full_mean']:.2f}, trimmed {s['trimmed_mean']:.2f}, ratio full/trimmed "
                     f"{s['ratio_full_over_trimmed']:.2f} (95% CI {s['ci95'][0]:.2f}-{s['ci95'][1]:.2f})")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--rounds", type=int, default=2, help="rounds of A B B A")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--warmup", type=int, default=1, help="step intervals dropped at the start of each run")
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
    order = [arm for _ in range(args.rounds) for arm in ("full", "trimmed", "trimmed", "full")]
    runs = []
    for i, arm in enumerate(order):
        out_dir, result_file = work / f"run-{i}-{arm}", work / f"run-{i}-{arm}.json"
        overrides = [f"model.path={args.model}", f"data.train={pairs}", f"training.max_steps={args.steps}",
                     f"training.output_dir={out_dir}", *TRAIN, ARMS[arm]]
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child-out", str(result_file), "--warmup",
               str(args.warmup), "--", *overrides]
        print(f"[{i + 1}/{len(order)}] {arm}: {' '.join(overrides)}", flush=True)
        if args.reuse and result_file.exists():
            print("    reused from an earlier invocation", flush=True)
        else:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode:
                sys.stderr.write(done.stderr[-4000:])
                return done.returncode
        run = {"arm": arm, "round": i // 4, "load_before": None, "load_after": None,
               **json.loads(result_file.read_text())}
        if run["step_intervals_s"][args.warmup:]:  # a reused run: the same warm-up rule as this invocation
            run["step_s"] = statistics.median(run["step_intervals_s"][args.warmup:])
        runs.append(run)
        print(f"    step {run['step_s']:.2f} s, training peak {run['training_peak_rss_mb']} MB, "
              f"load {run['load_before']} -> {run['load_after']}", flush=True)
    result = {
        "model": args.model, "rounds": args.rounds, "steps": args.steps, "warmup": args.warmup, "train": TRAIN,
        "arms": ARMS, "command": " ".join([Path(sys.executable).name, "bench/trim_cost.py", *sys.argv[1:]]),
        "data_command": "bcat data pairs --input bcat/resources/kb/train.jsonl --output train_pairs.jsonl",
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
        "shared_machine_note": "run while other jobs shared the machine; the load averages per run are recorded",
        "date": time.strftime("%Y-%m-%d %H:%M"), "runs": runs, "summary": summarise(runs),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
