"""Part D: the bundled splits, ``bcat/resources/kb/{train,dev,test}.jsonl``.

Splits are made of whole groups: a group is generated once and written, in all eleven languages,
to one split only. UDHR items are also split by their answer article (an article that answers a
test question answers no training question). Every group gets its own random generator seeded from
``(seed, group id)``, so the output is the same bit for bit on every machine and Python version.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from bcat.bundled import resource
from bcat.data.kb.products import KIND_WEIGHTS, attributes_of, product_item
from bcat.data.kb.udhr_items import ARTICLES, udhr_item
from bcat.languages import LANGUAGES

SPLITS: dict[str, dict[str, int]] = {
    "train": {"kb": 400, "udhr": 50},
    "dev": {"kb": 40, "udhr": 10},
    "test": {"kb": 130, "udhr": 30},
}
"""Groups per split and source."""
UDHR_ARTICLES_PER_SPLIT = {"test": 10, "dev": 3, "train": 17}
"""How many of the 30 articles serve as answers in each split (disjoint)."""


def default_output_dir() -> Path:
    """Where the bundled files live: ``bcat/resources/kb``."""
    return resource("kb")


def quotas(total: int, weights: dict[str, float]) -> dict[str, int]:
    """Split ``total`` by ``weights`` with the largest-remainder method (ties: key order).

    >>> quotas(10, {"a": 0.5, "b": 0.25, "c": 0.25})
    {'a': 5, 'b': 3, 'c': 2}
    """
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    out = {k: int(v) for k, v in exact.items()}
    rest = sorted(weights, key=lambda k: -(exact[k] - out[k]))
    for k in rest[: total - sum(out.values())]:
        out[k] += 1
    return out


def _rng(seed: int, *parts) -> random.Random:
    # String seeds are hashed with SHA-512 by random.seed: stable across runs and platforms.
    return random.Random(":".join(["bcat-kb", str(seed), *map(str, parts)]))


def udhr_articles(seed: int) -> dict[str, list[int]]:
    """The answer articles of each split (disjoint)."""
    articles = list(ARTICLES)
    _rng(seed, "udhr-articles").shuffle(articles)
    out, start = {}, 0
    for split, count in UDHR_ARTICLES_PER_SPLIT.items():
        out[split] = sorted(articles[start:start + count])
        start += count
    return out


def question_plan(total: int, rng: random.Random) -> list[tuple[str, str]]:
    """(kind, attribute) of each product item: kinds by :data:`KIND_WEIGHTS`, attributes in turn
    within a kind (so each is asked about equally often), in random order."""
    plan = []
    for kind, count in quotas(total, KIND_WEIGHTS).items():
        attributes = attributes_of(kind)
        plan += [(kind, attributes[i % len(attributes)]) for i in range(count)]
    rng.shuffle(plan)
    return plan


def split_records(split: str, seed: int = 0, langs=LANGUAGES) -> list[dict]:
    """Every record of one split, group by group, languages in ``langs`` order."""
    sizes = SPLITS[split]
    records = []
    for i, (kind, attribute) in enumerate(question_plan(sizes["kb"], _rng(seed, split, "plan")), start=1):
        group = f"kb-{split}-{i:04d}"
        records += product_item(group, kind, attribute, _rng(seed, group), langs)
    articles = udhr_articles(seed)[split]
    for i in range(1, sizes["udhr"] + 1):
        group = f"udhr-{split}-{i:03d}"
        article = articles[(i - 1) % len(articles)]
        records += udhr_item(group, article, _rng(seed, group), langs)
    return records


def write_jsonl(path: Path, records: list[dict]) -> None:
    """UTF-8 JSON lines, keys in insertion order, ``\\n`` line ends: the bytes depend on the records only."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    path.write_bytes(text.encode("utf-8"))


def build(out_dir: str | Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Write ``train.jsonl``, ``dev.jsonl`` and ``test.jsonl`` into ``out_dir``; return their paths."""
    out = Path(out_dir) if out_dir is not None else default_output_dir()
    out.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        paths[split] = out / f"{split}.jsonl"
        write_jsonl(paths[split], split_records(split, seed))
    return paths
