"""Shared fixtures (the builders live in ``helpers.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import build_tiny_model


def pytest_collection_modifyitems(config, items):
    """``gpu``-marked tests need CUDA; ``BCAT_GPU_TESTS_ON_CPU=1`` (``bench/gpu_check.py --dry-run``) runs them
    on the CPU instead, so that their code paths are tried before a GPU is at hand."""
    import torch

    if torch.cuda.is_available() or os.environ.get("BCAT_GPU_TESTS_ON_CPU") == "1":
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (bench/gpu_check.py runs it there)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tinychat") / "model", chat=True)
