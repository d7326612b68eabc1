"""Evaluation throughput: bcat's generator against the previous one (``model.generate`` on fixed batches).

Usage::

    python bench/eval_speed.py                                   # 44 items, 5 rounds + 1 warm-up, built-in model
    python bench/eval_speed.py --items 88 --rounds 7 --out bench/results/eval-speed-gemma3-270m.json
    python bench/eval_speed.py --compare OLD/predictions.jsonl NEW/predictions.jsonl   # two bcat eval runs

Both generators run in this one process on the SAME loaded model (``bcat.model.loading.load_for_eval``:
fp32, eval mode), the SAME prompts (``bcat eval``'s RAG prompts of the bundled test split, no shots,
plain format) and the same ``max_new_tokens`` (32), following ``bench/protocol.py``: rounds in
alternating order (old new, new old, ...), the speed-up ``old seconds / new seconds`` per round, its
median and bootstrap 95% CI, the machine's load and matmul rate before and after.

- ``old``: :func:`bcat.evaluation.generation.reference_generate`, the previous implementation:
  prompts sorted by length, fixed batches of ``--old-batch`` (12, the study's setting), each batch
  ``model.generate`` until its slowest row stops.
- ``new``: :func:`bcat.evaluation.generation.greedy_generate` with ``--new-batch`` rows decoding
  together (continuous batching, prefill without the output layer).

Items: ``--items`` of the 1760, spread evenly over the prompt lengths (every k-th in length order,
shortest and longest included), so the time per item approximates the full split's. Every round
checks that each generator gives the same outputs as in its first round (determinism); the result
records every item on which old and new differ (there should be none, or near-ties only).

The 12-minute target is about the whole ``bcat eval`` (model load, generation, scoring): time it
directly and compare its predictions with a run of the previous code::

    /usr/bin/time -v bcat eval --model builtin:gemma3-270m --data builtin --output OUT_NEW --batch-size 32
    python bench/eval_speed.py --compare OUT_OLD/predictions.jsonl OUT_NEW/predictions.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import protocol  # noqa: E402


def spread(lengths: list[int], n: int) -> list[int]:
    """Indices of ``n`` items evenly spaced in length order (shortest and longest included)."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    if n >= len(order):
        return order
    step = (len(order) - 1) / (n - 1) if n > 1 else 0
    return sorted({order[round(k * step)] for k in range(n)})


