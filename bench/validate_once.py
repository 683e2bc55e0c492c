"""One ``validate`` call in this process: wall time, answer and peak RSS.

For side-by-side runs of two checkouts of the package, alternating fresh
processes (``--checkout`` puts one first on the import path):

    python bench/validate_once.py DATA [--checkout PATH]

DATA holds ``tokens/`` and ``rewards/`` (the long layout, as ``bench/writers.py``
writes it).
"""

from __future__ import annotations

import argparse
import resource
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", help="a directory with tokens/ and rewards/")
    parser.add_argument("--checkout", help="a checkout of the package to import")
    args = parser.parse_args()
    if args.checkout:
        sys.path.insert(0, args.checkout)
    import raft_polars as rp

    start = time.perf_counter()
    report = rp.validate(f"{args.data}/tokens", rewards=f"{args.data}/rewards")
    took = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024  # KiB on Linux
    print(f"{rp.__file__}: {took:.2f} s, ok={report.ok}, peak {peak} MiB")


if __name__ == "__main__":
    main()
