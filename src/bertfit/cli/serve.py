"""`bertfit serve`: serve a trained model over HTTP (the server: bertfit/serve/, extra: bertfit[serve])."""

from __future__ import annotations

import argparse

from bertfit.cli.common import module_doc

HELP = "serve a trained model over HTTP (extra: bertfit[serve])"
DESCRIPTION = module_doc("bertfit.serve")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from bertfit.serve.config import add_arguments as add_serve_arguments  # needs neither fastapi nor torch

    add_serve_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from bertfit.serve.app import command

    return command(args)
