"""Evaluation: the multilingual controlled-RAG QA suite, run comparison and reports.

Modules, one concept each: :mod:`~bcat.evaluation.normalize` (text normal form and answer
matching), :mod:`~bcat.evaluation.metrics` (per-item and per-language metrics),
:mod:`~bcat.evaluation.stats` (bootstrap over groups, exact McNemar), :mod:`~bcat.evaluation.rag`
(records and prompt template), :mod:`~bcat.evaluation.generation` (batched greedy decoding),
:mod:`~bcat.evaluation.summary` (headline numbers),
:mod:`~bcat.evaluation.evaluate` (``bcat eval``), :mod:`~bcat.evaluation.compare`
(``bcat compare``), :mod:`~bcat.evaluation.report` (``bcat report``), :mod:`~bcat.evaluation.cli`.
"""
