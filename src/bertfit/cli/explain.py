"""`bertfit explain`: which words made the model say what it said (Integrated Gradients, per word)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from bertfit.cli.common import positive_int
from bertfit.errors import BertfitError

HELP = "show which words made a trained model predict what it did"
DESCRIPTION = ("Integrated Gradients over the word embeddings, summed into the text's words: each word's share "
               "of the change from a baseline with no words ([PAD] in place of every word, [CLS]/[SEP] kept) to the "
               "text, for the predicted class (or --target). The shares add up to that change (completeness), "
               "checked every time; the steps are raised until they do. Green words push the target up, red "
               "words down.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="run directory (or any fine-tuned BERT directory)")
    parser.add_argument("texts", nargs="*", help="texts to explain; none, or '-', reads one text per line from stdin")
    parser.add_argument("--pair", help="the second text, for a model trained on pairs")
    parser.add_argument("--input", dest="inputs", action="append", metavar="JSON",
                        help="one input as the server takes it, e.g. '{\"question\": ..., \"context\": ...}' "
                             "(question answering), '{\"question\": ..., \"choices\": [...]}' (multiple choice), "
                             "'{\"tokens\": [...]}' (NER); repeatable")
    parser.add_argument("--target", dest="targets", action="append", metavar="NAME",
                        help="a class, label, entity or choice to explain (repeatable; 'all': every one; default: "
                             "what the model predicted)")
    parser.add_argument("--steps", type=positive_int, default=None,
                        help="intervals of the path to start from (default 16: 17 evaluations; the panels that miss are halved "
                             "until the attributions add up)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--json", action="store_true", help="print one JSON line per input")
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                        help="colour the words (default: on a terminal, unless NO_COLOR is set)")


def run(args: argparse.Namespace) -> int:
    from bertfit.predict.predictor import Predictor

    items = _items(args)
    predictor = Predictor.load(args.run, device=args.device, engine="pytorch")
    options = {"steps": args.steps} if args.steps else {}
    pairs = [args.pair] * len(items) if args.pair is not None else None
    explained = predictor.explain(items, pairs, which=args.targets, **options)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty() and not os.environ.get("NO_COLOR"))
    for item, result in zip(items, explained):
        if args.json:
            shown = item if isinstance(item, str) else dict(item)
            print(json.dumps({"input": shown, **result}, ensure_ascii=False))
        else:
            print(render(result, color))
    return 0


def _items(args: argparse.Namespace) -> list[Any]:
    if args.inputs:
        if args.texts:
            raise BertfitError("give texts or --input, not both")
        items = []
        for i, raw in enumerate(args.inputs, start=1):
            try:
                items.append(json.loads(raw))
            except json.JSONDecodeError as exc:
                raise BertfitError(f"--input #{i} is not JSON ({exc.msg} at character {exc.pos})") from None
        return items
    texts = args.texts
    if not texts or texts == ["-"]:
        texts = [line for line in sys.stdin.read().splitlines() if line.strip()]
    if not texts:
        raise BertfitError("no text to explain: give texts, --input, or lines on standard input")
    return texts


def render(result: dict[str, Any], color: bool) -> str:
    """One input's explanations for a terminal: per target a summary line, the words coloured (or marked
    with their values), and the strongest words."""
    lines = []
    if not result["explanations"]:
        lines.append("(nothing to explain: the model predicted no entity / label here)")
    for e in result["explanations"]:
        total = sum(w["attribution"] for w in e["words"])
        check = "" if e["completeness_error"] <= e["tolerance"] else "  (NOT complete: raise --steps)"
        lines.append(f"{e['target']}: {e.get('of', 'value')} {e['value']:.3f} (without the words {e['baseline']:.3f}; "
                     f"the words add {total:+.3f}, error {e['completeness_error']:.1e} at {e['steps']} steps){check}")
        lines.append("  " + _coloured(e["words"], color))
        strongest = sorted(e["words"], key=lambda w: -abs(w["attribution"]))[:5]
        lines.append("  strongest: " + ", ".join(f"{w['text']} {w['attribution']:+.3f}" for w in strongest))
    return "\n".join(lines)


def _coloured(words: list[dict[str, Any]], color: bool) -> str:
    """The words in order, fields separated by ' | ': on a terminal a green (up) or red (down) background
    whose strength follows |attribution| / the largest; otherwise each word with its value."""
    peak = max((abs(w["attribution"]) for w in words), default=0.0) or 1.0
    parts, field = [], None
    for w in words:
        if field is not None and w["field"] != field:
            parts.append("|")
        field = w["field"]
        a = w["attribution"]
        if not color:
            parts.append(f"{w['text']}({a:+.2f})" if abs(a) >= 0.05 * peak else w["text"])
            continue
        level = min(4, int(abs(a) / peak * 5))  # 0 (none) .. 4 (strongest)
        if level == 0:
            parts.append(w["text"])
            continue
        shade = (22, 28, 34, 40)[level - 1] if a > 0 else (52, 88, 124, 160)[level - 1]
        parts.append(f"\x1b[48;5;{shade}m\x1b[97m{w['text']}\x1b[0m")
    return " ".join(parts)
