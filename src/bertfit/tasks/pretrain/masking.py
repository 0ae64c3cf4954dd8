"""Masked-LM masking, BERT's recipe: 15% of the tokens are predicted; of those 80% become [MASK],
10% a random token, 10% stay unchanged.

* Special tokens ([CLS], [SEP], [PAD], [MASK], [UNK]) are never chosen.
* The count per sequence is fixed, as in Google's create_pretraining_data.py:
  max(1, round(probability × candidates)), capped by ``max_predictions``; the positions are a
  uniform random choice (whole words with ``whole_word``: a word is a piece and the ``##`` pieces
  that follow it, chosen together; a word that would overshoot the count is skipped, as Google does).
* Random replacements are drawn uniformly from the vocabulary's ordinary tokens (never a special one).
* Every draw comes from a generator seeded by (seed, stream, epoch, index): each training epoch gets
  fresh masks (dynamic masking, as RoBERTa) that a resumed run redraws exactly; the validation
  slice uses one fixed stream, so its loss is comparable across evaluations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

IGNORE = -100  # label of positions that are not predicted (transformers' ignore_index)
TRAIN_STREAM, VALIDATION_STREAM = 0, 1


@dataclass(frozen=True)
class MaskingConfig:
    probability: float = 0.15
    mask_share: float = 0.8  # of the chosen tokens: replaced by [MASK]
    random_share: float = 0.1  # replaced by a random token; the rest stay unchanged
    whole_word: bool = False
    max_predictions: int | None = None  # per sequence (Google: 20 at length 128); None: no cap

    def __post_init__(self) -> None:
        if not 0 < self.probability < 1:
            raise ValueError(f"mask probability must be in (0, 1), got {self.probability}")
        if self.mask_share < 0 or self.random_share < 0 or self.mask_share + self.random_share > 1:
            raise ValueError("mask_share and random_share must be ≥ 0 and sum to at most 1")


class Masker:
    """Draws the masks of one sequence at a time; see the module docstring."""

    def __init__(self, vocab_size: int, mask_id: int, special_ids: Sequence[int], continuation: np.ndarray | None,
                 config: MaskingConfig, seed: int) -> None:
        self.config = config
        self.mask_id = mask_id
        self.seed = seed
        self.special = np.zeros(vocab_size, dtype=bool)
        self.special[list(special_ids)] = True
        self.special[mask_id] = True
        self.replacements = np.flatnonzero(~self.special)  # ordinary tokens a random replacement can be
        self.continuation = continuation if continuation is not None else np.zeros(vocab_size, dtype=bool)

    def rng(self, stream: int, epoch: int, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, stream, epoch, index])

    def mask(self, ids: Sequence[int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(input ids with masks applied, labels: the original id at predicted positions, IGNORE elsewhere)."""
        ids = np.asarray(ids, dtype=np.int64)
        labels = np.full(ids.shape, IGNORE, dtype=np.int64)
        candidates = np.flatnonzero(~self.special[ids])
        if not len(candidates):
            return ids.copy(), labels
        count = max(1, int(np.floor(self.config.probability * len(candidates) + 0.5)))
        if self.config.max_predictions:
            count = min(count, self.config.max_predictions)
        if self.config.whole_word:
            chosen = self._whole_words(ids, candidates, count, rng)
        else:
            chosen = np.sort(rng.choice(candidates, size=count, replace=False))
        labels[chosen] = ids[chosen]
        out = ids.copy()
        draw = rng.random(len(chosen))
        to_mask = chosen[draw < self.config.mask_share]
        to_random = chosen[(draw >= self.config.mask_share) & (draw < self.config.mask_share + self.config.random_share)]
        out[to_mask] = self.mask_id
        if len(to_random):
            out[to_random] = self.replacements[rng.integers(0, len(self.replacements), size=len(to_random))]
        return out, labels

    def _whole_words(self, ids: np.ndarray, candidates: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
        # A word starts at a candidate that is not a continuation piece or whose previous position is
        # not a candidate (a "##" piece right after [CLS] starts its own word).
        cont = self.continuation[ids[candidates]]
        previous_is_candidate = np.r_[False, np.diff(candidates) == 1]
        starts = ~(cont & previous_is_candidate)
        words = np.split(candidates, np.flatnonzero(starts)[1:])
        chosen: list[int] = []
        for w in rng.permutation(len(words)):
            word = words[w]
            if len(chosen) >= count:
                break
            if len(chosen) + len(word) > count:
                continue
            chosen.extend(word.tolist())
        if not chosen:  # every word is longer than the count: take the first one's pieces up to it
            chosen = words[int(rng.integers(0, len(words)))][:count].tolist()
        return np.sort(np.asarray(chosen, dtype=np.int64))
