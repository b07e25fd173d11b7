"""mypy over kmim/ as a ratchet: fail when the error count rises above the committed baseline, say so when it falls.

    python scripts/typecheck.py            # from `make test`
    python scripts/typecheck.py --update   # after fixing errors: write the new, lower count to the baseline

Most of today's errors come from torch's typing of `nn.Module` attributes (`Tensor | Module`); the baseline only
moves down. Strict mode is the goal (`--strict` prints its count without gating).
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

BASELINE = Path(__file__).with_name("mypy_baseline.txt")
ARGS = ["kmim", "--ignore-missing-imports", "--no-error-summary"]


def count(extra: list[str]) -> tuple[int, str]:
    out = subprocess.run([sys.executable, "-m", "mypy", *ARGS, *extra], capture_output=True, text=True).stdout
    return sum(bool(re.search(r": error: ", line)) for line in out.splitlines()), out


def main() -> int:
    if "--strict" in sys.argv:
        print(f"mypy --strict: {count(['--strict'])[0]} errors (not gated)")
        return 0
    n, out = count([])
    base = int(BASELINE.read_text().split()[0])
    if "--update" in sys.argv:
        BASELINE.write_text(f"{n}\n")
        print(f"mypy baseline: {base} -> {n}")
        return 0
    if n > base:
        print(out, end="")
        print(f"mypy: {n} errors, more than the baseline {base} ({BASELINE}): fix the new ones")
        return 1
    note = f" (below the baseline {base}: run `python scripts/typecheck.py --update`)" if n < base else ""
    print(f"mypy: {n} errors{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
