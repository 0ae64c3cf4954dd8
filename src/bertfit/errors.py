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
