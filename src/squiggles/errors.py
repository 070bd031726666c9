"""Errors squiggles raises for bad input: each names the problem and the fix."""

from __future__ import annotations


class SquigglesError(Exception):
    """A user-facing error. The CLI prints its message on one line and exits with code 2."""


class DataError(SquigglesError):
    """A dataset could not be found, fetched or verified."""


class ModelError(SquigglesError):
    """A model could not be built, loaded or saved."""
