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


# The words for a damaged chunk or stripe, wherever it is found: decoding plane by plane (``codec``), in the
# stripe kernel (``stripe``), on the GPU (``gpu``), or in a restored stripe's check (``wpkfile``). One table,
# so that a damaged archive reads the same whichever decoder met it (the hostile-input tests pin them).
_DAMAGE: dict[str, tuple[type[WeightpackError], str]] = {
    "checksum": (IntegrityError, "checksum mismatch in chunk at offset {offset}"),
    "stream": (IntegrityError, "rANS chunk at offset {offset} is inconsistent"),
    "raw size": (FormatError, "raw chunk at offset {offset} has the wrong size"),
    "no table": (FormatError, "chunk at offset {offset} uses a table the plane lacks"),
    "stripe": (IntegrityError, "stripe {k} does not match its recorded checksum"),
}


def damage_words(kind: str, where: str, offset: int | None = None, k: int | None = None) -> str:
    """The message for damage of ``kind`` (a ``_DAMAGE`` key) to the chunk at ``offset`` / stripe ``k`` of ``where``."""
    return f"{where}: " + _DAMAGE[kind][1].format(offset=offset, k=k)


def damage(kind: str, where: str, offset: int | None = None, k: int | None = None) -> WeightpackError:
    """The error to raise for that damage (``damage_words`` its message)."""
    return _DAMAGE[kind][0](damage_words(kind, where, offset, k))


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
