"""The out-of-domain suite: last word (LAMBADA-like), cross-lingual retrieval, arithmetic.

- :mod:`~bcat.evaluation.ood.suite`: running the tasks on a model;
- :mod:`~bcat.evaluation.ood.text`: word and number splitting in every script;
- :mod:`~bcat.evaluation.ood.arith`: the templated arithmetic problems;
- :mod:`~bcat.evaluation.ood.build`: the deterministic builder of the vendored OOD files.
"""
