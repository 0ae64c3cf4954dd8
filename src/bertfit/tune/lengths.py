"""max_length from the data: when the user does not give it, the search fixes it at the 99th percentile
of the training texts' token lengths ([CLS]/[SEP] and a pair included), rounded up to a multiple of 8
and capped by the model's position embeddings (and BERT's 512).

Why the 99th percentile and not a searched range: batches are padded to their longest member, so a
larger max_length costs time only on the few texts longer than the old one, while truncation loses
their words for good; at the 99th percentile at most 1 text in 100 is cut. Searching it would spend
trials on a setting whose best value the data already shows. Tasks whose inputs are not one text (or
pair) per example (question answering's windows, multiple choice's choices) keep their own default.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from bertfit.train.config import TrainConfig

logger = logging.getLogger(__name__)

QUANTILES = (50, 95, 99)
ROUND_TO = 8


def round_up(length: float, multiple: int = ROUND_TO) -> int:
    return int(math.ceil(length / multiple) * multiple)


def choose_max_length(base: TrainConfig) -> dict[str, Any] | None:
    """``{"chosen", "cap", "p50", "p95", "p99", "max", "texts", "truncated"}`` for the training texts
    of ``base``; None when the task's inputs are not plain texts (it keeps its default max_length)."""
    import numpy as np

    from bertfit.config import BertConfig
    from bertfit.hub import resolve_model
    from bertfit.tasks.table import task_defaults
    from bertfit.tokenizer import WordPieceTokenizer
    from bertfit.train.finetune import prepare_data

    prepared = prepare_data(base)
    examples = prepared.train
    if "max_length" in task_defaults(prepared.task.name) or not examples or \
            not all(isinstance(e.text, str) and getattr(e, "choices", None) is None for e in examples):
        return None
    model_dir = resolve_model(base.model)
    cap = min(512, BertConfig.from_json_file(model_dir / "config.json").max_position_embeddings)
    tokenizer = WordPieceTokenizer.from_dir(model_dir)
    pairs = [e.text_pair or "" for e in examples] if any(e.text_pair for e in examples) else None
    lengths = np.array([len(e.ids) for e in tokenizer.encode([e.text for e in examples], pairs, max_length=cap)])
    stats = {f"p{q}": float(np.percentile(lengths, q)) for q in QUANTILES}
    chosen = max(ROUND_TO, min(cap, round_up(stats["p99"])))
    record = {"chosen": chosen, "cap": cap, **stats, "max": int(lengths.max()), "texts": int(len(lengths)),
              "truncated": float((lengths > chosen).mean())}
    logger.info("max_length %d from the training texts' token lengths (95th percentile %.0f, 99th %.0f, max %d)",
                chosen, stats["p95"], stats["p99"], record["max"])
    return record
