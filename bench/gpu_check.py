"""The GPU check: correctness on the device, bcat against TRL, and the eval generator, in one run.

Usage (on the device machine, from the repository root; see bench/README.md)::

    python bench/gpu_check.py --output bench/results/gpu-check            # about 6 minutes on one H100
    python bench/gpu_check.py --output /tmp/gpu-dry --dry-run              # CPU, tiny model, every code path

Writes ``OUTPUT/gpu_check.json`` (rewritten after each section, so a run cut short keeps what it did):

(a) ``tests``: ``pytest -m gpu`` (packed equals plain in bf16, each loss against fp32, a training run
    against the CPU fp32 reference) and the kill + resume bitwise test, on the device;
(b) ``bench``: the bench protocol's paired rounds (:mod:`protocol`: interleaved ABBA rounds, a ratio
    per round, median and bootstrap 95% CI) of bcat DPO / ORPO against TRL's DPOTrainer (reference
    log-probs precomputed) / ORPOTrainer, LoRA on a bf16 base, bf16 autocast, on RANDOMLY
    INITIALISED models of real shapes (Gemma 3 270M; a 1B Llama, Llama 3.2 1B's shape) with
    synthetic token ids of RAG-like (long prompt, short answers) and chat-like (short prompt, long
    answers) lengths; per configuration: step time, tokens/s, peak memory, executed FLOPs per step
    (``FlopCounterMode``) and MFU against the card's dense bf16 peak; and bcat's packed rows with
    ``sdpa`` against ``flex_attention``;
(c) ``eval``: bcat's generator against ``model.generate`` (same greedy tokens? time of each) and
    bf16 against fp32 greedy answers (agreement), on a random model of the 270M shape.

TRL's fastest supported settings are recorded with the reason for each: ``padding_free`` (TRL 1.16
turns it off for DPO with a warning, and ORPO has none), Liger kernels (only if ``liger_kernel`` is
installed), bf16 autocast (on).

``--dry-run`` runs every section on the CPU with a tiny model, one round, and the GPU tests on the
CPU (``BCAT_GPU_TESTS_ON_CPU=1``); ``tests/test_gpu_check.py`` runs it in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import protocol  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

BF16_PEAK = {"H100": 989e12, "H200": 989e12}
"""Dense bf16 tensor-core peak, FLOP/s (H100 SXM datasheet; the H200 is the same chip)."""

GEMMA3_270M = dict(model_type="gemma3_text", hidden_size=640, intermediate_size=2048, num_hidden_layers=18,
                   num_attention_heads=4, num_key_value_heads=1, head_dim=256, vocab_size=262144,
                   sliding_window=512, layer_types=(["sliding_attention"] * 5 + ["full_attention"]) * 3,
                   max_position_embeddings=32768, tie_word_embeddings=True, query_pre_attn_scalar=256,
                   rope_theta=1_000_000.0)
"""The built-in model's configuration (``bcat/resources/gemma``), weights left random."""

LLAMA_1B = dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                max_position_embeddings=131072, tie_word_embeddings=True, rope_theta=500000.0)
"""Llama 3.2 1B's shape."""

TINY = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=512, tie_word_embeddings=True)

SHAPES = {"gemma3-270m": GEMMA3_270M, "llama-1b": LLAMA_1B}

DATA = {"rag": {"prompt": (1200, 1800), "answer": (16, 64)}, "chat": {"prompt": (100, 300), "answer": (250, 450)}}
"""Token lengths (uniform ranges): RAG-like (three passages and a question, a short answer) and chat-like."""

TINY_DATA = {"rag": {"prompt": (40, 60), "answer": (3, 6)}, "chat": {"prompt": (6, 10), "answer": (20, 30)}}

LANGS = ("en", "fr", "de", "es")
GROUPS_PER_STEP = 2
"""Groups per step: 2 groups x 4 languages = 8 preference pairs per step, the same pairs for every trainer."""

LORA = dict(r=16, lora_alpha=32, lora_dropout=0.0,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])


# ============================================================================================ setup

