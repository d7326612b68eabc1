"""The out-of-domain suite: last word (LAMBADA-like), cross-lingual retrieval, MGSM, arithmetic.

- :mod:`~bcat.evaluation.ood.suite`: running the tasks on a model;
- :mod:`~bcat.evaluation.ood.text`: word and number splitting in every script;
- :mod:`~bcat.evaluation.ood.mgsm`: the vendored MGSM problems (real, human-translated), prompt and scoring;
- :mod:`~bcat.evaluation.ood.arith`: the templated arithmetic problems;
- :mod:`~bcat.evaluation.ood.build`: the deterministic builder of the vendored OOD files.
"""

OOD_TASKS: tuple[str, ...] = ("lastword", "retrieval", "mgsm", "arith", "paraphrase")
"""Every task of the suite (what ``bcat eval --ood-tasks`` accepts)."""
DEFAULT_OOD_TASKS: tuple[str, ...] = ("lastword", "retrieval", "mgsm", "paraphrase")
"""The tasks run when none are named: ``arith`` is opt-in (see :mod:`bcat.evaluation.ood.arith`)."""
