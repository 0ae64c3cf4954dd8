"""`bertfit train --nproc N` (and `bertfit pretrain --nproc N`): the same job as `torchrun --standalone
--nproc-per-node N -m bertfit train ...`, launched through PyTorch's own launcher (torch.distributed.run)
on this machine.

The launcher starts N copies of the command, each with its RANK/WORLD_SIZE, watches them, and when
one fails stops the others; here its failure report becomes one line that names the rank and how it
ended (a signal such as SIGKILL, or the exit code of an error the rank printed itself).
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Sequence

from bertfit.train.dist import TIMEOUT_ENV, DistributedError

logger = logging.getLogger(__name__)


def without_option(argv: Sequence[str], name: str) -> list[str]:
    """``argv`` without ``name VALUE`` / ``name=VALUE`` (the launcher's own option, not the workers')."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == name:
            skip = True
        elif not arg.startswith(name + "="):
            out.append(arg)
    return out


def launch(nproc: int, argv: Sequence[str], timeout_s: float | None = None, command: str = "train") -> int:
    """Run ``python -m bertfit ARGV`` in ``nproc`` processes on this machine; their exit status.
    command: the bertfit command ARGV runs (train, pretrain), named in the resume advice of a failure."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    # Each process takes its share of the cores (also silences the launcher's OMP_NUM_THREADS banner).
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, cores // nproc)))
    if timeout_s is not None:
        os.environ[TIMEOUT_ENV] = str(timeout_s)
    # The launcher's own per-process log lines repeat what describe_failure says in one line.
    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = get_args_parser().parse_args(["--standalone", "--nproc-per-node", str(nproc), "--monitor-interval", "0.2",
                                         "-m", "bertfit", *argv])
    logger.info("launching %d processes on this machine (torch.distributed.run, %s)", nproc,
                "NCCL" if "cuda" in " ".join(argv) else "gloo unless the job runs on CUDA")
    sys.stdout.flush()
    try:
        run(args)
    except ChildFailedError as exc:
        message, code = describe_failure(exc, nproc, command)
        error = DistributedError(message)
        error.exit_code = code  # a rank's own error code (2 data/config, 3 training), else 4
        raise error from None
    return 0


def describe_failure(exc, nproc: int, command: str = "train") -> tuple[str, int]:
    """The launcher's failure report in one sentence (the rank that caused it, and how), and an exit code.

    The launcher stamps failures in whole seconds, so "first" is often a tie: the cause is the rank
    killed by a signal other than the launcher's own SIGTERM, else one that failed with its own error,
    before one that only lost its peers (exit code 4, DistributedError)."""
    def blame(item):
        rank, failure = item
        if failure.exitcode < 0:
            return (1 if failure.signal_name() == "SIGTERM" else -1, rank)
        return (0 if failure.exitcode != DistributedError.exit_code else 0.5, rank)

    rank, failure = min(exc.failures.items(), key=blame)
    if failure.exitcode < 0:
        how = f"was killed by {failure.signal_name()}"
    else:
        how = f"exited with code {failure.exitcode}" + (" (its error is printed above)" if failure.exitcode in (2, 3, 4)
                                                       else "")
    others = sorted(r for r in exc.failures if r != rank)
    also = f"; rank(s) {', '.join(map(str, others))} failed too" if others else ""
    message = (f"the distributed job of {nproc} processes stopped: rank {rank} (pid {failure.pid}) {how}{also}, and "
               "the launcher stopped the other ranks. Continue from the last checkpoint with `bertfit "
               f"{command} --resume RUN --nproc {nproc}`")
    return message, failure.exitcode if failure.exitcode > 0 else DistributedError.exit_code
