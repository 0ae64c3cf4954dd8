"""The files a tokenizer directory holds, read and written safely (vocab.txt, tokenizer_config.json),
and BERT's [CLS]/[SEP] template: the I/O side of tokenizer.py."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer, processors

from bertfit.errors import CheckpointError

logger = logging.getLogger("bertfit.tokenizer")


def bert_template(tokenizer: Tokenizer, cls_token: str, sep_token: str, source: str) -> processors.TemplateProcessing:
    """BERT's `[CLS] A [SEP]` / `[CLS] A [SEP] B [SEP]` template, segment ids 0 then 1."""
    ids = {token: tokenizer.token_to_id(token) for token in (cls_token, sep_token)}
    missing = [token for token, token_id in ids.items() if token_id is None]
    if missing:
        raise CheckpointError(
            f"{source}: the vocabulary has no {missing[0]!r} token, which BERT needs. "
            f"Use the tokenizer that was saved with the model."
        )
    return processors.TemplateProcessing(
        single=f"{cls_token}:0 $A:0 {sep_token}:0",
        pair=f"{cls_token}:0 $A:0 {sep_token}:0 $B:1 {sep_token}:1",
        special_tokens=[(cls_token, ids[cls_token]), (sep_token, ids[sep_token])],
    )


def read_vocab(path: Path) -> dict[str, int]:
    """vocab.txt to {token: id}, line n being id n, read the way transformers' load_vocab reads it."""
    try:
        with open(path, encoding="utf-8") as file:
            lines = file.readlines()  # universal newlines, like transformers: \r\n is a line end
    except (OSError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"Cannot read {path}: {error}. Check the path, or re-download the model's vocab.txt."
        ) from error
    vocab: dict[str, int] = {}
    duplicates = 0
    for index, line in enumerate(lines):
        token = line.rstrip("\n")
        duplicates += token in vocab
        vocab[token] = index  # a repeated token keeps its last id, as in transformers
    if not vocab:
        raise CheckpointError(f"{path} is empty. Use the vocab.txt that came with the model.")
    if duplicates:
        logger.warning("%s lists %d tokens more than once; each keeps its last line's id.", path, duplicates)
    return vocab


def read_tokenizer_config(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(
            f"Cannot read {path}: {error}. Fix or delete the file (the defaults are BERT's)."
        ) from error
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object. Fix or delete the file.")
    return config


def write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves half a tokenizer behind."""
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def check_wordpiece(state: dict[str, Any], source: str) -> None:
    """A tokenizer.json's pipeline must be BERT's WordPiece (CheckpointError naming the file otherwise)."""
    model_type = (state.get("model") or {}).get("type")
    if model_type not in (None, "WordPiece"):
        raise CheckpointError(
            f"{source} holds a {model_type} tokenizer; bertfit supports BERT's WordPiece only. "
            f"Use a BERT-family checkpoint (its tokenizer.json has model type WordPiece)."
        )
