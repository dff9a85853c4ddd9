"""`make bench`: runs every benchmark module in bench/ and prints its figures.

    .venv/bin/python -m bench [NAME ...]     e.g. `python -m bench pose seal`

Each module exposes run() -> [(name, value, unit)]. Figures are printed, never asserted:
performance targets live here, not in timed tests.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    here = Path(__file__).parent
    names = argv or sorted(m.name for m in pkgutil.iter_modules([str(here)]) if not m.name.startswith("_"))
    failed = 0
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            rows = module.run()
        except Exception as exc:  # a broken benchmark must not hide the others' figures
            failed += 1
            print(f"   FAILED: {type(exc).__name__}: {exc}", flush=True)
            continue
        for label, value, unit in rows:
            print(f"   {label:<72} {value:>10} {unit}", flush=True)
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
