"""Pretraining data for corpora too large to hold: documents and sequences in memory-mapped Arrow files.

The in-memory path (prepare.py) holds every document's token ids and every sequence as Python lists:
about 30 times the corpus' size in memory, so a corpus of a few GB cannot be used at all. Here the
corpus is read as a stream (corpus_stream.py), tokenized in chunks of :data:`CHUNK` documents and
written to ``documents.arrow`` (each document's sentences as token ids, and its sentences' text);
the NSP pairs or packed sequences are then built from that file, mapped, one document at a time, and
written to ``train-*.arrow`` / ``validation-*.arrow`` as features ([CLS] A [SEP] B [SEP]) that
training reads mapped (data/token_cache.py's CachedEncodings). A process holds a chunk, the split's
document indices and the sequences' NSP labels; the rest is the operating system's page cache.

The result is the in-memory path's, sequence for sequence: the same documents, the same held-out
split and the same random draws (tests/test_pretraining_store.py), so a run does not depend on which
path read its corpus. Both files are kept in bertfit's cache, keyed by a hash of the corpus files'
bytes, the tokenizer and every setting that changes them, and reused by later runs, resumes and the
other ranks of a distributed job (one process builds, under a lock; the others wait and map).

Used when the corpus files hold at least ``BERTFIT_CORPUS_STORE_MIN_BYTES`` (default 64 MiB) and
pyarrow is installed; ``BERTFIT_TOKEN_CACHE=0`` turns it off.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from bertfit.data.columnar import split_format
from bertfit.data.token_cache import CachedEncodings, cache_threshold, locked
from bertfit.errors import DataError
from bertfit.tasks.pretrain.corpus import CorpusReport, Document
from bertfit.tasks.pretrain.instances import IS_NEXT, Instance, iter_nsp_instances, iter_packed_instances

logger = logging.getLogger(__name__)

STORE_VERSION = "1"
CHUNK = 2048  # documents tokenized and written at a time
SEQUENCE_CHUNK = 4096  # sequences written as one record batch
DEFAULT_MIN_BYTES = 64 * 2**20


def store_enabled(paths: Sequence[str]) -> bool:
    """Whether a corpus is read through the store: large enough, pyarrow installed, not turned off."""
    minimum = cache_threshold("BERTFIT_CORPUS_STORE_MIN_BYTES", DEFAULT_MIN_BYTES)
    return minimum is not None and _corpus_bytes(paths) >= minimum


@dataclass
class StoredSequences:
    """A split's sequences from the store: features read mapped, and their NSP labels."""

    features: CachedEncodings
    next_labels: np.ndarray  # (N,) int8, as stored: a byte a sequence, not eight

    def __len__(self) -> int:
        return len(self.features)


