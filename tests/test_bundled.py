"""The one way bcat finds the files it ships (bcat/resources)."""

from pathlib import Path

import pytest

import bcat
from bcat.bundled import resource

PACKAGE_RESOURCES = Path(bcat.__file__).resolve().parent / "resources"


def test_resource_is_the_packaged_file():
    path = resource("kb/train.jsonl")
    assert isinstance(path, Path) and path.is_file()
    assert path.resolve() == PACKAGE_RESOURCES / "kb" / "train.jsonl"
    assert resource("ood").is_dir() and resource("ood").resolve() == PACKAGE_RESOURCES / "ood"


@pytest.mark.parametrize("name", ["", "/etc/passwd", "../config.py", "kb/../../config.py"])
def test_resource_stays_inside_the_folder(name):
    with pytest.raises(ValueError, match="relative path inside bcat/resources"):
        resource(name)

