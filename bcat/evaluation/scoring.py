"""Scoring saved answers: the one code path from predictions to ``metrics.json``, for ``bcat eval``
and for ``bcat score`` (re-scoring without a model).

``bcat eval`` generates, then calls :func:`score_outputs` and :func:`rag_metrics` and writes with
:func:`write_outputs`; ``bcat score --data FILE --predictions PRED.jsonl --output DIR`` reads saved
answers (JSONL with ``group``, ``lang``, ``prediction``; validated with file, line and field) and
runs the same three functions, so re-scoring an eval's own ``predictions.jsonl`` reproduces its
``metrics.json`` byte for byte (``tests/evaluation/test_score.py``).

Which languages are seen, and the anchor, come from (:func:`resolve_languages`), in this order:
the training run next to the model (``config.yaml``: ``data.anchor`` and ``data.languages``; when
``data.languages`` is null, the languages its ``training_summary.json`` lists; ``--anchor`` /
``--seen`` / ``--unseen`` may repeat it but not contradict it); else ``--anchor`` / ``--seen`` /
``--unseen``; else the bundled split (:mod:`bcat.languages`) for the built-in model on the bundled
data; else the data itself: every evaluated language counts as seen, with no unseen mean.
``metrics.json`` records the choice and its source, and the command line prints it.

Library use::

    from bcat.data.rag import load_items
    from bcat.evaluation.scoring import ScoringOptions, score_outputs

    items = load_items("test.jsonl")
    summary, predictions = score_outputs(items, my_model_answers, ScoringOptions(seen=["en", "de"]))
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from bcat.data.normalize import first_line
from bcat.data.rag import RagItem, instruction_table, load_items
from bcat.data.records import read_rows
from bcat.errors import BcatError, DataError, OptionError
from bcat.evaluation.metrics import (LANGUAGE_ID_NOT_MEASURED, LanguageIdentifier, language_id_available,
                                     score_item)
from bcat.evaluation.summary import summarize
from bcat.languages import ANCHOR, SEEN
from bcat.output import claim_output, replace_dir

log = logging.getLogger(__name__)

DATA_SOURCE = ("the data: every evaluated language counts as seen (no training run for the model, no "
               "seen/unseen languages given)")
BUNDLED_SOURCE = "bcat's bundled split (bcat/languages.py SEEN/UNSEEN), for the built-in model on the bundled data"


@dataclass(kw_only=True)
class BootstrapOptions:
    """The resampling behind every confidence interval (eval, score, report)."""

    bootstrap: int = 2000
    """Bootstrap resamples for the confidence intervals (percentile intervals want about 1000 or more: Efron and
    Tibshirani, *An Introduction to the Bootstrap*, 1993)."""
    seed: int = 0
    """Seed of the bootstrap (and, in ``bcat eval``, of the choice of shots): fixed, so a re-run gives the same
    intervals."""


@dataclass
class ScoringOptions(BootstrapOptions):
    """How answers are scored and summarised."""

    anchor: str = ANCHOR
    """The language every other is compared with (English unless the training run says otherwise)."""
    seen: Optional[Sequence[str]] = None
    """Languages seen in training (``None``: every evaluated language); the other evaluated ones are unseen."""
    languages_source: str = DATA_SOURCE
    """Where ``anchor`` and ``seen`` came from, recorded in ``metrics.json``."""
    languages: Optional[Sequence[str]] = field(default=None)
    """Restrict the language ID to these (default: the languages evaluated)."""

    def seen_languages(self, evaluated: Sequence[str]) -> tuple[str, ...]:
        return tuple(self.seen) if self.seen is not None else (self.anchor, *evaluated)


# --- where the languages come from ------------------------------------------------------------------

def training_run_dir(model: Optional[str]) -> Optional[Path]:
    """The ``bcat train`` output directory of a model path: the path itself, or the directory that
    holds it (``runs/x/model`` -> ``runs/x``), when it has ``config.yaml`` and ``training_summary.json``."""
    if not model or model.startswith("builtin:"):
        return None
    path = Path(model).expanduser()
    for d in (path, path.parent):
        if (d / "config.yaml").is_file() and (d / "training_summary.json").is_file():
            return d
    return None


def trained_languages(run: Path) -> tuple[str, tuple[str, ...], str]:
    """``(anchor, seen languages, source)`` of a ``bcat train`` output directory."""
    from bcat.config import load_config

    cfg = load_config(run / "config.yaml")
    if cfg.data.languages is not None:
        return cfg.data.anchor, tuple(cfg.data.languages), f"the training run: {run / 'config.yaml'} (data.languages)"
    summary_file = run / "training_summary.json"
    try:
        trained = json.loads(summary_file.read_text(encoding="utf-8"))["languages"]
    except (ValueError, KeyError, TypeError) as e:
        raise BcatError(f"{summary_file}: cannot read the trained languages ({e})") from None
    return cfg.data.anchor, tuple(trained), f"the training run: all of its training data ({summary_file})"


def _contradiction(option: str, given: Sequence[str], run_value: Sequence[str], source: str) -> OptionError:
    name = "{" + option + "}"
    return OptionError(f"{name} {','.join(given)} contradicts {source}: {','.join(run_value)}. The training run "
                       f"says which languages the model saw; drop {name}.", option)


def resolve_languages(model: Optional[str], evaluated: Sequence[str], *, anchor: Optional[str] = None,
                      seen: Optional[Sequence[str]] = None, unseen: Optional[Sequence[str]] = None,
                      bundled_data: bool = False) -> tuple[str, tuple[str, ...], str]:
    """``(anchor, seen languages, source)`` for an evaluation of ``model`` on ``evaluated`` languages.

    In this order: the model's training run (options may repeat it, not contradict it); the
    options ``anchor`` / ``seen`` / ``unseen``; the bundled split for the built-in model on the
    bundled data (``bundled_data``); the data (every evaluated language seen).

    >>> resolve_languages("builtin:gemma3-270m", ["en", "fr", "th"], seen=["en", "fr"])
    ('en', ('en', 'fr'), 'options: seen languages from --seen')
    >>> resolve_languages(None, ["en", "fr", "th"], anchor="fr", unseen=["th"])
    ('fr', ('en', 'fr'), 'options: anchor from --anchor; seen languages: all but --unseen')
    >>> resolve_languages(None, ["en", "pt-BR"])[1]
    ('en', 'pt-BR')
    """
    if seen is not None and unseen is not None:
        raise OptionError("{seen} and {unseen}: give one of them", "seen", "unseen")
    if anchor is not None and anchor not in evaluated:
        raise OptionError(f"{{anchor}} {anchor}: not among the evaluated languages ({', '.join(evaluated)})", "anchor")
    run = training_run_dir(model)
    if run is not None:
        run_anchor, run_seen, source = trained_languages(run)
        if anchor is not None and anchor != run_anchor:
            raise _contradiction("anchor", [anchor], [run_anchor], f"{run / 'config.yaml'} (data.anchor)")
        if seen is not None and set(seen) | {run_anchor} != set(run_seen) | {run_anchor}:
            raise _contradiction("seen", seen, run_seen, source)
        if unseen is not None and set(unseen) & (set(run_seen) | {run_anchor}):
            raise _contradiction("unseen", unseen, run_seen, source)
        return run_anchor, run_seen, source
    if seen is not None or unseen is not None or anchor is not None:
        sources = [f"anchor from --anchor"] if anchor is not None else []
        anchor = anchor or ANCHOR
        if seen is not None:
            chosen, why = tuple(seen), "seen languages from --seen"
        elif unseen is not None:
            chosen, why = tuple(l for l in evaluated if l not in set(unseen)), "seen languages: all but --unseen"
        else:
            chosen, why = (anchor, *[l for l in evaluated if l != anchor]), "every evaluated language seen"
        return anchor, chosen, "options: " + "; ".join(sources + [why])
    if bundled_data and model is not None and model.startswith("builtin:"):
        return ANCHOR, (ANCHOR, *SEEN), BUNDLED_SOURCE
    return ANCHOR, (ANCHOR, *[l for l in evaluated if l != ANCHOR]), DATA_SOURCE


# --- scoring ------------------------------------------------------------------------------------------

def score_outputs(items: Sequence[RagItem], outputs: Sequence[str], options: ScoringOptions = ScoringOptions(),
                  prompts: Optional[Sequence[Optional[str]]] = None) -> tuple[dict, list[dict]]:
    """Score model outputs (one per item, in order) and summarise: ``(summary, prediction records)``.

    >>> item = RagItem("g1", "en", "How long?", ("It lasts 24 months.",), ("24 months",), answer_neutral=True,
    ...                candidates=(("12 months", "12"),))
    >>> summary, preds = score_outputs([item], [" 24 months\\nQuestion: ..."], ScoringOptions(bootstrap=10))
    >>> summary["english"], preds[0]["prediction"], preds[0]["strict_correct"]
    (1.0, '24 months', True)
    >>> score_outputs([item], ["12 or 24 months"], ScoringOptions(bootstrap=10))[0]["english"]
    0.0
    """
    identifier = None
    if language_id_available():
        identifier = LanguageIdentifier(options.languages or {i.lang for i in items}, fallback=instruction_table())
    else:  # an optional extra: the answer language alone is left unmeasured, and metrics.json says so
        log.warning("bcat: answer language %s", LANGUAGE_ID_NOT_MEASURED)
    scores, predictions = [], []
    for n, (item, raw) in enumerate(zip(items, outputs)):
        s = score_item(item.group, item.lang, raw, item.answers, item.candidates,
                       answer_neutral=item.answer_neutral, identifier=identifier,
                       candidates_derived=item.candidates_derived)
        scores.append(s)
        predictions.append({
            "group": item.group, "lang": item.lang, "question": item.question,
            "prompt": prompts[n] if prompts is not None else None,
            "raw_output": raw, "prediction": first_line(raw), "answers": list(item.answers),
            "wrong_values": [list(forms) for forms in item.candidates],
            "wrong_values_derived": item.candidates_derived, "answer_neutral": item.answer_neutral,
            "strict_correct": s.strict, "contains_answer": s.contains, "exact_match": s.exact,
            "named_wrong_values": [item.candidates[i][0] for i in s.named_wrong], "chrf": round(s.chrf, 6),
            "detected_language": s.detected_language, "language_ok": s.language_ok,
        })
    evaluated = list(dict.fromkeys(i.lang for i in items))
    summary = summarize(scores, seen=options.seen_languages(evaluated), anchor=options.anchor,
                        languages_source=options.languages_source, preferred=list(instruction_table()),
                        n_resamples=options.bootstrap, seed=options.seed)
    if identifier is None:
        summary["answer_language"] = LANGUAGE_ID_NOT_MEASURED
    return summary, predictions


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def items_digest(keys: Sequence[Sequence[str]]) -> str:
    """Order-free sha256 of the (group, lang) keys: equal digests mean the same item set.

    >>> items_digest([["g1", "en"], ["g1", "fr"]]) == items_digest([["g1", "fr"], ["g1", "en"]])
    True
    """
    text = "\n".join(sorted(f"{g}\t{l}" for g, l in keys))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def rag_metrics(data_path: Path, items: Sequence[RagItem], summary: dict) -> dict:
    """The scoring part of ``metrics.json``: the data, the summary and the item keys."""
    keys = [[i.group, i.lang] for i in items]
    return {"data": str(data_path), "data_fingerprint": file_sha256(data_path), **summary,
            "items": keys, "items_sha256": items_digest(keys)}


def write_outputs(output: Path, metrics: dict, predictions: Optional[Sequence[dict]]) -> None:
    """Write ``predictions.jsonl`` (when given) and ``metrics.json`` into ``output``, replacing the folder
    whole (:func:`bcat.output.replace_dir`, the folder's other files kept): a failure at any point
    leaves the old pair or the new one, never new answers beside old metrics."""
    files = []
    if predictions is not None:
        files.append(("predictions.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)))
    files.append(("metrics.json", json.dumps(metrics, ensure_ascii=False, indent=2) + "\n"))

    def write(folder: Path) -> None:
        for name, text in files:
            (folder / name).write_text(text, encoding="utf-8")

    replace_dir(output, write, carry=True)


# --- metrics.json as read back --------------------------------------------------------------------

_NUMBER = (int, float, type(None))
_INTERVAL = ([_NUMBER], type(None))
_TABLE = {"*": {"*": _NUMBER}}
METRICS_SHAPE = {
    "model": (str, type(None)), "suites": [str], "options": dict, "data": str, "prompt_format": str,
    "languages": {"anchor": str, "seen": [str], "unseen": [str], "source": str},
    "per_language": _TABLE, "secondary": _TABLE, "ood": dict, "items": [[str]],
    "english": _NUMBER, "non_english_mean": _NUMBER, "gap": _NUMBER, "unseen_mean": _NUMBER,
    "all_languages_correct": _NUMBER, "n_groups": int,
    "ci": {"level": _NUMBER, "resamples": int, "seed": int, "unit": str, "method": str, "metric": str,
           "per_language": {"*": _INTERVAL}, "*": _INTERVAL},
}
"""What the readers of ``metrics.json`` (score, compare, report) rely on. A rule is a type (or a tuple of
types and rules: any of them), ``[rule]`` (a list of such items) or a dict (the keys it names; ``"*"``
for the others). Keys may be missing."""


def _shape_error(value, rule, where: str) -> tuple[str, str] | None:
    """``(field, what is wrong)`` where ``value`` breaks ``rule``, or None."""
    if isinstance(rule, type) or (isinstance(rule, tuple) and all(isinstance(r, type) for r in rule)):
        names = " or ".join("null" if r is type(None) else r.__name__ for r in (rule if isinstance(rule, tuple) else (rule,)))
        return None if isinstance(value, rule) else (where, f"expected {names}, got {type(value).__name__}")
    if isinstance(rule, tuple):
        errors = [_shape_error(value, r, where) for r in rule]
        return None if None in errors else errors[0]
    if isinstance(rule, list):
        if not isinstance(value, list):
            return where, f"expected a list, got {type(value).__name__}"
        return next((e for i, v in enumerate(value) if (e := _shape_error(v, rule[0], f"{where}[{i}]"))), None)
    if not isinstance(value, dict):
        return where, f"expected an object, got {type(value).__name__}"
    for key, item in value.items():
        sub = rule.get(key, rule.get("*"))
        if sub is not None and (e := _shape_error(item, sub, f"{where}.{key}" if where else key)):
            return e
    return None


def check_metrics(metrics, path: Path) -> dict:
    """Refuse a ``metrics.json`` whose values are not of the types bcat wrote (an edited file), naming the
    field; returns ``metrics``."""
    error = _shape_error(metrics, METRICS_SHAPE, "")
    if error:
        raise DataError(path, None, error[0] or None, f"{error[1]}, not as bcat writes it (an edited file?); "
                        "re-run bcat eval or bcat score")
    return metrics


def read_metrics(path: Path) -> dict:
    """``metrics.json`` read and checked (:func:`check_metrics`)."""
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError, ValueError) as e:
        raise DataError(path, None, None, f"not valid JSON ({getattr(e, 'msg', e)})") from None
    return check_metrics(metrics, path)


# --- bcat score -----------------------------------------------------------------------------------------

def load_predictions(path: Path, items: Sequence[RagItem]) -> list[tuple[RagItem, dict]]:
    """Saved answers, validated line by line, paired with the data's items in the DATA's order.

    Each line: a JSON object with ``group`` (string or integer), ``lang`` and ``prediction``
    (strings); ``raw_output`` and ``prompt`` are kept when present. Every (group, lang) must be an
    item of the data, once, and every item of the data must have its answer: a score over part of
    the items would not be the data's score.
    """
    if not path.is_file():
        raise OptionError(f"{{predictions}}: file not found: {path}", "predictions")
    by_key = {(i.group, i.lang): i for i in items}
    found: dict[tuple[str, str], tuple[int, dict]] = {}
    for line_no, rec in read_rows(path):
        if not isinstance(rec, dict):
            raise DataError(path, line_no, None, "each line must be a JSON object")
        group = rec.get("group")
        if isinstance(group, int) and not isinstance(group, bool):
            group = str(group)
        if not isinstance(group, str) or not group:
            raise DataError(path, line_no, "group", "missing or not a non-empty string")
        for name in ("lang", "prediction"):
            if name not in rec:
                raise DataError(path, line_no, name, "missing (a prediction needs group, lang, prediction)")
            if not isinstance(rec[name], str):
                raise DataError(path, line_no, name, f"must be a string, got {type(rec[name]).__name__}")
        for name in ("raw_output", "prompt"):
            if rec.get(name) is not None and not isinstance(rec[name], str):
                raise DataError(path, line_no, name, f"must be a string, got {type(rec[name]).__name__}")
        key = (group, rec["lang"])
        if key not in by_key:
            raise DataError(path, line_no, "lang" if any(g == group for g, _ in by_key) else "group",
                            f"no item ({group}, {rec['lang']}) in the data file")
        if key in found:
            raise DataError(path, line_no, "lang", f"a second prediction for ({group}, {rec['lang']}) "
                            f"(first on line {found[key][0]})")
        found[key] = (line_no, rec)
    if not found:
        raise DataError(path, None, None, "no predictions")
    missing = [(i.group, i.lang) for i in items if (i.group, i.lang) not in found]
    if missing:
        shown = ", ".join(f"({g}, {l})" for g, l in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(path, None, None, f"no prediction for {len(missing)} of the {len(items)} items of the data: "
                        f"{shown}. Answer every item (an empty prediction counts as wrong), or score against a "
                        "data file of only the answered items")
    return [(i, found[(i.group, i.lang)][1]) for i in items]


def merge_metrics(base: dict, scored: dict) -> dict:
    """``base`` (an eval's metrics) with every scored key replaced in place and new ones appended."""
    out = {k: scored.get(k, v) for k, v in base.items()}
    out.update({k: v for k, v in scored.items() if k not in out})
    return out


def rescore(data: Path, predictions_file: Path, output: Path, *, anchor: Optional[str] = None,
            seen: Optional[Sequence[str]] = None, unseen: Optional[Sequence[str]] = None,
            bootstrap: Optional[int] = None, seed: Optional[int] = None) -> dict:
    """Everything ``bcat score`` does; returns the metrics written to ``output/metrics.json``.

    When the predictions sit in a ``bcat eval`` directory, its ``metrics.json`` supplies what
    scoring cannot know (model, generation options) and the scoring options it used (anchor,
    seen languages, bootstrap); the arguments given here override the latter.
    """
    with claim_output(output, "output", replaced=True):
        return _rescore(data, predictions_file, output, anchor=anchor, seen=seen, unseen=unseen,
                        bootstrap=bootstrap, seed=seed)


def _rescore(data: Path, predictions_file: Path, output: Path, *, anchor, seen, unseen, bootstrap, seed) -> dict:
    eval_file = predictions_file.parent / "metrics.json"
    base: dict = {}
    if eval_file.is_file():
        base = read_metrics(eval_file)
    evaluated_subset = base.get("options") or {}  # the eval's --languages and --limit pick the items it answered
    items = load_items(data, languages=evaluated_subset.get("languages"), limit_groups=evaluated_subset.get("limit"))
    pairs = load_predictions(predictions_file, items)
    recorded = base.get("languages") or {}
    ci = base.get("ci") or {}
    scored_items = [i for i, _ in pairs]
    langs = list(dict.fromkeys(i.lang for i in scored_items))
    if anchor is None and seen is None and unseen is None and recorded:
        anchor, chosen = recorded["anchor"], tuple(recorded["seen"])
        source = recorded.get("source", f"recorded in {eval_file}")
    else:
        anchor, chosen, source = resolve_languages(base.get("model"), langs, anchor=anchor, seen=seen, unseen=unseen)
    options = ScoringOptions(anchor=anchor, seen=chosen, languages_source=source,
                             bootstrap=bootstrap or ci.get("resamples", 2000),
                             seed=seed if seed is not None else ci.get("seed", 0))
    outputs = [rec.get("raw_output") if rec.get("raw_output") is not None else rec["prediction"] for _, rec in pairs]
    summary, predictions = score_outputs(scored_items, outputs, options, prompts=[rec.get("prompt") for _, rec in pairs])
    if not base:
        from bcat import __version__

        base = {"bcat_version": __version__, "model": None, "suites": ["rag"], "predictions": str(predictions_file)}
    metrics = merge_metrics(base, rag_metrics(data, scored_items, summary))
    write_outputs(output, metrics, predictions)
    log.info("bcat score: all %d items of %s scored", len(pairs), data)
    return metrics
