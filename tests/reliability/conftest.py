"""Fixtures of the reliability suite (helpers are in ``support.py``)."""

from __future__ import annotations

import pytest
import torch
from reliability.support import Result

from bcat.cli import main


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """The DPO reference cache goes to the test's directory; torch's thread count is restored afterwards
    (``training.threads=1`` is a process-wide setting)."""
    monkeypatch.setenv("BCAT_CACHE", str(tmp_path / "bcat-cache"))
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def train(tiny_model_dir, capsys):
    """``bcat train`` in this process: ``train(out_dir, data, *overrides, model=..., resume=..., debug=...)``
    (``resume``: ``True`` for ``--resume``, ``"if-possible"`` for ``--resume-if-possible``).
    One torch thread: deterministic, and fast on a machine whose few cores are shared."""

    def run(out, data, *overrides, model=None, resume=False, debug=False, steps=2) -> Result:
        flag = {True: ["--resume"], "if-possible": ["--resume-if-possible"]}.get(resume, [])
        argv = (["--debug"] if debug else []) + ["train"] + flag
        argv += [f"model.path={model or tiny_model_dir}", f"data.train={data}", f"training.output_dir={out}",
                 f"training.max_steps={steps}", "batch.mode=grouped", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine", "training.threads=1",
                  *overrides]
        capsys.readouterr()
        rc = main(argv)
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return run


@pytest.fixture
def cli(capsys):
    """Any ``bcat`` command in this process: ``cli("eval", "--model", ...)`` -> :class:`Result`."""

    def run(*argv) -> Result:
        capsys.readouterr()
        rc = main([str(a) for a in argv])
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_model_dir):
    """``(data, eval directory)``: the tiny model evaluated on three groups of RAG QA."""
    from helpers import qa_records, write_jsonl

    root = tmp_path_factory.mktemp("evaluated")
    data = write_jsonl(root / "qa.jsonl", qa_records())
    out = root / "eval"
    assert main(["eval", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(out),
                 "--max-new-tokens", "2", "--bootstrap", "50", "--batch-size", "8"]) == 0
    return data, out


@pytest.fixture
def read_only_dir(tmp_path):
    """An existing folder nobody can write into, root included: mode 0555, and where root ignores the
    mode, the immutable attribute (``chattr +i``); skipped where neither holds."""
    import os
    import subprocess

    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    immutable = False
    if os.access(folder, os.W_OK):
        immutable = subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0
        if not immutable:
            folder.chmod(0o755)
            pytest.skip("cannot make a read-only folder here (root, and no chattr +i)")
    yield folder
    if immutable:
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o755)
