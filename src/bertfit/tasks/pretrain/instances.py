"""Training sequences from tokenized documents: next-sentence-prediction pairs, or packed sequences.

NSP pairs follow Google's create_pretraining_data.py (create_instances_from_document), so a model
further pretrained here sees the inputs the original BERT saw:

* each document is cut into chunks of consecutive sentences up to a target length of
  ``max_length - 3`` tokens ([CLS] A [SEP] B [SEP]); with probability ``short_seq_prob`` (0.1) the
  target is a random length in [2, max_length - 3] instead, so the model also sees short inputs;
* segment A is the chunk's first ``a_end`` sentences (a_end uniform in [1, len(chunk) - 1]);
* half of the time B is the rest of the chunk (IsNext, label 0); otherwise B is a span of sentences starting at a random sentence of a random
  *other* document (NotNext, label 1), and the chunk's unused sentences are put back, so the next
  chunk starts with them and no text is wasted;
* the pair is trimmed to fit, one token at a time from the longer segment, from its front or its back
  at random.

Three departures, to keep the promises the tests check:

* Google makes every chunk of a single sentence NotNext. Chunks of one sentence are common (the
  end of a document; all of a one-line tweet), so that skews the labels: 39% IsNext on documents
  of 4-12 short sentences, and nearly none on tweets. Here the coin decides for every chunk, and an
  IsNext chunk of one sentence is cut inside the sentence at a random token (B is the rest of the
  sentence: still the true continuation). IsNext is one half of the pairs, whatever the corpus.
* The other document is drawn uniformly from all documents but this one (Google retries 10 random
  picks and may end on the same one), so NotNext's B never comes from A's document.
* A corpus of one document cannot make NotNext pairs: an error that says to use --no-nsp.

``--no-nsp`` packs instead (RoBERTa's FULL-SENTENCES, transformers' run_mlm group_texts): all
sentences in corpus order, a [SEP] between documents, cut into sequences of ``max_length - 2``
tokens, so no position is padding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from bertfit.errors import DataError
from bertfit.tokenizer import Encoded

IS_NEXT, NOT_NEXT = 0, 1  # transformers' next_sentence_label convention (0 = B continues A)


@dataclass
class Instance:
    """One training sequence before masking: segment A, segment B (empty when packed), NSP label."""

    a: list[int]
    b: list[int]
    next_label: int  # IS_NEXT / NOT_NEXT; IS_NEXT for packed sequences (no NSP loss)
    document: int  # the document A comes from
    b_document: int  # the document B comes from (== document for IsNext)

    def encode(self, cls_id: int, sep_id: int) -> Encoded:
        ids = [cls_id, *self.a, sep_id]
        types = [0] * len(ids)
        if self.b:
            ids += [*self.b, sep_id]
            types += [1] * (len(self.b) + 1)
        return Encoded(ids, types, False)


def _truncate_pair(a: list[int], b: list[int], max_tokens: int, rng: np.random.Generator) -> None:
    """Trim the longer segment, one token at a time from a random end, until both fit (Google's rule)."""
    while len(a) + len(b) > max_tokens:
        longer = a if len(a) > len(b) else b
        if rng.random() < 0.5:
            del longer[0]
        else:
            longer.pop()


def nsp_instances(documents: Sequence[Sequence[Sequence[int]]], max_length: int, seed: int,
                  short_seq_prob: float = 0.1) -> list[Instance]:
    """NSP pairs from documents of tokenized sentences (see the module docstring)."""
    docs = [[list(s) for s in doc if len(s)] for doc in documents]
    return list(iter_nsp_instances([d for d in docs if d], max_length, seed, short_seq_prob))


def iter_nsp_instances(docs: Sequence[Sequence[Sequence[int]]], max_length: int, seed: int,
                       short_seq_prob: float = 0.1) -> Iterator[Instance]:
    """:func:`nsp_instances` one at a time, from ``docs`` whose documents and sentences are all non-empty:
    a list, or a view of a memory-mapped store (tasks/pretrain/store.py), read one document at a time
    (a NotNext pair reads one other document), never copied whole."""
    if len(docs) < 2:
        raise DataError(f"next-sentence prediction needs at least 2 documents to draw NotNext pairs from, the corpus "
                        f"has {len(docs)}; separate documents by blank lines, or train masked-LM alone with --no-nsp")
    if max_length < 5:
        raise DataError(f"--max-length {max_length} is too short for a sentence pair ([CLS] A [SEP] B [SEP])")
    rng = np.random.default_rng([seed, 7])
    max_tokens = max_length - 3
    for index in range(len(docs)):
        doc = docs[index]
        target = max_tokens if rng.random() >= short_seq_prob else int(rng.integers(2, max_tokens + 1))
        chunk: list[Sequence[int]] = []
        length = 0
        i = 0
        while i < len(doc):
            chunk.append(doc[i])
            length += len(doc[i])
            if i == len(doc) - 1 or length >= target:
                a_end = int(rng.integers(1, len(chunk))) if len(chunk) >= 2 else 1
                a = [t for s in chunk[:a_end] for t in s]
                not_next = rng.random() < 0.5
                if len(chunk) == 1 and not not_next:
                    if len(a) >= 2:  # IsNext from one sentence: B is the rest of it (see the docstring)
                        cut = int(rng.integers(1, len(a)))
                        chunk = [a[:cut], a[cut:]]
                        a, a_end = a[:cut], 1
                    else:
                        not_next = True
                if not_next:
                    other = int(rng.integers(0, len(docs) - 1))
                    other += other >= index  # any document but this one
                    source = docs[other]
                    b: list[int] = []
                    for sentence in source[int(rng.integers(0, len(source))):]:
                        b.extend(sentence)
                        if len(b) >= target - len(a):
                            break
                    i -= len(chunk) - a_end  # put the unused sentences back
                    label, b_doc = NOT_NEXT, other
                else:
                    b = [t for s in chunk[a_end:] for t in s]
                    label, b_doc = IS_NEXT, index
                _truncate_pair(a, b, max_tokens, rng)
                if a and b:
                    yield Instance(a, b, label, index, b_doc)
                chunk, length = [], 0  # the target length stays the document's, as in Google's loop
            i += 1


def packed_instances(documents: Sequence[Sequence[Sequence[int]]], max_length: int, sep_id: int) -> list[Instance]:
    """Full-length single segments: the corpus' tokens in order, [SEP] between documents."""
    return list(iter_packed_instances(documents, max_length, sep_id))


def iter_packed_instances(documents: Iterable[Sequence[Sequence[int]]], max_length: int,
                          sep_id: int) -> Iterator[Instance]:
    """:func:`packed_instances` one at a time, holding at most one sequence and one document of tokens.

    The corpus is one stream (a [SEP] between documents) cut every ``max_length - 2`` tokens; a
    sequence never opens with the documents' separator (that token is skipped, and the cuts move on
    by one)."""
    if max_length < 3:
        raise DataError(f"--max-length {max_length} is too short")
    size = max_length - 2
    pending: list[int] = []  # the stream's tokens not yet in a sequence
    owners: list[int] = []  # the document of each pending token
    before: int | None = None  # the document of the token before pending[0] (None: the stream's start)

    def cut(final: bool) -> Iterator[Instance]:
        nonlocal pending, owners, before
        while pending:
            if pending[0] == sep_id and before is not None and owners[0] != before:
                before = owners[0]
                del pending[0], owners[0]
                continue
            if len(pending) < size and not final:
                return
            piece, owner = pending[:size], owners[0]
            before = owners[len(piece) - 1]
            del pending[:size], owners[:size]
            if len(piece) >= 2:
                yield Instance(piece, [], IS_NEXT, owner, owner)

    started = False
    for index, doc in enumerate(documents):
        tokens = [t for s in doc for t in s]
        if not tokens:
            continue
        if started:
            pending.append(sep_id)
            owners.append(index)
        started = True
        pending.extend(tokens)
        owners.extend([index] * len(tokens))
        yield from cut(final=False)
    yield from cut(final=True)
