"""``bcat eval`` on a GPU decodes in bf16 with a batch sized to memory; on the CPU it stays fp32 at the measured
default batch. (The bf16-vs-fp32 agreement is measured on the GPU by ``bench/gpu_check.py``.)"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from bcat.evaluation.evaluate import RagOptions, resolve_batch_size
from bcat.evaluation.generation import decode_batch_size
from bcat.model.loading import load_for_eval


def test_auto_on_the_cpu_is_fp32_and_the_default_batch(tiny_model_dir):
    model, _ = load_for_eval(str(tiny_model_dir))
    assert next(model.parameters()).dtype == torch.float32
    assert resolve_batch_size(None, model, 2048) == RagOptions.batch_size
    assert resolve_batch_size(7, model, 2048) == 7


def test_explicit_bf16_loads_bf16(tiny_model_dir):
    model, _ = load_for_eval(str(tiny_model_dir), dtype="bfloat16")
    assert next(model.parameters()).dtype == torch.bfloat16


def test_decode_batch_grows_with_free_memory_and_shrinks_with_row_length():
    c = SimpleNamespace(num_hidden_layers=16, num_key_value_heads=8, head_dim=64, hidden_size=2048,
                        num_attention_heads=32, vocab_size=128256)
    small, large = decode_batch_size(c, 8 * 2**30, 2048), decode_batch_size(c, 64 * 2**30, 2048)
    assert 1 <= small < large <= 512
    assert decode_batch_size(c, 8 * 2**30, 512) > small
    assert decode_batch_size(c, 1, 2048) == 1  # never zero
