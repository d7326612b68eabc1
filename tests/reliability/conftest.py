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
                 f"training.max_steps={steps}", "batch.groups_per_batch=1", "alignment.hidden_loss=cosine", "training.threads=1",
                  *overrides]
        capsys.readouterr()
        rc = main(argv)
        cap = capsys.readouterr()
        return Result(rc, cap.out, cap.err)

    return run
