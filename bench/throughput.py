"""Preference-training throughput: bcat DPO / ORPO against TRL's DPOTrainer and ORPOTrainer.

Usage::

    python bench/throughput.py --quick                         # tiny random Llama, < 5 min on 2 cores
    python bench/throughput.py                                 # more steps, bigger micro-batch
    python bench/throughput.py --model builtin:gemma3-270m --steps 6 --shapes rag
    python bench/throughput.py --table bench/results/quick-tiny-llama.json   # print a saved result

Every configuration sees the SAME model, the SAME synthetic data, the SAME micro-batch size (pairs
per optimizer step) and the SAME number of steps, and runs in its OWN subprocess (so peak RSS is
its own), one after the other in one process tree, each with 2 torch threads (``OMP_NUM_THREADS``
and ``torch.set_num_threads``). LoRA r=16 (alpha 32, attention + MLP projections) on both sides,
fp32, no gradient checkpointing, no dropout, learning rate 2e-4 constant, gradient clipping 1.0.

Configurations
--------------
- ``bcat-dpo``: ``bcat train`` (the real loop, ``bcat.training.loop.train``) with DPO, the group sampler,
  hidden (InfoNCE, middle layer, w=0.3) + output (w=0.1) alignment on, bcat's defaults otherwise:
  reference log-probs precomputed (and cached; the cache starts empty in every run), prompt-shared
  packed forward, selective output head.
- ``bcat-dpo-noalign``: the same with both alignment weights 0 (the cost of alignment).
- ``bcat-dpo-unpacked``: alignment on, ``training.packed_preference=false`` (what packing brings).
- ``bcat-orpo``, ``bcat-orpo-noalign``: the same for ORPO (bcat's default completion-only NLL).
- ``trl-dpo``: ``trl.DPOTrainer``, its standard settings: live reference (LoRA: adapter disabled),
  sigmoid loss, beta 0.1. Changed from TRL's defaults because of this machine or to match bcat:
  ``bf16=False`` (bf16 matmuls run at ~0.3 GFLOP/s on this CPU) and ``gradient_checkpointing=False``
  (bcat does not checkpoint either; checkpointing would only make TRL slower).
- ``trl-dpo-precomputed``: the same with ``precompute_ref_log_probs=True``.
- ``trl-orpo``: ``trl.experimental.orpo.ORPOTrainer`` (lambda 0.1; TRL's NLL over prompt + completion).

What is measured
----------------
- **seconds per step**: the time between consecutive optimizer steps (a global
  ``torch.optim`` step hook, identical for both sides), median over the steps after ``--warmup``.
  One-time work (tokenization, reference precompute, model loading) is outside the steps and
  reported separately as ``setup_s``.
- **tokens per second** (the ratio uses this): the UNPACKED non-pad token count of the data the
  policy processed in the measured steps, i.e. per pair ``len(prompt + chosen) + len(prompt + rejected)``
  (as in TRL's concatenated ``[chosen; rejected]`` rows), divided by their wall time. Both sides
  are counted the same way, so the ratio is wall time per unit of data. ``computed_tokens_per_s``
  is what the policy forward actually ran (for packed bcat ``prompt + chosen + rejected`` per pair,
  the prompt once), for information only. Reference forwards are not counted on either side.
- **peak RSS**: ``ru_maxrss`` of the configuration's own subprocess at the end.
- **MFU**: model FLOP/s over the fp32 matmul rate measured by this script in the same run on the
  same machine (``torch.matmul`` of two 2048x2048 fp32 matrices, 2 threads, median of 10, measured
  before and after the configurations; the higher of the two is used).
  Model FLOP/s = ``6 x N x tokens/s``, ``N`` = parameters of the transformer blocks and the output
  head (the input embedding is a lookup and is left out), the usual 2 FLOPs per parameter per
  token forward and 4 backward. ``MFU (unpacked)`` uses the unpacked tokens: USEFUL work on the
  data, comparable across configurations, and above 100% when packing skips the repeated prompt.
  ``MFU (computed)`` uses the tokens the policy forward really ran: closer to a hardware figure.
  Neither counts attention-score FLOPs or the live reference forward of TRL DPO, and both count
  full ``6N`` although LoRA skips the frozen weights' gradients and bcat's head runs only at the
  scored positions.

Data (synthetic, deterministic, generated here): parallel groups in 4 pseudo-languages (the same
item rendered with 4 different lexicons, numbers shared). ``rag``: 3 passages and a question,
prompts about 150-250 tokens, answers 5-20 tokens. ``chat``: prompts about 50 tokens, answers
about 150 tokens. The actual token statistics are in the results.

Models: ``tiny`` = a random Llama of about 20M parameters (hidden 384, 8 layers, vocab 8192 BPE
trained on the synthetic text) built here; ``builtin:gemma3-270m`` = the built-in Gemma 3 270M
(``bcat.model.builtin``) with its vocabulary trimmed to the ids the data uses (``bcat.model.trim``), the
same trimmed model and the same remapped token ids for every configuration: the benchmark trims
once, the same way for TRL and bcat (bcat's own ``model.trim_vocab`` is turned off and its loader
patched to return the benchmark's trimmed model).

Targets (the script prints the measured truth whether or not they are met):

- bcat DPO (alignment on) >= 2.0x TRL DPOTrainer tokens/s on RAG-shaped data;
- bcat DPO (alignment on) >= 1.3x TRL DPOTrainer with ``precompute_ref_log_probs=True``;
- bcat ORPO (alignment on) >= 1.5x TRL ORPOTrainer;
- bcat peak memory <= TRL's (each bcat configuration against its TRL counterpart);
- alignment terms cost <= 5% of step time (bcat with alignment on vs off).

Timings on a shared machine are noisy: run on a quiet one for numbers to publish.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
THREADS = 2
LANGS = ("en", "fr", "de", "es")  # pseudo-languages (own lexicons), labelled with real codes

BCAT_CONFIGS = {
    "bcat-dpo": dict(objective="dpo", align=True),
    "bcat-dpo-noalign": dict(objective="dpo", align=False),
    "bcat-dpo-unpacked": dict(objective="dpo", align=True, packed=False),
    "bcat-orpo": dict(objective="orpo", align=True),
    "bcat-orpo-noalign": dict(objective="orpo", align=False),
}
TRL_CONFIGS = {
    "trl-dpo": dict(objective="dpo", precompute=False),
    "trl-dpo-precomputed": dict(objective="dpo", precompute=True),
    "trl-orpo": dict(objective="orpo"),
}
QUICK_CONFIGS = ["bcat-dpo", "bcat-dpo-noalign", "bcat-dpo-unpacked", "bcat-orpo", "bcat-orpo-noalign", "trl-dpo",
                 "trl-dpo-precomputed", "trl-orpo"]
ALL_CONFIGS = list(BCAT_CONFIGS) + list(TRL_CONFIGS)

TARGETS = [
    # (name, numerator config, denominator config, minimum ratio of unpacked tokens/s)
    ("bcat DPO vs TRL DPO (live reference)", "bcat-dpo", "trl-dpo", 2.0),
    ("bcat DPO vs TRL DPO (precomputed reference)", "bcat-dpo", "trl-dpo-precomputed", 1.3),
    ("bcat ORPO vs TRL ORPO", "bcat-orpo", "trl-orpo", 1.5),
]
ALIGNMENT_COST_TARGET = 0.05


# =============================================================================================== data

def _lexicon(lang: str, size: int) -> list[str]:
    """A pseudo-language: ``size`` distinct words built from syllables, fixed by the language name."""
    rng = random.Random(f"lexicon-{lang}")
    onsets = {"en": "bcdfghlmnprstvw", "fr": "kmnprstvz", "de": "bdglmnrsy", "es": "fhjklnqtx"}[lang]
    vowels = {"en": "aeiou", "fr": "aiu", "de": "aeo", "es": "eiouy"}[lang]
    words: list[str] = []
    seen = set()
    while len(words) < size:
        w = "".join(rng.choice(onsets) + rng.choice(vowels) for _ in range(rng.randint(1, 3)))
        if w not in seen:
            seen.add(w)
            words.append(w)
    return words


def synthetic_records(shape: str, n_groups: int, seed: int = 0) -> list[dict]:
    """Parallel preference records: every group is one item rendered in each of ``LANGS``."""
    concepts = 1500
    lex = {lang: _lexicon(lang, concepts) for lang in LANGS}
    frame = {
        "en": ("Passage", "Question", "Answer", "The value is"),
        "fr": ("Passage", "Question", "Réponse", "La valeur est"),
        "de": ("Abschnitt", "Frage", "Antwort", "Der Wert ist"),
        "es": ("Pasaje", "Pregunta", "Respuesta", "El valor es"),
    }
    rng = random.Random(seed)
    records = []
    for g in range(n_groups):
        def sentence(lo, hi):
            return [rng.randrange(concepts) for _ in range(rng.randint(lo, hi))]

        value, wrong = rng.randint(2, 99), rng.randint(100, 999)
        if shape == "rag":
            passages = [sentence(40, 60) for _ in range(3)]
            question = sentence(6, 10)
            chosen_words, rejected_words = sentence(1, 7), sentence(1, 7)
        elif shape == "chat":
            passages = []
            question = sentence(38, 46)
            chosen_words, rejected_words = sentence(120, 145), sentence(120, 145)
        else:
            raise ValueError(shape)
        for lang in LANGS:
            w = lex[lang]
            p_word, q_word, a_word, value_phrase = frame[lang]

            def render(ids):
                return " ".join(w[i] for i in ids)

            parts = [f"{p_word} {k + 1}: {render(p)} {value if k == 1 else wrong}." for k, p in enumerate(passages)]
            prompt = "\n".join(parts + [f"{q_word}: {render(question)}?", f"{a_word}:"])
            records.append({
                "group": f"g{g:04d}", "lang": lang, "prompt": prompt,
                "chosen": f" {value_phrase} {value}. {render(chosen_words)}",
                "rejected": f" {value_phrase} {wrong}. {render(rejected_words)}",
            })
    return records


def build_tokenizer(texts: list[str], vocab_size: int = 8192):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    tok.post_processor = TemplateProcessing(single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def build_tiny_llama(out: Path, texts: list[str]) -> Path:
    """A random ~20M-parameter Llama and a BPE tokenizer trained on the benchmark's own text."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(texts)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=384, intermediate_size=1024, num_hidden_layers=8,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=2048,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, tie_word_embeddings=False)
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


