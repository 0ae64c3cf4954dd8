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

Tasks whose features are more than ids (NER's label alignment and windows, QA's windows and offsets,
long texts read in windows) store them through :func:`cached_features`: the task gives a
:class:`FeatureCodec` (how a chunk of its examples becomes feature rows and Arrow columns, and the
settings those depend on), so this module knows no task. Each feature also records its example.

Building reports its progress as log records carrying ``extra={"progress": ...}`` (``PROGRESS``):
the CLI draws them as a bar (cli/progress.py); library users see the log lines.

``BERTFIT_TOKEN_CACHE=0`` turns the cache off; splits under ``BERTFIT_TOKEN_CACHE_MIN`` texts (default
20,000: they tokenize in well under a second) are tokenized in memory as before. The features are the
same either way, bit for bit (tests/test_token_cache.py), so training, its exact resume and its
results do not depend on whether the cache was used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

FORMAT_VERSION = "1"
CHUNK = 4096  # texts tokenized (and written as one record batch) at a time: 38k tweets at once peaked 300 MB
DEFAULT_MIN_TEXTS = 20_000
PROGRESS = "progress"  # the log record attribute that carries (done, total, unit) while a cache is built


def cache_threshold(variable: str, default: int) -> int | None:
    """The size from which data goes through an on-disk store (the environment's ``variable``, else
    ``default``), or None when no store may be used: ``BERTFIT_TOKEN_CACHE=0`` or pyarrow missing."""
    if os.environ.get("BERTFIT_TOKEN_CACHE", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        return None
    value = os.environ.get(variable)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        logger.warning("%s=%r is not a whole number; using the default, %d", variable, value, default)
        return default


def cache_enabled(n_texts: int) -> bool:
    """Whether a split of ``n_texts`` is tokenized through the cache (pyarrow installed, not turned off, large enough)."""
    minimum = cache_threshold("BERTFIT_TOKEN_CACHE_MIN", DEFAULT_MIN_TEXTS)
    return minimum is not None and n_texts >= max(1, minimum)


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
        self._ids = ListColumn(table, "ids")
        self._types = ListColumn(table, "type_ids")
        flags = [batch.column("truncated").to_numpy(zero_copy_only=False) for batch in table.to_batches()]
        self._truncated = np.concatenate(flags).astype(bool) if flags else np.zeros(0, dtype=bool)

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        return self._encoded(self._ids[index], self._types[index], self._truncated[int(index)])

    def __iter__(self) -> Iterator[Any]:
        for ids, types, truncated in zip(self._ids, self._types, self._truncated):
            yield self._encoded(ids, types, truncated)

    @staticmethod
    def _encoded(ids: np.ndarray, types: np.ndarray, truncated: Any) -> Any:
        from bertfit.tokenizer import Encoded

        return Encoded(ids.tolist(), types.tolist(), bool(truncated))

    def arrays(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every feature's (ids, type_ids) as numpy arrays, in order: one pass over the split (its
        fingerprint) without making any feature's lists.

        Read from the file a record batch at a time, not through the mapping: one pass over every page
        of a mapping leaves them all resident in this process (GBs for a corpus of millions of sequences,
        counted as its memory), while pages read from a file stay the kernel's cache."""
        if not Path(self.path).is_file():  # a table made in memory (an empty split): nothing mapped
            return zip(self._ids, self._types)
        return self._read_arrays()

    def _read_arrays(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        import pyarrow as pa

        rows = 0
        with pa.OSFile(str(self.path)) as handle:
            reader = pa.ipc.open_file(handle)
            for i in range(reader.num_record_batches):
                batch = pa.Table.from_batches([reader.get_batch(i)])
                rows += batch.num_rows
                yield from zip(ListColumn(batch, "ids"), ListColumn(batch, "type_ids"))
        if rows != len(self):  # the file was replaced since it was mapped: never hash other data silently
            raise RuntimeError(f"{self.path} holds {rows} features now, {len(self)} when it was opened")

    @property
    def lengths(self) -> np.ndarray:
        return self._ids.lengths

    @property
    def truncated(self) -> np.ndarray:
        """Whether each feature was cut (bool, one per feature), without making any feature."""
        return self._truncated


# --------------------------------------------------------------------------------------------
# Features of any task: a task's FeatureCodec says how its features become columns
# --------------------------------------------------------------------------------------------

# Column types a codec may declare (Arrow types; lists are read back as numpy views of the mapped file).
COLUMN_TYPES = ("int8", "int32", "int64", "string", "list<int8>", "list<int32>", "list<int64>")


@dataclass
class EncodedChunk:
    """The features of a chunk of examples, as a codec's ``encode`` gives them: the sequences (anything
    with ``ids``, ``type_ids``, ``truncated``), the example of each (0-based within the chunk), the
    codec's feature columns (one value per feature) and its example columns (one value per example)."""

    encoded: Sequence[Any]
    example_index: Sequence[int]
    columns: dict[str, Sequence[Any]] = field(default_factory=dict)
    example_columns: dict[str, Sequence[Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureCodec:
    """How one task's features are stored: what the task gives :func:`cached_features`.

    ``kind`` names the features and their layout (change it when the encoding changes); ``settings``
    holds every setting the features depend on (max_length, strides, the label map, ...: JSON-able);
    ``content(example)`` gives the strings of one example the features are made from (texts, words,
    tags, answers); ``encode(examples)`` encodes a chunk of examples. Examples are encoded
    independently of each other, so a chunk's features are the same as those of the whole split."""

    kind: str
    settings: Mapping[str, Any]
    content: Callable[[Any], Sequence[Any]]
    encode: Callable[[Sequence[Any]], EncodedChunk]
    columns: Mapping[str, str] = field(default_factory=dict)  # feature column -> one of COLUMN_TYPES
    example_columns: Mapping[str, str] = field(default_factory=dict)


def codec_fingerprint(tokenizer: Any, examples: Sequence[Any], codec: FeatureCodec) -> str:
    """The key of a split's features: the format, the codec's kind, columns and settings, the tokenizer
    and every example's content, in order (each string length-prefixed, so no two contents collide)."""
    digest = hashlib.sha256()
    header = {"format": FORMAT_VERSION, "kind": codec.kind, "settings": codec.settings,
              "columns": dict(codec.columns), "example_columns": dict(codec.example_columns),
              "tokenizer": tokenizer.fingerprint, "examples": len(examples)}
    digest.update(json.dumps(header, sort_keys=True, default=str).encode())
    for example in examples:
        parts = codec.content(example)
        digest.update(len(parts).to_bytes(8, "little"))
        for part in parts:
            if part is None:  # a length no string has: None never collides with a text
                digest.update((2**64 - 1).to_bytes(8, "little"))
                continue
            data = str(part).encode("utf-8", "surrogatepass")
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)
    return digest.hexdigest()[:40]


def cached_features(tokenizer: Any, examples: Sequence[Any], codec: FeatureCodec,
                    directory: Path | None = None) -> "FeatureStore":
    """The features of ``examples`` as ``codec`` encodes them, mapped from the cache; encoded into it
    first (by one process: the others wait on the lock and map its file) when it does not hold them."""
    from bertfit.io import cache_dir

    unknown = {t for t in (*codec.columns.values(), *codec.example_columns.values()) if t not in COLUMN_TYPES}
    if unknown:
        raise ValueError(f"{codec.kind}: column types {sorted(unknown)} are not among {COLUMN_TYPES}")
    folder = Path(directory) if directory is not None else cache_dir() / "tokens"
    folder.mkdir(parents=True, exist_ok=True)
    key = codec_fingerprint(tokenizer, examples, codec)
    path = folder / f"{key}.features.arrow"
    with locked(folder / f"{key}.lock"):
        store = _open_store(path, len(examples), codec)
        if store is not None:
            logger.info("%s features of %d examples read from the cache (%s)", codec.kind, len(examples), path)
            return store
        _build_store(path, examples, codec)
        store = _open_store(path, len(examples), codec)
    if store is None:  # written and unreadable at once: a broken disk, not a user's mistake
        raise OSError(f"cannot read back the features just written to {path}")
    return store


class ListColumn(Sequence):
    """A list column of the mapped file: ``[i]`` is the i-th feature's values as a numpy array (a
    read-only view of the mapped pages, cast to ``dtype``; ``shape`` reshapes each, e.g. (-1, 2))."""

    def __init__(self, table: Any, name: str, dtype: Any = None, shape: tuple[int, ...] | None = None) -> None:
        self._table = table  # keeps the memory map alive
        self._dtype, self._shape = dtype, shape
        self._starts: list[int] = []
        self._offsets: list[np.ndarray] = []
        self._values: list[np.ndarray] = []
        start = 0
        for batch in table.to_batches():
            column = batch.column(name)
            self._starts.append(start)
            self._offsets.append(column.offsets.to_numpy())
            self._values.append(column.values.to_numpy())
            start += batch.num_rows
        self._n = start
        self._starts_arr = np.asarray(self._starts, dtype=np.int64)

    def __len__(self) -> int:
        return self._n

    def __getitem__(self, index: Any) -> Any:
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
        values = self._values[chunk][int(offsets[j]):int(offsets[j + 1])]
        if self._dtype is not None:
            values = values.astype(self._dtype, copy=False)
        return values if self._shape is None else values.reshape(self._shape)

    @property
    def lengths(self) -> np.ndarray:
        """Every row's number of values (int32, 4 bytes a row), without making any row."""
        if not self._offsets:
            return np.zeros(0, dtype=np.int32)
        return np.concatenate([np.diff(o).astype(np.int32, copy=False) for o in self._offsets])

    def __iter__(self) -> Iterator[Any]:
        # Chunk by chunk (one pass, e.g. the split's fingerprint), not through [i] (a batch's rows).
        for offsets, values in zip(self._offsets, self._values):
            for j in range(len(offsets) - 1):
                part = values[int(offsets[j]):int(offsets[j + 1])]
                if self._dtype is not None:
                    part = part.astype(self._dtype, copy=False)
                yield part if self._shape is None else part.reshape(self._shape)


class FeatureStore:
    """A split's features mapped from the cache: ``encoded`` (a sequence of Encoded, made on access),
    ``example_index`` (feature -> example), and the codec's columns by name."""

    def __init__(self, path: Path, table: Any, examples_table: Any, n_examples: int) -> None:
        self.path = path
        self.n_examples = n_examples
        self._table = table
        self._examples = examples_table
        self.encoded = CachedEncodings(path, table)
        self.example_index = self.scalar("example")

    def __len__(self) -> int:
        return len(self.encoded)

    def scalar(self, name: str) -> np.ndarray:
        """A scalar feature column as a numpy array (one value per feature: 8 bytes, not a feature's lists)."""
        return self._table.column(name).to_numpy()

    def lists(self, name: str, dtype: Any = None, shape: tuple[int, ...] | None = None) -> ListColumn:
        """A list feature column, read per feature on access (see ListColumn)."""
        return ListColumn(self._table, name, dtype, shape)

    def example_values(self, name: str) -> Any:
        """An example column, read whole: a numpy array for numbers, a list for strings."""
        column = self._examples.column(name)
        if str(column.type) == "string":
            return column.to_pylist()
        return column.to_numpy()


def _arrow_type(name: str) -> Any:
    import pyarrow as pa

    scalars = {"int8": pa.int8(), "int32": pa.int32(), "int64": pa.int64(), "string": pa.string()}
    if name.startswith("list<"):
        return pa.list_(scalars[name[5:-1]])
    return scalars[name]


def _store_schemas(codec: FeatureCodec, n_examples: int) -> tuple[Any, Any]:
    import pyarrow as pa

    meta = {b"bertfit": json.dumps({"kind": codec.kind, "examples": n_examples}).encode()}
    features = pa.schema([("ids", pa.list_(pa.int32())), ("type_ids", pa.list_(pa.int8())), ("truncated", pa.bool_()),
                          ("example", pa.int64()), *((n, _arrow_type(t)) for n, t in codec.columns.items())],
                         metadata=meta)
    examples = pa.schema([(n, _arrow_type(t)) for n, t in codec.example_columns.items()] or [("_", pa.int8())],
                         metadata=meta)
    return features, examples


def examples_path(path: Path) -> Path:
    """The per-example file beside a store's features file."""
    return path.with_name(path.name.replace(".features.arrow", ".examples.arrow"))


def _open_store(path: Path, n_examples: int, codec: FeatureCodec) -> FeatureStore | None:
    """The store mapped, or None when it is missing or damaged (then rebuilt)."""
    if not path.is_file() or not examples_path(path).is_file():
        return None
    import pyarrow as pa

    try:
        features_schema, examples_schema = _store_schemas(codec, n_examples)
        table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
        examples = pa.ipc.open_file(pa.memory_map(str(examples_path(path)))).read_all()
        if not table.schema.equals(features_schema, check_metadata=True) or \
                not examples.schema.equals(examples_schema, check_metadata=True):
            raise ValueError("another layout")
        if examples.num_rows != n_examples:
            raise ValueError(f"{examples.num_rows} examples, expected {n_examples}")
        return FeatureStore(path, table, examples, n_examples)
    except Exception as exc:  # noqa: BLE001 - a damaged cache file is made again, never trusted
        logger.warning("the feature cache file %s is unreadable (%s); encoding again", path, exc)
        return None


def _build_store(path: Path, examples: Sequence[Any], codec: FeatureCodec) -> None:
    import pyarrow as pa

    features_schema, examples_schema = _store_schemas(codec, len(examples))
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp_examples = path.with_name(f".{examples_path(path).name}.{os.getpid()}.tmp")
    logger.info("encoding %d examples (%s) into the cache (%s)", len(examples), codec.kind, path)
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, features_schema) as writer, \
                pa.OSFile(str(tmp_examples), "wb") as examples_sink, \
                pa.ipc.new_file(examples_sink, examples_schema) as examples_writer:
            for start in range(0, len(examples), CHUNK):
                part = list(examples[start:start + CHUNK])
                chunk = codec.encode(part)
                index = np.asarray(chunk.example_index, dtype=np.int64) + start
                columns = [pa.array([e.ids for e in chunk.encoded], type=pa.list_(pa.int32())),
                           pa.array([e.type_ids for e in chunk.encoded], type=pa.list_(pa.int8())),
                           pa.array([e.truncated for e in chunk.encoded], type=pa.bool_()),
                           pa.array(index, type=pa.int64())]
                columns += [_column(chunk.columns[n], t) for n, t in codec.columns.items()]
                writer.write_batch(pa.record_batch(columns, schema=features_schema))
                per_example = [_column(chunk.example_columns[n], t) for n, t in codec.example_columns.items()] \
                    or [pa.array(np.zeros(len(part), dtype=np.int8))]
                examples_writer.write_batch(pa.record_batch(per_example, schema=examples_schema))
                _progress(min(start + CHUNK, len(examples)), len(examples), "examples")
        os.replace(tmp_examples, examples_path(path))
        os.replace(tmp, path)  # last: the features file's presence means the store is whole
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_examples.unlink(missing_ok=True)
        raise


def _column(values: Sequence[Any], type_name: str) -> Any:
    """One column of a record batch from a codec's values (numpy arrays or lists), without per-value Python work
    for lists of arrays (their values are concatenated once)."""
    import pyarrow as pa

    arrow_type = _arrow_type(type_name)
    if not type_name.startswith("list<"):
        return pa.array(values if type_name == "string" else np.asarray(values), type=arrow_type)
    item = arrow_type.value_type.to_pandas_dtype()
    parts = [np.asarray(v, dtype=item).reshape(-1) for v in values]
    offsets = np.zeros(len(parts) + 1, dtype=np.int32)
    np.cumsum([len(p) for p in parts], out=offsets[1:])
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=item)
    return pa.ListArray.from_arrays(pa.array(offsets, type=pa.int32()), pa.array(flat, type=arrow_type.value_type))


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


def _progress(done: int, total: int, unit: str) -> None:
    logger.info("tokenized %d of %d %s", done, total, unit, extra={PROGRESS: (done, total, unit)})


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
                _progress(min(start + CHUNK, len(texts)), len(texts), "texts")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
