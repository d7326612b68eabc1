"""GPU-marked checks (``pytest -m gpu``; ``bench/gpu_check.py`` runs them on the device): skipped without
CUDA, except under ``BCAT_GPU_TESTS_ON_CPU=1`` (the check's ``--dry-run``), where they run on the CPU so
that every code path is exercised before a GPU is at hand.

- packed ``prompt | chosen | rejected`` equals the plain forward in bf16 (sdpa, and flex attention on CUDA);
- every loss (SFT, DPO, ORPO, with the alignment terms) under bf16 mixed precision against fp32;
- a training run on this device against the CPU fp32 reference, step by step.

The kill + resume bitwise check is ``tests/reliability/test_crash_resume.py``, which trains on CUDA when
there is one; the check runs it there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from helpers import parallel_records, write_jsonl
from transformers import AutoModelForCausalLM

from bcat.batching.collate import GroupCollator
from bcat.config import AlignmentConfig, ObjectiveConfig
from bcat.data.tokenization import Example
from bcat.model.forward import PolicyForward, check_packed_forward, packed_inputs
from bcat.training.objectives import compute_loss, reference_logps

pytestmark = pytest.mark.gpu

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
BF16_REL = 3e-2
"""Relative difference accepted between a bf16 mixed-precision value and its fp32 reference."""


def _rel(a, b) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return float((a - b).norm() / b.norm().clamp_min(1e-6))


def _examples(n: int = 4) -> list[Example]:
    gen = torch.Generator().manual_seed(0)

    def ids(k):
        return torch.randint(3, 500, (k,), generator=gen).tolist()

    shapes = [(12, 3, 7), (5, 6, 2), (17, 1, 4), (8, 4, 4)]
    return [Example(i, f"g{i // 2}", ("en", "fr")[i % 2], [1] + ids(p), (ids(c) + [2], ids(r) + [2]))
            for i, (p, c, r) in enumerate(shapes[:n])]


def _to(batch: dict) -> dict:
    return {k: v.to(DEVICE) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    from helpers import build_tiny_model

    root = tmp_path_factory.mktemp("gpu-models")
    return {arch: build_tiny_model(root / arch, arch=arch) for arch in ("llama", "gemma3")}


IMPLEMENTATIONS = ["sdpa"] + (["flex_attention"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_packed_equals_plain_in_bf16(model_dirs, arch, impl):
    extra = {"layer_types": ["sliding_attention", "full_attention"] * 2, "sliding_window": 9} if arch == "gemma3" else {}
    model = AutoModelForCausalLM.from_pretrained(model_dirs[arch], dtype=torch.bfloat16, attn_implementation=impl,
                                                 **extra).to(DEVICE).eval()
    policy = PolicyForward(model, torch.bfloat16)
    assert check_packed_forward(policy, model.config.vocab_size, DEVICE, 1, (1, 2)), policy.checks
    batch = _to(GroupCollator(pad_token_id=0, anchor="en", pack=True)(_examples()))
    with torch.no_grad():
        outs = [policy(batch["input_ids"], batch["attention_mask"], batch["target_mask"], hidden_layers=(2,),
                       pool_mask=batch["pool_mask"], pool_rows=4, packed=p) for p in (None, packed_inputs(batch))]
    plain, packed = outs
    assert _rel(packed["token_logps"], plain["token_logps"]) < BF16_REL
    assert _rel(packed["pooled"], plain["pooled"]) < BF16_REL


@pytest.mark.parametrize("objective", [ObjectiveConfig(name="sft"), ObjectiveConfig(name="dpo"),
                                       ObjectiveConfig(name="orpo")], ids=["sft", "dpo", "orpo"])
def test_each_loss_in_bf16_against_fp32(model_dirs, objective):
    align = AlignmentConfig(hidden_weight=0.3, hidden_loss="cosine", hidden_standardize="center", output_weight=0.1,
                            token_kl_weight=0.1)
    center = (torch.zeros(1, 192, device=DEVICE), torch.ones(1, 192, device=DEVICE))  # (mean, scale) of layer 2
    examples = _examples()
    if objective.name == "sft":
        examples = [Example(e.index, e.group, e.lang, e.prompt_ids, e.completions[:1]) for e in examples]
    batch = _to(GroupCollator(pad_token_id=0, anchor="en", pack=objective.name != "sft")(examples))
    results = {}
    for name, amp in (("fp32", None), ("bf16", torch.bfloat16)):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).to(DEVICE)  # fp32 master weights
        ref = PolicyForward(AutoModelForCausalLM.from_pretrained(model_dirs["llama"]).to(DEVICE).eval(), amp)
        with torch.no_grad():  # the policy moves off the reference
            for p in model.parameters():
                p.add_(0.02 * torch.randn_like(p))
        policy = PolicyForward(model, amp)
        out = compute_loss(policy, batch, objective, align, (2,), reference=lambda b: reference_logps(ref, b),
                           standardization=center)
        assert out.loss.dtype == torch.float32  # reduced in fp32
        out.loss.backward()
        grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        results[name] = (out.terms, grad)
    (t32, g32), (t16, g16) = results["fp32"], results["bf16"]
    assert t32.keys() == t16.keys() and "main" in t32
    for k in t32:
        assert abs(float(t16[k]) - float(t32[k])) <= BF16_REL * max(1.0, abs(float(t32[k]))), k
    assert _rel(g16, g32) < 0.1


def test_training_on_this_device_follows_the_cpu_reference(tmp_path, model_dirs):
    """Three ORPO steps on this device (``model.dtype=auto``: bf16 mixed precision on a GPU) against the same run
    on the CPU in fp32: the logged losses agree within the bf16 tolerance, step by step."""
    data = write_jsonl(tmp_path / "d.jsonl", parallel_records(3))
    common = [f"model.path={model_dirs['llama']}", f"data.train={data}", "training.max_steps=3",
              "objective.name=orpo", "batch.groups_per_batch=1", "training.lr_scheduler=constant",
              "training.learning_rate=1e-3", "training.threads=1"]
    logs = {}
    for name, env in (("device", {}), ("cpu", {"CUDA_VISIBLE_DEVICES": ""})):
        out = tmp_path / name
        run = subprocess.run([sys.executable, "-m", "bcat.cli", "train", *common, f"training.output_dir={out}"],
                             env={**os.environ, **env}, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stderr[-3000:]
        logs[name] = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
        precision = json.loads((out / "training_summary.json").read_text())["precision"]
        expected = "bfloat16" if name == "device" and DEVICE.type == "cuda" else "float32"
        assert precision["compute"] == expected
    assert [e["step"] for e in logs["device"]] == [1, 2, 3]
    for a, b in zip(logs["device"], logs["cpu"]):
        assert abs(a["loss"] - b["loss"]) <= BF16_REL * max(1.0, abs(b["loss"])), (a["step"], a["loss"], b["loss"])
