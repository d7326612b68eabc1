"""Scoring saved answers: the one code path from predictions to ``metrics.json``, for ``bcat eval``
and for ``bcat score`` (re-scoring without a model).

``bcat eval`` generates, then calls :func:`score_outputs` and :func:`rag_metrics` and writes with
:func:`write_outputs`; ``bcat score --data FILE --predictions PRED.jsonl --output DIR`` reads saved
answers (JSONL with ``group``, ``lang``, ``prediction``; validated with file, line and field) and
runs the same three functions, so re-scoring an eval's own ``predictions.jsonl`` reproduces its
``metrics.json`` byte for byte (``tests/evaluation/test_score.py``).

Which languages are seen, and the anchor, come from the run (:func:`resolve_languages`): the
training run next to the model (``config.yaml``: ``data.anchor`` and ``data.languages``; when
``data.languages`` is null, the languages its ``training_summary.json`` lists), overridden by
``--anchor`` / ``--seen`` / ``--unseen``; a model without a training run (a base model) gets
bcat's defaults (:mod:`bcat.languages`). ``metrics.json`` records the choice and its source.

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
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

from bcat.data.normalize import first_line
from bcat.data.rag import RagItem, instruction_table, load_items
from bcat.data.records import read_rows
from bcat.errors import BcatError, DataError
from bcat.evaluation.metrics import (LANGUAGE_ID_NOT_MEASURED, LanguageIdentifier, language_id_available,
                                     score_item)
from bcat.evaluation.summary import summarize
from bcat.languages import ANCHOR, SEEN

log = logging.getLogger(__name__)

DEFAULTS_SOURCE = "bcat defaults (bcat/languages.py): no training run found for the model"


@dataclass
class ScoringOptions:
    """How answers are scored and summarised."""

    anchor: str = ANCHOR
    """The language every other is compared with (English unless the training run says otherwise)."""
    seen: Optional[Sequence[str]] = None
    """Languages seen in training (``None``: bcat's defaults); the other evaluated ones are unseen."""
    languages_source: str = DEFAULTS_SOURCE
    """Where ``anchor`` and ``seen`` came from, recorded in ``metrics.json``."""
    bootstrap: int = 2000
    """Bootstrap resamples for the confidence intervals."""
    seed: int = 0
    """Seed of the bootstrap (and, in ``bcat eval``, of the choice of shots)."""
    languages: Optional[Sequence[str]] = field(default=None)
    """Restrict the language ID to these (default: the languages evaluated)."""

    def seen_languages(self) -> tuple[str, ...]:
        return tuple(self.seen) if self.seen is not None else (ANCHOR, *SEEN)


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


def _codes_text(codes: Sequence[str]) -> str:
    return ",".join(codes)


def resolve_languages(model: Optional[str], evaluated: Sequence[str], *, anchor: Optional[str] = None,
                      seen: Optional[Sequence[str]] = None, unseen: Optional[Sequence[str]] = None,
                      anchor_label: str = "--anchor", seen_label: str = "--seen"
                      ) -> tuple[str, tuple[str, ...], str]:
    """``(anchor, seen languages, source)`` for an evaluation of ``model`` on ``evaluated`` languages.

    ``anchor`` / ``seen`` / ``unseen`` (``bcat eval --anchor/--seen/--unseen``; the labels name
    where a given value came from) win; what they leave open comes from the model's training run,
    else from bcat's defaults.

    >>> resolve_languages("builtin:gemma3-270m", ["en", "fr", "th"], seen=["en", "fr"])
    ('en', ('en', 'fr'), 'seen languages from --seen')
    >>> resolve_languages(None, ["en", "fr", "th"], anchor="fr", unseen=["th"])
    ('fr', ('en', 'fr'), 'anchor from --anchor; seen languages: all but --unseen')
    """
    if seen is not None and unseen is not None:
        raise BcatError("--seen and --unseen: give one of them")
    if anchor is not None and anchor_label == "--anchor" and anchor not in evaluated:
        raise BcatError(f"--anchor {anchor}: not among the evaluated languages ({', '.join(evaluated)})")
    run = training_run_dir(model) if anchor is None or (seen is None and unseen is None) else None
    cfg = None
    if run is not None:
        from bcat.config import load_config

        cfg = load_config(run / "config.yaml")
    sources = []
    if anchor is not None:
        sources.append(f"anchor from {anchor_label}")
    elif cfg is not None:
        anchor = cfg.data.anchor
        sources.append(f"anchor from {run / 'config.yaml'} (data.anchor)")
    else:
        anchor = ANCHOR
    if seen is not None:
        chosen, why = tuple(seen), f"seen languages from {seen_label}"
    elif unseen is not None:
        chosen, why = tuple(l for l in evaluated if l not in set(unseen)), "seen languages: all but --unseen"
    elif cfg is not None and cfg.data.languages is not None:
        chosen, why = tuple(cfg.data.languages), f"seen languages from {run / 'config.yaml'} (data.languages)"
    elif cfg is not None:
        summary_file = run / "training_summary.json"
        try:
            trained = json.loads(summary_file.read_text(encoding="utf-8"))["languages"]
        except (ValueError, KeyError, TypeError) as e:
            raise BcatError(f"{summary_file}: cannot read the trained languages ({e}); pass --seen") from None
        chosen = tuple(trained)
        why = f"seen languages: all of the training data ({summary_file}, data.languages is null)"
    else:
        return anchor, (anchor, *[l for l in SEEN if l != anchor]), (
            "; ".join(sources + [DEFAULTS_SOURCE]))
    return anchor, chosen, "; ".join(sources + [why])


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
                       answer_neutral=item.answer_neutral, identifier=identifier)
        scores.append(s)
        predictions.append({
            "group": item.group, "lang": item.lang, "question": item.question,
            "prompt": prompts[n] if prompts is not None else None,
            "raw_output": raw, "prediction": first_line(raw), "answers": list(item.answers),
            "wrong_values": [list(forms) for forms in item.candidates], "answer_neutral": item.answer_neutral,
            "strict_correct": s.strict, "contains_answer": s.contains, "exact_match": s.exact,
            "named_wrong_values": [item.candidates[i][0] for i in s.named_wrong], "chrf": round(s.chrf, 6),
            "detected_language": s.detected_language, "language_ok": s.language_ok,
        })
    summary = summarize(scores, seen=options.seen_languages(), anchor=options.anchor,
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
    """Write ``predictions.jsonl`` (when given) and ``metrics.json`` into ``output``: each written to a
    temporary file first and renamed, so a failure never leaves a half-written file."""
    output.mkdir(parents=True, exist_ok=True)
    files = []
    if predictions is not None:
        files.append(("predictions.jsonl", "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions)))
    files.append(("metrics.json", json.dumps(metrics, ensure_ascii=False, indent=2) + "\n"))
    for name, text in files:
        (output / f"{name}.tmp").write_text(text, encoding="utf-8")
    for name, _ in files:
        os.replace(output / f"{name}.tmp", output / name)


# --- bcat score -----------------------------------------------------------------------------------------

def load_predictions(path: Path, items: Sequence[RagItem]) -> list[tuple[RagItem, dict]]:
    """Saved answers, validated line by line, paired with the data's items in the DATA's order.

    Each line: a JSON object with ``group`` (string or integer), ``lang`` and ``prediction``
    (strings); ``raw_output`` and ``prompt`` are kept when present. Every (group, lang) must be an
    item of the data, once. Items of the data without an answer are not scored.
    """
    if not path.is_file():
        raise BcatError(f"--predictions: file not found: {path}")
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
    return [(i, found[(i.group, i.lang)][1]) for i in items if (i.group, i.lang) in found]


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
    items = load_items(data)
    pairs = load_predictions(predictions_file, items)
    eval_file = predictions_file.parent / "metrics.json"
    base: dict = {}
    if eval_file.is_file():
        try:
            base = json.loads(eval_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise BcatError(f"{eval_file}: not valid JSON ({e.msg})") from None
    recorded = base.get("languages") or {}
    ci = base.get("ci") or {}
    scored_items = [i for i, _ in pairs]
    langs = list(dict.fromkeys(i.lang for i in scored_items))
    if anchor is None and seen is None and unseen is None and recorded:
        anchor, chosen = recorded["anchor"], tuple(recorded["seen"])
        source = recorded.get("source", f"recorded in {eval_file}")
    else:
        from_eval = f"{eval_file} (languages)"
        use_recorded_seen = seen is None and unseen is None and bool(recorded)
        anchor, chosen, source = resolve_languages(
            base.get("model"), langs, anchor=anchor or recorded.get("anchor"),
            seen=recorded["seen"] if use_recorded_seen else seen, unseen=unseen,
            anchor_label="--anchor" if anchor else from_eval, seen_label=from_eval if use_recorded_seen else "--seen")
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
    log.info("bcat score: %d of %d items of %s scored", len(pairs), len(items), data)
    return metrics