def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_model(shape: dict, attn: str, dtype):
    """A randomly initialised causal LM of ``shape`` (seeded), on the device."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    fields = dict(shape)
    config = AutoConfig.for_model(fields.pop("model_type"), pad_token_id=0, bos_token_id=1, eos_token_id=2, **fields)
    torch.manual_seed(0)
    with torch.device(_device()):
        return AutoModelForCausalLM.from_config(config, attn_implementation=attn, dtype=dtype)


def synthetic_pairs(lengths: dict, vocab: int, groups: int, seed: int = 0) -> list[dict]:
    """``groups x len(LANGS)`` records of random token ids (3..vocab): prompt, chosen, rejected, group, lang.

    >>> r = synthetic_pairs(TINY_DATA["rag"], 100, 1)
    >>> len(r), r[0]["prompt"][0], 40 <= len(r[0]["prompt"]) <= 61
    (4, 1, True)
    """
    rng = random.Random(seed)

    def ids(lo_hi):
        return [rng.randrange(3, vocab) for _ in range(rng.randint(*lo_hi))]

    return [{"group": f"g{g}", "lang": lang, "prompt": [1] + ids(lengths["prompt"]),
             "chosen": ids(lengths["answer"]) + [2], "rejected": ids(lengths["answer"]) + [2]}
            for g in range(groups) for lang in LANGS]


def _steps_of(records: list[dict]) -> list[list[dict]]:
    per = GROUPS_PER_STEP * len(LANGS)
    return [records[i:i + per] for i in range(0, len(records), per)]


def pair_tokens(step: list[dict]) -> int:
    """Tokens of a step's pairs as plain rows (prompt + chosen, prompt + rejected): the work both trainers do."""
    return sum(2 * len(r["prompt"]) + len(r["chosen"]) + len(r["rejected"]) for r in step)


class BcatTrainer:
    """bcat's training step (``bcat.training.loop``'s per-step work: collate, forward, losses, backward,
    clip, AdamW step), built from the library on an in-memory model."""

    def __init__(self, shape: dict, objective: str, attn: str, records: list[dict]):
        import torch

        from bcat.batching.collate import GroupCollator
        from bcat.config import AlignmentConfig, ModelConfig, ObjectiveConfig
        from bcat.data.tokenization import Example
        from bcat.model.forward import PolicyForward, check_packed_forward, check_selective_head
        from bcat.model.loading import add_lora, training_precision

        device = _device()
        precision = training_precision(ModelConfig(lora=True), device)
        model = add_lora(build_model(shape, attn, precision.storage), ModelConfig(
            lora_r=LORA["r"], lora_alpha=LORA["lora_alpha"], lora_target_modules=LORA["target_modules"]))
        model.train()
        self.model, self.device = model, device
        self.policy = PolicyForward(model, precision.compute if precision.autocast else None)
        vocab = model.get_input_embeddings().num_embeddings
        check_selective_head(self.policy, vocab, device)
        self.packed = check_packed_forward(self.policy, vocab, device, 1)
        self.objective, self.alignment = ObjectiveConfig(name=objective), AlignmentConfig()
        collate = GroupCollator(0, "en", 1, pack=self.packed)
        self.batches = []
        for s, step in enumerate(_steps_of(records)):
            examples = [Example(s * 100 + i, r["group"], r["lang"], r["prompt"], (r["chosen"], r["rejected"]))
                        for i, r in enumerate(step)]
            batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in collate(examples).items()}
            if objective == "dpo":  # bcat's default: reference log-probs precomputed (here: once per batch)
                from bcat.training.objectives import reference_logps

                with torch.no_grad(), model.disable_adapter():
                    batch["ref_logps"] = reference_logps(self.policy, batch)
            self.batches.append(batch)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=2e-5)
        self.next = 0

    def step(self) -> None:
        import torch

        from bcat.training.objectives import compute_loss

        batch = self.batches[self.next % len(self.batches)]
        self.next += 1
        out = compute_loss(self.policy, batch, self.objective, self.alignment, ())
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def trl_settings() -> dict:
    """TRL's fastest settings that apply here, each with why."""
    import importlib.util

    liger = importlib.util.find_spec("liger_kernel") is not None
    return {"bf16": True, "padding_free": False,
            "padding_free_reason": "TRL 1.16's DPOTrainer turns padding_free off ('temporarily unavailable after a "
                                   "refactor'); its ORPOTrainer has no such option",
            "use_liger_kernel": liger,
            "liger_reason": "liger_kernel is installed" if liger else "liger_kernel is not installed on this machine"}