@dataclass
class StoredDocuments:
    """The documents file, mapped: ``tokens(i)`` is document i's sentences as token-id lists (empty
    sentences left out), ``texts(i)`` their text."""

    table: Any

    def __post_init__(self) -> None:
        self._starts: list[int] = []
        self._doc_offsets, self._sentence_offsets, self._ids = [], [], []
        self._texts = []
        start = 0
        for batch in self.table.to_batches():
            sentences = batch.column("sentences")
            self._starts.append(start)
            self._doc_offsets.append(sentences.offsets.to_numpy())
            self._sentence_offsets.append(sentences.values.offsets.to_numpy())
            self._ids.append(sentences.values.values.to_numpy())
            self._texts.append(batch.column("texts"))
            start += batch.num_rows
        self._n = start
        self._starts_arr = np.asarray(self._starts, dtype=np.int64)
        self.sizes = np.concatenate([np.diff(o) for o in self._doc_offsets]) if self._doc_offsets else np.zeros(0, int)

    def __len__(self) -> int:
        return self._n

    def _where(self, i: int) -> tuple[int, int]:
        chunk = int(np.searchsorted(self._starts_arr, i, side="right")) - 1
        return chunk, i - self._starts[chunk]

    def tokens(self, i: int) -> "StoredDocument":
        chunk, j = self._where(i)
        docs = self._doc_offsets[chunk]
        return StoredDocument(self._sentence_offsets[chunk], self._ids[chunk], int(docs[j]), int(docs[j + 1]))

    def texts(self, i: int) -> list[str]:
        chunk, j = self._where(i)
        return self._texts[chunk][j].as_py()

    def sentence_lengths(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(each sentence's length in tokens, its document's index), a record batch at a time."""
        start = 0
        for doc_offsets, sentence_offsets in zip(self._doc_offsets, self._sentence_offsets):
            per_doc = np.diff(doc_offsets)
            yield np.diff(sentence_offsets), np.repeat(np.arange(start, start + len(per_doc)), per_doc)
            start += len(per_doc)


class StoredDocument(Sequence):
    """One document's sentences as token-id lists, each made when read: a NotNext pair reads a few
    sentences of another document, never the whole of a long one."""

    def __init__(self, offsets: np.ndarray, ids: np.ndarray, first: int, end: int) -> None:
        self._offsets, self._ids, self._first, self._end = offsets, ids, first, end

    def __len__(self) -> int:
        return self._end - self._first

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            start, stop, step = k.indices(len(self))
            if step != 1:
                return [self[i] for i in range(start, stop, step)]
            return StoredDocument(self._offsets, self._ids, self._first + start, self._first + max(start, stop))
        if k < 0:
            k += len(self)
        if not 0 <= k < len(self):
            raise IndexError(f"sentence {k} of {len(self)}")
        a, b = self._offsets[self._first + k], self._offsets[self._first + k + 1]
        return self._ids[a:b].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for k in range(len(self)):
            yield self[k]


class DocumentView(Sequence):
    """Documents ``indices`` of the store, as the instance builders read them (lists, made on access)."""

    def __init__(self, store: StoredDocuments, indices: np.ndarray) -> None:
        self.store, self.indices = store, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, k: Any) -> Any:
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(len(self)))]
        return self.store.tokens(int(self.indices[k]))

    def __iter__(self) -> Iterator[list[list[int]]]:
        for i in self.indices:
            yield self.store.tokens(int(i))


def prepare_corpus_stored(paths: Sequence[str], tokenizer: Any, *, max_length: int, nsp: bool, seed: int,
                          fmt: str, column: str | None, encoding: str | None, max_chars: int, short_seq_prob: float,
                          validation_fraction: float, max_validation_documents: int,
                          max_documents: int | None, directory: Path | None = None
                          ) -> tuple[StoredSequences, StoredSequences, dict[str, Any], list[str]]:
    """prepare.prepare_corpus's (train, validation, summary, held-out texts), with the splits stored and
    mapped (see the module docstring)."""
    from bertfit.io import cache_dir

    reading = {"fmt": fmt, "column": column, "encoding": encoding, "max_chars": max_chars}
    key = _key(paths, tokenizer, reading)
    folder = (Path(directory) if directory is not None else cache_dir() / "pretrain") / key
    folder.mkdir(parents=True, exist_ok=True)
    with locked(folder / "build.lock"):
        report = _documents_file(folder, paths, tokenizer, reading)
        store = StoredDocuments(_map(folder / "documents.arrow"))
        settings = {"max_length": max_length, "nsp": nsp, "seed": seed, "short_seq_prob": short_seq_prob,
                    "validation_fraction": validation_fraction, "max_validation_documents": max_validation_documents,
                    "max_documents": max_documents, "sep": tokenizer.sep_id, "cls": tokenizer.cls_id}
        split_key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        train_idx, validation_idx, kept = _split(store, seed, nsp, validation_fraction, max_validation_documents,
                                                 max_documents)
        if not len(train_idx):
            raise DataError(f"the corpus has too little text to train on ({report.summary()})")
        train = _sequences(folder / f"train-{split_key}.arrow", DocumentView(store, train_idx), 0, tokenizer,
                           max_length, nsp, seed, short_seq_prob)
        validation = _sequences(folder / f"validation-{split_key}.arrow", DocumentView(store, validation_idx), 1,
                                tokenizer, max_length, nsp, seed, short_seq_prob)
    if not len(validation):
        logger.warning("no held-out slice (the corpus has %d documents): no validation metrics, no early stopping",
                       kept)
    long_sentences = _long_sentences(store, np.concatenate([train_idx, validation_idx]), max_length)
    summary: dict[str, Any] = {
        "task": "pretrain",
        "corpus": report.to_dict(),
        "sources": [report.summary()],
        "documents": {"train": int(len(train_idx)), "validation": int(len(validation_idx))},
        "rows": {"train": len(train), "validation": len(validation), "test": 0},
        "sentences_over_max_length": long_sentences,
        "objectives": "masked LM + next-sentence prediction" if nsp else "masked LM (packed sequences)",
        "tokens": {"train": _tokens(train, nsp), "validation": _tokens(validation, nsp)},
        "store": str(folder),
    }
    if nsp and len(train):
        summary["is_next_share"] = float(np.mean(train.next_labels == IS_NEXT))
    texts: list[str] = []
    for i in np.sort(validation_idx):
        texts.extend(s for s in store.texts(int(i)) if 20 <= len(s) <= 200)
        if len(texts) >= 50:
            break
    return train, validation, summary, texts[:50]


# --------------------------------------------------------------------------------------------
# Internals
# --------------------------------------------------------------------------------------------


def _corpus_bytes(paths: Sequence[str]) -> int:
    total = 0
    for raw in paths:
        path = Path(split_format(raw)[0])
        try:
            total += sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
        except OSError:
            pass  # a missing file: the reader names it
    return total


def _key(paths: Sequence[str], tokenizer: Any, reading: dict[str, Any]) -> str:
    """A hash of every corpus file's bytes (in order), the tokenizer and the reading settings."""
    digest = hashlib.sha256(f"bertfit-corpus/{STORE_VERSION}/{tokenizer.fingerprint}/"
                            f"{json.dumps(reading, sort_keys=True)}/".encode())
    for raw in paths:
        digest.update(f"{raw}\0".encode())
        path = Path(split_format(raw)[0])
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for f in files:
            try:
                with open(f, "rb") as handle:
                    digest.update(f.stat().st_size.to_bytes(8, "little"))
                    while block := handle.read(1 << 22):
                        digest.update(block)
            except OSError:
                digest.update(b"missing")  # the reader raises the error that names it
    return digest.hexdigest()[:32]


def _map(path: Path) -> Any:
    import pyarrow as pa

    return pa.ipc.open_file(pa.memory_map(str(path))).read_all()


def _map_or_none(path: Path) -> Any:
    """The sequences file mapped; None when missing or damaged (then built again, never trusted)."""
    if not path.is_file():
        return None
    try:
        table = _map(path)
        if table.column_names != ["ids", "type_ids", "truncated", "next_label"]:
            raise ValueError(f"columns {table.column_names}")
        return table
    except Exception as exc:  # noqa: BLE001
        logger.warning("the sequences file %s is unreadable (%s); building it again", path, exc)
        return None


def _documents_file(folder: Path, paths: Sequence[str], tokenizer: Any, reading: dict[str, Any]) -> CorpusReport:
    """documents.arrow and its report: reused when present and whole, else read and tokenized into it."""
    from bertfit.tasks.pretrain.corpus_stream import iter_corpus

    path, saved = folder / "documents.arrow", folder / "report.json"
    if path.is_file() and saved.is_file():
        try:
            report = CorpusReport(**json.loads(saved.read_text(encoding="utf-8")))
            if len(_map(path)) == report.documents:
                logger.info("corpus documents read from the store (%s)", path)
                return report
        except Exception as exc:  # noqa: BLE001 - a damaged store is made again, never trusted
            logger.warning("the corpus store %s is unreadable (%s); reading the corpus again", path, exc)
    report = CorpusReport(max_chars=reading["max_chars"])
    documents = iter_corpus(paths, report, fmt=reading["fmt"], column=reading["column"],
                            max_chars=reading["max_chars"], encoding=reading["encoding"])
    _write_documents(path, documents, tokenizer, lambda n: logger.info("tokenized %d documents into the store", n))
    saved.write_text(json.dumps(report.to_dict()), encoding="utf-8")
    return report


def _write_in_chunks(path: Path, schema: Any, items: Iterable[Any], size: int,
                     to_columns: Callable[[list[Any]], list[Any]], progress: Callable[[int], None] | None = None) -> None:
    """Write ``items`` to the Arrow IPC file ``path``, a record batch of ``to_columns(chunk)`` per ``size``
    items, through a temporary file renamed into place when whole (a reader never maps half a file)."""
    import pyarrow as pa

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    written = 0
    try:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
            chunk: list[Any] = []
            for item in itertools.chain(items, [None]):
                if item is not None:
                    chunk.append(item)
                if chunk and (item is None or len(chunk) >= size):
                    writer.write_batch(pa.record_batch(to_columns(chunk), schema=schema))
                    written += len(chunk)
                    if progress is not None:
                        progress(written)
                    chunk = []
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _write_documents(path: Path, documents: Iterable[Document], tokenizer: Any, progress: Callable[[int], None]) -> None:
    import pyarrow as pa

    schema = pa.schema([("sentences", pa.list_(pa.list_(pa.int32()))), ("texts", pa.list_(pa.string()))])

    def columns(chunk: list[Document]) -> list[Any]:
        ids = tokenizer.token_ids([s for d in chunk for s in d.sentences])
        tokens, position = [], 0
        for d in chunk:  # prepare.tokenize_documents' rule: an empty sentence is left out
            tokens.append([piece for piece in ids[position:position + len(d.sentences)] if piece])
            position += len(d.sentences)
        return [pa.array(tokens, type=schema.field("sentences").type),
                pa.array([d.sentences for d in chunk], type=pa.list_(pa.string()))]

    _write_in_chunks(path, schema, documents, CHUNK, columns, progress)


def _split(store: StoredDocuments, seed: int, nsp: bool, validation_fraction: float, max_validation_documents: int,
           max_documents: int | None) -> tuple[np.ndarray, np.ndarray, int]:
    """prepare_corpus' draws, on document indices: (train, held-out, documents kept)."""
    rng = np.random.default_rng([seed, 11])
    # Document indices in int32 where they fit (4 bytes a document, not 8: a large corpus has millions);
    # permuting an arange of either type draws the same permutation as rng.permutation(n).
    index = np.int32 if len(store) < 2**31 else np.int64
    chosen = np.arange(len(store), dtype=index)
    if max_documents and len(store) > max_documents:
        chosen = np.sort(rng.permutation(chosen)[:max_documents])
    kept = chosen[store.sizes[chosen] > 0]  # a document of no tokens (emoji only) is dropped
    order = rng.permutation(np.arange(len(kept), dtype=index))
    n_validation = min(max_validation_documents, int(round(validation_fraction * len(kept))))
    if n_validation and n_validation < (2 if nsp else 1):
        n_validation = 0
    held = np.zeros(len(kept), dtype=bool)
    held[order[:n_validation]] = True
    return kept[~held], kept[held], len(kept)


def _sequences(path: Path, docs: DocumentView, stream: int, tokenizer: Any, max_length: int, nsp: bool, seed: int,
               short_seq_prob: float) -> StoredSequences:
    """A split's sequences: mapped from ``path``, or built into it first from ``docs``."""
    import pyarrow as pa

    if not len(docs):
        return StoredSequences(CachedEncodings(path, pa.table({"ids": pa.array([], pa.list_(pa.int32())),
                                                               "type_ids": pa.array([], pa.list_(pa.int8())),
                                                               "truncated": pa.array([], pa.bool_())})),
                               np.zeros(0, dtype=np.int64))
    table = _map_or_none(path)
    if table is None:
        if nsp:
            instances: Iterator[Instance] = iter_nsp_instances(docs, max_length, seed=seed * 2 + stream,
                                                               short_seq_prob=short_seq_prob)
        else:
            instances = iter_packed_instances(docs, max_length, tokenizer.sep_id)
        _write_sequences(path, instances, tokenizer)
        table = _map(path)
    return StoredSequences(CachedEncodings(path, table), table.column("next_label").to_numpy().astype(np.int8, copy=False))


def _write_sequences(path: Path, instances: Iterator[Instance], tokenizer: Any) -> None:
    import pyarrow as pa

    schema = pa.schema([("ids", pa.list_(pa.int32())), ("type_ids", pa.list_(pa.int8())), ("truncated", pa.bool_()),
                        ("next_label", pa.int8())])

    def columns(batch: list[Instance]) -> list[Any]:
        encoded = [i.encode(tokenizer.cls_id, tokenizer.sep_id) for i in batch]
        return [pa.array([e.ids for e in encoded], type=pa.list_(pa.int32())),
                pa.array([e.type_ids for e in encoded], type=pa.list_(pa.int8())),
                pa.array([False] * len(batch), type=pa.bool_()),
                pa.array([i.next_label for i in batch], type=pa.int8())]

    _write_in_chunks(path, schema, instances, SEQUENCE_CHUNK, columns)


def _tokens(split: StoredSequences, nsp: bool) -> int:
    """Tokens of A and B (the special tokens left out, as the in-memory path counts them)."""
    special = 3 if nsp else 2
    lengths = split.features.lengths
    return int(lengths.sum() - special * len(lengths))


def _long_sentences(store: StoredDocuments, documents: np.ndarray, max_length: int) -> int:
    """Sentences longer than a pair's room, in the documents used (prepare_corpus' summary figure)."""
    used = np.zeros(len(store), dtype=bool)
    used[documents] = True
    return sum(int(((lengths > max_length - 3) & used[owner]).sum()) for lengths, owner in store.sentence_lengths())
