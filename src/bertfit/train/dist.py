"""torch.distributed for bertfit: which process this is (rank, world), and the few collectives that
data-parallel training needs, each turned into an error that names the rank at fault when it fails.

A job is launched by ``torchrun`` (or ``bertfit train --nproc N``, see launch.py), which sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in every process. Without them (or with WORLD_SIZE=1) the
process is alone: ``current()`` is a world of one and every function here returns at once, so a
single process runs exactly the code it ran before this module existed.

Why our own gradient all-reduce rather than DistributedDataParallel: the trainer already scales each
micro-batch's summed loss by the whole step's weight, so one sum of gradients across ranks after the
step's micro-batches is the single-process gradient (up to summation order); ranks whose shard of a
step is empty (the epoch's last, short batch) contribute zeros instead of having to fake a forward
pass; and the CPU's word-embedding gradient, which only touched rows visit (embedding_grad.py), is
reduced over the union of the rows the ranks touched instead of the whole vocabulary.

Faults: every collective runs under the process group's timeout (BERTFIT_DIST_TIMEOUT seconds,
default 300). Before each collective a rank records in the job's key-value store how many collectives
it has entered and which; when one fails (a peer died: its sockets close at once; a peer hangs: the
timeout) the survivors read those records and name the ranks that never arrived.
"""

from __future__ import annotations

import datetime
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence, TypeVar

import numpy as np
import torch

from bertfit.errors import BertfitError

logger = logging.getLogger(__name__)

TIMEOUT_ENV = "BERTFIT_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
BUCKET_ELEMENTS = 1 << 23  # gradients are summed in flat buckets of at most 8M elements (32 MB fp32)

T = TypeVar("T")


class DistributedError(BertfitError):
    """A rank died, hung or failed: the job cannot go on (resume it from the last checkpoint)."""

    exit_code = 4


def timeout_seconds() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        value = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise BertfitError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise BertfitError(f"{TIMEOUT_ENV}={raw!r} must be a positive number of seconds")
    return value


