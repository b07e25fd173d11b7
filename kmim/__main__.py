"""`python -m kmim ...` (and `torchrun ... -m kmim ...`) runs the `kmim` command."""

import sys

from kmim.cli import main

sys.exit(main())
