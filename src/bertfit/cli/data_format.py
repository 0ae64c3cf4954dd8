"""``--data-format``: read the data files as the named format whatever their names say (a Parquet export
saved as ``.bin``, Label Studio JSON saved as ``.txt``). The flag becomes each path's ``FORMAT:`` prefix
(data.columnar.split_format), which every reader understands and the run's saved settings keep."""

from __future__ import annotations

import argparse
from typing import Sequence

from bertfit.data.columnar import FORCED_FORMATS


def add_data_format_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-format", choices=FORCED_FORMATS, default=None,
                        help="read the data files as this format instead of the one their suffix or content shows "
                             "(the same as writing FORMAT:PATH, e.g. --train-file parquet:export.bin)")


def forced_format_paths(args: argparse.Namespace, names: Sequence[str]) -> dict[str, str]:
    """The path flags ``names`` given, each with ``--data-format``'s prefix (none without the flag)."""
    fmt = getattr(args, "data_format", None)
    if fmt is None:
        return {}
    return {name: f"{fmt}:{getattr(args, name)}" for name in names if getattr(args, name, None) is not None}
