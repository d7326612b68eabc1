"""The pages a new user reads first point at what exists: every relative link of README.md,
bench/README.md and docs/ resolves, the README's picture lists the commands ``bcat`` has, and a committed
benchmark result that bench/README.md names is committed."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from bcat.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def relative_links(page: Path) -> list[tuple[int, str]]:
    """``(line, target)`` of each markdown link of ``page`` that is not a URL, without its ``#anchor``."""
    links = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for target in LINK.findall(line):
            path = target.split("#", 1)[0]
            if path and not re.match(r"[a-z]+:", path):
                links.append((number, path))
    return links


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page):
    missing = [f"{page.relative_to(ROOT)}:{line}: {target}" for line, target in relative_links(page)
               if not (page.parent / target).exists()]
    assert not missing


def test_the_readme_lists_every_command():
    figure = next(line for line in (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
                  if line.startswith("bcat.cli "))
    listed = {name.strip() for name in figure.split("bcat ", 1)[1].split("|")}
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    assert listed == set(sub.choices)


def test_results_named_in_the_bench_readme_are_committed():
    """A path under bench/results/ in a command (``--out``, ``--table``) is the committed evidence."""
    named = set(re.findall(r"bench/results/[\w.-]+\.json", (ROOT / "bench" / "README.md").read_text(encoding="utf-8")))
    assert named
    assert sorted(p for p in named if not (ROOT / p).is_file()) == []
