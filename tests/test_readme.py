"""Every fenced ``python`` block of README.md runs as written, on a tiny model.

A block names the user's own files with the placeholders of the README's quick start: ``/models/my-llm``
(a model directory) and ``my_pairs.jsonl`` (preference pairs in the README's data format). That is the
one substitution: the test replaces those strings with a tiny random model and a small data file, and
runs the block in an empty directory. A new block that names another file needs a row in ``PLACEHOLDERS``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from helpers import parallel_records, write_jsonl

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
PLACEHOLDERS = ("/models/my-llm", "my_pairs.jsonl")


def python_blocks() -> list[tuple[int, str]]:
    """``(line, code)`` of each fenced python block of the README."""
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start()) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_the_readme_has_python_blocks():
    assert python_blocks()


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
@pytest.mark.parametrize("line, code", python_blocks(), ids=lambda v: f"README.md:{v}" if isinstance(v, int) else "")
def test_readme_block_runs_as_written(line, code, tiny_model_dir, tmp_path, monkeypatch):
    import datasets

    pairs = write_jsonl(tmp_path / "pairs.jsonl", parallel_records(4, langs=("en", "fr", "de")))
    real = dict(zip(PLACEHOLDERS, (str(tiny_model_dir), str(pairs))))
    for placeholder, path in real.items():
        code = code.replace(placeholder, path)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    exec(compile(code, f"README.md:{line}", "exec"), {"__name__": "__main__"})
