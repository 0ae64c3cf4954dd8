"""`bertfit nsp`: the probability that sentence B follows sentence A (next-sentence prediction)."""

from __future__ import annotations

import argparse

HELP = "P(IsNext): does sentence B follow sentence A? (a pretrain run with NSP, or a BertForPreTraining)"
DESCRIPTION = """Print P(IsNext) from the model's next-sentence-prediction head.

    bertfit nsp runs/pretrain "I took my umbrella." "It was raining all day."
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="a bertfit pretrain run (trained with NSP), or a BertForPreTraining directory")
    parser.add_argument("first", help="sentence A")
    parser.add_argument("second", help="sentence B")


def run(args: argparse.Namespace) -> int:
    from bertfit.weights import load_pretraining
    from bertfit.hub import resolve_model
    from bertfit.tasks.pretrain.use import next_sentence
    from bertfit.tokenizer import WordPieceTokenizer

    directory = resolve_model(args.model)
    model = load_pretraining(directory, require_head=True)
    probability = next_sentence(model, WordPieceTokenizer.from_dir(directory), args.first, args.second)
    print(f"P(IsNext) = {probability:.4f}  ({'B follows A' if probability >= 0.5 else 'B does not follow A'})")
    return 0
