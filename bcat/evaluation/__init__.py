"""Step 6, evaluation: the multilingual controlled-RAG QA suite, the OOD suite, and run comparison.

- :mod:`~bcat.evaluation.generation`: batched greedy decoding;
- :mod:`~bcat.evaluation.metrics`: per-item and per-language metrics;
- :mod:`~bcat.evaluation.stats`: bootstrap over groups, exact McNemar;
- :mod:`~bcat.evaluation.summary`: the headline numbers (English, non-English mean, gap, unseen);
- :mod:`~bcat.evaluation.evaluate`: ``bcat eval``;
- :mod:`~bcat.evaluation.sharding`: items split across processes under ``accelerate launch``;
- :mod:`~bcat.evaluation.compare`: ``bcat compare`` (paired bootstrap + McNemar per language);
- :mod:`~bcat.evaluation.ood`: the out-of-domain suite.
"""
