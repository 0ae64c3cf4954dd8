"""Where bertfit may write a file or folder the user names (predict/evaluate --output, export --output).

Never onto an input, and never into a model: an output is refused when it lies in (or is) the run
or model directory the command reads, any bertfit run (a directory with the run marker, at any depth
above the output: its checkpoints and plots too), or any other model directory (one holding a model's
files, e.g. config.json beside weights). Training writes runs; nothing else writes into one.

``export --output DIR`` takes a directory that does not exist, is empty, or is a previous bertfit
export (it holds export.json and only the names an export writes), so a user's own config.json is
never overwritten. Torch-free: the CLI checks before it loads a model.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from bertfit.errors import BertfitError

#: The run marker (train/run_lock.MARKER, spelled here: prediction never imports training; a test keeps
#: the two equal).
MARKER = ".bertfit-run"
#: Files whose presence makes a folder a model directory (with config.json, or alone for these two).
MODEL_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.onnx", "tf_model.h5", "flax_model.msgpack")
RUN_FILES = (MARKER, "train_config.json", "task.json")
#: Everything `bertfit export` writes into its directory.
EXPORT_ENTRIES = frozenset({"model.onnx", "config.json", "tokenizer.json", "vocab.txt", "tokenizer_config.json",
                            "special_tokens_map.json", "task.json", "train_config.json", "export.json"})


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


def model_directory_kind(directory: Path) -> str | None:
    """'a bertfit run' / 'a model directory' when ``directory`` is one, else None."""
    try:
        if (directory / MARKER).is_file():
            return "a bertfit run"
        names = {p.name for p in directory.iterdir()} if directory.is_dir() else set()
    except OSError:
        return None
    if "train_config.json" in names or "task.json" in names:
        return "a bertfit run"
    if "config.json" in names and names & set(MODEL_WEIGHTS + ("tokenizer.json", "vocab.txt")):
        return "a model directory"
    return None


def protected_owner(path: Path, reads: Iterable[Path] = ()) -> tuple[Path, str] | None:
    """The run or model directory that ``path`` would land in (or be), with what it is; None when free.

    ``reads``: the directories the command reads (its run or model), protected whatever they hold."""
    target = _real(path)
    for read in reads:
        read = _real(Path(read))
        if read.is_dir() and (target == read or read in target.parents):
            return read, "the model this command reads"
    for directory in (target, *target.parents):
        if directory == target and not directory.is_dir():
            continue
        if (directory / MARKER).is_file():
            return directory, "a bertfit run"
    parent = target if target.is_dir() else target.parent
    kind = model_directory_kind(parent)
    if kind is not None:
        return parent, kind
    return None


def check_not_in_a_model(path: Path, flag: str, reads: Iterable[Path] = ()) -> None:
    """Refuse (BertfitError) an output that would land in a run's or a model's own directory."""
    owner = protected_owner(path, reads)
    if owner is not None:
        _refuse(path, owner, flag)


def _refuse(path: Path, owner: tuple[Path, str], flag: str) -> None:
    directory, what = owner
    where = "is" if _real(path) == directory else "is inside"
    raise BertfitError(f"{flag} {path} {where} {directory}, {what}; bertfit never writes its outputs into a run "
                       "or model directory (they would replace or mix with its files): choose a path outside it")


def check_export_directory(output: Path, source: Path) -> None:
    """``export --output DIR``: a new or empty folder, or a previous export, outside any run or model."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise BertfitError(f"--output {output} is a file; the export is a directory: choose a new one")
    names = sorted(p.name for p in output.iterdir()) if output.is_dir() else []
    previous_export = "export.json" in names and set(names) <= EXPORT_ENTRIES
    if names and not previous_export:
        shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
        raise BertfitError(f"--output {output} already holds files ({shown}) and is not a previous bertfit export; "
                           "bertfit never overwrites a folder it did not write: choose a new or empty directory")
    owner = protected_owner(output, [source])
    # a previous export is itself a model directory: replacing it is what was asked
    if owner is not None and not (previous_export and owner[0] == _real(output) and not (output / MARKER).exists()):
        _refuse(output, owner, "--output")
