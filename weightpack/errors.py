"""Exceptions. Every failure a user can cause is a WeightpackError whose message names the file."""

from __future__ import annotations


class WeightpackError(Exception):
    """Base class: the CLI prints these as one line and exits with status 1."""


class FormatError(WeightpackError):
    """An input file (.wpk or .safetensors) is malformed, truncated, corrupt or unsupported."""


class IntegrityError(FormatError):
    """A checksum or hash does not match: the bytes were damaged after they were written."""


class OutputExistsError(WeightpackError):
    """The destination exists and overwriting was not asked for."""
