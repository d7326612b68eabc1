"""One training step of the built-in Gemma 3 270M: full 262k vocabulary vs trimmed vocabulary.

    python bench/trim_speed.py                          # full and trimmed, batch 8 x 160, fp32, 2 threads
    python bench/trim_speed.py --variants trimmed,trimmed-lora --steps 3

A step is forward + backward + AdamW step (lr 1e-5) on all parameters, or on a LoRA adapter
(r=16, attention and MLP projections) for the ``-lora`` variants. Each variant runs in its own
subprocess, so the peak resident memory it reports (``ru_maxrss``) is its own. The batch is
``--batch`` rows of ``--length`` tokens cut from multilingual product text (9 languages); the
trimmed variants keep the ids of that text plus the default margin of :func:`bcat.model.trim.kept_token_ids`.
The first step is a warm-up and is not timed.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

PASSAGES = [
    "The X200 vacuum cleaner has a warranty of 24 months and a battery that lasts 45 minutes. It weighs 2.6 kg.",
    "L'aspirateur X200 est garanti 24 mois et sa batterie dure 45 minutes. Il pèse 2,6 kg.",
    "Der Staubsauger X200 hat 24 Monate Garantie, und der Akku hält 45 Minuten. Er wiegt 2,6 kg.",
    "La aspiradora X200 tiene una garantía de 24 meses y una batería que dura 45 minutos. Pesa 2,6 kg.",
    "X200 वैक्यूम क्लीनर पर 24 महीने की वारंटी है और इसकी बैटरी 45 मिनट चलती है। इसका वज़न 2.6 किलो है।",
    "掃除機X200の保証期間は24か月で、バッテリーは45分持続します。重さは2.6kgです。",
    "X200吸尘器保修期为24个月，电池续航45分钟。重量为2.6公斤。",
    "เครื่องดูดฝุ่น X200 รับประกัน 24 เดือน แบตเตอรี่ใช้งานได้ 45 นาที น้ำหนัก 2.6 กิโลกรัม",
    "Máy hút bụi X200 được bảo hành 24 tháng và pin dùng được 45 phút. Máy nặng 2,6 kg.",
]
QUESTION = {"en": "Question: How long is the warranty? Answer:", "fr": "Question : Quelle est la durée de la garantie ? Réponse :"}


def build_batch(tokenizer, batch: int, length: int):
    """``batch`` rows of exactly ``length`` token ids, each starting at a different passage."""
    import torch

    text = " ".join(PASSAGES + list(QUESTION.values()))
    stream = tokenizer(text, add_special_tokens=False)["input_ids"]
    rows = []
    for r in range(batch):
        start = (r * len(stream)) // batch
        ids = (stream[start:] + stream) * (length // len(stream) + 2)
        rows.append([tokenizer.bos_token_id] + ids[: length - 1])
    return torch.tensor(rows), text


def run_variant(variant: str, batch: int, length: int, steps: int, threads: int) -> dict:
    """Load the model, optionally trim and add LoRA, time ``steps`` training steps after one warm-up."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bcat.model.builtin import resolve
    from bcat.model.trim import kept_token_ids, trim_model

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    path = resolve("builtin:gemma3-270m")
    start = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path)
    load_s = time.perf_counter() - start
    input_ids, text = build_batch(tokenizer, batch, length)
    kept = None
    if variant.startswith("trimmed"):
        vocab = trim_model(model, kept_token_ids(tokenizer, [text]))
        input_ids, kept = vocab.encode_ids(input_ids), len(vocab)
    if variant.endswith("-lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=[
            "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5)
    times = []
    for step in range(steps + 1):
        start = time.perf_counter()
        loss = model(input_ids=input_ids, labels=input_ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step > 0:  # step 0 warms up allocators and kernels
            times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    return {
        "variant": variant, "kept_ids": kept, "vocab": model.config.vocab_size if kept is None else kept,
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "trainable_m": round(sum(p.numel() for p in params) / 1e6, 1),
        "load_s": round(load_s, 1), "step_s": round(step_s, 2), "steps_s": [round(t, 2) for t in times],
        "tokens_per_s": round(batch * length / step_s, 1), "loss": round(loss.item(), 3),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", default="full,trimmed",
                        help="comma-separated: full, trimmed, full-lora, trimmed-lora (default: full,trimmed)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step (median reported)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args(argv)

    if args.child:
        print(json.dumps(run_variant(args.child, args.batch, args.length, args.steps, args.threads)))
        return
    results = []
    for variant in args.variants.split(","):
        cmd = [sys.executable, __file__, "--child", variant, "--batch", str(args.batch), "--length", str(args.length),
               "--steps", str(args.steps), "--threads", str(args.threads)]
        out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{r['variant']:>13}: vocab {r['vocab']:>6}  params {r['params_m']:6.1f}M (trainable {r['trainable_m']}M)  "
              f"{r['step_s']:6.2f} s/step  {r['tokens_per_s']:6.1f} tokens/s  peak {r['peak_rss_gb']:.2f} GB  "
              f"(load {r['load_s']} s)", flush=True)
    by_name = {r["variant"]: r for r in results}
    for base, fast in (("full", "trimmed"), ("full-lora", "trimmed-lora")):
        if base in by_name and fast in by_name:
            print(f"{fast} is {by_name[base]['step_s'] / by_name[fast]['step_s']:.2f}x faster per step than {base}, "
                  f"peak memory {by_name[fast]['peak_rss_gb'] / by_name[base]['peak_rss_gb']:.2f}x")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(results, handle, indent=2)


if __name__ == "__main__":
    main()
