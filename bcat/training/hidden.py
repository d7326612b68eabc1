"""Pooled hidden states outside the training step: the standardisation statistics of the hidden
alignment term, fitted once on the initial model.

:func:`bcat.training.losses.hidden_alignment_loss` compares ``(h - mean) / scale`` rather than raw
pooled states (its docstring says why). ``mean`` and ``scale`` come from
:func:`fit_hidden_standardization`: a seeded random sample of ``alignment.hidden_stats_records``
training records, pooled exactly as the loss pools them (same collator, same layers, same mask),
through the model as it is BEFORE the first update, in eval mode and without gradients. Before a
resumed run loads its checkpoint the model is again the initial one (a fresh LoRA adapter adds
zero), so a resume fits the same statistics, and every rank fits them on the same records.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch

from bcat.data.tokenization import Example
from bcat.model.forward import packed_inputs
from bcat.training.losses import fit_standardization

log = logging.getLogger(__name__)


@dataclass
class Standardization:
    """Per-layer statistics for :func:`bcat.training.losses.standardize`."""

    layers: tuple[int, ...]
    mean: torch.Tensor
    """``[len(layers), D]``."""
    scale: torch.Tensor
    """``[len(layers), D]``."""
    kind: str
    records: int
    seconds: float = 0.0

    def summary(self) -> dict:
        return {"kind": self.kind, "layers": list(self.layers), "records": self.records,
                "seconds": round(self.seconds, 2)}


def sample_examples(examples: Sequence, n: int, seed: int) -> list:
    """``n`` examples (or any items) drawn without replacement, the same on every machine and rank (string-seeded)."""
    rng = random.Random(f"bcat-hidden-stats:{seed}")
    return rng.sample(list(examples), min(n, len(examples)))


def pool_examples(policy, examples: Sequence[Example], collator, layers: tuple[int, ...],
                  batch_size: int = 8) -> torch.Tensor:
    """``[len(layers), len(examples), D]`` fp32: each example's pooled state at each layer, in the
    order given, pooled as the training loss pools it (prompt + first completion, BOS excluded).

    Eval mode, no gradients, the output head skipped (nothing is scored); batches of similar
    length to limit padding.
    """
    device = next(policy.parameters()).device
    order = sorted(range(len(examples)), key=lambda i: examples[i].length)
    out: Optional[torch.Tensor] = None
    was_training = policy.training
    policy.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                batch = collator([examples[i] for i in rows])
                batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
                n = len(rows)
                nothing = torch.zeros_like(batch["target_mask"])
                pooled = policy(batch["input_ids"], batch["attention_mask"], nothing, hidden_layers=layers,
                                pool_mask=batch["pool_mask"], pool_rows=n, packed=packed_inputs(batch))["pooled"]
                if out is None:
                    out = torch.zeros(len(layers), len(examples), pooled.shape[-1])
                out[:, rows] = pooled.float().cpu()
    finally:
        policy.train(was_training)
    assert out is not None, "no examples"
    return out


def fit_sampled_standardization(pool: Callable[[list], torch.Tensor], items: Sequence, layers: tuple[int, ...],
                                kind: str, records: int, seed: int, device) -> Optional[Standardization]:
    """The statistics of the hidden term from ``pool`` (``[len(layers), n, D]`` pooled states of the ``n``
    items it is given, on the initial model) applied to a seeded sample of ``records`` of ``items``; ``None``
    for ``kind="none"`` (raw states, no forward). Shared by ``bcat train`` and the TRL trainers, which pool
    their own batches."""
    if kind == "none":
        return None
    started = time.time()
    sample = sample_examples(items, records, seed)
    if len(sample) < 2:
        raise ValueError("fitting the hidden-state standardisation needs at least 2 training records")
    mean, scale = fit_standardization(pool(sample), kind)
    stats = Standardization(layers, mean.to(device), scale.to(device), kind, len(sample), time.time() - started)
    log.info("bcat: hidden alignment compares %s pooled states (layers %s; statistics of %d records on the "
             "initial model, %.1f s)", "standardised" if kind == "standardize" else "centred",
             list(layers), len(sample), stats.seconds)
    return stats


def fit_hidden_standardization(policy, examples: Sequence[Example], collator, layers: tuple[int, ...], kind: str,
                               records: int, seed: int) -> Optional[Standardization]:
    """The statistics of the hidden term for ``bcat train``, or ``None`` for ``kind="none"``."""
    return fit_sampled_standardization(lambda sample: pool_examples(policy, sample, collator, layers), examples,
                                       layers, kind, records, seed, next(policy.parameters()).device)
