"""Run every benchmark script in this folder, one after another (`make bench`).

Each script prints its own side-by-side ratios; absolute times are not comparable between runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def main() -> int:
    scripts = sorted(p for p in Path(__file__).parent.glob("bench_*.py"))
    status = 0
    for script in scripts:
        print(f"== {script.name}", flush=True)
        status |= subprocess.call([sys.executable, str(script)])
    return status


if __name__ == "__main__":
    sys.exit(main())
