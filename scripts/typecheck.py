"""mypy --strict over kmim/ (settings in pyproject.toml's [tool.mypy]), from `make test`: any error fails.

    python scripts/typecheck.py

History: 332 strict errors when the gate was a ratchet (issue 19), 0 since; a third-party stub that is plainly
wrong gets a `# type: ignore[code]` with its reason on the line, never a bare ignore.
"""

from __future__ import annotations

import subprocess
import sys


def main() -> int:
    proc = subprocess.run([sys.executable, "-m", "mypy", "kmim"], capture_output=True, text=True)
    print(proc.stdout.strip() or proc.stderr.strip())
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
