"""The tokenized cache's progress as a bar: the library logs each chunk it encodes (token_cache.PROGRESS
on the log record); the CLI draws those records as one tqdm bar on stderr instead of a line per chunk."""

from __future__ import annotations

import logging
import sys
from typing import Any

PROGRESS = "progress"  # the log record attribute data/token_cache.py sets (its PROGRESS; not imported: --help stays light)


class CacheProgressBar(logging.Handler):
    """A log handler that turns progress records into a bar (one per cache being built)."""

    def __init__(self) -> None:
        super().__init__(level=logging.INFO)
        self.bar: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        progress = getattr(record, PROGRESS, None)
        if progress is None:
            return
        from tqdm.auto import tqdm

        done, total, unit = progress
        if self.bar is None or self.bar.total != total or done < self.bar.n:
            self.finish()
            self.bar = tqdm(total=total, unit=f" {unit}", desc="tokenizing into the cache", dynamic_ncols=True,
                            file=sys.stderr, leave=True)
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.finish()

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        self.finish()
        super().close()


def not_progress(record: logging.LogRecord) -> bool:
    """A filter for the other handlers: progress records are the bar's alone."""
    return getattr(record, PROGRESS, None) is None


def show_cache_progress() -> CacheProgressBar:
    """Draw the cache's progress as a bar on stderr, and keep its per-chunk lines out of the plain log."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not isinstance(handler, CacheProgressBar):
            handler.addFilter(not_progress)
    bar = CacheProgressBar()
    root.addHandler(bar)
    return bar
