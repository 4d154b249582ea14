"""`python -m edgerec ...` is the `edgerec` command (torchrun starts ranks this way: -m edgerec train)."""

import sys

from edgerec.cli import main

sys.exit(main())
