"""``bcat diagnose``: can the hidden alignment term see the difference between a translation and
another item, on this model and this data, before any training?

For held-out groups, each variant's pooled state (pooled exactly as the training loss pools it)
is compared with every English anchor, at each requested layer, under each of the three
comparisons of ``alignment.hidden_standardize``:

- ``parallel``: mean cosine of a variant with ITS anchor; ``non_parallel``: with the other
  groups' anchors; ``gap``: their difference. A raw gap near 0 with both cosines near 1 is the
  signature of massive activations: every pair looks aligned and the term is inert;
- ``top1``: share of variants whose most similar anchor is their own (chance is 1 / groups);
- ``infonce``: the InfoNCE loss at ``temperature`` with all held-out anchors as negatives
  (``log(groups)`` is chance), and ``cosine``: ``1 - parallel``, the cosine term's value.

Statistics (mean and standard deviation per dimension) are fitted the way training fits them,
on a seeded random sample of ``stats_records`` records, but from a DIFFERENT half of the groups
than the ones measured, so the measurement cannot profit from fitting. The ``massive`` entry of
each layer shows the common component: the largest and the median absolute value of the mean
vector, and the largest and median standard deviation.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from bcat.batching.collate import GroupCollator
from bcat.config import HIDDEN_STANDARDIZATIONS, ModelConfig
from bcat.data.records import load_records, read_rows
from bcat.data.tokenization import tokenize_records
from bcat.errors import ConfigError
from bcat.languages import ANCHOR
from bcat.model.forward import PolicyForward
from bcat.model.loading import load_model, load_tokenizer, num_layers, resolve_hidden_layers
from bcat.training.hidden import pool_examples, sample_examples
from bcat.training.losses import fit_standardization, standardize


def _objective_of(path: str) -> str:
    """``orpo`` for preference records (``chosen``), ``sft`` otherwise: only the prompt and first answer are used."""
    for _, obj in read_rows(path):
        return "orpo" if isinstance(obj, dict) and "chosen" in obj else "sft"
    return "sft"


def similarity(z: torch.Tensor, groups: torch.Tensor, is_anchor: torch.Tensor, temperature: float) -> dict:
    """Parallel vs non-parallel cosines of variants to anchors, nearest-anchor accuracy, InfoNCE.

    >>> z = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.2, 0.8]])
    >>> r = similarity(z, torch.tensor([0, 0, 1, 1]), torch.tensor([True, False, True, False]), 0.1)
    >>> r["top1"], round(r["parallel"], 3), round(r["non_parallel"], 3)
    (1.0, 0.982, 0.176)
    """
    zn = F.normalize(z.float(), dim=-1)
    anchors = torch.nonzero(is_anchor).flatten()
    variants = torch.nonzero(~is_anchor & torch.isin(groups, groups[anchors])).flatten()
    sims = zn[variants] @ zn[anchors].T  # [V, A]
    own = groups[variants][:, None] == groups[anchors][None, :]
    target = own.float().argmax(dim=1)
    return {
        "parallel": sims[own].mean().item(),
        "non_parallel": sims[~own].mean().item() if (~own).any() else float("nan"),
        "gap": (sims[own].mean() - sims[~own].mean()).item() if (~own).any() else float("nan"),
        "top1": (sims.argmax(dim=1) == target).float().mean().item(),
        "infonce": F.cross_entropy(sims / temperature, target).item(),
        "cosine": 1.0 - sims[own].mean().item(),
    }


def _massive(pooled: torch.Tensor) -> dict:
    mean, std = pooled.mean(0).abs(), pooled.std(0)
    return {"max_abs_mean": mean.max().item(), "median_abs_mean": mean.median().item(),
            "dim_of_max": int(mean.argmax()), "max_std": std.max().item(), "median_std": std.median().item()}


def diagnose(model: str, data: str, layers: Optional[Sequence[int]] = None, groups: int = 20,
             stats_records: int = 32, max_length: int = 512, temperature: float = 0.1, seed: int = 0,
             anchor: str = ANCHOR, objective: Optional[str] = None) -> dict:
    """Measure how the hidden term's similarities separate parallel from non-parallel items (see the module doc).

    ``layers``: indices into ``hidden_states`` (``None``: the middle layer, training's default; an empty
    list: every transformer layer). ``groups``: how many groups (with the anchor and 2+ languages) to use,
    half to fit the statistics on and half to measure.
    """
    objective = objective or _objective_of(data)
    records, _ = load_records(data, objective, anchor, None, drop_groups_without_anchor=True)
    by_group: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        by_group.setdefault(r.group, []).append(i)
    usable = sorted(g for g, rows in by_group.items() if len(rows) >= 2)
    if len(usable) < 4:
        raise ConfigError(f"{data}: diagnose needs at least 4 groups with the anchor and another language, "
                          f"found {len(usable)}")
    chosen = random.Random(f"bcat-diagnose:{seed}").sample(usable, min(groups, len(usable)))
    fit_groups, eval_groups = chosen[: len(chosen) // 2], chosen[len(chosen) // 2:]

    tokenizer = load_tokenizer(model, option="--model")
    examples = tokenize_records(records, tokenizer, max_length)
    fit_pool = [examples[i] for g in fit_groups for i in by_group[g]]
    fit_sample = sample_examples(fit_pool, stats_records, seed)
    measured = [examples[i] for g in eval_groups for i in by_group[g]]

    if layers is None:
        layer_ids = resolve_hidden_layers(model, None, option="--layers")
    else:
        count = _layer_count(model)
        layer_ids = tuple(layers) if layers else tuple(range(1, count + 1))
        resolve_hidden_layers(model, list(layer_ids), option="--layers")
    policy = PolicyForward(load_model(ModelConfig(path=model, dtype="float32"), option="--model"))
    collator = GroupCollator(tokenizer.pad_token_id, anchor, tokenizer.bos_token_id)
    pooled = pool_examples(policy, fit_sample + measured, collator, layer_ids)
    fit, evaluated = pooled[:, : len(fit_sample)], pooled[:, len(fit_sample):]
    group_ids = {g: k for k, g in enumerate(eval_groups)}
    group_index = torch.tensor([group_ids[e.group] for e in measured])
    is_anchor = torch.tensor([e.lang == anchor for e in measured])

    result = {"model": model, "data": str(data), "objective_fields": objective, "anchor": anchor,
              "fit_groups": len(fit_groups), "fit_records": len(fit_sample), "measured_groups": len(eval_groups),
              "measured_records": len(measured), "languages": sorted({e.lang for e in measured}),
              "temperature": temperature, "chance_top1": 1 / len(eval_groups),
              "chance_infonce": math.log(len(eval_groups)), "seed": seed, "layers": {}}
    for k, layer in enumerate(layer_ids):
        entry = {"massive": _massive(fit[k])}
        for kind in HIDDEN_STANDARDIZATIONS:
            mean, scale = fit_standardization(fit[k], kind)
            entry[kind] = similarity(standardize(evaluated[k], mean, scale), group_index, is_anchor, temperature)
        result["layers"][str(layer)] = entry
    return result


def _layer_count(model: str) -> int:
    from transformers import AutoConfig

    from bcat.model.loading import base_model_dir, resolve_model_dir

    return num_layers(AutoConfig.from_pretrained(base_model_dir(resolve_model_dir(model, "--model"), "--model")))


def format_report(result: dict) -> str:
    """A readable table of :func:`diagnose`'s result."""
    lines = [f"model {result['model']}, data {result['data']}: {result['measured_records']} records of "
             f"{result['measured_groups']} held-out groups ({', '.join(result['languages'])}); statistics from "
             f"{result['fit_records']} records of {result['fit_groups']} other groups",
             f"chance: top1 {result['chance_top1']:.2f}, infonce {result['chance_infonce']:.2f} "
             f"(temperature {result['temperature']})",
             f"{'layer':>5} {'compare':<12} {'parallel':>9} {'non-par.':>9} {'gap':>7} {'top1':>6} {'infonce':>8}"
             f"   common component"]
    for layer, entry in result["layers"].items():
        m = entry["massive"]
        common = (f"|mean| max {m['max_abs_mean']:.4g} (dim {m['dim_of_max']}) median {m['median_abs_mean']:.3g}; "
                  f"std max {m['max_std']:.4g} median {m['median_std']:.3g}")
        for j, kind in enumerate(HIDDEN_STANDARDIZATIONS[::-1]):
            r = entry[kind]
            lines.append(f"{layer if j == 0 else '':>5} {kind:<12} {r['parallel']:>9.3f} {r['non_parallel']:>9.3f} "
                         f"{r['gap']:>7.3f} {r['top1']:>6.2f} {r['infonce']:>8.3f}   {common if j == 0 else ''}")
    return "\n".join(lines)


def write_report(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
