"""The tokenized cache: a split's features (token ids, segment ids, whether each was cut) tokenized once
into an Arrow IPC file in bertfit's cache directory, and read back memory-mapped.

Why: tokenizing a large training set is repeated by every run, resume, evaluation and distributed rank,
and its features held as Python lists cost about 2 KB per tweet, the largest part of a run's memory.
The file is written in chunks of :data:`CHUNK` texts (the fast tokenizer's batches, in parallel in
Rust), so building it never holds more than a chunk of features; reading it maps the file, so the
features' memory is the operating system's page cache, shared by every process that reads it, and
does not grow the process with the number of rows. A feature is turned into Python lists only when a
batch is collated from it.

The key is a hash of everything the ids depend on: a format version, the tokenizer's fingerprint (its
whole `tokenizers` pipeline), ``max_length`` and every text and pair text, in order. A changed file,
row, split, tokenizer or length gives another key, so a stale file is never read; a damaged file (cut
short, unreadable) is written again. Concurrent processes (the ranks of a distributed job, two runs on
the same data) take a lock on the key: the first tokenizes and writes, the others wait and map it.

``BERTFIT_TOKEN_CACHE=0`` turns the cache off; splits under ``BERTFIT_TOKEN_CACHE_MIN`` texts (default
20,000: they tokenize in well under a second) are tokenized in memory as before. The features are the
same either way, bit for bit (tests/test_token_cache.py), so training, its exact resume and its
results do not depend on whether the cache was used.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
CHUNK = 4096  # texts tokenized (and written as one record batch) at a time: 38k tweets at once peaked 300 MB
DEFAULT_MIN_TEXTS = 20_000


def cache_enabled(n_texts: int) -> bool:
    """Whether a split of ``n_texts`` is tokenized through the cache (pyarrow installed, not turned off, large enough)."""
    if os.environ.get("BERTFIT_TOKEN_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    try:
        minimum = int(os.environ.get("BERTFIT_TOKEN_CACHE_MIN", DEFAULT_MIN_TEXTS))
    except ValueError:
        minimum = DEFAULT_MIN_TEXTS
    if n_texts < max(1, minimum):
        return False
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return False
    return True


def fingerprint(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> str:
    """The cache key: a hash of the format version, the tokenizer, max_length and every text (and pair)."""
    digest = hashlib.sha256()
    digest.update(f"bertfit-tokens/{FORMAT_VERSION}/{tokenizer.fingerprint}/{max_length}/"
                  f"{len(texts)}/{pairs is not None}/".encode())
    for i, text in enumerate(texts):
        # Lengths before contents: no two different lists of texts give the same stream of bytes.
        for part in (text,) if pairs is None else (text, pairs[i]):
            data = part.encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()[:40]


def encode_cached(tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int,
                  directory: Path | None = None) -> "CachedEncodings":
    """``tokenizer.encode(texts, pairs, max_length=max_length)`` as a memory-mapped sequence of Encoded,
    from the cache when it holds these features, else tokenized into it first."""
    from bertfit.io import cache_dir

    folder = Path(directory) if directory is not None else cache_dir() / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    key = fingerprint(tokenizer, texts, pairs, max_length)
    path = folder / f"{key}.arrow"
    with locked(folder / f"{key}.lock"):
        cached = _open(path, len(texts))
        if cached is not None:
            logger.info("tokenized features of %d texts read from the cache (%s)", len(texts), path)
            return cached
        _build(path, tokenizer, texts, pairs, max_length)
        cached = _open(path, len(texts))
    if cached is None:  # written and unreadable at once: a broken disk, not a user's mistake
        raise OSError(f"cannot read back the tokenized features just written to {path}")
    return cached


class CachedEncodings(Sequence):
    """Features read from a cache file: ``[i]`` gives the i-th as an Encoded (lists made on access);
    ``lengths`` gives every feature's length without making any."""

    def __init__(self, path: Path, table: Any) -> None:
        self.path = path
        self._table = table  # keeps the memory map alive
        self._starts: list[int] = []
        self._offsets: list[np.ndarray] = []
        self._ids: list[np.ndarray] = []
        self._types: list[np.ndarray] = []
        self._truncated: list[np.ndarray] = []
        start = 0
        for batch in table.to_batches():
            ids, types = batch.column("ids"), batch.column("type_ids")
            self._starts.append(start)
            # Zero-copy views of the mapped buffers (offsets relative to the batch's values).
            offsets = ids.offsets.to_numpy()
            self._offsets.append(offsets)
            self._ids.append(ids.values.to_numpy())
            self._types.append(types.values.to_numpy())
            self._truncated.append(batch.column("truncated").to_numpy(zero_copy_only=False))
            start += batch.num_rows
        self._n = start
        self._starts_arr = np.asarray(self._starts, dtype=np.int64)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
        from bertfit.tokenizer import Encoded

        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        i = int(index)
        if i < 0:
            i += self._n
        if not 0 <= i < self._n:
            raise IndexError(f"feature {index} of {self._n}")
        chunk = int(np.searchsorted(self._starts_arr, i, side="right")) - 1
        j = i - self._starts[chunk]
        offsets = self._offsets[chunk]
        a, b = int(offsets[j]), int(offsets[j + 1])
        return Encoded(self._ids[chunk][a:b].tolist(), self._types[chunk][a:b].tolist(), bool(self._truncated[chunk][j]))

    def __iter__(self) -> Iterator[Any]:
        for i in range(self._n):
            yield self[i]

    @property
    def lengths(self) -> list[int]:
        return np.concatenate([np.diff(o) for o in self._offsets]).tolist() if self._offsets else []


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


@contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (POSIX flock) for the time of the block; no lock where there is no flock."""
    try:
        import fcntl
    except ImportError:  # Windows: concurrent builders each write a whole file and rename it: still correct
        yield
        return
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _open(path: Path, expected: int) -> CachedEncodings | None:
    """The cache file mapped, or None when it is missing, damaged or of another length (then rebuilt)."""
    if not path.is_file():
        return None
    import pyarrow as pa

    try:
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        if table.num_rows != expected or table.column_names != ["ids", "type_ids", "truncated"]:
            raise ValueError(f"{table.num_rows} rows, columns {table.column_names}")
        return CachedEncodings(path, table)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is made again, never trusted
        logger.warning("the tokenized cache file %s is unreadable (%s); tokenizing again", path, exc)
        return None


def _build(path: Path, tokenizer: Any, texts: Sequence[str], pairs: Sequence[str] | None, max_length: int) -> None:
    import pyarrow as pa

    schema = pa.schema([("ids", pa.list_(pa.int32())), ("type_ids", pa.list_(pa.int8())), ("truncated", pa.bool_())])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    logger.info("tokenizing %d texts into the cache (%s)", len(texts), path)
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            for start in range(0, len(texts), CHUNK):
                chunk = list(texts[start:start + CHUNK])
                chunk_pairs = None if pairs is None else list(pairs[start:start + CHUNK])
                encoded = tokenizer.encode(chunk, chunk_pairs, max_length=max_length)
                writer.write_batch(pa.record_batch([
                    pa.array([e.ids for e in encoded], type=pa.list_(pa.int32())),
                    pa.array([e.type_ids for e in encoded], type=pa.list_(pa.int8())),
                    pa.array([e.truncated for e in encoded], type=pa.bool_())], schema=schema))
                logger.info("tokenized %d of %d texts", min(start + CHUNK, len(texts)), len(texts))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