# ========================================================================================= measuring

class StepClock:
    """Timestamps of every optimizer step (a global torch hook: the same for bcat and TRL) and the
    tokens of every policy forward, attributed to the step during which they happened."""

    def __init__(self):
        self.steps: list[float] = []
        self.events: list[tuple[float, str, int]] = []  # (time, kind, tokens)

    def install(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        register_optimizer_step_post_hook(lambda *a, **k: self.steps.append(time.perf_counter()))

    def add(self, kind: str, tokens: int):
        self.events.append((time.perf_counter(), kind, int(tokens)))

    def per_step(self, kind: str) -> list[int]:
        """Tokens of ``kind`` per step k >= 2 (events between the hooks of step k-1 and step k)."""
        out = []
        for k in range(1, len(self.steps)):
            lo, hi = self.steps[k - 1], self.steps[k]
            out.append(sum(n for t, kd, n in self.events if kd == kind and lo < t <= hi))
        return out

    def summary(self, warmup: int) -> dict:
        """Step k (1-based) takes ``steps[k-1] - steps[k-2]``; step 1 has no start and is always warm-up."""
        durations = [b - a for a, b in zip(self.steps, self.steps[1:])]  # steps 2..N
        unpacked, computed = self.per_step("unpacked"), self.per_step("computed")
        skip = max(0, warmup - 1)
        d, u, c = durations[skip:], unpacked[skip:], computed[skip:]
        if not d:
            raise RuntimeError("not enough steps after warm-up: raise --steps")
        total = sum(d)
        return {
            "steps_measured": len(d),
            "s_per_step_median": statistics.median(d),
            "s_per_step": [round(x, 4) for x in d],
            "unpacked_tokens_per_step": u,
            "unpacked_tokens_per_s": sum(u) / total,
            "computed_tokens_per_s": sum(c) / total,
        }


def _count_policy_tokens(model, clock: StepClock, pad_id: int, kind: str = "computed"):
    """Count non-pad ids of every grad-enabled forward through the input embedding (the policy's,
    never a no-grad reference pass)."""
    import torch

    def hook(module, args):
        if torch.is_grad_enabled() and args:
            pad = pad_id() if callable(pad_id) else pad_id
            clock.add(kind, int((args[0] != pad).sum()))

    model.get_input_embeddings().register_forward_pre_hook(hook)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    import torch

    torch.set_num_threads(THREADS)
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    return 2 * n**3 / statistics.median(times) / 1e9


def model_flop_params(model) -> int:
    """Parameters of the transformer blocks + output head (input embedding excluded; LoRA excluded)."""
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    total = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
    return total - emb.numel() + (head.numel() if head is emb else 0)


# ================================================================================== trimmed vocabulary

def trimmed_setup(model_dir: str, data_path: str):
    """(loader returning (trimmed model, TrimmedVocab), kept ids) for a model trimmed to the data's ids."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from bcat.model import trim

    tok = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(x) for x in Path(data_path).read_text().splitlines()]
    texts = [r["prompt"] + r[k] for r in records for k in ("chosen", "rejected")]
    texts += [r["prompt"] for r in records] + [r[k] for r in records for k in ("chosen", "rejected")]
    kept = trim.kept_token_ids(tok, texts, margin=False)

    def load(**kw):
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="float32", **kw)
        vocab = trim.trim_model(model, kept)
        return model, vocab

    return load, kept


# =========================================================================================== workers

def run_bcat(spec: dict, clock: StepClock) -> dict:
    import torch

    import bcat.training.loop as bt
    from bcat.batching.collate import GroupCollator
    from bcat.config import load_config

    conf = BCAT_CONFIGS[spec["config"]]
    out = Path(spec["workdir"]) / "runs" / f"{spec['config']}-{spec['shape']}"
    shutil.rmtree(out, ignore_errors=True)
    overrides = [
        f"model.path={spec['model_dir']}", f"data.train={spec['data']}", f"objective.name={conf['objective']}",
        f"batch.groups_per_batch={spec['groups_per_batch']}", f"training.max_steps={spec['steps']}",
        f"training.output_dir={out}", f"training.threads={THREADS}", "training.lr_scheduler=constant",
        "training.learning_rate=2e-4", "training.save_steps=0", "data.max_length=2048", "model.lora_dropout=0",
        f"training.packed_preference={str(conf.get('packed', True)).lower()}",
    ]
    if not conf["align"]:
        overrides += ["alignment.hidden_weight=0", "alignment.output_weight=0", "alignment.token_kl_weight=0"]
    elif spec["groups_per_batch"] == 1:
        overrides.append("alignment.hidden_loss=cosine")  # InfoNCE needs 2+ groups per micro-batch (refused otherwise)
    if spec["trim"]:
        overrides.append("model.trim_vocab=false")  # the benchmark trims (below), the same way for TRL
    cfg = load_config(None, overrides)

    info: dict = {}
    pad_holder = {}

    class CountingCollator(GroupCollator):
        def __call__(self, examples):
            batch = super().__call__(examples)
            clock.add("unpacked", int(batch["attention_mask"].sum()))
            pad_holder["pad"] = self.pad_token_id
            return batch

    bt.GroupCollator = CountingCollator
    if spec["trim"]:
        _patch_trimmed(bt, spec)
    real_add_lora = bt.add_lora

    def add_lora_counting(model, model_cfg):
        info["flop_params"] = model_flop_params(model)
        peft = real_add_lora(model, model_cfg)
        _count_policy_tokens(peft, clock, lambda: pad_holder.get("pad", 0))
        return peft

    bt.add_lora = add_lora_counting
    torch.set_num_threads(THREADS)
    summary = bt.train(cfg)
    terms = summary["final_terms"]
    info.update({"final_loss": terms.get("loss"), "final_main": terms.get("main")})
    return info


def _patch_trimmed(bt, spec: dict) -> None:
    """Make ``bcat.training.loop`` train the benchmark's trimmed model on remapped ids (the same model TRL gets).

    The loop sees: the trimmed model from the loader, examples whose ids are already mapped to the
    trimmed vocabulary, and a tokenizer whose special-token ids and length are the trimmed ones.
    """
    import torch

    from bcat.model.trim import TrimmedVocab

    load, kept = trimmed_setup(spec["model_dir"], spec["data"])
    real_tokenize, real_load_tokenizer = bt.tokenize_records, bt.load_tokenizer
    state = {}

    class TrimmedTokenizer:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            value = getattr(self.inner, name)
            if name.endswith("_token_id") and isinstance(value, int):
                return int(state["vocab"].encode_ids([value])[0])
            return value

        def __len__(self):
            return len(kept)

        def __call__(self, *a, **k):
            return self.inner(*a, **k)

    def load_tokenizer(path, trust_remote_code=False):
        inner = real_load_tokenizer(path, trust_remote_code)
        state["vocab"] = TrimmedVocab.from_ids(kept, old_vocab_size=len(inner))
        return TrimmedTokenizer(inner)

    def tokenize_records(records, tokenizer, *a, **k):
        examples = real_tokenize(records, getattr(tokenizer, "inner", tokenizer), *a, **k)
        vocab = state["vocab"]
        for e in examples:
            e.prompt_ids = vocab.encode_ids(e.prompt_ids)
            e.completions = tuple(vocab.encode_ids(c) for c in e.completions)
        return examples

    def load_model(model_cfg, device=None):
        model, _ = load()
        return model.to(device or torch.device("cpu"))

    bt.load_tokenizer, bt.tokenize_records, bt.load_model = load_tokenizer, tokenize_records, load_model


def run_trl(spec: dict, clock: StepClock) -> dict:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(THREADS)
    conf = TRL_CONFIGS[spec["config"]]
    records = [json.loads(x) for x in Path(spec["data"]).read_text().splitlines()]
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in records])
    tok = AutoTokenizer.from_pretrained(spec["model_dir"])
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    vocab = None
    if spec["trim"]:
        load, _ = trimmed_setup(spec["model_dir"], spec["data"])
        model, vocab = load()
    else:
        model = AutoModelForCausalLM.from_pretrained(spec["model_dir"], dtype=torch.float32)
    info = {"flop_params": model_flop_params(model)}
    pad_id = tok.pad_token_id if vocab is None else vocab.encode_ids([tok.pad_token_id])[0]
    _count_policy_tokens(model, clock, pad_id, kind="unpacked")
    _count_policy_tokens(model, clock, pad_id, kind="computed")
    lora = LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, task_type="CAUSAL_LM",
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    common = dict(output_dir=str(Path(spec["workdir"]) / "runs" / f"{spec['config']}-{spec['shape']}"),
                  per_device_train_batch_size=spec["pairs_per_step"], max_steps=spec["steps"], learning_rate=2e-4,
                  lr_scheduler_type="constant", max_grad_norm=1.0, bf16=False, fp16=False, use_cpu=True,
                  activation_checkpointing=False, report_to=[], save_strategy="no", logging_steps=1,
                  dataloader_num_workers=0, seed=0, disable_dropout=True, max_length=2048)
    if conf["objective"] == "dpo":
        from trl import DPOConfig as Config
        from trl import DPOTrainer as Trainer

        extra = dict(precompute_ref_log_probs=conf["precompute"])
    else:
        from trl.experimental.orpo import ORPOConfig as Config
        from trl.experimental.orpo import ORPOTrainer as Trainer

        extra = dict(remove_unused_columns=False)
    if vocab is not None:
        _remap_trl_tokenization(Trainer, vocab, conf["objective"])
    args = Config(beta=0.1, **extra, **common)
    trainer = Trainer(model=model, args=args, train_dataset=dataset, processing_class=tok, peft_config=lora)
    result = trainer.train()
    info["final_loss"] = result.training_loss
    return info


def _remap_trl_tokenization(trainer_cls, vocab, objective: str) -> None:
    """Map TRL's token ids to the trimmed vocabulary right after its own tokenization (inside
    ``__init__``, before its reference precompute), so TRL trains on exactly bcat's ids."""
    id_columns = ("prompt_ids", "chosen_ids", "rejected_ids", "prompt_input_ids", "chosen_input_ids",
                  "rejected_input_ids", "chosen_labels", "rejected_labels")

    def remap(row: dict) -> dict:
        return {c: vocab.encode_ids(row[c]) for c in id_columns if c in row}

    if objective == "dpo":  # DPOTrainer tokenizes the whole dataset in _prepare_dataset
        real = trainer_cls._prepare_dataset

        def prepare(self, dataset, *a, **k):
            return real(self, dataset, *a, **k).map(remap)

        trainer_cls._prepare_dataset = prepare
    else:  # ORPOTrainer tokenizes row by row
        real_row = trainer_cls.tokenize_row

        def tokenize_row(self, feature, *a, **k):
            row = real_row(self, feature, *a, **k)
            row.update(remap(row))
            return row

        trainer_cls.tokenize_row = tokenize_row


