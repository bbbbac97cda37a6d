"""Exceptions, and the cancellation request that ends work with one.

Every failure a user can cause is a WeightpackError whose message names the file.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# Set (by the CLI, on Ctrl-C or SIGTERM) to stop the operation at its next step, which raises
# KeyboardInterrupt there; the operation then cleans up.
CANCEL = threading.Event()


class WeightpackError(Exception):
    """Base class: the CLI prints these as one line and exits with status 1."""


class FormatError(WeightpackError):
    """An input file (.wpk or .safetensors) is malformed, truncated, corrupt or unsupported."""


class IntegrityError(FormatError):
    """A checksum or hash does not match: the bytes were damaged after they were written."""


class OutputExistsError(WeightpackError):
    """The destination exists and overwriting was not asked for."""


@contextmanager
def about(path: str | os.PathLike) -> Iterator[None]:
    """Make every failure inside name ``path``: one line a user can act on."""
    try:
        yield
    except WeightpackError as exc:
        msg = str(exc)
        raise type(exc)(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except OSError as exc:
        name = exc.filename or path
        raise WeightpackError(f"{name}: {exc.strerror or exc}") from None