class TrlTrainer:
    """TRL's DPOTrainer (reference log-probs precomputed) or ORPOTrainer, LoRA on the same random model, driven
    by ``trainer.train()`` for a few steps at a time; a callback times each optimizer step."""

    def __init__(self, shape: dict, objective: str, records: list[dict], workdir: Path):
        import torch
        from datasets import Dataset
        from peft import LoraConfig
        from transformers import PreTrainedTokenizerFast, TrainerCallback
        from tokenizers import Tokenizer, models

        cuda = torch.cuda.is_available()
        vocab = shape["vocab_size"]
        # An id-level tokenizer: token i is "t{i}", so TRL tokenizes the synthetic ids back to themselves.
        tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
            {f"t{i}": i for i in range(vocab)}, unk_token="t0")), pad_token="t0", bos_token="t1", eos_token="t2")
        tok.backend_tokenizer.pre_tokenizer = __import__("tokenizers").pre_tokenizers.WhitespaceSplit()

        def text(ids):
            return " ".join(f"t{i}" for i in ids)

        dataset = Dataset.from_list([{"prompt": text(r["prompt"]), "chosen": text(r["chosen"][:-1]),
                                      "rejected": text(r["rejected"][:-1])} for r in records])
        model = build_model(shape, "sdpa", torch.bfloat16 if cuda else torch.float32)
        settings = trl_settings()
        common = dict(output_dir=str(workdir / f"trl-{objective}"), per_device_train_batch_size=GROUPS_PER_STEP * len(LANGS),
                      max_steps=1, learning_rate=2e-5, lr_scheduler_type="constant", max_grad_norm=1.0,
                      bf16=cuda, use_cpu=not cuda, report_to=[], save_strategy="no", logging_steps=1000,
                      dataloader_num_workers=0, seed=0, disable_dropout=True, max_length=4096,
                      use_liger_kernel=settings["use_liger_kernel"])
        if objective == "dpo":
            from trl import DPOConfig as Config
            from trl import DPOTrainer as Trainer

            extra = dict(precompute_ref_log_probs=True)
        else:
            from trl.experimental.orpo import ORPOConfig as Config
            from trl.experimental.orpo import ORPOTrainer as Trainer

            extra = dict(remove_unused_columns=False)
        times = self.times = []

        class Clock(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                _sync()
                self.t = time.perf_counter()

            def on_step_end(self, args, state, control, **kw):
                _sync()
                times.append(time.perf_counter() - self.t)

        self.trainer = Trainer(model=model, args=Config(beta=0.1, **extra, **common), train_dataset=dataset,
                               processing_class=tok, peft_config=LoraConfig(task_type="CAUSAL_LM", **LORA),
                               callbacks=[Clock()])
        self.model = self.trainer.model

    def steps(self, n: int) -> float:
        """Run ``n`` optimizer steps; the seconds they took (the callback's, set-up excluded)."""
        self.times.clear()
        self.trainer.args.max_steps = n
        self.trainer.train()
        return sum(self.times)


# ============================================================================================ measurements

def executed_flops(step) -> int:
    """FLOPs one call of ``step`` executes (matmuls and attention, as ``FlopCounterMode`` counts them)."""
    counter = protocol.flop_counter()
    with counter:
        step()
    return counter.get_total_flops()


def peak_of(step, n: int) -> tuple[float, int]:
    """(seconds of ``n`` calls of ``step``, peak allocated bytes during them); bytes 0 on the CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _sync()
    t = time.perf_counter()
    for _ in range(n):
        step()
    _sync()
    return time.perf_counter() - t, torch.cuda.max_memory_allocated() if cuda else 0


def card_peak() -> tuple[str, float | None]:
    import torch

    if not torch.cuda.is_available():
        return "cpu", None
    name = torch.cuda.get_device_name()
    return name, next((v for k, v in BF16_PEAK.items() if k in name), None)


def bench_pair(shape_name: str, shape: dict, data_name: str, lengths: dict, args, workdir: Path) -> dict:
    """Paired rounds of every configuration on one model shape and one data shape."""
    import gc

    import torch

    records = synthetic_pairs(lengths, shape["vocab_size"], GROUPS_PER_STEP * args.batches)
    tokens = statistics.mean(pair_tokens(s) for s in _steps_of(records))
    trainers, built, notes = {}, {}, {}
    cuda = torch.cuda.is_available()
    attn_variants = ["sdpa", "flex_attention"] if cuda else ["sdpa"]
    if not cuda:
        notes["flex_attention"] = "timed on CUDA only (compiled); tests/model/test_packing.py checks it on the CPU"
    plan = [(f"bcat-dpo", lambda: BcatTrainer(shape, "dpo", "sdpa", records)),
            (f"bcat-orpo", lambda: BcatTrainer(shape, "orpo", "sdpa", records))]
    plan += [(f"bcat-orpo-{a}", (lambda a=a: BcatTrainer(shape, "orpo", a, records))) for a in attn_variants[1:]]
    if not args.no_trl:
        plan += [("trl-dpo", lambda: TrlTrainer(shape, "dpo", records, workdir)),
                 ("trl-orpo", lambda: TrlTrainer(shape, "orpo", records, workdir))]
    for name, make in plan:
        before = torch.cuda.memory_allocated() if cuda else 0
        try:
            trainers[name] = make()
        except Exception as e:  # recorded, the other configurations still run
            notes[name] = f"{type(e).__name__}: {e}"[:500]
            continue
        built[name] = (torch.cuda.memory_allocated() if cuda else 0) - before

    def run(name: str, n: int) -> tuple[float, int]:
        t = trainers[name]
        if isinstance(t, TrlTrainer):
            start = torch.cuda.memory_allocated() if cuda else 0
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            seconds = t.steps(n)
            return seconds, (torch.cuda.max_memory_allocated() - start) if cuda else 0
        start = torch.cuda.memory_allocated() if cuda else 0
        seconds, peak = peak_of(t.step, n)
        return seconds, max(0, peak - start)

    peaks: dict[str, int] = {}

    def measure(name: str) -> float:
        seconds, transient = run(name, args.steps)
        peaks[name] = max(peaks.get(name, 0), transient)
        return seconds / args.steps

    names = list(trainers)
    for name in names:  # first compile / autotune / reference precompute, outside the rounds
        run(name, 1)
    rounds = protocol.run_rounds(measure, names, args.rounds, warmup=1, log=lambda m: print(m, flush=True))
    flops = {}
    for name in names:
        t = trainers[name]
        step = t.step if isinstance(t, BcatTrainer) else (lambda t=t: t.steps(1))
        try:
            flops[name] = executed_flops(step)
        except Exception as e:
            notes[f"{name}-flops"] = f"{type(e).__name__}: {e}"[:300]
    device, peak = card_peak()
    configs = {}
    for name in names:
        step_s = statistics.median(r[name] for r in rounds)
        f = flops.get(name)
        configs[name] = {
            "step_s_median": round(step_s, 4), "tokens_per_s": round(tokens / step_s, 1),
            "peak_memory_gib": round((built[name] + peaks.get(name, 0)) / 2**30, 3) if cuda else None,
            "model_and_optimizer_gib": round(built[name] / 2**30, 3) if cuda else None,
            "executed_flop_per_step": f,
            "mfu": round(f / step_s / peak, 4) if f and peak else None,
            "packed": getattr(trainers[name], "packed", None),
        }
    ratios = {}
    for bcat_name, trl_name in (("bcat-dpo", "trl-dpo"), ("bcat-orpo", "trl-orpo"),
                                ("bcat-orpo-flex_attention", "bcat-orpo")):
        if bcat_name in names and trl_name in names:
            stats = protocol.ratio_stats([r[trl_name] for r in rounds], [r[bcat_name] for r in rounds])
            stats["verdict_speed_1.5x"] = protocol.verdict_word(protocol.verdict(stats, 1.5))
            ratios[f"{trl_name} / {bcat_name} step time"] = stats
    for t in trainers.values():
        del t
    trainers.clear()
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {"model": shape_name, "data": data_name, "tokens_per_step": round(tokens, 1), "pairs_per_step":
            GROUPS_PER_STEP * len(LANGS), "configs": configs, "speed_ratios": ratios, "rounds": rounds,
            "notes": notes}


def eval_check(shape: dict, items: int, max_new_tokens: int) -> dict:
    """bcat's generator against ``model.generate`` on one random model (bf16 on CUDA), and bf16 against fp32."""
    import torch
    from transformers import PreTrainedTokenizerFast
    from tokenizers import Tokenizer, models, pre_tokenizers

    from bcat.evaluation.generation import greedy_generate, reference_generate

    vocab = shape["vocab_size"]
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(
        {f"t{i}": i for i in range(vocab)}, unk_token="t0")), pad_token="t0", bos_token="t1", eos_token="t2")
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    rng = random.Random(0)
    prompts = [" ".join(f"t{rng.randrange(3, vocab)}" for _ in range(rng.randint(20, 200 if vocab > 1000 else 30)))
               for _ in range(items)]
    cuda = torch.cuda.is_available()
    out = {}
    answers = {}
    for dtype in ([torch.bfloat16, torch.float32] if cuda else [torch.float32, torch.bfloat16]):
        model = build_model(shape, "sdpa", dtype).eval()
        name = str(dtype).removeprefix("torch.")
        for gen_name, gen in (("bcat", greedy_generate), ("generate", reference_generate)):
            _sync()
            t = time.perf_counter()
            answers[(name, gen_name)] = gen(model, tok, prompts, batch_size=min(64, items),
                                            max_new_tokens=max_new_tokens, until=lambda text: False)
            _sync()
            out[f"{name}_{gen_name}_s"] = round(time.perf_counter() - t, 3)
        del model
    for name in ("bfloat16", "float32"):
        a, b = answers[(name, "bcat")], answers[(name, "generate")]
        out[f"{name}_bcat_equals_generate"] = round(sum(x == y for x, y in zip(a, b)) / len(a), 4)
    a, b = answers[("bfloat16", "bcat")], answers[("float32", "bcat")]
    out["bf16_equals_fp32_answers"] = round(sum(x == y for x, y in zip(a, b)) / len(a), 4)
    out["items"], out["max_new_tokens"] = items, max_new_tokens
    out["note"] = ("random weights: near-uniform logits make bf16 near-ties (hence disagreement with fp32) far "
                   "more frequent than on a trained model")
    return out


