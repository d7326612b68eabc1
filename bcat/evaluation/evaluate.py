"""``bcat eval``: run the suites on one model and write ``metrics.json`` and ``predictions.jsonl``.

Library use: everything the command does (:class:`EvalOptions` has a field per flag)::

    from bcat.evaluation.evaluate import EvalOptions, run_eval

    metrics = run_eval(EvalOptions(model="runs/bcat/final", data="test.jsonl", output="out/bcat", shots=2))

or one model already in memory on items of one's own::

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
from bcat.errors import OptionError
from bcat.evaluation.generation import greedy_generate
from bcat.evaluation.scoring import (
    BootstrapOptions,
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


@dataclass(kw_only=True)
class GenerationOptions:
    """How the RAG suite prompts and decodes."""

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


@dataclass
class RagOptions(GenerationOptions, ScoringOptions):
    """How the RAG suite prompts and decodes, and (:class:`ScoringOptions`) scores and summarises."""


@dataclass(kw_only=True)
class EvalOptions(GenerationOptions, BootstrapOptions):
    """What ``bcat eval`` does, as a Python call: :func:`run_eval`. Each field is the flag of the same name
    (``batch_size``: ``--batch-size``); errors name the field (:class:`bcat.errors.OptionError`)."""

    model: str
    """Local model or adapter directory, a ``bcat train`` output directory, or ``builtin:NAME``."""
    output: str
    """Directory for ``metrics.json`` and ``predictions.jsonl``, replaced whole when they are written."""
    data: str = "builtin"
    """RAG QA JSONL file (group, lang, question, passages, answers), or ``builtin``: the bundled test split (the
    default, so that a model can be evaluated without data of one's own)."""
    suite: Sequence[str] = ("rag",)
    """Suites to run: ``rag`` (the headline) and ``ood`` (the out-of-domain suite, opt-in: it generates long
    answers)."""
    overwrite: bool = False
    """Replace a finished evaluation (``output`` holding ``metrics.json``); off, so that a repeated command
    never silently replaces a result."""
    limit: Optional[int] = None
    """Evaluate the first N groups only (all their languages; for ``ood``, N items per language and task);
    ``None``: all."""
    languages: Optional[Sequence[str]] = None
    """Languages to evaluate (``None``: all in the data; for ``ood``, narrowed to those it has data for)."""
    anchor: Optional[str] = None
    """The anchor language. ``None``: the model's training run says (``config.yaml``: ``data.anchor``),
    else English. Given with a training run, it may repeat the run's, not contradict it
    (:func:`bcat.evaluation.scoring.resolve_languages`)."""
    seen: Optional[Sequence[str]] = None
    """Languages seen in training; the other evaluated ones are reported as unseen. ``None``: the training
    run says, else for the built-in model on the bundled data bcat's bundled split (:mod:`bcat.languages`),
    else every evaluated language counts as seen (no unseen mean)."""
    unseen: Optional[Sequence[str]] = None
    """Languages NOT seen in training, instead of ``seen``."""
    instructions: Optional[str] = None
    """Prompt wording per language: a tab-separated file with the columns lang, passage, question, answer,
    instruction (the format of ``bcat/resources/eval/instructions.tsv``), its rows before the bundled ones.
    ``None``: the bundled wording only (a tag without a row uses its language subtag's: pt-BR -> pt)."""
    ood_tasks: Optional[Sequence[str]] = None
    """Tasks of the ``ood`` suite (:data:`bcat.evaluation.ood.OOD_TASKS`); ``None``:
    :data:`bcat.evaluation.ood.DEFAULT_OOD_TASKS`."""
    batch_size: Optional[int] = None
    """Most prompts decoded together (:attr:`GenerationOptions.batch_size`); ``None``: sized by
    :func:`resolve_batch_size` (the CPU default, or what a GPU's free memory holds)."""
    device: str = "cpu"
    """Torch device (the CPU by default: it works everywhere)."""
    dtype: str = "auto"
    """Weights and compute: ``auto`` (fp32 on the CPU, bf16 on a GPU that has it:
    :func:`bcat.model.loading.load_for_eval`), ``float32``, ``bfloat16`` or ``float16``."""
    trust_remote_code: bool = False
    """Run Python code shipped with the model; off, as that code could do anything."""


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
    """``requested``, or for ``None`` (auto): :attr:`GenerationOptions.batch_size` on the CPU, and on
    a GPU the rows that fit its free memory (:func:`bcat.evaluation.generation.decode_batch_size`)."""
    import torch

    from bcat.evaluation.generation import decode_batch_size

    if requested is not None:
        return requested
    weights = next(model.parameters())
    if weights.device.type != "cuda":
        return GenerationOptions.batch_size
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
        raise OptionError(f"no prompt wording for language {', '.join(repr(l) for l in missing)} (nor for its "
                          "language subtag): give it with {instructions} FILE.tsv, a tab-separated file with the "
                          "columns lang, passage, question, answer, instruction, like "
                          "bcat/resources/eval/instructions.tsv", "instructions")
    return {l: c.wording for l, c in choices.items()}, {l: c.source for l, c in choices.items()}


def resolve_data(data: str) -> Path:
    """The data file of :attr:`EvalOptions.data`: a path, or ``builtin`` for the bundled test split."""
    if data == "builtin":
        path = resource(BUILTIN_DATA)
        if not path.is_file():
            raise OptionError(f"{{data}} builtin: the bundled test split bcat/resources/{BUILTIN_DATA} is not present "
                              "in this installation; give a JSONL file as {data}", "data")
        return path
    return Path(data)


def is_bundled_data(path: Path) -> bool:
    """Whether ``path`` is the bundled test split (by location)."""
    return path.resolve() == resource(BUILTIN_DATA).resolve()


def check_suites(suites: Sequence[str]) -> list[str]:
    """The suites to run, refusing unknown names and none (a string is one name)."""
    suites = [s.strip() for s in ([suites] if isinstance(suites, str) else suites) if s.strip()]
    bad = [s for s in suites if s not in SUITES]
    if bad or not suites:
        raise OptionError(f"{{suite}}: unknown suite {', '.join(bad) or '(none)'}; choose from {', '.join(SUITES)}",
                          "suite")
    return suites


def _load_ood():
    try:
        ood = importlib.import_module("bcat.evaluation.ood.suite")
    except ModuleNotFoundError as e:
        if e.name == "bcat.evaluation.ood.suite":
            raise OptionError("{suite} ood: the out-of-domain suite (bcat.evaluation.ood.suite) is not available in "
                              "this installation", "suite") from None
        raise
    return ood


def ood_arguments(ood, options: EvalOptions, batch_size: int) -> dict:
    """Keyword arguments for ``ood.run_ood`` from the :class:`EvalOptions` it accepts.

    ``languages`` is narrowed to the languages the OOD suite has data for; ``limit`` caps the
    items per language and task; ``ood_tasks`` picks tasks.
    """
    accepted = inspect.signature(ood.run_ood).parameters
    kwargs: dict = {"batch_size": batch_size, "limit": options.limit}
    if options.languages:
        supported = getattr(ood, "OOD_LANGS", None)
        kwargs["languages"] = [l for l in options.languages if supported is None or l in supported]
        if not kwargs["languages"]:
            raise OptionError(f"{{suite}} ood: none of {{languages}} {','.join(options.languages)} has OOD data",
                              "suite", "languages")
    if options.ood_tasks:
        kwargs["tasks"] = tuple(options.ood_tasks)
    return {k: v for k, v in kwargs.items() if k in accepted}


def check_options(options: EvalOptions) -> None:
    """Refuse, before any work, an empty ``languages`` and an ``output`` that holds a finished evaluation
    (unless ``overwrite``)."""
    if options.languages is not None and not options.languages:
        raise OptionError("{languages}: give at least one language code", "languages")
    if (Path(options.output) / "metrics.json").exists() and not options.overwrite:
        raise OptionError(f"{{output}} {options.output} holds a finished evaluation (metrics.json): choose another "
                          "folder, or pass {overwrite} to replace it", "output", "overwrite")


def run_eval(options: EvalOptions) -> dict:
    """Everything ``bcat eval`` does; returns the metrics written to ``OUTPUT/metrics.json``. The output
    folder is checked and held before anything is read (only the main process writes)."""
    check_options(options)
    with claim_output(Path(options.output), "output", replaced=True) if is_main_process() else nullcontext():
        return _run_eval(options)


def _run_eval(options: EvalOptions) -> dict:
    from bcat import __version__
    from bcat.model.loading import load_for_eval

    suites = check_suites(options.suite)
    output = Path(options.output)
    items, data_path, languages, wordings, wording_sources = None, None, None, None, {}
    if "rag" in suites:  # validate the data, the wording and the training run's config before loading any model
        data_path = resolve_data(options.data)
        items = load_items(data_path, languages=options.languages, limit_groups=options.limit)
        evaluated = list(dict.fromkeys(i.lang for i in items))
        wordings, wording_sources = prompt_wordings(evaluated, options.instructions)
        for lang, source in wording_sources.items():
            if source != "bundled":
                log.info("bcat eval: prompt wording for %s: %s", lang, source)
        languages = resolve_languages(options.model, evaluated, anchor=options.anchor, seen=options.seen,
                                      unseen=options.unseen, bundled_data=is_bundled_data(data_path))
    ood = _load_ood() if "ood" in suites else None
    started = time.time()
    model, tokenizer = load_for_eval(options.model, trust_remote_code=options.trust_remote_code,
                                     device=process_device(options.device), dtype=options.dtype)
    # the longest row a RAG prompt makes (data.max_length's default) plus the answer budget
    batch_size = resolve_batch_size(options.batch_size, model, 2048 + options.max_new_tokens)
    metrics: dict = {"bcat_version": __version__, "model": options.model, "suites": suites,
                     "dtype": str(next(model.parameters()).dtype).removeprefix("torch.")}
    if ood is not None:  # before any trimming: perplexities are over the full vocabulary
        metrics["ood"] = ood.run_ood(model, tokenizer, **ood_arguments(ood, options, batch_size))
    if items is not None:
        anchor, seen, source = languages
        rag = RagOptions(batch_size=batch_size, max_new_tokens=options.max_new_tokens, shots=options.shots,
                         chat_template=options.chat_template, anchor=anchor, seen=seen, languages_source=source,
                         bootstrap=options.bootstrap, seed=options.seed, trim_vocab=options.trim_vocab)
        summary, predictions = evaluate_rag(model, tokenizer, items, rag, wordings)
        metrics["options"] = {"batch_size": rag.batch_size, "max_new_tokens": rag.max_new_tokens,
                              "shots": rag.shots, "chat_template": rag.chat_template, "limit": options.limit,
                              "languages": None if options.languages is None else list(options.languages),
                              "trim_vocab": rag.trim_vocab, "prompt_wording": wording_sources}
        metrics.update(rag_metrics(data_path, items, summary))
    metrics["seconds"] = round(time.time() - started, 1)
    metrics["processes"] = num_processes()
    if is_main_process():
        write_outputs(output, metrics, predictions if items is not None else None)
    return metrics
