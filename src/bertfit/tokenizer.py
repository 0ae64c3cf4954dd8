"""BERT WordPiece tokenization: a thin layer over the `tokenizers` library.

One class, `WordPieceTokenizer`, turns single texts or text pairs into `[CLS] a [SEP]` /
`[CLS] a [SEP] b [SEP]` id sequences (segment ids 0/1), truncated to at most 512 tokens, and pads
batches dynamically. Its output matches transformers' `BertTokenizerFast` id for id, and `save()`
writes a directory that `transformers.AutoTokenizer` loads back as the same tokenizer.

All the work happens in Rust (`tokenizers`); this module only configures it, so there is no Python
re-implementation of BERT's basic tokenizer to drift from the reference.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, normalizers, pre_tokenizers
from tokenizers.models import WordPiece

from bertfit.errors import CheckpointError
from bertfit.tokenizer_files import bert_template, check_wordpiece, read_tokenizer_config, read_vocab, write_atomic

logger = logging.getLogger(__name__)

# BERT's position embeddings have 512 rows; a longer sequence cannot be embedded.
MAX_LENGTH = 512

TOKENIZER_FILE = "tokenizer.json"
VOCAB_FILE = "vocab.txt"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"
SPECIAL_TOKENS_MAP_FILE = "special_tokens_map.json"

_DEFAULT_SPECIAL_TOKENS = {
    "unk_token": "[UNK]",
    "sep_token": "[SEP]",
    "pad_token": "[PAD]",
    "cls_token": "[CLS]",
    "mask_token": "[MASK]",
}


@dataclass(frozen=True, slots=True)
class Encoded:
    """One encoded example: token ids with special tokens, segment ids, and whether it was cut."""

    ids: list[int]
    type_ids: list[int]
    truncated: bool  # True when tokens were dropped by truncation

    def __len__(self) -> int:
        return len(self.ids)


class WordPieceTokenizer:
    """Thin layer over the `tokenizers` library: BERT WordPiece for single texts and pairs.

    Build one with `from_dir`, `from_tokenizer_json` or `from_vocab`. Instances are safe to share
    between threads (an HTTP server's workers): the Rust tokenizer's truncation setting is mutable
    state, so configuring it and encoding happen under one lock.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        cls_token: str = "[CLS]",
        sep_token: str = "[SEP]",
        pad_token: str = "[PAD]",
        unk_token: str = "[UNK]",
        mask_token: str = "[MASK]",
        source: str = "<in memory>",
    ) -> None:
        """Wrap a configured `tokenizers.Tokenizer`, which this object then owns (its padding and
        truncation are reset). Prefer the `from_*` constructors."""
        self._tokenizer = tokenizer
        self._source = source
        # Padding is ours (dynamic, in `pad`); truncation is set per call. Whatever the file had
        # baked in (MiniLM's tokenizer.json pads and truncates to a fixed 128) must not leak through.
        self._tokenizer.no_padding()
        self._tokenizer.no_truncation()
        self._max_length: int | None = None
        self._lock = threading.Lock()

        self._tokens = {"cls": cls_token, "sep": sep_token, "pad": pad_token, "unk": unk_token, "mask": mask_token}
        ids: dict[str, int] = {}
        for role, token in self._tokens.items():
            token_id = tokenizer.token_to_id(token)
            if token_id is None and role != "mask":  # [MASK] only matters for pretraining
                raise CheckpointError(
                    f"{source}: the vocabulary has no {token!r} token, which BERT needs as its {role} "
                    f"token. Use the tokenizer that was saved with the model, or add {token!r} to it."
                )
            if token_id is not None:
                ids[role] = token_id
        self._ids = ids

        state = json.loads(tokenizer.to_str())
        check_wordpiece(state, source)
        normalizer = state.get("normalizer") or {}
        # These flags only describe the pipeline for tokenizer_config.json; encoding always runs
        # the tokenizer's own normalizer.
        self._bert_normalizer = normalizer.get("type") == "BertNormalizer"
        self._bert_pre_tokenizer = (state.get("pre_tokenizer") or {}).get("type") == "BertPreTokenizer"
        self._do_lower_case = bool(normalizer.get("lowercase", True))
        self._strip_accents: bool | None = normalizer.get("strip_accents")
        self._tokenize_chinese_chars = bool(normalizer.get("handle_chinese_chars", True))

    # ----------------------------------------------------------------------------- constructors

    @classmethod
    def from_dir(cls, path: str | os.PathLike[str]) -> WordPieceTokenizer:
        """Load the tokenizer of a model directory: tokenizer.json if present, else vocab.txt.

        With only vocab.txt, tokenizer_config.json (if any) supplies do_lower_case, strip_accents
        and tokenize_chinese_chars, defaulting as transformers' BertTokenizer does.
        """
        directory = Path(path)
        if not directory.is_dir():
            raise CheckpointError(
                f"Tokenizer directory {directory} does not exist or is not a directory. "
                f"Pass the model directory that holds {TOKENIZER_FILE} or {VOCAB_FILE}."
            )
        config = read_tokenizer_config(directory / TOKENIZER_CONFIG_FILE)
        tokenizer_json = directory / TOKENIZER_FILE
        if tokenizer_json.is_file():
            tokenizer = cls.from_tokenizer_json(tokenizer_json)
            lowercase = config.get("do_lower_case")
            if tokenizer._bert_normalizer and isinstance(lowercase, bool) and lowercase != tokenizer.do_lower_case:
                # transformers 4 follows tokenizer.json, transformers 5 rebuilds from the config;
                # the two files disagreeing means one of them is wrong for this model.
                logger.warning(
                    "%s says do_lower_case=%s but %s lowercases=%s; using %s.",
                    directory / TOKENIZER_CONFIG_FILE,
                    lowercase,
                    tokenizer_json,
                    tokenizer.do_lower_case,
                    TOKENIZER_FILE,
                )
            return tokenizer
        vocab = directory / VOCAB_FILE
        if vocab.is_file():
            options: dict[str, Any] = {"do_lower_case": True, "strip_accents": None, "tokenize_chinese_chars": True}
            for key, default in options.items():
                value = config.get(key, default)
                if value is not None and not isinstance(value, bool):
                    raise CheckpointError(
                        f"{directory / TOKENIZER_CONFIG_FILE}: {key} must be true, false or null, "
                        f"not {value!r}. Fix the value in that file."
                    )
                options[key] = default if value is None and key != "strip_accents" else value
            return cls.from_vocab(vocab, **options)
        raise CheckpointError(
            f"No tokenizer found in {directory}: looked for {TOKENIZER_FILE} and {VOCAB_FILE}. "
            f"Point to the model directory that contains one of them (as written by bertfit or "
            f"transformers' save_pretrained), or copy the model's tokenizer files there."
        )

    @classmethod
    def from_tokenizer_json(cls, path: str | os.PathLike[str]) -> WordPieceTokenizer:
        """Load a `tokenizers` serialization (tokenizer.json) of a WordPiece tokenizer."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"Cannot read {path}: {error}. Check the path and permissions, or re-download the model."
            ) from error
        try:
            state = json.loads(text)
        except json.JSONDecodeError as error:
            raise CheckpointError(
                f"{path} is not valid JSON ({error}); the file is corrupt or truncated. "
                f"Re-download or re-save the model's tokenizer."
            ) from error
        if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
            raise CheckpointError(
                f"{path} is not a tokenizers serialization (no 'model' object). "
                f"Re-download or re-save the model's tokenizer."
            )
        check_wordpiece(state, str(path))
        try:
            tokenizer = Tokenizer.from_str(text)
        except Exception as error:  # the Rust side raises plain Exception for any malformed part
            raise CheckpointError(
                f"{path} cannot be loaded by the tokenizers library: {error}. "
                f"Re-download or re-save the model's tokenizer."
            ) from error

        names = dict(_DEFAULT_SPECIAL_TOKENS)
        names["unk_token"] = state["model"].get("unk_token") or names["unk_token"]
        padding = state.get("padding")
        if isinstance(padding, dict) and padding.get("pad_token"):
            names["pad_token"] = padding["pad_token"]
        post = state.get("post_processor")
        if isinstance(post, dict) and post.get("type") == "BertProcessing":
            names["cls_token"], names["sep_token"] = post["cls"][0], post["sep"][0]
        elif isinstance(post, dict) and post.get("type") == "TemplateProcessing":
            specials = [piece["SpecialToken"]["id"] for piece in post.get("single", []) if "SpecialToken" in piece]
            if len(specials) >= 2:
                names["cls_token"], names["sep_token"] = specials[0], specials[-1]
        if post is None:
            # Without a post-processor nothing would add [CLS]/[SEP], and the classifier reads
            # [CLS]; transformers 5 adds the same template when it rebuilds a BertTokenizer.
            logger.info("%s has no post-processor; adding BERT's [CLS]/[SEP] template.", path)
            tokenizer.post_processor = bert_template(tokenizer, names["cls_token"], names["sep_token"], str(path))
        return cls(tokenizer, source=str(path), **names)

    @classmethod
    def from_vocab(
        cls,
        vocab_path: str | os.PathLike[str],
        *,
        do_lower_case: bool = True,
        strip_accents: bool | None = None,
        tokenize_chinese_chars: bool = True,
    ) -> WordPieceTokenizer:
        """Build BERT's tokenizer from a vocab.txt, exactly as transformers' converter does.

        `strip_accents=None` means "strip when lowercasing", as in the original BERT.
        """
        vocab_path = Path(vocab_path)
        vocab = read_vocab(vocab_path)
        names = _DEFAULT_SPECIAL_TOKENS
        for key in ("cls_token", "sep_token", "pad_token", "unk_token"):
            if names[key] not in vocab:
                raise CheckpointError(
                    f"{vocab_path} has no {names[key]!r} line; a BERT vocabulary needs "
                    f"[PAD], [UNK], [CLS] and [SEP]. Use the vocab.txt that came with the model."
                )
        tokenizer = Tokenizer(WordPiece(vocab, unk_token=names["unk_token"], max_input_chars_per_word=100))
        tokenizer.normalizer = normalizers.BertNormalizer(
            clean_text=True,
            handle_chinese_chars=tokenize_chinese_chars,
            strip_accents=strip_accents,
            lowercase=do_lower_case,
        )
        tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tokenizer.decoder = decoders.WordPiece(prefix="##")
        # transformers registers the special tokens as added tokens matched on the raw text, so
        # "[MASK]" typed in a text is one token rather than "[", "mask", "]".
        tokenizer.add_special_tokens(
            [
                AddedToken(names[key], special=True, normalized=False, lstrip=False, rstrip=False)
                for key in ("pad_token", "unk_token", "cls_token", "sep_token", "mask_token")
            ]
        )
        tokenizer.post_processor = bert_template(tokenizer, names["cls_token"], names["sep_token"], str(vocab_path))
        return cls(tokenizer, source=str(vocab_path), **names)

    # ------------------------------------------------------------------------------ properties

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def pad_id(self) -> int:
        return self._ids["pad"]

    @property
    def cls_id(self) -> int:
        return self._ids["cls"]

    @property
    def sep_id(self) -> int:
        return self._ids["sep"]

    @property
    def unk_id(self) -> int:
        return self._ids["unk"]

    @property
    def mask_id(self) -> int | None:
        return self._ids.get("mask")

    @property
    def do_lower_case(self) -> bool:
        return self._do_lower_case

    @property
    def strip_accents(self) -> bool | None:
        return self._strip_accents

    @property
    def tokenize_chinese_chars(self) -> bool:
        return self._tokenize_chinese_chars

    @property
    def fingerprint(self) -> str:
        """A hash of everything that decides the ids this tokenizer gives (its whole `tokenizers` pipeline:
        vocabulary, normalizer, pre-tokenizer, post-processor): equal fingerprints, equal ids."""
        import hashlib

        with self._lock:
            state = json.loads(self._tokenizer.to_str())
        # Truncation and padding are set per call (encode's max_length), not properties of the tokenizer.
        state.pop("truncation", None)
        state.pop("padding", None)
        return hashlib.sha256(json.dumps([state, self._ids], sort_keys=True).encode("utf-8")).hexdigest()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(vocab_size={self.vocab_size}, do_lower_case={self.do_lower_case}, "
            f"strip_accents={self.strip_accents}, source={self._source!r})"
        )

    # -------------------------------------------------------------------------------- encoding

    def encode(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int = MAX_LENGTH,
    ) -> list[Encoded]:
        """Encode a batch (in parallel, in Rust), truncating each example to `max_length` tokens.

        Pairs are truncated longest-first, one token at a time from the longer side, as
        transformers does with `truncation=True`. No padding here: see `pad`. A single `str` is
        taken as a batch of one.
        """
        texts = _as_batch(texts)
        _check_max_length(max_length, pairs is not None)
        inputs: list[str] | list[tuple[str, str]]
        if pairs is None:
            inputs = texts
        else:
            pairs = _as_batch(pairs)
            if len(pairs) != len(texts):
                raise ValueError(f"Got {len(texts)} texts but {len(pairs)} pairs; pass one pair text per text.")
            inputs = list(zip(texts, pairs))
        if not inputs:
            return []
        with self._lock:
            if max_length != self._max_length:
                self._tokenizer.enable_truncation(
                    max_length, stride=0, strategy="longest_first", direction="right"
                )
                self._max_length = max_length
            try:
                encodings = self._tokenizer.encode_batch(inputs, add_special_tokens=True)
            except TypeError:
                # The Rust error does not say which item is bad; find it only on this rare path.
                _raise_for_bad_item(texts, "texts")
                _raise_for_bad_item(pairs or [], "pairs")
                raise
        # Truncation moves the dropped tokens into `overflowing`; an untruncated one has none.
        return [Encoded(e.ids, e.type_ids, len(e.overflowing) > 0) for e in encodings]

    def encode_offsets(self, texts: Sequence[str], pairs: Sequence[str] | None = None,
                       max_length: int = MAX_LENGTH) -> list[Any]:
        """As ``encode`` (same ids, same truncation), but each item is the `tokenizers.Encoding` with its
        character ``offsets`` and ``sequence_ids``: explanations map tokens back to the user's words."""
        texts = _as_batch(texts)
        _check_max_length(max_length, pairs is not None)
        inputs = texts if pairs is None else list(zip(texts, _as_batch(pairs)))
        if not inputs:
            return []
        with self._lock:
            if max_length != self._max_length:
                self._tokenizer.enable_truncation(max_length, stride=0, strategy="longest_first", direction="right")
                self._max_length = max_length
            return self._tokenizer.encode_batch(inputs, add_special_tokens=True)

    def encode_pieces(self, texts: Sequence[str]) -> list[list[int]]:
        """Each text's word-piece ids, without [CLS]/[SEP] and without truncation (windows.py picks
        the positions a long text keeps)."""
        texts = _as_batch(texts)
        if not texts:
            return []
        with self._lock:
            if self._max_length is not None:
                self._tokenizer.no_truncation()
                self._max_length = None
            try:
                encodings = self._tokenizer.encode_batch(texts, add_special_tokens=False)
            except TypeError:
                _raise_for_bad_item(texts, "texts")
                raise
        return [e.ids for e in encodings]

    def encode_windows(self, texts: Sequence[str], pairs: Sequence[str], max_length: int,
                       stride: int) -> list[list[Any]]:
        """Pairs whose second text is cut into overlapping windows: per pair, a list of
        `tokenizers.Encoding` (ids, type_ids, offsets, sequence_ids), exactly as transformers' fast
        tokenizer gives them with truncation="only_second", `stride` tokens of overlap and
        return_overflowing_tokens (question answering over long contexts)."""
        texts, pairs = _as_batch(texts), _as_batch(pairs)
        _check_max_length(max_length, True)
        if not texts:
            return []
        with self._lock:
            self._tokenizer.enable_truncation(max_length, stride=stride, strategy="only_second", direction="right")
            self._max_length = None  # the next encode() sets its own truncation again
            try:
                encodings = self._tokenizer.encode_batch(list(zip(texts, pairs)), add_special_tokens=True)
            except Exception as error:  # the Rust side says only "Truncation error: ..."
                raise ValueError(f"cannot cut the texts into windows of {max_length} tokens with {stride} tokens of "
                                 f"overlap ({error}); a question is too long for the window: use a larger "
                                 "max_length or a smaller stride") from None
            finally:
                self._tokenizer.no_truncation()
        return [[e, *e.overflowing] for e in encodings]

    def pad(self, batch: Sequence[Encoded], pad_to_multiple_of: int | None = None) -> dict[str, torch.Tensor]:
        """Pad a batch on the right to its longest example: int64 tensors of shape (B, T)."""
        if pad_to_multiple_of is not None and pad_to_multiple_of < 1:
            raise ValueError(f"pad_to_multiple_of must be a positive integer, not {pad_to_multiple_of!r}.")
        longest = max((len(e.ids) for e in batch), default=0)
        width = longest
        if pad_to_multiple_of:
            width = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
            # Rounding past 512 would index past BERT's position embeddings; an exact 512 is
            # still fast on tensor cores, so cap rather than fail.
            if width > MAX_LENGTH >= longest:
                width = MAX_LENGTH
        pad_id = self.pad_id
        input_ids, token_type_ids, attention_mask = [], [], []
        for e in batch:
            fill = width - len(e.ids)
            input_ids.append(e.ids + [pad_id] * fill)
            token_type_ids.append(e.type_ids + [0] * fill)
            attention_mask.append([1] * len(e.ids) + [0] * fill)
        shape = (len(batch), width)
        return {
            "input_ids": torch.tensor(input_ids, dtype=torch.long).reshape(shape),  # (B, T)
            "token_type_ids": torch.tensor(token_type_ids, dtype=torch.long).reshape(shape),  # (B, T)
            "attention_mask": torch.tensor(attention_mask, dtype=torch.long).reshape(shape),  # (B, T)
        }

    def __call__(
        self,
        texts: Sequence[str],
        pairs: Sequence[str] | None = None,
        max_length: int = MAX_LENGTH,
        *,
        pad_to_multiple_of: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Encode and pad in one step: the model's input tensors for a batch of texts."""
        return self.pad(self.encode(texts, pairs, max_length), pad_to_multiple_of=pad_to_multiple_of)

    def tokenize(self, text: str) -> list[str]:
        """The WordPiece tokens of one text, without [CLS]/[SEP] and without truncation."""
        with self._lock:
            if self._max_length is not None:
                self._tokenizer.no_truncation()
                self._max_length = None
            return self._tokenizer.encode(text, add_special_tokens=False).tokens

    def encode_words(self, sentences: Sequence[Sequence[str]]) -> list[tuple[list[int], list[int]]]:
        """Pre-split words → (subword ids, index of the word each subword belongs to), per sentence.

        No special tokens and no truncation: token-level tasks place [CLS]/[SEP] and cut windows
        themselves. A word the normaliser empties (a lone zero-width character) has no subword.
        """
        if not sentences:
            return []
        with self._lock:
            if self._max_length is not None:
                self._tokenizer.no_truncation()
                self._max_length = None
            encodings = self._tokenizer.encode_batch([list(s) for s in sentences], is_pretokenized=True,
                                                     add_special_tokens=False)
        return [(e.ids, [w for w in e.word_ids]) for e in encodings]

    def token_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """WordPiece ids of each text, without [CLS]/[SEP] and without truncation (pretraining
        builds its own sequences from these pieces)."""
        texts = _as_batch(texts)
        if not texts:
            return []
        with self._lock:
            if self._max_length is not None:
                self._tokenizer.no_truncation()
                self._max_length = None
            return [e.ids for e in self._tokenizer.encode_batch(texts, add_special_tokens=False)]

    def id_to_token(self, token_id: int) -> str:
        return self._tokenizer.id_to_token(int(token_id)) or ""

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Ids → text, as transformers' tokenizer.decode (## pieces joined, spaces before punctuation cleaned)."""
        text = self._tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)
        # transformers' clean_up_tokenization, which goes further than the Rust decoder's cleanup.
        for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                              (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
            text = text.replace(before, after)
        return text

    def special_ids(self) -> list[int]:
        """Ids of the roles' tokens ([CLS], [SEP], [PAD], [UNK], [MASK])."""
        return sorted(set(self._ids.values()))

    def continuation_mask(self) -> Any:
        """(vocab_size,) bool: True for WordPiece pieces that continue a word ("##ing"), which
        whole-word masking keeps with the piece before them."""
        import numpy as np

        out = np.zeros(self.vocab_size, dtype=bool)
        prefix = (json.loads(self._tokenizer.to_str()).get("model") or {}).get("continuing_subword_prefix") or "##"
        for token, token_id in self._tokenizer.get_vocab(with_added_tokens=True).items():
            if token.startswith(prefix) and len(token) > len(prefix):
                out[token_id] = True
        return out

    # ---------------------------------------------------------------------------------- saving

    def save(self, directory: str | os.PathLike[str]) -> None:
        """Write tokenizer.json, vocab.txt, tokenizer_config.json and special_tokens_map.json.

        `transformers.AutoTokenizer.from_pretrained(directory)` loads the result as a
        BertTokenizerFast that gives the same ids.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if not (self._bert_normalizer and self._bert_pre_tokenizer):
            # transformers 5 rebuilds BERT's normalizer and pre-tokenizer from tokenizer_config.json
            # instead of reading them from tokenizer.json, so a custom pipeline does not survive.
            logger.warning(
                "Tokenizer from %s does not use BERT's normalizer/pre-tokenizer; transformers may "
                "tokenize the saved copy in %s differently.",
                self._source,
                directory,
            )
        with self._lock:
            copy = Tokenizer.from_str(self._tokenizer.to_str())
        # Saved files must not force a length on whoever loads them (MiniLM's fixed 128 did).
        copy.no_truncation()
        copy.no_padding()
        write_atomic(directory / TOKENIZER_FILE, copy.to_str(pretty=True))

        vocab = copy.get_vocab(with_added_tokens=True)
        by_id: dict[int, str] = {i: token for token, i in vocab.items()}
        # vocab.txt is positional (line n is id n); a hole (from a duplicated line in the source
        # vocab) gets a filler that BertPreTokenizer can never produce, so no id shifts.
        lines = [by_id.get(i, f"[unused_bertfit_{i}]") for i in range(max(by_id) + 1)]
        write_atomic(directory / VOCAB_FILE, "".join(f"{token}\n" for token in lines))

        special = {f"{role}_token": token for role, token in self._tokens.items() if role in self._ids}
        config = {
            "tokenizer_class": "BertTokenizer",
            "do_lower_case": self.do_lower_case,
            "strip_accents": self.strip_accents,
            "tokenize_chinese_chars": self.tokenize_chinese_chars,
            "model_max_length": MAX_LENGTH,
            **special,
            "clean_up_tokenization_spaces": True,
        }
        write_atomic(directory / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        write_atomic(directory / SPECIAL_TOKENS_MAP_FILE, json.dumps(special, indent=2, ensure_ascii=False) + "\n")


def _as_batch(texts: Sequence[str] | str) -> list[str]:
    # A bare string is a Sequence[str] too; iterating it would encode one character per example.
    if isinstance(texts, str):
        return [texts]
    return list(texts)


def _check_max_length(max_length: int, is_pair: bool) -> None:
    # Below these, [CLS]/[SEP] alone exceed the budget and tokenizers silently skips truncation.
    minimum = 3 if is_pair else 2
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        raise TypeError(f"max_length must be an int, not {type(max_length).__name__}.")
    if max_length > MAX_LENGTH:
        raise ValueError(
            f"max_length={max_length} exceeds BERT's limit of {MAX_LENGTH} tokens "
            f"(its position embeddings end there); use at most {MAX_LENGTH}."
        )
    if max_length < minimum:
        kind = "pairs ([CLS] a [SEP] b [SEP])" if is_pair else "single texts ([CLS] a [SEP])"
        raise ValueError(f"max_length={max_length} is too small for {kind}; use at least {minimum}.")


def _raise_for_bad_item(items: Sequence[Any], name: str) -> None:
    for index, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name}[{index}] is a {type(item).__name__}, not a str: {item!r:.80}")
        try:
            item.encode("utf-8")
        except UnicodeEncodeError as error:
            raise ValueError(
                f"{name}[{index}] contains an unpaired surrogate ({item[error.start]!r} at position "
                f"{error.start}), which is not text; decode its source with errors='replace'."
            ) from None
