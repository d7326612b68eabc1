"""Bundled multilingual controlled-RAG data: generator, templates, prompts and preference pairs.

Every item is rendered in eleven languages (English, six seen, four unseen) with the same facts and
the same ``group`` id, so that a batch can hold one item in all its languages.

- :mod:`bcat.data.kb.cldr`: the names CLDR gives to countries, languages, currencies, days, months;
- :mod:`bcat.data.kb.templates`: the per-language template files in ``bcat/resources/kb/templates``;
- :mod:`bcat.data.kb.values`: a fact rendered in one language, with its accepted answers;
- :mod:`bcat.data.kb.products`: product knowledge-base items (part A);
- :mod:`bcat.data.kb.udhr_items`: items over the Universal Declaration of Human Rights (part C);
- :mod:`bcat.data.kb.build`: splits and the bundled files (part D);
- :mod:`bcat.data.kb.prompt`: the RAG prompt of a record;
- :mod:`bcat.data.kb.pairs`: preference pairs and SFT records (part E);
- :mod:`bcat.cli.data`: ``bcat data build`` and ``bcat data pairs``.
"""
