"""Using a masked-LM / NSP model: fill the [MASK]s of a text, score whether B follows A.

``fill_mask`` returns what transformers' ``pipeline("fill-mask")`` returns (same scores, tokens,
token strings and sequences), so the two can be compared line by line: for a text with one [MASK],
a list of the top-k candidates; with several, one such list per [MASK], each scored with the other
masks left in place (the pipeline's behaviour: the masks are not filled jointly).
"""

from __future__ import annotations

import logging
from typing import Any, Sequence

import torch

from bertfit.errors import BertfitError, DataError

logger = logging.getLogger(__name__)


def fill_mask(model: Any, tokenizer: Any, text: str, top_k: int = 5) -> list[dict[str, Any]] | list[list[dict[str, Any]]]:
    """The top-k fillers of each [MASK] in ``text`` with their probabilities (see the module docstring)."""
    mask_id = tokenizer.mask_id
    if mask_id is None:
        raise BertfitError("this model's vocabulary has no [MASK] token, so it cannot fill masks")
    if top_k < 1:
        raise DataError(f"--top-k must be at least 1, got {top_k}")
    max_length = model.config.max_position_embeddings
    encoded = tokenizer.encode([text], max_length=max_length)[0]
    ids = encoded.ids
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    given = sum(1 for t in tokenizer.encode_pieces([text])[0] if t == mask_id)
    if len(positions) < given:  # masks past the model's length are cut away: never answer fewer than asked
        raise DataError(f"the text has {given} [MASK] but only the first {len(positions)} fit in this model's "
                        f"{max_length} tokens; shorten the text (or put the masks earlier)")
    if not positions:
        raise DataError(f"no [MASK] in {text!r}; write [MASK] where a word should be guessed, e.g. \"That's [MASK] she [MASK].\"")
    model.eval()
    with torch.no_grad():
        batch = torch.tensor([ids])
        out = model(batch, torch.ones_like(batch), torch.tensor([encoded.type_ids]), fast=False,
                    positions=batch == mask_id)
    probs = out.mlm.float().softmax(-1)  # (masks, V)
    top_k = min(top_k, probs.shape[-1])
    single = len(positions) == 1
    results = []
    for row, position in enumerate(positions):
        scores, tokens = probs[row].topk(top_k)
        candidates = []
        for score, token in zip(scores.tolist(), tokens.tolist()):
            filled = list(ids)
            filled[position] = token
            candidates.append({"score": score, "token": token, "token_str": tokenizer.decode([token]),
                               "sequence": tokenizer.decode(filled, skip_special_tokens=single)})
        results.append(candidates)
    return results[0] if single else results


def next_sentence(model: Any, tokenizer: Any, first: str, second: str) -> float:
    """P(IsNext): the NSP head's probability that ``second`` follows ``first``."""
    if getattr(model, "nsp", None) is None:
        raise BertfitError("this model has no next-sentence-prediction head (cls.seq_relationship); "
                           "it was trained without NSP (a BertForMaskedLM checkpoint, or bertfit pretrain --no-nsp)")
    for name, sentence in (("sentence A", first), ("sentence B", second)):
        if not sentence.strip():
            raise DataError(f"{name} is empty; next-sentence prediction compares two sentences")
    max_length = model.config.max_position_embeddings
    lengths = [len(pieces) for pieces in tokenizer.encode_pieces([first, second])]
    if sum(lengths) + 3 > max_length:  # [CLS] A [SEP] B [SEP]
        logger.warning("the two sentences are %d + %d tokens; the model reads %d in all, so %d tokens are cut from "
                       "the longer one: P(IsNext) is for the truncated pair", lengths[0], lengths[1], max_length,
                       sum(lengths) + 3 - max_length)
    encoded = tokenizer.encode([first], [second], max_length=max_length)[0]
    model.eval()
    with torch.no_grad():
        ids = torch.tensor([encoded.ids])
        out = model(ids, torch.ones_like(ids), torch.tensor([encoded.type_ids]), fast=False,
                    positions=torch.zeros_like(ids, dtype=torch.bool))
    return float(out.nsp.float().softmax(-1)[0, 0])  # label 0 = IsNext


def format_fills(text: str, results: Sequence[Any]) -> str:
    """The CLI's table: one block per [MASK], candidates with their probabilities."""
    per_mask = [results] if results and isinstance(results[0], dict) else list(results)
    lines = [text]
    for number, candidates in enumerate(per_mask, start=1):
        lines.append(f"  [MASK] {number}:" if len(per_mask) > 1 else "  [MASK]:")
        for c in candidates:
            lines.append(f"    {c['token_str']:<16} {c['score']:.4f}")
    return "\n".join(lines)