def worker(spec: dict) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    t0 = time.perf_counter()
    clock = StepClock()
    clock.install()
    info = run_bcat(spec, clock) if spec["config"].startswith("bcat") else run_trl(spec, clock)
    total = time.perf_counter() - t0
    res = {"config": spec["config"], "shape": spec["shape"], **info, **clock.summary(spec["warmup"]),
           "setup_s": round(clock.steps[0] - t0 if clock.steps else float("nan"), 2), "total_s": round(total, 2),
           "peak_rss_mb": round(peak_rss_mb(), 1), "pairs_per_step": spec["pairs_per_step"], "steps": spec["steps"]}
    Path(spec["result"]).write_text(json.dumps(res))


# ============================================================================================ driver

def token_stats(model_dir: str, data: str) -> dict:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    records = [json.loads(x) for x in Path(data).read_text().splitlines()]
    p = [len(tok(r["prompt"])["input_ids"]) for r in records]
    a = [len(tok(r[k], add_special_tokens=False)["input_ids"]) + 1 for r in records for k in ("chosen", "rejected")]
    return {"records": len(records), "prompt_tokens": [min(p), round(statistics.mean(p), 1), max(p)],
            "answer_tokens": [min(a), round(statistics.mean(a), 1), max(a)]}


def derive(results: list[dict], matmul: float) -> dict:
    """MFU of every run; the ratios and targets per shape."""
    for r in results:
        if "error" in r:
            continue
        r["model_gflops_per_s"] = 6 * r["flop_params"] * r["unpacked_tokens_per_s"] / 1e9
        r["mfu"] = r["model_gflops_per_s"] / matmul  # useful work: unpacked tokens (can exceed 1 when packed)
        r["mfu_computed"] = 6 * r["flop_params"] * r["computed_tokens_per_s"] / 1e9 / matmul
    by = {(r["shape"], r["config"]): r for r in results if "error" not in r}
    checks = []
    for shape in sorted({r["shape"] for r in results}):
        for name, num, den, target in TARGETS:
            a, b = by.get((shape, num)), by.get((shape, den))
            if a and b:
                ratio = a["unpacked_tokens_per_s"] / b["unpacked_tokens_per_s"]
                mem = a["peak_rss_mb"] / b["peak_rss_mb"]
                checks.append({"shape": shape, "check": name, "ratio": round(ratio, 3), "target": f">= {target}",
                               "met": ratio >= target, "peak_rss_ratio": round(mem, 3), "memory_met": mem <= 1.0})
        for on, off in (("bcat-dpo", "bcat-dpo-noalign"), ("bcat-orpo", "bcat-orpo-noalign")):
            a, b = by.get((shape, on)), by.get((shape, off))
            if a and b:
                cost = a["s_per_step_median"] / b["s_per_step_median"] - 1
                checks.append({"shape": shape, "check": f"alignment cost ({on})", "ratio": round(cost, 3),
                               "target": f"<= {ALIGNMENT_COST_TARGET}", "met": cost <= ALIGNMENT_COST_TARGET})
        a, b = by.get((shape, "bcat-dpo")), by.get((shape, "bcat-dpo-unpacked"))
        if a and b:
            checks.append({"shape": shape, "check": "packing speed-up (bcat-dpo vs bcat-dpo-unpacked)",
                           "ratio": round(a["unpacked_tokens_per_s"] / b["unpacked_tokens_per_s"], 3),
                           "target": "(info)", "met": None})
    return {"checks": checks}


