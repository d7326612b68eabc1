"""Where ``bcat eval``'s generation time goes: ``torch.profiler`` over the generator, split by phase.

Usage::

    python bench/eval_profile.py --items 256 --out bench/results/eval-profile-gemma3-270m.json

Runs :func:`bcat.evaluation.generation.greedy_generate` once (after a short warm-up) on ``--items``
of ``bcat eval``'s RAG prompts of the bundled test split, drawn at random (seeded) so that prompt
lengths AND the number of rows decoding together are as in the full split (a length-spread subset
of a few dozen items, as in ``eval_speed.py``, decodes with far fewer rows than the full split),
under ``torch.profiler``. Each op is attributed to the phase that ran it (``prefill``: the
generator's ``_prefill``, the prompts' forward without the output layer; ``decode``: ``_step``, one
token per running row with the output layer), by wrapping those two methods in
``record_function`` labels. Reported per phase: self CPU seconds of each op kind, and for the
matrix multiplications their FLOPs (``2 M K N`` from the recorded shapes) and rate, with the
output layer (the 262k-row head) apart; the fp32 matmul rate of the machine before and after
(``protocol.matmul_gflops``) for reference. One profiled run, no CI: a breakdown, not a speed claim
(the profiler adds a few percent; ``wall_s`` is the profiled run's).

Also reported, over the whole split: the mean prompt length and the mean length of the token prefix
that every prompt of the same language shares (the instruction), i.e. the prefill work that a
prefix cache could skip.
"""

from __future__ import annotations

import argparse
import bisect
import json
import random
import sys
import time
from collections import defaultdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import protocol  # noqa: E402


def _phase_lookup(events, labels):
    """``start_us -> phase`` from the label events' time ranges (phases never overlap)."""
    spans = sorted((e.time_range.start, e.time_range.end, e.name) for e in events if e.name in labels)
    starts = [s for s, _, _ in spans]

    def phase(t: float) -> str:
        i = bisect.bisect_right(starts, t) - 1
        return labels[spans[i][2]] if i >= 0 and t <= spans[i][1] else "other"
    return phase


def breakdown(events, head_rows: int) -> dict:
    """Self seconds per (phase, op) and the matmuls' FLOPs per (phase, role)."""
    labels = {"bcat.prefill": "prefill", "bcat.decode": "decode"}
    phase_of = _phase_lookup(events, labels)
    ops: dict = defaultdict(float)
    mm: dict = defaultdict(lambda: {"calls": 0, "s": 0.0, "gflop": 0.0})
    for e in events:
        if e.name in labels or not e.name.startswith("aten::"):
            continue
        phase = phase_of(e.time_range.start)
        s = e.self_cpu_time_total / 1e6
        ops[(phase, e.name)] += s
        if e.name == "aten::mm" and len(e.input_shapes) >= 2 and len(e.input_shapes[0]) == 2:
            (m, k), n = e.input_shapes[0], e.input_shapes[1][1]
            role = "output head" if n >= head_rows else "transformer"
            row = mm[(phase, role)]
            row["calls"] += 1
            row["s"] += s
            row["gflop"] += 2 * m * k * n / 1e9
    return {"ops": ops, "mm": mm}


def shared_prefix(ids: list[list[int]]) -> int:
    """Length of the token prefix common to all of ``ids``.

    >>> shared_prefix([[1, 2, 3], [1, 2, 4], [1, 2]])
    2
    """
    first = ids[0]
    n = min(len(i) for i in ids)
    for other in ids[1:]:
        n = next((j for j in range(n) if other[j] != first[j]), n)
    return n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:gemma3-270m")
    ap.add_argument("--items", type=int, default=256, help="random items of the bundled test split (seeded)")
    ap.add_argument("--batch-size", type=int, default=32, help="bcat eval's default")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)

    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    from bcat.data.rag import build_prompts, load_items
    from bcat.evaluation import generation
    from bcat.evaluation.evaluate import resolve_data
    from bcat.model.loading import load_for_eval

    before = protocol.machine_state()
    model, tok = load_for_eval(args.model)
    items = load_items(resolve_data("builtin"))
    prompts = build_prompts(items, tok)
    ids = [tok(p)["input_ids"] for p in prompts]
    by_lang: dict = defaultdict(list)
    for item, i in zip(items, ids):
        by_lang[item.lang].append(i)
    prefix = {lang: shared_prefix(v) for lang, v in by_lang.items()}
    prompt_tokens = sum(map(len, ids)) / len(ids)
    prefix_tokens = sum(prefix[item.lang] for item in items) / len(items)
    sub = random.Random(args.seed).sample(prompts, min(args.items, len(prompts)))
    for name, label in (("_prefill", "bcat.prefill"), ("_step", "bcat.decode")):
        method = getattr(generation._Generator, name)

        def wrapped(self, *a, _method=method, _label=label, **k):
            with record_function(_label):
                return _method(self, *a, **k)
        setattr(generation._Generator, name, wrapped)

    def run():
        return generation.greedy_generate(model, tok, sub, batch_size=args.batch_size,
                                          max_new_tokens=args.max_new_tokens)

    generation.greedy_generate(model, tok, sub[:8], batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        t0 = time.perf_counter()
        run()
        wall = time.perf_counter() - t0
    after = protocol.machine_state()

    vocab = model.get_output_embeddings().weight.shape[0]
    b = breakdown(prof.events(), head_rows=vocab)
    phases = defaultdict(float)
    for (phase, _), s in b["ops"].items():
        phases[phase] += s
    top = sorted(b["ops"].items(), key=lambda kv: -kv[1])[:20]
    result = {
        "what": __doc__.split("\n")[0],
        "argv": sys.argv[1:] if argv is None else list(argv),
        "model": args.model, "items": len(sub), "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens, "wall_s": round(wall, 2),
        "split": {"items": len(prompts), "mean_prompt_tokens": round(prompt_tokens, 1),
                  "mean_shared_prefix_tokens": round(prefix_tokens, 1), "shared_prefix_by_lang": prefix},
        "per_item_s": round(wall / len(sub), 4),
        "aten_self_s_by_phase": {p: round(s, 2) for p, s in sorted(phases.items())},
        "matmuls": [{"phase": p, "role": r, "calls": v["calls"], "s": round(v["s"], 2),
                     "share_of_wall": round(v["s"] / wall, 3), "gflop": round(v["gflop"], 1),
                     "gflop_per_s": round(v["gflop"] / v["s"], 1) if v["s"] else None}
                    for (p, r), v in sorted(b["mm"].items(), key=lambda kv: -kv[1]["s"])],
        "top_ops": [{"phase": p, "op": op, "s": round(s, 2), "share_of_wall": round(s / wall, 3)} for (p, op), s in top],
        "machine_before": before, "machine_after": after,
        "torch": torch.__version__,
    }
    print(f"{len(sub)} items, batch {args.batch_size}: {wall:.1f} s profiled ({wall / len(sub):.3f} s/item); "
          f"{protocol.state_line(before, after)}")
    print(f"  split: {len(prompts)} prompts of {prompt_tokens:.1f} tokens on average, of which "
          f"{prefix_tokens:.1f} are shared by every prompt of the same language")
    for m in result["matmuls"]:
        print(f"  mm {m['phase']:8s} {m['role']:12s} {m['s']:7.2f} s ({m['share_of_wall']:.0%})  "
              f"{m['gflop']:8.1f} GFLOP  {m['gflop_per_s']} GFLOP/s")
    for o in result["top_ops"]:
        print(f"  {o['phase']:8s} {o['op']:45s} {o['s']:7.2f} s ({o['share_of_wall']:.1%})")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
