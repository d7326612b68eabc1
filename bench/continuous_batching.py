"""Can transformers' own continuous batching (``model.generate_batch``) replace bcat's generator?

Usage::

    python bench/continuous_batching.py --dry-run --items 4          # correctness only, built-in model
    python bench/continuous_batching.py --model DIR --prompts P.json --dry-run   # any model, own prompts
    python bench/continuous_batching.py --items 44 --rounds 5        # correctness, then paired timing

Two questions, in this order:

1. **Correctness.** The same greedy predictions as :func:`bcat.evaluation.generation.greedy_generate`
   on the same loaded model and prompts (``bcat eval``'s RAG prompts of the bundled test split, spread
   over their lengths as in ``eval_speed.py``, or a JSON list of strings with ``--prompts``).
2. **Speed** (not with ``--dry-run``): both generators timed on the same model and prompts following
   ``bench/protocol.py``: interleaved rounds in alternating order, the ratio
   ``transformers seconds / bcat seconds`` per round, its median and bootstrap 95% CI, the machine's
   state before and after. The question is whether the CI lies within 1.10 (at most 10% slower).

transformers' manager stops a request only at EOS or ``max_new_tokens``: it has no stop strings and
no stopping criteria, so it cannot stop at the end of the first line as bcat does. Its continuations
are therefore cut afterwards exactly where bcat's ``until`` test would have stopped
(:func:`cut_at_stop`), which makes the predictions comparable; the time it spends generating past
that point counts against it, as it would in ``bcat eval``.

On a CPU its defaults size the paged cache from the free memory of the machine (it allocated about
12 GB for a 0.2M-parameter model here and was killed): the cache is sized explicitly
(:func:`cb_config`). Findings and how to read the output: ``bench/README.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import protocol  # noqa: E402
from eval_speed import spread  # noqa: E402

NAMES = ("bcat", "transformers")


def cut_at_stop(tokens: Sequence[int], decode: Callable[[list[int]], str], eos: set[int], max_new_tokens: int,
                until: Callable[[str], bool]) -> str:
    """The text bcat's generator returns for these greedy tokens: up to and including the first token that is
    EOS, reaches ``max_new_tokens`` or makes ``until(text)`` hold (``_Generator._finished``).

    >>> words = {1: "a", 2: "b", 3: "\\n", 0: ""}
    >>> dec = lambda ids: "".join(words[i] for i in ids)
    >>> cut_at_stop([1, 3, 2, 2], dec, {0}, 8, lambda s: "\\n" in s)
    'a\\n'
    >>> cut_at_stop([1, 2, 0, 2], dec, {0}, 8, lambda s: False), cut_at_stop([1, 2, 2], dec, set(), 2, lambda s: False)
    ('ab', 'ab')
    """
    kept: list[int] = []
    for token in tokens:
        kept.append(token)
        if token in eos or len(kept) >= max_new_tokens or until(decode(kept)):
            break
    return decode(kept)


def cb_config(prompt_lengths: Sequence[int], max_new_tokens: int, batch_size: int, batch_tokens: int,
              page_size: int = 32):
    """A ``ContinuousBatchingConfig`` whose paged cache holds ``batch_size`` of the longest requests (plus one
    page each), instead of a share of the machine's free memory; no CUDA graphs, no flash switch.

    transformers 5.17 names the page size ``block_size`` and has no ``auto_switch_to_flash``: its manager moves
    the model to flash attention whenever flash-attn is installed, which would compare another attention kernel
    than bcat's, so that case stops here with a message."""
    import dataclasses

    from transformers import ContinuousBatchingConfig
    from transformers.utils import is_flash_attn_2_available, is_flash_attn_3_available

    fields = {f.name for f in dataclasses.fields(ContinuousBatchingConfig)}
    size = {"page_size" if "page_size" in fields else "block_size": page_size}
    if "auto_switch_to_flash" in fields:
        switch = {"auto_switch_to_flash": False}
    elif is_flash_attn_2_available(kernels_fallback_ok=True) or is_flash_attn_3_available(kernels_fallback_ok=True):
        raise SystemExit("continuous_batching: this transformers switches generate_batch to flash attention when "
                         "flash-attn is installed and cannot be told not to; run it where flash-attn is not installed")
    else:
        switch = {}
    pages = math.ceil((max(prompt_lengths) + max_new_tokens) / page_size) + 1
    return ContinuousBatchingConfig(**size, num_blocks=batch_size * pages, max_batch_tokens=batch_tokens,
                                    max_requests_per_batch=batch_size, use_cuda_graph=False, use_async_batching=False,
                                    allow_block_sharing=False, **switch)


def transformers_generate(model, tokenizer, prompts: Sequence[str], *, batch_size: int, max_new_tokens: int,
                          batch_tokens: int, until: Callable[[str], bool]) -> list[str]:
    """Greedy continuations by ``model.generate_batch``, cut where bcat's generator stops."""
    from bcat.evaluation.generation import _generation_config

    config = _generation_config(model, tokenizer, None, max_new_tokens)  # bcat's: the same EOS and processors
    ids = [list(x) for x in tokenizer(list(prompts))["input_ids"]]
    out = model.generate_batch(ids, generation_config=config, warmup=False,
                               continuous_batching_config=cb_config([len(x) for x in ids], max_new_tokens,
                                                                    batch_size, batch_tokens))
    if len(out) != len(prompts) or any(r.error for r in out.values()):
        raise RuntimeError(f"generate_batch returned {len(out)} of {len(prompts)} results "
                           f"({[r.error for r in out.values() if r.error][:1]})")
    eos = set(config.eos_token_id or [])

    def decode(tokens):
        return tokenizer.decode(tokens, skip_special_tokens=True)

    # generate_batch returns its results in the order of the inputs
    return [cut_at_stop(r.generated_tokens, decode, eos, max_new_tokens, until) for r in out.values()]


