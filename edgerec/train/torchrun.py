"""`python -m edgerec.train.torchrun ARGS`: torchrun (torch.distributed.run) with ARGS, whose failure
is a line, not a traceback.

Why: when a rank exits with an error, torchrun raises ChildFailedError and prints the launcher's
own Python traceback under the rank's message. The rank has already printed what went wrong
(`error: ...`, from edgerec's CLI), so `edgerec train --nproc N` starts torchrun through this module,
which prints which rank failed with which exit status and exits with that status.
"""

from __future__ import annotations

import sys

from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
from torch.distributed.run import main as torchrun_main


def main(argv: list[str]) -> int:
    try:
        torchrun_main(argv)
    except ChildFailedError as e:
        rank, failure = e.get_first_failure()
        how = f"signal {failure.signal_name()}" if failure.exitcode < 0 else f"exit status {failure.exitcode}"
        print(f"error: torchrun: rank {rank} stopped with {how} (its message is above); every rank was stopped",
              file=sys.stderr)
        return failure.exitcode if failure.exitcode > 0 else 128 - failure.exitcode  # a signal: 128 + its number
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
