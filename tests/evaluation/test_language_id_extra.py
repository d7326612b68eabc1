"""Without bcat's ``langid`` extra (lingua, a 96 MB wheel) scoring still runs; the answer language alone is
reported as not measured, in ``metrics.json`` and in the report, never guessed or silently dropped."""

from __future__ import annotations

import sys
from pathlib import Path

from bcat.data.rag import RagItem
from bcat.evaluation.compare import Run
from bcat.evaluation.metrics import LANGUAGE_ID_NOT_MEASURED
from bcat.evaluation.scoring import ScoringOptions, score_outputs
from bcat.report.tables import agreement_table

ITEMS = [RagItem("g1", "en", "How long is the warranty?", ("The warranty lasts 24 months.",), ("24 months",)),
         RagItem("g1", "fr", "Combien de temps dure la garantie ?", ("La garantie dure 24 mois.",), ("24 mois",))]
ANSWERS = ["The warranty lasts 24 months", "La garantie dure 24 mois"]


def test_without_lingua_the_answer_language_is_not_measured(monkeypatch):
    monkeypatch.setitem(sys.modules, "lingua", None)  # what `import lingua` does when the extra is missing
    summary, predictions = score_outputs(ITEMS, ANSWERS, ScoringOptions(bootstrap=10))
    assert summary["answer_language"] == LANGUAGE_ID_NOT_MEASURED and "pip install 'bcat[langid]'" in \
        LANGUAGE_ID_NOT_MEASURED
    assert summary["english"] == 1.0  # everything else is scored as usual
    assert [p["language_ok"] for p in predictions] == [None, None]
    assert all(summary["per_language"][lang]["answer_language_rate"] is None for lang in ("en", "fr"))
    table = agreement_table([Run(Path("base"), summary, {})], ["base"], ["en", "fr"])
    assert f"Answer language of base: {LANGUAGE_ID_NOT_MEASURED}" in table.notes


def test_with_lingua_the_answer_language_is_measured():
    summary, predictions = score_outputs(ITEMS, ANSWERS, ScoringOptions(bootstrap=10))
    assert "answer_language" not in summary
    assert [p["language_ok"] for p in predictions] == [True, True]
