"""`python -m tests.nan_on_rank1 train ...`: edgerec's CLI with COUPA's loss NaN on rank 1 only.

For tests/test_scale.py: a loss that diverges on one rank must stop every rank at the same step
with edgerec's message, not leave rank 0 waiting in DDP's all-reduce or print a traceback.
"""

import os
import sys

from edgerec.cli import main
from edgerec.models.coupa import COUPA

if os.environ.get("RANK") == "1":
    finite_loss = COUPA.loss
    COUPA.loss = lambda self, batch, out: finite_loss(self, batch, out) * float("nan")

sys.exit(main())
