"""Corpus files → training and held-out sequences for further pretraining.

Documents (not sequences) are split into training and validation, so no held-out text is also
trained on, and NotNext pairs of the held-out slice draw their B from held-out documents only. The
held-out slice is ``validation_fraction`` of the documents, at most ``max_validation_documents``
(a few thousand sequences measure perplexity to a fraction of a percent; more only slows evaluation).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from bertfit.errors import DataError
from bertfit.tasks.pretrain.corpus import Document, read_corpus
from bertfit.tasks.pretrain.instances import IS_NEXT, Instance, nsp_instances, packed_instances

logger = logging.getLogger(__name__)


@dataclass
class PretrainingData:
    train: Sequence[Instance] | Any  # a list, or the store's StoredSequences (a large corpus)
    validation: Sequence[Instance] | Any
    summary: dict[str, Any] = field(default_factory=dict)
    validation_texts: list[str] = field(default_factory=list)  # held-out sentences, for fill examples


def tokenize_documents(tokenizer: Any, documents: Sequence[Document]) -> list[list[list[int]]]:
    """Each document's sentences as WordPiece ids (one batched call: the Rust tokenizer runs in parallel)."""
    flat = [s for d in documents for s in d.sentences]
    ids = tokenizer.token_ids(flat)
    out, position = [], 0
    for d in documents:
        out.append([piece for piece in ids[position:position + len(d.sentences)] if piece])
        position += len(d.sentences)
    return out


def prepare_corpus(paths: Sequence[str], tokenizer: Any, *, max_length: int, nsp: bool, seed: int,
                   fmt: str = "auto", column: str | None = None, encoding: str | None = None,
                   max_chars: int = 20_000, short_seq_prob: float = 0.1, validation_fraction: float = 0.05,
                   max_validation_documents: int = 2_000, max_documents: int | None = None) -> PretrainingData:
    """The corpus' training and held-out sequences. A large corpus (tasks/pretrain/store.py) is streamed into
    memory-mapped files and its splits read from them; the sequences are the same either way."""
    from bertfit.tasks.pretrain.store import prepare_corpus_stored, store_enabled

    if store_enabled(paths):
        return PretrainingData(*prepare_corpus_stored(paths, tokenizer, max_length=max_length, nsp=nsp, seed=seed, fmt=fmt,
                                     column=column, encoding=encoding, max_chars=max_chars,
                                     short_seq_prob=short_seq_prob, validation_fraction=validation_fraction,
                                     max_validation_documents=max_validation_documents, max_documents=max_documents))
    documents, report = read_corpus(paths, fmt=fmt, column=column, max_chars=max_chars, encoding=encoding)
    logger.info("corpus: %s", report.summary())
    rng = np.random.default_rng([seed, 11])
    if max_documents and len(documents) > max_documents:
        keep = np.sort(rng.permutation(len(documents))[:max_documents])
        documents = [documents[i] for i in keep]
    tokenized = tokenize_documents(tokenizer, documents)
    keep = [i for i, d in enumerate(tokenized) if d]  # a document of [UNK]-less nothing (emoji only) is dropped
    documents, tokenized = [documents[i] for i in keep], [tokenized[i] for i in keep]
    order = rng.permutation(len(documents))
    n_validation = min(max_validation_documents, int(round(validation_fraction * len(documents))))
    if n_validation and n_validation < (2 if nsp else 1):
        n_validation = 0
    held_out = set(order[:n_validation].tolist())
    train_docs = [d for i, d in enumerate(tokenized) if i not in held_out]
    validation_docs = [d for i, d in enumerate(tokenized) if i in held_out]
    if not train_docs:
        raise DataError(f"the corpus has too little text to train on ({report.summary()})")

    def build(docs: list[list[list[int]]], stream: int) -> list[Instance]:
        if not docs:
            return []
        if nsp:
            return nsp_instances(docs, max_length, seed=seed * 2 + stream, short_seq_prob=short_seq_prob)
        return packed_instances(docs, max_length, tokenizer.sep_id)

    train, validation = build(train_docs, 0), build(validation_docs, 1)
    if not validation:
        logger.warning("no held-out slice (the corpus has %d documents): no validation metrics, no early stopping",
                       len(documents))
    long_sentences = sum(len(s) > max_length - 3 for d in tokenized for s in d)
    summary: dict[str, Any] = {
        "task": "pretrain",
        "corpus": report.to_dict(),
        "sources": [report.summary()],
        "documents": {"train": len(train_docs), "validation": len(validation_docs)},
        "rows": {"train": len(train), "validation": len(validation), "test": 0},
        "sentences_over_max_length": int(long_sentences),
        "objectives": "masked LM + next-sentence prediction" if nsp else "masked LM (packed sequences)",
        "tokens": {"train": int(sum(len(i.a) + len(i.b) for i in train)),
                   "validation": int(sum(len(i.a) + len(i.b) for i in validation))},
    }
    if nsp and train:
        summary["is_next_share"] = float(np.mean([i.next_label == IS_NEXT for i in train]))
    held = [documents[i] for i in sorted(held_out)]
    texts = [s for d in held for s in d.sentences if 20 <= len(s) <= 200]
    return PretrainingData(train, validation, summary, texts[:50])
