"""``bcat eval``: run the suites on one model and write ``metrics.json`` and ``predictions.jsonl``.

Library use::

    from bcat.evaluation.evaluate import evaluate_rag
    from bcat.model.loading import load_for_eval
    from bcat.data.rag import load_items

    model, tokenizer = load_for_eval("runs/bcat/final")
    summary, predictions = evaluate_rag(model, tokenizer, load_items("test.jsonl"))
"""

from __future__ import annotations

import importlib
import inspect
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from bcat.data.rag import (
    RagItem,
    Wording,
    build_prompts,
    load_items,
    read_wording_file,
    uses_chat_template,
    wordings_for,
)
from bcat.bundled import resource
from bcat.errors import BcatError
from bcat.evaluation.generation import greedy_generate
from bcat.evaluation.scoring import (
    ScoringOptions,
    rag_metrics,
    resolve_languages,
    score_outputs,
    write_outputs,
)
from bcat.evaluation.sharding import (
    is_main_process,
    map_sharded,
    num_processes,
    process_device,
)
from bcat.output import claim_output

log = logging.getLogger(__name__)

BUILTIN_DATA = "kb/test.jsonl"
SUITES = ("rag", "ood")


@dataclass
class RagOptions(ScoringOptions):
    """How the RAG suite prompts and decodes (and, inherited, scores and summarises)."""

    batch_size: int = 32
    """Most prompts decoded together (continuous batching: a finished row's place goes to the next
    prompt). Evidence for this default: ``bench/eval_speed.py``,
    ``bench/results/eval-speed-gemma3-270m.json``. The answers do not depend on it (up to fp32
    near-ties, see :mod:`bcat.evaluation.generation`)."""
    max_new_tokens: int = 32
    """Generation budget per answer (answers are short; generation also stops at the first line break)."""
    shots: int = 0
    """Solved examples in the prompt (same language, other groups)."""
    chat_template: str = "off"
    """``auto`` (use the tokenizer's chat template when it has one), ``on`` or ``off`` (plain prompt)."""
    trim_vocab: bool = False
    """Generate with the vocabulary restricted to the ids of the prompts (plus the
    :func:`bcat.model.trim.kept_token_ids` margin), the model trimmed in place. Exact for the prompts, but
    the model can then only answer with those ids: off by default, as it changes some answers
    (docs/builtin.md, "Vocabulary trimming", says what it changed and saved)."""


def evaluate_rag(model, tokenizer, items: Sequence[RagItem], options: RagOptions = RagOptions(),
                 wordings: Optional[dict[str, Wording]] = None) -> tuple[dict, list[dict]]:
    """Generate an answer for every item, score it, and summarise. Returns ``(summary, predictions)``.

    ``wordings``: the prompt wording per language (:func:`prompt_wordings`); default the bundled table."""
    chat = uses_chat_template(tokenizer, options.chat_template)
    prompts = build_prompts(items, tokenizer, shots=options.shots, chat=chat, seed=options.seed, wordings=wordings)
    vocab = trim_to_prompts(model, tokenizer, prompts) if options.trim_vocab else None
    outputs = map_sharded(
        lambda part: greedy_generate(model, tokenizer, part, batch_size=options.batch_size,
                                     max_new_tokens=options.max_new_tokens, add_special_tokens=not chat,
                                     desc="rag", vocab=vocab),
        prompts)
    summary, predictions = score_outputs(items, outputs, options, prompts=prompts)
    summary["prompt_format"] = "chat" if chat else "plain"
    if vocab is not None:
        summary["vocabulary"] = {"trimmed": True, "kept": len(vocab), "of": vocab.old_vocab_size}
    return summary, predictions


def resolve_batch_size(requested: int | None, model, tokens_per_row: int) -> int:
    """``requested``, or for ``None`` (``--batch-size auto``): :attr:`RagOptions.batch_size` on the CPU, and on
    a GPU the rows that fit its free memory (:func:`bcat.evaluation.generation.decode_batch_size`)."""
    import torch

    from bcat.evaluation.generation import decode_batch_size

    if requested is not None:
        return requested
    weights = next(model.parameters())
    if weights.device.type != "cuda":
        return RagOptions.batch_size
    free, _ = torch.cuda.mem_get_info(weights.device)
    return decode_batch_size(model.config, free, tokens_per_row, weights.element_size())


def trim_to_prompts(model, tokenizer, prompts: Sequence[str]):
    """Trim ``model`` in place to the ids of ``prompts`` plus the margin; returns the :class:`TrimmedVocab`.

    The gold answers are NOT added: that would steer decoding toward them.
    """
    from bcat.model.trim import kept_token_ids, trim_model

    vocab = trim_model(model, kept_token_ids(tokenizer, prompts))
    log.info("bcat eval: vocabulary trimmed to %d of %d ids for generation", len(vocab), vocab.old_vocab_size)
    return vocab


def prompt_wordings(languages: Sequence[str], instructions: Optional[str] = None
                    ) -> tuple[dict[str, Wording], dict[str, str]]:
    """The wording of every evaluated language and where each came from (``{lang: source}``);
    refuses, before any model work, languages that have none."""
    user = read_wording_file(instructions) if instructions else None
    choices, missing = wordings_for(languages, user, str(instructions or ""))
    if missing:
        raise BcatError(f"no prompt wording for language {', '.join(repr(l) for l in missing)} (nor for its language "
                        f"subtag): give it with --instructions FILE.tsv, a tab-separated file with the columns lang, "
                        f"passage, question, answer, instruction, like bcat/resources/eval/instructions.tsv")
    return {l: c.wording for l, c in choices.items()}, {l: c.source for l, c in choices.items()}