def load_prompts(args, tokenizer) -> tuple[list[str], list[str]]:
    """(prompts, their names): ``--prompts`` as given, or ``--items`` RAG prompts of the bundled test split."""
    if args.prompts:
        prompts = json.loads(Path(args.prompts).read_text(encoding="utf-8"))
        if not (isinstance(prompts, list) and prompts and all(isinstance(p, str) and p for p in prompts)):
            raise SystemExit(f"{args.prompts}: expected a JSON list of non-empty strings")
        return prompts, [f"prompt {i}" for i in range(len(prompts))]
    from bcat.data.rag import build_prompts, load_items
    from bcat.evaluation.evaluate import resolve_data

    items = load_items(resolve_data("builtin"))
    prompts = build_prompts(items, tokenizer)
    chosen = spread([len(tokenizer(p)["input_ids"]) for p in prompts], args.items)
    return [prompts[i] for i in chosen], [f"{items[i].group}/{items[i].lang}" for i in chosen]


def default_out(model: str, dry_run: bool) -> Path:
    """Where the results go without ``--out``; a dry run has its own name, so it never replaces a timed result."""
    return HERE / "results" / f"continuous-batching-{model.replace(':', '-')}{'-dry-run' if dry_run else ''}.json"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="builtin:gemma3-270m")
    ap.add_argument("--prompts", default=None, help="JSON list of prompt strings (default: the bundled test split)")
    ap.add_argument("--items", type=int, default=44, help="items of the bundled test split, spread over lengths")
    ap.add_argument("--dry-run", action="store_true", help="correctness only: compare predictions, time nothing")
    ap.add_argument("--rounds", type=int, default=protocol.MIN_ROUNDS)
    ap.add_argument("--warmup", type=int, default=1, help="warm-up rounds (run, not kept)")
    ap.add_argument("--batch-size", type=int, default=32, help="rows decoding together, in both generators")
    ap.add_argument("--batch-tokens", type=int, default=None,
                    help="transformers: most tokens per forward (default: bcat's prefill chunk)")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/continuous-batching-<model>.json, "
                                                      "-dry-run.json with --dry-run)")
    ap.add_argument("--note", default="", help="free text stored with the results")
    args = ap.parse_args(argv)

    import torch
    import transformers

    from bcat.evaluation.generation import PREFILL_TOKENS, ended_first_line, greedy_generate
    from bcat.model.loading import load_for_eval

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_for_eval(args.model)
    prompts, names = load_prompts(args, tok)
    batch_tokens = args.batch_tokens or PREFILL_TOKENS
    runs = {
        "bcat": lambda: greedy_generate(model, tok, prompts, batch_size=args.batch_size,
                                        max_new_tokens=args.max_new_tokens, desc="bcat"),
        "transformers": lambda: transformers_generate(model, tok, prompts, batch_size=args.batch_size,
                                                      max_new_tokens=args.max_new_tokens, batch_tokens=batch_tokens,
                                                      until=ended_first_line),
    }
    outputs = {name: runs[name]() for name in NAMES}
    diffs = [{"item": names[k], "bcat": outputs["bcat"][k], "transformers": outputs["transformers"][k]}
             for k in range(len(prompts)) if outputs["bcat"][k] != outputs["transformers"][k]]
    doc: dict = {
        "meta": {"model": args.model, "items": len(prompts), "batch_size": args.batch_size,
                 "batch_tokens": batch_tokens, "max_new_tokens": args.max_new_tokens, "dry_run": args.dry_run,
                 "attn_implementation": model.config._attn_implementation, "device": str(model.device),
                 "torch": torch.__version__, "transformers": transformers.__version__, "note": args.note},
        "identical": not diffs, "different_items": diffs,
        "outputs": {"items": names, **outputs},
    }
    if not args.dry_run:
        before = protocol.machine_state(args.threads)
        deterministic = {name: True for name in NAMES}

        def measure(name: str) -> float:
            t0 = time.perf_counter()
            out = runs[name]()
            seconds = time.perf_counter() - t0
            deterministic[name] = deterministic[name] and out == outputs[name]
            return seconds

        rounds = protocol.run_rounds(measure, list(NAMES), args.rounds, warmup=args.warmup)
        slowdown = protocol.ratio_stats([r["transformers"] for r in rounds], [r["bcat"] for r in rounds])
        doc.update({"machine": {"before": before, "after": protocol.machine_state(args.threads)}, "rounds": rounds,
                    "slowdown_transformers_over_bcat": slowdown,
                    "within_10_percent": protocol.verdict(slowdown, 1.10, at_least=False),
                    "median_s": {n: round(statistics.median(r[n] for r in rounds), 2) for n in NAMES},
                    "deterministic": deterministic})
    out = Path(args.out) if args.out else default_out(args.model, args.dry_run)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"continuous_batching: {len(prompts) - len(diffs)} of {len(prompts)} predictions identical"
          + ("" if args.dry_run else f"; transformers / bcat time {protocol.fmt(doc['slowdown_transformers_over_bcat'])}"
             f" ({protocol.verdict_word(doc['within_10_percent'])} within 10%)"))
    print(f"continuous_batching: results in {out}")
    return 0 if not diffs else 1


if __name__ == "__main__":
    raise SystemExit(main())