def compare_predictions(a: Path, b: Path) -> dict:
    """Items (by group, lang) whose raw output differs between two ``predictions.jsonl`` files."""
    def load(p):
        return {(r["group"], r["lang"]): r for r in map(json.loads, p.read_text(encoding="utf-8").splitlines())}

    ra, rb = load(a), load(b)
    if set(ra) != set(rb):
        raise SystemExit(f"{a} and {b} hold different items ({len(ra)} vs {len(rb)})")
    diff = [{"group": k[0], "lang": k[1], "a": ra[k]["raw_output"], "b": rb[k]["raw_output"],
             "correct_a": ra[k].get("correct"), "correct_b": rb[k].get("correct")}
            for k in sorted(ra) if ra[k]["raw_output"] != rb[k]["raw_output"]]
    return {"a": str(a), "b": str(b), "items": len(ra), "identical": len(ra) - len(diff),
            "different_raw_output": len(diff),
            "different_prediction": sum(ra[k]["prediction"] != rb[k]["prediction"] for k in ra),
            "different_correct": sum(ra[k].get("correct") != rb[k].get("correct") for k in ra), "differences": diff}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:gemma3-270m")
    ap.add_argument("--items", type=int, default=44, help="items of the bundled test split, spread over lengths")
    ap.add_argument("--rounds", type=int, default=protocol.MIN_ROUNDS)
    ap.add_argument("--warmup", type=int, default=1, help="warm-up rounds (run, not kept)")
    ap.add_argument("--old-batch", type=int, default=12)
    ap.add_argument("--new-batch", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/eval-speed-<model>.json)")
    ap.add_argument("--note", default="", help="free text stored with the results (e.g. 'shared machine')")
    ap.add_argument("--compare", nargs=2, metavar=("OLD", "NEW"), help="compare two predictions.jsonl and exit")
    args = ap.parse_args(argv)
    if args.compare:
        doc = compare_predictions(Path(args.compare[0]), Path(args.compare[1]))
        print(json.dumps({k: v for k, v in doc.items() if k != "differences"}, indent=1))
        for d in doc["differences"][:20]:
            print(json.dumps(d, ensure_ascii=False))
        return 0

    import torch

    from bcat.data.rag import build_prompts, load_items
    from bcat.evaluation.evaluate import resolve_data
    from bcat.evaluation.generation import greedy_generate, reference_generate
    from bcat.model.loading import load_for_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    before = protocol.machine_state(args.threads)
    print(f"eval_speed: {protocol.state_line(before, before)}", flush=True)
    t = time.perf_counter()
    model, tok = load_for_eval(args.model)
    load_s = time.perf_counter() - t
    items = load_items(resolve_data("builtin"))
    prompts = build_prompts(items, tok)
    lengths = [len(tok(p)["input_ids"]) for p in prompts]
    chosen = spread(lengths, args.items)
    sub = [prompts[i] for i in chosen]
    sub_len = [lengths[i] for i in chosen]

    runs = {
        "old": lambda: reference_generate(model, tok, sub, batch_size=args.old_batch,
                                          max_new_tokens=args.max_new_tokens, desc="old"),
        "new": lambda: greedy_generate(model, tok, sub, batch_size=args.new_batch,
                                       max_new_tokens=args.max_new_tokens, desc="new"),
    }
    outputs: dict = {}
    deterministic = {"old": True, "new": True}

    def measure(name: str) -> float:
        t0 = time.perf_counter()
        out = runs[name]()
        seconds = time.perf_counter() - t0
        if name in outputs and outputs[name] != out:
            deterministic[name] = False
        outputs.setdefault(name, out)
        return seconds

    rounds = protocol.run_rounds(measure, ["old", "new"], args.rounds, warmup=args.warmup)
    after = protocol.machine_state(args.threads)
    with protocol.flop_counter() as counter:  # one more, untimed pass: the work the new generator executes
        runs["new"]()
    gflop = counter.get_total_flops() / 1e9
    speedup = protocol.ratio_stats([r["old"] for r in rounds], [r["new"] for r in rounds])
    diffs = [{"item": items[chosen[k]].group + "/" + items[chosen[k]].lang, "prompt_tokens": sub_len[k],
              "old": outputs["old"][k], "new": outputs["new"][k]}
             for k in range(len(sub)) if outputs["old"][k] != outputs["new"][k]]
    new_s = statistics.median(r["new"] for r in rounds)
    old_s = statistics.median(r["old"] for r in rounds)
    matmul = max(before["matmul_gflops"], after["matmul_gflops"])
    # Prefill dominates the work, so the whole split's is the subset's scaled by prompt tokens.
    split_gflop = gflop * sum(lengths) / sum(sub_len)
    doc = {
        "meta": {"model": args.model, "items": len(sub), "of": len(prompts), "rounds": len(rounds),
                 "warmup_rounds": args.warmup, "old_batch": args.old_batch, "new_batch": args.new_batch,
                 "max_new_tokens": args.max_new_tokens, "model_load_s": round(load_s, 1),
                 "prompt_tokens": {"subset_mean": round(statistics.mean(sub_len), 1),
                                   "all_mean": round(statistics.mean(lengths), 1),
                                   "subset_min_max": [min(sub_len), max(sub_len)], "all_total": sum(lengths)},
                 "before": before, "after": after, "note": args.note, "torch": torch.__version__},
        "rounds": rounds,
        "speedup_old_over_new": speedup,
        "median_s": {"old": round(old_s, 2), "new": round(new_s, 2)},
        "median_s_per_item": {"old": round(old_s / len(sub), 3), "new": round(new_s / len(sub), 3)},
        "executed": {"new_gflop": round(gflop, 1), "matmul_gflops": matmul,
                     "new_gflops_per_s": protocol.ratio_stats([gflop] * len(rounds), [r["new"] for r in rounds]),
                     "new_mfu": protocol.ratio_stats([gflop / matmul] * len(rounds), [r["new"] for r in rounds]),
                     "full_split_gflop": round(split_gflop),
                     "full_split_compute_floor_s": round(split_gflop / matmul, 1),
                     "full_split_estimate_s": round(load_s + new_s / len(sub) * len(prompts), 1)},
        "deterministic": deterministic,
        "outputs_identical": not diffs, "different_items": diffs,
        "outputs": {"items": [items[i].group + "/" + items[i].lang for i in chosen], **outputs},
    }
    out = Path(args.out) if args.out else HERE / "results" / f"eval-speed-{args.model.replace(':', '-')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(markdown(doc))
    print(f"eval_speed: results in {out}")
    return 0


def markdown(doc: dict) -> str:
    m = doc["meta"]
    s = doc["speedup_old_over_new"]
    lines = [f"{m['items']} of {m['of']} items (prompt tokens mean {m['prompt_tokens']['subset_mean']}, all "
             f"{m['prompt_tokens']['all_mean']}), {m['rounds']} rounds (+{m['warmup_rounds']} warm-up), "
             f"old batch {m['old_batch']}, new batch {m['new_batch']}",
             protocol.state_line(m["before"], m["after"]), "",
             "| generator | median s | s/item | speed-up old/new, median [95% CI] | outputs |", "|---|---:|---:|---|---|",
             f"| old (`model.generate`, fixed batches) | {doc['median_s']['old']} | {doc['median_s_per_item']['old']} | | |",
             f"| new (continuous batching) | {doc['median_s']['new']} | {doc['median_s_per_item']['new']} | "
             f"{protocol.fmt(s)} | {'identical' if doc['outputs_identical'] else str(len(doc['different_items'])) + ' differ'} |"]
    e = doc.get("executed")
    if e:
        lines += ["", f"New generator: {e['new_gflop']} GFLOP executed on these items, "
                      f"{protocol.fmt(e['new_gflops_per_s'], 1)} GFLOP/s, MFU {protocol.fmt(e['new_mfu'])} of the "
                      f"{e['matmul_gflops']} GFLOP/s fp32 matmul rate. Whole split ({m['of']} items): about "
                      f"{e['full_split_gflop']} GFLOP, so at least {e['full_split_compute_floor_s'] / 60:.1f} min at that "
                      f"rate; at this subset's speed about {e['full_split_estimate_s'] / 60:.1f} min with the model load (an "
                      f"overestimate: a small subset rarely fills the batch)."]
    if m.get("note"):
        lines.append(f"\nNote: {m['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