def markdown(doc: dict) -> str:
    meta = doc["meta"]
    lines = [f"Model {meta['model']} ({meta['flop_params'] / 1e6:.1f}M FLOP-counted params), {meta['pairs_per_step']} "
             f"pairs per step, {meta['steps']} steps ({meta['warmup']} warm-up), {meta['threads']} threads, "
             f"fp32 matmul {meta['matmul_gflops']:.1f} GFLOP/s; {meta['machine']}",
             "", "| shape | config | s/step (median) | unpacked tok/s | computed tok/s | peak RSS MB | MFU (unpacked) "
             "| MFU (computed) | setup s |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in doc["runs"]:
        if "error" in r:
            lines.append(f"| {r['shape']} | {r['config']} | FAILED: {r['error'][:80]} | | | | | | |")
            continue
        lines.append(f"| {r['shape']} | {r['config']} | {r['s_per_step_median']:.3f} | {r['unpacked_tokens_per_s']:.0f} | "
                     f"{r['computed_tokens_per_s']:.0f} | {r['peak_rss_mb']:.0f} | {100 * r['mfu']:.1f}% | "
                     f"{100 * r['mfu_computed']:.1f}% | {r['setup_s']:.1f} |")
    lines += ["", "| shape | check | measured | target | met | peak RSS ratio |", "|---|---|---:|---|---|---:|"]
    for c in doc["derived"]["checks"]:
        met = "" if c["met"] is None else ("yes" if c["met"] else "NO")
        mem = f"{c['peak_rss_ratio']:.2f} ({'ok' if c['memory_met'] else 'HIGHER'})" if "peak_rss_ratio" in c else ""
        lines.append(f"| {c['shape']} | {c['check']} | {c['ratio']:.3f} | {c['target']} | {met} | {mem} |")
    if meta.get("machine_busy"):
        lines.append(f"\n**The machine was busy** (fp32 matmul {meta['matmul_gflops_runs']} GFLOP/s before/after): "
                     "these timings are unreliable.")
    if meta.get("note"):
        lines.append(f"\nNote: {meta['note']}")
    for shape, st in meta["data"].items():
        lines.append(f"\n{shape}: {st['records']} records, prompt tokens min/mean/max {st['prompt_tokens']}, "
                     f"answer tokens {st['answer_tokens']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="few steps, small micro-batch: < 5 minutes on 2 cores")
    ap.add_argument("--model", default="tiny", help="'tiny' (random ~20M Llama built here) or builtin:gemma3-270m")
    ap.add_argument("--shapes", default="rag,chat", help="comma-separated: rag, chat")
    ap.add_argument("--configs", default=None, help=f"comma-separated subset of {ALL_CONFIGS}")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per configuration")
    ap.add_argument("--warmup", type=int, default=2, help="steps left out of the timing")
    ap.add_argument("--groups-per-batch", type=int, default=None, help=f"groups per step (x {len(LANGS)} languages)")
    ap.add_argument("--out", default=None, help="results JSON (default bench/results/<mode>-<model>.json)")
    ap.add_argument("--workdir", default=None, help="keep models, data and runs here (default: a temp dir)")
    ap.add_argument("--table", default=None, help="print the markdown table of a saved results JSON and exit")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    if args.table:
        print(markdown(json.loads(Path(args.table).read_text())))
        return 0

    steps = args.steps or (6 if args.quick else 12)
    gpb = args.groups_per_batch or (1 if args.quick else 2)
    configs = args.configs.split(",") if args.configs else (QUICK_CONFIGS if args.quick else ALL_CONFIGS)
    shapes = args.shapes.split(",")
    tmp = None
    if args.workdir:
        work = Path(args.workdir)
        work.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.TemporaryDirectory(prefix="bcat-bench-")
        work = Path(tmp.name)
    n_groups = max(8, steps * gpb + 2)
    data = {}
    for shape in shapes:
        data[shape] = work / f"data-{shape}.jsonl"
        data[shape].write_text("".join(json.dumps(r, ensure_ascii=False) + "\n"
                                       for r in synthetic_records(shape, n_groups)))
    if args.model == "tiny":
        model_dir = work / "tiny-llama"
        if not (model_dir / "config.json").exists():
            texts = [r[k] for s in shapes for r in synthetic_records(s, 64, seed=1) for k in ("prompt", "chosen", "rejected")]
            build_tiny_llama(model_dir, texts)
        trim = False
    elif args.model.startswith("builtin:"):
        from bcat.model.builtin import resolve

        model_dir = resolve(args.model)
        trim = True
    else:
        model_dir, trim = Path(args.model), False

    # A fresh bcat cache per invocation: bcat computes its reference log-probs like TRL does.
    cache = tempfile.TemporaryDirectory(prefix="bcat-bench-cache-")
    env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS),
           "BCAT_CACHE": cache.name, "TOKENIZERS_PARALLELISM": "false",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

    def probe_matmul() -> float:
        code = "import sys; sys.path.insert(0, %r); import throughput as t; print(t.matmul_gflops())" % str(HERE)
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return float(proc.stdout.strip().splitlines()[-1])

    print(f"bench: measuring the fp32 matmul rate ({THREADS} threads)...", flush=True)
    matmul_runs = [probe_matmul()]
    print(f"bench: fp32 matmul {matmul_runs[0]:.1f} GFLOP/s", flush=True)

    results = []
    t_all = time.time()
    for shape in shapes:
        for config in configs:
            res_path = work / f"result-{config}-{shape}.json"
            spec = {"config": config, "shape": shape, "model_dir": str(model_dir), "data": str(data[shape]),
                    "steps": steps, "warmup": args.warmup, "groups_per_batch": gpb, "pairs_per_step": gpb * len(LANGS),
                    "workdir": str(work), "result": str(res_path), "trim": trim}
            t = time.time()
            print(f"bench: {shape:5s} {config:22s}", end=" ", flush=True)
            proc = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                                  env=env, capture_output=True, text=True)
            (work / f"log-{config}-{shape}.txt").write_text(proc.stdout + "\n" + proc.stderr)
            if proc.returncode != 0 or not res_path.exists():
                err = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
                results.append({"config": config, "shape": shape, "error": err[0]})
                print(f"FAILED ({err[0]}; log: {work / f'log-{config}-{shape}.txt'})", flush=True)
                continue
            r = json.loads(res_path.read_text())
            results.append(r)
            print(f"{r['s_per_step_median']:.3f} s/step, {r['unpacked_tokens_per_s']:.0f} tok/s, "
                  f"{r['peak_rss_mb']:.0f} MB ({time.time() - t:.0f} s)", flush=True)

    matmul_runs.append(probe_matmul())  # again at the end; the higher is the machine's rate
    matmul = max(matmul_runs)
    busy = min(matmul_runs) < 0.85 * matmul
    if busy:
        print(f"bench: WARNING the matmul rate moved from {matmul_runs[0]:.0f} to {matmul_runs[1]:.0f} GFLOP/s during "
              "the run: the machine was busy, timings are unreliable", flush=True)
    cache.cleanup()

    import torch
    import transformers
    try:
        import trl
        trl_version = trl.__version__
    except ImportError:
        trl_version = None
    flop_params = next((r["flop_params"] for r in results if "flop_params" in r), 0)
    doc = {
        "meta": {"model": args.model, "flop_params": flop_params, "steps": steps, "warmup": args.warmup,
                 "pairs_per_step": gpb * len(LANGS), "groups_per_batch": gpb, "languages": list(LANGS),
                 "threads": THREADS, "matmul_gflops": matmul, "matmul_gflops_runs": matmul_runs, "machine_busy": busy, "machine": f"{platform.processor() or platform.machine()}"
                 f" {os.cpu_count()} CPUs, {platform.platform()}", "torch": torch.__version__,
                 "transformers": transformers.__version__, "trl": trl_version, "quick": args.quick,
                 "data": {s: token_stats(str(model_dir), str(data[s])) for s in shapes},
                 "wall_s": round(time.time() - t_all, 1), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "flop_formula": "6 x N x unpacked tokens/s; N = transformer blocks + output head parameters"},
        "runs": results,
    }
    doc["derived"] = derive(results, matmul)
    out = Path(args.out) if args.out else HERE / "results" / (
        f"{'quick' if args.quick else 'full'}-{args.model.replace(':', '-').replace('/', '_')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
    print()
    print(markdown(doc))
    print(f"\nbench: results in {out} ({doc['meta']['wall_s']:.0f} s)")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