def resolve_data(data: str) -> Path:
    """The data file for ``--data``: a path, or ``builtin`` for the bundled test split."""
    if data == "builtin":
        path = resource(BUILTIN_DATA)
        if not path.is_file():
            raise BcatError(f"--data builtin: the bundled test split bcat/resources/{BUILTIN_DATA} is not present in this "
                            "installation; pass a JSONL file with --data")
        return path
    return Path(data)


def is_bundled_data(path: Path) -> bool:
    """Whether ``path`` is the bundled test split (by location)."""
    return path.resolve() == resource(BUILTIN_DATA).resolve()


def parse_suites(text: str) -> list[str]:
    """``rag,ood`` -> ``['rag', 'ood']``, refusing unknown names."""
    suites = [s.strip() for s in text.split(",") if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise BcatError(f"--suite: unknown suite {', '.join(bad) or '(none)'}; choose from {', '.join(SUITES)}")
    return suites


def _load_ood():
    try:
        ood = importlib.import_module("bcat.evaluation.ood.suite")
    except ModuleNotFoundError as e:
        if e.name == "bcat.evaluation.ood.suite":
            raise BcatError("--suite ood: the out-of-domain suite (bcat.evaluation.ood.suite) is not available in "
                            "this installation") from None
        raise
    return ood


def ood_arguments(ood, args) -> dict:
    """Keyword arguments for ``ood.run_ood`` from the ``bcat eval`` options it accepts.

    ``--languages`` is narrowed to the languages the OOD suite has data for; ``--limit`` caps the
    items per language and task; ``--ood-tasks`` picks tasks.
    """
    accepted = inspect.signature(ood.run_ood).parameters
    kwargs: dict = {"batch_size": args.batch_size, "limit": args.limit}
    if args.languages:
        supported = getattr(ood, "OOD_LANGS", None)
        kwargs["languages"] = [l for l in args.languages if supported is None or l in supported]
        if not kwargs["languages"]:
            raise BcatError(f"--suite ood: none of --languages {','.join(args.languages)} has OOD data")
    if getattr(args, "ood_tasks", None):
        kwargs["tasks"] = tuple(args.ood_tasks)
    return {k: v for k, v in kwargs.items() if k in accepted}


def run_eval(args) -> dict:
    """Everything ``bcat eval`` does; returns the metrics written to ``OUTPUT/metrics.json``. The output
    folder is checked and held before anything is read (only the main process writes)."""
    with claim_output(Path(args.output), "--output", replaced=True) if is_main_process() else nullcontext():
        return _run_eval(args)


def _run_eval(args) -> dict:
    from bcat import __version__
    from bcat.model.loading import load_for_eval

    suites = parse_suites(args.suite)
    output = Path(args.output)
    items, data_path, languages, wordings, wording_sources = None, None, None, None, {}
    if "rag" in suites:  # validate the data, the wording and the training run's config before loading any model
        data_path = resolve_data(args.data)
        items = load_items(data_path, languages=args.languages, limit_groups=args.limit)
        evaluated = list(dict.fromkeys(i.lang for i in items))
        wordings, wording_sources = prompt_wordings(evaluated, getattr(args, "instructions", None))
        for lang, source in wording_sources.items():
            if source != "bundled":
                log.info("bcat eval: prompt wording for %s: %s", lang, source)
        languages = resolve_languages(args.model, evaluated, anchor=getattr(args, "anchor", None),
                                      seen=getattr(args, "seen", None), unseen=getattr(args, "unseen", None),
                                      bundled_data=is_bundled_data(data_path))
    ood = _load_ood() if "ood" in suites else None
    started = time.time()
    model, tokenizer = load_for_eval(args.model, trust_remote_code=args.trust_remote_code,
                                     device=process_device(args.device), dtype=getattr(args, "dtype", "auto"))
    # the longest row a RAG prompt makes (data.max_length's default) plus the answer budget
    args.batch_size = resolve_batch_size(args.batch_size, model, 2048 + args.max_new_tokens)
    metrics: dict = {"bcat_version": __version__, "model": args.model, "suites": suites,
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if ood is not None:  # before any trimming: perplexities are over the full vocabulary
        metrics["ood"] = ood.run_ood(model, tokenizer, **ood_arguments(ood, args))
    if items is not None:
        anchor, seen, source = languages
        options = RagOptions(batch_size=args.batch_size, max_new_tokens=args.max_new_tokens, shots=args.shots,
                             chat_template=args.chat_template, anchor=anchor, seen=seen, languages_source=source,
                             bootstrap=args.bootstrap, seed=args.seed, trim_vocab=args.trim_vocab)
        summary, predictions = evaluate_rag(model, tokenizer, items, options, wordings)
        metrics["options"] = {"batch_size": options.batch_size, "max_new_tokens": options.max_new_tokens,
                              "shots": options.shots, "chat_template": options.chat_template, "limit": args.limit,
                              "languages": args.languages, "trim_vocab": options.trim_vocab,
                              "prompt_wording": wording_sources}
        metrics.update(rag_metrics(data_path, items, summary))
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["processes"] = num_processes()
    if is_main_process():
        write_outputs(output, metrics, predictions if items is not None else None)
    return metrics