def launched_world() -> int:
    """WORLD_SIZE as the launcher set it (1 when not launched by torchrun)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


@dataclass
class Dist:
    """This process's place in the job. A world of one is the default: every method is then a no-op."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1
    backend: str | None = None
    owns_group: bool = False  # init() created the process group, so close() destroys it
    store: Any = field(default=None, repr=False)
    calls: int = 0  # collectives this rank has entered (recorded in the store, for fault reports)
    step: int = 0  # the optimizer step the trainer is in (for messages)
    command: str = "train"  # the bertfit command this job runs (train, pretrain): for the resume advice

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes the run directory, checkpoints, logs, report and progress bar."""
        return self.rank == 0

    # -- collectives ---------------------------------------------------------------------------
    def _enter(self, what: str) -> None:
        self.calls += 1
        if self.store is not None:
            try:
                self.store.set(f"calls/{self.rank}", f"{self.calls}|{what}")
            except Exception as exc:  # noqa: BLE001 - the store's host is gone: a failure like any other
                raise DistributedError(f"rank {self.rank} lost the job's rendezvous store before {what} "
                                       f"({_first_line(exc)}): the launcher or rank 0 died") from None

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        self._enter(what)
        try:
            return fn()
        except RuntimeError as exc:  # DistBackendError and gloo's errors are RuntimeErrors
            raise DistributedError(self.diagnose(what, exc)) from None

    def diagnose(self, what: str, exc: BaseException) -> str:
        """Which ranks never reached the collective this rank failed in, from their records in the store."""
        lagging: list[str] = []
        if self.store is not None:
            for r in range(self.world):
                if r == self.rank:
                    continue
                try:
                    count, _, last = self.store.get(f"calls/{r}").decode().partition("|") \
                        if self.store.check([f"calls/{r}"]) else ("0", "", "nothing")
                except Exception:  # noqa: BLE001
                    count, last = "?", "unknown (the store is unreachable)"
                if count == "?" or int(count) < self.calls:
                    lagging.append(f"rank {r} (its last collective was {last})")
        who = ("; ".join(lagging) + " never reached it: that rank died or hangs") if lagging else \
            "every rank reached it, so a peer failed inside it"
        return (f"rank {self.rank} of {self.world}: {what} failed at step {self.step}: {who} "
                f"({_first_line(exc)}). Resume from the last checkpoint with "
                f"`bertfit {self.command} --resume RUN` and the same number of processes")

    def all_reduce_sum(self, values: Sequence[float], what: str) -> list[float]:
        """The sum over ranks of a few numbers (float64, the same on every rank)."""
        if not self.distributed:
            return [float(v) for v in values]
        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._device())
        self._run(what, lambda: torch.distributed.all_reduce(t))
        return t.cpu().tolist()

    def barrier(self, what: str = "a barrier") -> None:
        if self.distributed:
            self._run(what, lambda: torch.distributed.barrier())

    def broadcast_object(self, obj: T, what: str, src: int = 0) -> T:
        """rank ``src``'s object on every rank (pickled; for decisions and checkpoints, not per step)."""
        if not self.distributed:
            return obj
        box = [obj if self.rank == src else None]
        self._run(what, lambda: torch.distributed.broadcast_object_list(box, src=src, device=self._device()))
        return box[0]

    def all_gather_object(self, obj: Any, what: str) -> list[Any]:
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world
        self._run(what, lambda: torch.distributed.all_gather_object(out, obj))
        return out

    def broadcast_module(self, module: torch.nn.Module, what: str, src: int = 0) -> None:
        """Every rank gets rank ``src``'s parameters and buffers (same start, whatever each rank loaded)."""
        if not self.distributed:
            return
        with torch.no_grad():
            for name, tensor in module.state_dict().items():
                self._run(f"{what} ({name})", lambda t=tensor: torch.distributed.broadcast(t, src=src))

    def on_writer(self, fn: Callable[[], T], what: str) -> T:
        """Run ``fn`` on rank 0 only (it reads or changes the run directory) and give every rank its
        result, or raise its error on every rank, so all ranks take the same path."""
        if not self.distributed:
            return fn()
        result, error = None, None
        if self.is_writer:
            try:
                result = fn()
            except BertfitError as exc:
                error = exc
            except BaseException as exc:
                self.broadcast_object((None, DistributedError(f"rank 0 failed during {what}: {_first_line(exc)}")), what)
                raise
        result, error = self.broadcast_object((result, error), what)
        if error is not None:
            raise error
        return result

    # -- data parallelism ----------------------------------------------------------------------
    def shard(self, indices: Sequence[int]) -> list[int]:
        """This rank's part of a global batch: every world-th example from position ``rank``.

        Strided, not contiguous: a global batch is sorted by length (batching.epoch_batches), so each
        rank gets a similar mix of lengths. A pure function of the batch, so the order is timing-free."""
        part = indices[self.rank :: self.world] if self.distributed else indices
        return part.tolist() if isinstance(part, np.ndarray) else list(part)  # Python ints, as the tasks expect

    def map_sharded(self, n: int, fn: Callable[[list[int]], Any], what: str) -> Any:
        """``fn`` over this rank's share of ``range(n)``, gathered back in input order on every rank.

        ``fn(indices)`` returns one output per index: an array with a row each, or a list. Each index
        is computed by exactly one rank (rank r takes r, r + world, ...), for any n (also n < world)."""
        if not self.distributed:
            return fn(list(range(n)))
        mine = list(range(self.rank, n, self.world))
        parts = self.all_gather_object((mine, fn(mine)), what)
        seen = np.zeros(n, dtype=np.int64)
        arrays = all(isinstance(out, np.ndarray) for _, out in parts)
        if arrays:
            first = next(out for _, out in parts)
            result: Any = np.zeros((n, *first.shape[1:]), dtype=first.dtype)
        else:
            result = [None] * n
        for indices, out in parts:
            if len(indices) != len(out):
                raise DistributedError(f"{what}: a rank returned {len(out)} outputs for {len(indices)} inputs")
            for i, value in zip(indices, out):
                result[i] = value
            seen[indices] += 1
        if not (seen == 1).all():
            raise DistributedError(f"{what}: the gathered outputs do not cover every input exactly once")
        return result

    def all_reduce_gradients(self, parameters: Iterable[torch.nn.Parameter], kept: Any = None) -> None:
        """Sum every parameter's gradient over the ranks (the loss was divided by the global weight, so
        the sum is the step's gradient). A parameter no rank has a gradient for keeps none (AdamW then
        skips it, as in one process); one only some ranks have is zeros on the others.

        kept: embedding_grad.WordEmbeddingGrad whose buffer is the word embeddings' gradient: only the
        union of the rows the ranks touched is summed, and it becomes the buffer's touched rows."""
        if not self.distributed:
            return
        params = [p for p in parameters if p.requires_grad]
        device = self._device()
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=device)
        self._run(f"the gradient all-reduce of step {self.step}", lambda: torch.distributed.all_reduce(has))
        for p, n in zip(params, has.tolist()):
            if n and p.grad is None:
                p.grad = torch.zeros_like(p)
        grads = [p.grad for p in params if p.grad is not None]
        if kept is not None and kept.rows is not None:
            mask = torch.zeros(kept.buffer.shape[0], dtype=torch.int32, device=kept.buffer.device)
            mask[kept.rows] = 1
            self._run(f"the gradient all-reduce of step {self.step}", lambda: torch.distributed.all_reduce(mask))
            rows = mask.nonzero().squeeze(1)
            kept.rows = rows
            part = kept.buffer.index_select(0, rows)
            self._run(f"the gradient all-reduce of step {self.step}", lambda: torch.distributed.all_reduce(part))
            kept.buffer.index_copy_(0, rows, part)
            grads = [g for g in grads if g is not kept.buffer]
        for bucket in _buckets(grads):
            flat = torch.cat([g.reshape(-1) for g in bucket])
            self._run(f"the gradient all-reduce of step {self.step}", lambda: torch.distributed.all_reduce(flat))
            offset = 0
            for g in bucket:
                g.copy_(flat[offset : offset + g.numel()].view_as(g))
                offset += g.numel()

    def rank_seed(self, seed: int) -> int:
        """The seed of this rank's dropout stream: the run's seed alone in a world of one (unchanged
        results), a distinct stream per rank otherwise (same weights at the start, different masks)."""
        if not self.distributed:
            return seed
        return int(np.random.SeedSequence([seed, self.rank]).generate_state(1)[0])

    def _device(self) -> torch.device:
        if self.backend == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def close(self, synchronize: bool = False) -> None:
        """Leave the job. synchronize (a job that ended well): wait at a barrier first, so no rank tears
        the group down while another still has collectives in flight; gloo's worker threads otherwise
        can abort the process at exit (SIGABRT, "terminate called without an active exception": rank 1
        of the kill-and-resume test, once in seven runs of it on this project's machine). After an error there is no barrier: the
        other ranks may be gone, and the error must not wait for a timeout."""
        global _current
        if self.owns_group and torch.distributed.is_initialized():
            if synchronize and self.distributed:
                try:
                    self.barrier("the end of the job")
                except (RuntimeError, BertfitError) as exc:  # a rank that failed at its very end
                    logger.warning("the ranks did not meet at the end of the job: %s", _first_line(exc))
            torch.distributed.destroy_process_group()
        _current = Dist()


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    """Consecutive gradients of one dtype and device, at most BUCKET_ELEMENTS each (a larger one alone)."""
    buckets: list[list[torch.Tensor]] = []
    size = 0
    for g in grads:
        last = buckets[-1] if buckets else None
        if last is None or last[0].dtype != g.dtype or last[0].device != g.device or size + g.numel() > BUCKET_ELEMENTS:
            buckets.append([g])
            size = g.numel()
        else:
            last.append(g)
            size += g.numel()
    return buckets


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


