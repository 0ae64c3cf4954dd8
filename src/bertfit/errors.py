"""Errors a user can cause. The CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class BertfitError(Exception):
    """Base class: a mistake in the user's input, with a message that says what and where."""

    exit_code = 2


class ConfigError(BertfitError):
    """An invalid model or training configuration."""


class CheckpointError(BertfitError):
    """A model directory or weights file that cannot be used."""


class DataError(BertfitError):
    """A data file, column, row or label that cannot be used."""


class ModelNotFoundError(CheckpointError):
    """A model name that resolves to nothing reachable."""


class InputError(DataError):
    """A prediction input a task cannot take (Task.inputs): which one, which of its fields, and why.

    ``reason`` names the field but not the position, so that each caller says where in its own terms
    (a file's row, the server's ``inputs[2]``); the message itself names the input (1-based)."""

    def __init__(self, index: int, reason: str, field: str | None = None) -> None:
        super().__init__(f"input {index + 1}: {reason}")
        self.index, self.reason, self.field = index, reason, field
