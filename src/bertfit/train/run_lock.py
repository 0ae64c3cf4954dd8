"""One writer per run directory: an advisory lock that the operating system releases with its holder.

``RUN/.bertfit-lock`` is locked with ``fcntl.flock`` by the process that writes the run (train,
pretrain, ``train --resume``, ``--overwrite``; in a distributed job rank 0 alone, the writer). The
kernel drops an flock when the file descriptor closes, so a process that is killed (kill -9, power
loss) leaves no stale lock: the file may stay behind, but nobody holds it, and the next run takes it.
While locked, the file holds who has it (pid, host, command line, start time), so the refusal can
name the holder. Torch-free: the CLI's output-path guards read :data:`RUN_ENTRIES` from here.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import sys
import time
from pathlib import Path

from bertfit.errors import BertfitError

logger = logging.getLogger(__name__)

#: The lock file inside a run directory. Never deleted by --overwrite while held; not a run's content.
LOCK_FILE = ".bertfit-lock"
#: The file that says "bertfit created this directory"; --overwrite replaces nothing without it
#: (except a run from before the marker, made only of RUN_ENTRIES and holding train_config.json).
MARKER = ".bertfit-run"
#: Every name bertfit writes at the top of a run directory. Add a name here when bertfit starts
#: writing a new one: replacing a run deletes these and keeps everything else.
RUN_ENTRIES = frozenset({
    MARKER, LOCK_FILE, "config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
    "special_tokens_map.json", "train_config.json", "data.json", "split.json", "metrics.json",
    "metrics.jsonl", "report.md", "report.html", "plots", "checkpoints", "task.json", "precision.json",
    "seeds",  # `train --seeds N`: one run per seed (seeds.py)
    "before.json", "fills.json", "pretrain.json",  # pretraining runs (train/pretrain.py)
    # the model card (report/card.py: README.bertfit.md when the user edited README.md), the transformers-style
    # trainer state, and the trackers' ids and files (tracking/)
    "README.md", "README.bertfit.md", "card.json", "trainer_state.json", "tracking.json", "tensorboard", "wandb",
})


class RunLockedError(BertfitError):
    """Another process writes this run directory now."""

    exit_code = 3


class RunLock:
    """The lock of one run directory, held from :meth:`acquire` to :meth:`release` (or the process's end)."""

    def __init__(self, path: str | os.PathLike, command: str) -> None:
        self.path = Path(path)
        self.command = command
        self.file = self.path / LOCK_FILE
        self._fd: int | None = None
        self._made_directory = False

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock or raise RunLockedError naming its holder; creates the directory if needed."""
        import fcntl

        if self._fd is not None:
            return
        if not self.path.exists():
            self.path.mkdir(parents=True, exist_ok=True)
            self._made_directory = True
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise RunLockedError(self._refusal()) from None
                raise
            # The holder before us may have deleted the file between our open and our lock: then we
            # hold a lock on a file nobody else will see. Lock the file that is at the path now.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.file))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "argv": " ".join(sys.argv)[:500], "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(holder) + "\n").encode("utf-8"))
        self._fd = fd

    def release(self) -> None:
        """Remove the lock file (while still holding it, so no one locks a file about to vanish), then unlock;
        the directory too when this lock made it and nothing else was written there."""
        if self._fd is None:
            return
        try:
            self.file.unlink(missing_ok=True)
        finally:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
        if self._made_directory:
            try:
                self.path.rmdir()  # only succeeds when empty: a run that failed before writing anything
            except OSError:
                pass

    def _refusal(self) -> str:
        try:
            holder = json.loads(self.file.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            holder = {}
        if isinstance(holder, dict) and holder.get("pid"):
            who = (f"process {holder['pid']} on {holder.get('host', '?')} (bertfit {holder.get('command', '?')}, "
                   f"since {holder.get('started', '?')})")
        else:
            who = "another process"
        return (f"{self.path} is being written by {who}; one process writes a run directory at a time: wait for it "
                f"to finish (or stop it), or choose another --output-dir")


_held: dict[str, tuple[RunLock, int]] = {}


def _key(path: str | os.PathLike) -> str:
    return os.path.realpath(os.fspath(path))


def hold_run(path: str | os.PathLike, command: str) -> None:
    """Take the lock of run ``path`` for this process (re-entrant: a nested hold only counts)."""
    key = _key(path)
    if key in _held:
        lock, count = _held[key]
        _held[key] = (lock, count + 1)
        return
    lock = RunLock(path, command)
    lock.acquire()
    _held[key] = (lock, 1)


def release_run(path: str | os.PathLike) -> None:
    """Give back one hold of run ``path`` (the lock itself with the last one); a path not held is a no-op."""
    key = _key(path)
    if key not in _held:
        return
    lock, count = _held[key]
    if count > 1:
        _held[key] = (lock, count - 1)
        return
    del _held[key]
    lock.release()