_current = Dist()


def current() -> Dist:
    """This process's place in the job (a world of one until ``init`` joins a launched job)."""
    return _current


def init(device: torch.device, command: str = "train") -> Dist:
    """Join the job torchrun launched (gloo on CPUs, NCCL on GPUs); a world of one without a launcher.
    command: the bertfit command the job runs (named in the advice of a failure).

    Returns the device this rank computes on (cuda:LOCAL_RANK on GPUs) via ``local_device``."""
    global _current
    world = launched_world()
    if world <= 1:
        _current = Dist()
        return _current
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    if backend == "nccl" and local_rank >= torch.cuda.device_count():
        raise DistributedError(f"rank {rank} is local rank {local_rank} on its machine, which has "
                               f"{torch.cuda.device_count()} GPU(s): launch at most that many processes per machine, "
                               "or train on CPUs with --device cpu")
    if not torch.distributed.is_initialized():
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        try:
            torch.distributed.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_seconds()))
        except (RuntimeError, ValueError) as exc:
            raise DistributedError(f"rank {rank} of {world} could not join the job ({_first_line(exc)}); check "
                                   "--rdzv-endpoint / MASTER_ADDR:MASTER_PORT and that every node can reach it") from None
        owns = True
    store = None
    try:
        from torch.distributed.distributed_c10d import _get_default_store

        store = torch.distributed.PrefixStore("bertfit", _get_default_store())
    except Exception:  # noqa: BLE001 - fault reports are then less precise, training is the same
        logger.warning("no rendezvous store: a failed rank will not be named")
    _current = Dist(rank, world, local_rank, local_world, backend, owns, store, command=command)
    if rank != 0:  # the others log warnings only, marked with their rank
        root = logging.getLogger()
        root.setLevel(logging.WARNING)
        for handler in root.handlers:
            handler.setFormatter(logging.Formatter(f"[rank {rank}] %(message)s"))
    return _current


def local_device(device: torch.device) -> torch.device:
    """The device of this rank: a GPU job runs rank LOCAL_RANK on cuda:LOCAL_RANK."""
    d = current()
    if d.distributed and device.type == "cuda":
        return torch.device("cuda", d.local_rank)
    return device