def run_tests(dry_run: bool, output: Path, timeout: int) -> dict:
    """``pytest -m gpu`` plus the kill + resume bitwise test, in a subprocess; JUnit XML summarised."""
    import xml.etree.ElementTree as ET

    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if dry_run:
        env["BCAT_GPU_TESTS_ON_CPU"] = "1"
    junit = output / "gpu_tests.xml"
    targets = ["tests/gpu"]
    if not dry_run:
        targets.append("tests/reliability/test_crash_resume.py::test_sigkill_mid_training_then_resume_is_bitwise_identical")
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-m", "gpu or not gpu",
           f"--junitxml={junit}", *targets]
    t = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = proc.returncode, (proc.stdout + proc.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", str(e.stdout or "")[-4000:]
    cases = []
    if junit.exists():
        for case in ET.parse(junit).getroot().iter("testcase"):
            status = "passed"
            for child in case:
                if child.tag in ("failure", "error", "skipped"):
                    status = child.tag
            cases.append({"test": f"{case.get('classname')}::{case.get('name')}", "status": status,
                          "seconds": float(case.get("time", 0))})
    return {"returncode": rc, "seconds": round(time.perf_counter() - t, 1), "cases": cases, "output_tail": tail}


# ============================================================================================ main

def environment() -> dict:
    import torch
    import transformers

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "device": card_peak()[0], "bf16_peak_flops": card_peak()[1]}
    try:
        import trl

        info["trl"] = trl.__version__
    except ImportError:
        info["trl"] = None
    return info


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--output", required=True, type=Path, help="folder for gpu_check.json (and the tests' JUnit XML)")
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, one round: every code path in seconds")
    p.add_argument("--rounds", type=int, default=None, help="timed rounds per pair (default 5; dry run 1)")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per configuration per round (default 2)")
    p.add_argument("--sections", default="tests,bench,eval", help="comma-separated: tests, bench, eval")
    p.add_argument("--no-trl", action="store_true", help="time bcat alone (TRL not installed)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.dry_run else protocol.MIN_ROUNDS)
    args.steps = args.steps or (1 if args.dry_run else 2)
    args.batches = 2
    sections = set(args.sections.split(","))
    if not args.no_trl:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise SystemExit("gpu_check: TRL is not installed; install it (pip install trl) or pass --no-trl")
    if not args.dry_run and not _device().type == "cuda":
        raise SystemExit("gpu_check: no CUDA device; use --dry-run on a machine without a GPU")
    args.output.mkdir(parents=True, exist_ok=True)
    doc: dict = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%d %H:%M:%S"), "environment": environment(),
                 "trl_settings": trl_settings() if not args.no_trl else None,
                 "protocol": {"rounds": args.rounds, "warmup_rounds": 1, "steps_per_round": args.steps}}
    path = args.output / "gpu_check.json"

    def save():
        path.write_text(json.dumps(doc, indent=1))

    t0 = time.perf_counter()
    if "tests" in sections:
        doc["tests"] = run_tests(args.dry_run, args.output, timeout=120 if args.dry_run else 150)
        save()
        print(f"gpu_check: tests rc={doc['tests']['returncode']} in {doc['tests']['seconds']} s", flush=True)
    if "bench" in sections:
        shapes = {"tiny": TINY} if args.dry_run else SHAPES
        data = TINY_DATA if args.dry_run else DATA
        doc["bench"] = []
        work = args.output / "work"
        for shape_name, shape in shapes.items():
            for data_name, lengths in data.items():
                doc["bench"].append(bench_pair(shape_name, shape, data_name, lengths, args, work))
                save()
    if "eval" in sections:
        doc["eval"] = eval_check(TINY if args.dry_run else GEMMA3_270M, 8 if args.dry_run else 128,
                                 4 if args.dry_run else 32)
        save()
    doc["seconds"] = round(time.perf_counter() - t0, 1)
    save()
    print(summary(doc))
    return 0 if "tests" not in doc or doc["tests"]["returncode"] == 0 else 1


def summary(doc: dict) -> str:
    """A short table for the end of the output."""
    lines = [f"gpu_check on {doc['environment']['device']} in {doc.get('seconds')} s"]
    if "tests" in doc:
        failed = [c["test"] for c in doc["tests"]["cases"] if c["status"] in ("failure", "error")]
        lines.append(f"tests: {len(doc['tests']['cases'])} run, failed: {failed or 'none'}")
    for b in doc.get("bench", []):
        for name, c in b["configs"].items():
            lines.append(f"{b['model']:12s} {b['data']:5s} {name:26s} {c['step_s_median']:.3f} s/step "
                         f"{c['tokens_per_s']:>10.0f} tok/s  peak {c['peak_memory_gib']} GiB  MFU {c['mfu']}")
        for k, s in b["speed_ratios"].items():
            lines.append(f"{b['model']:12s} {b['data']:5s} {k}: {protocol.fmt(s)}")
        for k, v in b["notes"].items():
            lines.append(f"  note {k}: {v}")
    if "eval" in doc:
        lines.append("eval: " + ", ".join(f"{k}={v}" for k, v in doc["eval"].items() if k != "note"))
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
