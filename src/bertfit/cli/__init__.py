"""The bertfit command line: the only module that reads argv. Thin over the library.

    bertfit train     fine-tune a model on a labelled file (default: MiniLM on the bundled tweets)
    bertfit evaluate  score a trained run on a labelled file
    bertfit predict   label texts from arguments, a file, or standard input
    bertfit explain   which words made the model say what it said
    bertfit export    ONNX (fp32 or int8) for ONNX Runtime (extra: bertfit[export])
    bertfit serve     an HTTP server with a web page (extra: bertfit[serve])
    bertfit pretrain  further-pretrain on unlabelled text (masked LM + next-sentence prediction)
    bertfit fill-mask guess the words behind [MASK] (a masked-LM model)
    bertfit nsp       P(sentence B follows sentence A) (a model with an NSP head)
    bertfit tune      search train's settings for the best model a time budget buys (extra: bertfit[tune])
"""

# The package: one module per command (train, evaluate, predict, export, serve), each with HELP,
# DESCRIPTION, add_arguments(parser) and run(args) -> exit status; common.py holds what several
# share. Parsing (and --help) imports no torch: a command's run() imports the library it needs.
# Here: the COMMANDS registry, the parser, and main() with the error handling and exit codes.

from __future__ import annotations

import argparse
import logging
import os
import sys
from types import ModuleType

from bertfit.cli import evaluate, explain, export, fill_mask, nsp, predict, pretrain, serve, train, tune
from bertfit.errors import BertfitError

# The subcommands, in the order --help lists them.
COMMANDS: dict[str, ModuleType] = {"train": train, "evaluate": evaluate, "predict": predict, "explain": explain,
                                   "export": export,
                                   "serve": serve, "pretrain": pretrain,
                                   "fill-mask": fill_mask, "nsp": nsp, "tune": tune}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bertfit", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command_parser = sub.add_parser(name, help=command.HELP, description=command.DESCRIPTION)
        command.add_arguments(command_parser)
        command_parser.set_defaults(handler=command.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    for i, arg in enumerate(argv, start=1):
        problem = _undecodable(arg)
        if problem:
            print(f"bertfit: error: argument {i} ({arg.encode('utf-8', 'backslashreplace').decode('ascii', 'backslashreplace')[:60]}) "
                  f"{problem}; bertfit needs UTF-8 arguments (rename the file, or pass texts on standard input "
                  "with --encoding)", file=sys.stderr)
            return 2
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras and getattr(args, "command", None) in ("predict", "explain"):
        # argparse gives texts that follow an option (`predict RUN --json "a" "b"`) back as extras;
        # they are texts. Before a `--`, anything shaped like an option is still a mistake.
        before, _, after = (extras[: extras.index("--")], None, extras[extras.index("--") + 1 :]) \
            if "--" in extras else (extras, None, [])
        unknown = [a for a in before if a.startswith("--")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        args.texts = [t for t in args.texts if t != "--"] + before + after
    elif extras:
        parser.error(f"unrecognized arguments: {' '.join(extras)}")
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    from bertfit.cli.progress import show_cache_progress

    show_cache_progress()  # the tokenized cache's build as a bar, not a line per chunk
    args.argv = argv  # `train --nproc N` relaunches itself with these
    # In a distributed job (torchrun sets RANK) the other ranks' messages say whose they are.
    who = f"[rank {os.environ['RANK']}] " if os.environ.get("RANK", "0") != "0" else ""
    try:
        return int(args.handler(args) or 0)
    except BertfitError as exc:
        print(f"{who}bertfit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bertfit: interrupted (resume with --resume RUN)", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk, a permission, a path of the wrong kind: the user's to fix, in one line
        where = f": {exc.filename}" if exc.filename else ""
        print(f"bertfit: error: {exc.strerror or exc}{where}", file=sys.stderr)
        return 2


def _undecodable(arg: str) -> str | None:
    """Why an argument is not text: bytes that were not UTF-8 arrive as lone surrogates (PEP 383)."""
    try:
        arg.encode("utf-8")
    except UnicodeEncodeError as exc:
        return f"holds bytes that are not valid UTF-8 (at character {exc.start})"
    return None
