"""Shared fixtures (the builders live in ``helpers.py``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import build_tiny_model


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="session")
def tiny_chat_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tinychat") / "model", chat=True)
