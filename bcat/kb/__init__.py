"""Bundled multilingual controlled-RAG data: generator, templates, prompts and preference pairs.

Every item is rendered in eleven languages (English, six seen, four unseen) with the same facts and
the same ``group`` id, so that a batch can hold one item in all its languages.

- :mod:`bcat.kb.languages`: the languages and the CLDR names (through ``babel``);
- :mod:`bcat.kb.templates`: the per-language template files in ``bcat/resources/kb/templates``;
- :mod:`bcat.kb.values`: a fact rendered in one language, with its accepted answers;
- :mod:`bcat.kb.products`: product knowledge-base items (part A);
- :mod:`bcat.kb.udhr_items`: items over the Universal Declaration of Human Rights (part C);
- :mod:`bcat.kb.build`: splits and the bundled files (part D);
- :mod:`bcat.kb.prompt`: the RAG prompt of a record;
- :mod:`bcat.kb.pairs`: preference pairs and SFT records (part E);
- :mod:`bcat.kb.cli`: ``bcat data build`` and ``bcat data pairs``.
"""

from bcat.kb.build import build, default_output_dir
from bcat.kb.languages import LANGUAGES, SEEN, UNSEEN
from bcat.kb.pairs import make_pairs, make_sft
from bcat.kb.prompt import render_prompt

__all__ = ["LANGUAGES", "SEEN", "UNSEEN", "build", "default_output_dir", "make_pairs", "make_sft", "render_prompt"]
