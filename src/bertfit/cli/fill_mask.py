"""`bertfit fill-mask`: the top-k words for each [MASK] of a text, with their probabilities."""

from __future__ import annotations

import argparse
import json

HELP = "guess the words behind [MASK] with a masked-LM model (a pretrain run, or any BertForMaskedLM)"
DESCRIPTION = """Print the top-k fillers of each [MASK] with their probabilities, as transformers'
pipeline("fill-mask") computes them (several masks are each scored with the others left masked).

    bertfit fill-mask runs/pretrain "That's [MASK] she [MASK]."
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a bertfit pretrain run, or a model directory / hub id with a masked-LM head")
    parser.add_argument("texts", nargs="+", help="texts with one or more [MASK]")
    parser.add_argument("--top-k", type=int, default=5, help="candidates per [MASK] (default 5)")
    parser.add_argument("--json", action="store_true", help="print the pipeline's records as JSON lines")


def run(args: argparse.Namespace) -> int:
    from bertfit.weights import load_pretraining
    from bertfit.hub import resolve_model
    from bertfit.tasks.pretrain.use import fill_mask, format_fills
    from bertfit.tokenizer import WordPieceTokenizer

    directory = resolve_model(args.model)
    model = load_pretraining(directory, require_head=True)
    tokenizer = WordPieceTokenizer.from_dir(directory)
    for text in args.texts:
        results = fill_mask(model, tokenizer, text, args.top_k)
        print(json.dumps(results, ensure_ascii=False) if args.json else format_fills(text, results))
    return 0
