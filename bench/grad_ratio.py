"""How hard do the alignment terms push, relative to the main loss? The gradient-norm ratios that
chose the default weights.

    python bench/grad_ratio.py                                   # unit weights, every configuration, 3 steps each
    python bench/grad_ratio.py --configs orpo-g1 --hidden-weight 0.05 --output-weight 0.5 --out X.json
    python bench/grad_ratio.py --table bench/results/grad-ratio-gemma3-270m-unit.json

Each configuration is one real ``bcat train`` run (its own process) on the built-in model with
``training.grad_ratio_steps=1``, so ``train_log.jsonl`` holds at every step

    grad_ratio_hidden = ||d(w_h * hidden)/dH|| / ||d main/dH||     (H: hidden states at the aligned layer)
    grad_ratio_output = ||d(w_o * output)/dl|| / ||d main/dl||     (l: per-token log-probs)

(:func:`bcat.training.objectives.gradient_ratios`). At a given model state the ratios are
proportional to the weights, so a run at weight 1 gives the UNIT ratio ``r``, and weight ``w``
gives ``w * r`` at that state. The script reports the per-step ratios, their median over the
steps, and the unit ratios (ratio / weight); ``probe_seconds`` is the probe's mean time per step.

Configurations (``CONFIGS``) share the demo's settings (pairs from the bundled train split, seen
languages, prompts up to 384 tokens, one group of English + 3 languages per micro-batch, LoRA r=16,
lr 3e-4 constant, fp32, 2 threads) and differ in objective and hidden loss.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BASE = [
    "batch.mode=grouped",
    "batch.languages_per_group=3",
    "data.max_length=384",
    "data.languages=[en,de,es,fr,hi,ja,zh]",
    "training.learning_rate=3e-4",
    "training.lr_scheduler=constant",
    "training.threads=2",
    "training.grad_ratio_steps=1",
    "training.save_steps=0",
]
CONFIGS = {
    "orpo-g1": ["objective.name=orpo", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine"],
    "orpo-g2-infonce": ["objective.name=orpo", "batch.groups_per_batch=2", "alignment.hidden_loss=infonce"],
    "dpo-g1": ["objective.name=dpo", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine",
               "objective.precompute_reference=false"],
}


def run_config(name: str, args, pairs: Path, work: Path, env: dict) -> dict:
    out = work / f"run-{name}"
    overrides = [f"model.path={args.model}", f"data.train={pairs}", f"training.max_steps={args.steps}",
                 f"training.output_dir={out}", *BASE, *CONFIGS[name], f"alignment.hidden_weight={args.hidden_weight}",
                 f"alignment.output_weight={args.output_weight}", *args.extra]
    if not (args.reuse and (out / "training_summary.json").exists()):
        cmd = [sys.executable, "-m", "bcat.cli", "train", *overrides]
        print(f"{name}: bcat train {' '.join(overrides)}", flush=True)
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(done.returncode)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    summary = json.loads((out / "training_summary.json").read_text())
    steps = [{k: e.get(k) for k in ("step", "main", "hidden", "output", "loss", "grad_norm", "grad_ratio_hidden",
                                    "grad_ratio_output")} for e in log]
    result = {"overrides": overrides, "steps": steps, "forward_path": summary["forward_path"],
              "probe_seconds": summary["grad_ratio_probes"]["seconds"] / max(summary["grad_ratio_probes"]["count"], 1),
              "wall_time_s": summary["wall_time_s"]}
    for term, weight in (("hidden", args.hidden_weight), ("output", args.output_weight)):
        values = [s[f"grad_ratio_{term}"] for s in steps if s.get(f"grad_ratio_{term}") is not None]
        if values and weight > 0:
            result[f"median_ratio_{term}"] = statistics.median(values)
            result[f"median_unit_ratio_{term}"] = statistics.median(values) / weight
    return result


def table(result: dict) -> str:
    lines = [f"{result['model']}, weights hidden {result['hidden_weight']} output {result['output_weight']}, "
             f"{result['steps']} steps; {result['machine']}",
             "| config | step | main | hidden | output | ratio hidden | ratio output |", "|---|---:|---:|---:|---:|---:|---:|"]
    fmt = lambda v: "" if v is None else f"{v:.4g}"  # noqa: E731
    for name, r in result["configs"].items():
        for s in r["steps"]:
            lines.append(f"| {name} | {s['step']} | {fmt(s['main'])} | {fmt(s.get('hidden'))} | {fmt(s.get('output'))} | "
                         f"{fmt(s.get('grad_ratio_hidden'))} | {fmt(s.get('grad_ratio_output'))} |")
        lines.append(f"| {name} | median unit ratio (per unit weight) | | | | "
                     f"{fmt(r.get('median_unit_ratio_hidden'))} | {fmt(r.get('median_unit_ratio_output'))} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="builtin:gemma3-270m")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--hidden-weight", type=float, default=1.0)
    p.add_argument("--output-weight", type=float, default=1.0)
    p.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    p.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "grad-ratio-gemma3-270m-unit.json")
    p.add_argument("--workdir", type=Path, default=None)
    p.add_argument("--reuse", action="store_true", help="keep finished runs in --workdir")
    p.add_argument("--table", type=Path, help="print a saved result and exit")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(args.table.read_text())))
        return 0
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bcat-grad-ratio-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "2"}
    pairs = work / "train_pairs.jsonl"
    if not pairs.exists():
        subprocess.run([sys.executable, "-m", "bcat.cli", "data", "pairs", "--input",
                        str(REPO / "bcat" / "resources" / "kb" / "train.jsonl"), "--output", str(pairs)],
                       check=True, env=env, capture_output=True)
    load_before = os.getloadavg()[0]
    configs = {name: run_config(name, args, pairs, work, env) for name in args.configs.split(",")}
    result = {"model": args.model, "steps": args.steps, "hidden_weight": args.hidden_weight,
              "output_weight": args.output_weight, "base": BASE, "extra": args.extra,
              "command": " ".join(["python", "bench/grad_ratio.py", *sys.argv[1:]]),
              "data_command": "bcat data pairs --input bcat/resources/kb/train.jsonl --output train_pairs.jsonl",
              "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.platform()}",
              "load_average_before_after": [load_before, os.getloadavg()[0]],
              "shared_machine_note": "other jobs shared the machine: times are not speeds; ratios do not depend on them",
              "date": time.strftime("%Y-%m-%d %H:%M"), "configs": configs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(table(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
