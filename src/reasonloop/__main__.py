"""`python -m reasonloop <command> ...` (what `torchrun -m reasonloop train ...` runs on every rank)."""

import sys

from reasonloop.cli import main

if __name__ == "__main__":
    sys.exit(main())
